"""Kernel compilation made visible: numba compiles the kernels of a file's weight types on the first
forward of a process that has not compiled them before (then caches them on disk). That takes tens of
seconds per weight type (more on a Raspberry Pi) and used to happen silently.

- `compile_notice(file)`: around the first forward of a process. When no earlier run on this machine
  compiled this set of weight types, it says so first ("compiling kernels for Q4_K, Q6_K, one-time,
  ~N s"), with a spinner on a terminal, and the time it took after; when the set was compiled before
  but the kernels turn out to be recompiled (new code, new numba), the line appears after 10 s.
- `edgeqwen warmup -m FILE | --all-types`: compile ahead of time.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import platform
import sys
import threading
import time
from pathlib import Path

SECONDS_PER_TYPE = 60 if platform.machine() in ("x86_64", "AMD64") else 180   # x86: 40-70 s idle, 186 s at load 5
LATE_NOTICE_S = 10.0          # loading cached kernels takes 1-3 s (more under load): longer is a compile
ALL_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k")
_done_here: set[str] = set()          # type sets whose first forward ran in this process


def _types(mf) -> list[str]:
    return sorted(mf.type_counts())


def _marker(types: list[str]) -> Path:
    import numba

    from .demo import cache_dir

    key = json.dumps([types, numba.__version__, platform.machine(), sys.version_info[:2]])
    return cache_dir() / "compiled" / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")


def compiled_before(mf) -> bool:
    """Whether an earlier run on this machine compiled the kernels of this file's weight types."""
    types = _types(mf)
    return ",".join(types) in _done_here or _marker(types).is_file()


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def compile_notice(mf, log=_say):
    """Wrap the first forward of a process on the model file `mf` (see the module docstring)."""
    types = _types(mf)
    key = ",".join(types)
    if key in _done_here or log is None:
        yield
        return
    marker = _marker(types)
    known = marker.is_file()
    shown = [not known]
    quant = [t for t in types if t != "F32"] or types
    est = SECONDS_PER_TYPE * len(quant)
    text = f"compiling kernels for {', '.join(quant)}, one-time, ~{est} s"
    stop = threading.Event()
    tty = sys.stderr.isatty()
    t0 = time.monotonic()

    def spin():
        if not shown[0] and stop.wait(LATE_NOTICE_S):
            return
        if not shown[0]:
            shown[0] = True
            if not tty:
                log(text + " (the kernels changed since the last compile)")
        if not tty:
            return
        for ch in itertools.cycle("|/-\\"):
            sys.stderr.write(f"\r{text} {ch} {time.monotonic() - t0:.0f} s ")
            sys.stderr.flush()
            if stop.wait(0.25):
                break
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()

    if shown[0] and not tty:
        log(text + " ...")
    th = threading.Thread(target=spin, daemon=True)
    th.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        stop.set()
        th.join()
        dt = time.monotonic() - t0
        if ok:
            _done_here.add(key)
            if shown[0] and dt >= 2:                  # (under 2 s they were in numba's cache after all)
                log(f"compiled kernels for {', '.join(quant)} in {dt:.0f} s (cached for the next runs)")
            try:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(json.dumps({"types": types, "seconds": round(dt, 1)}))
            except OSError:
                pass


def warm_up_file(path, threads=None, log=_say) -> float:
    """Compile (or load from numba's cache) every kernel a run of `path` uses: a short prompt and a
    decode step (the one-region step), and a batched prefill. Seconds."""
    import numpy as np

    from .api import load
    from .bench import random_tokens, time_pp, warm_up
    from .quants.prefill import PREFILL_MIN_TOKENS

    t0 = time.monotonic()
    m = load(path, threads=threads, ctx_size=max(64, 2 * PREFILL_MIN_TOKENS))
    rng = np.random.default_rng(0)
    cache = m.model.new_cache()
    warm_up(m, cache, rng)
    time_pp(m, cache, random_tokens(rng, m.config.n_vocab, PREFILL_MIN_TOKENS + 1))
    m.model.forward_many([([1], cache), ([2], m.model.new_cache())])
    dt = time.monotonic() - t0
    log(f"{path}: kernels for {', '.join(_types(m.file))} ready ({dt:.1f} s)")
    return dt


def warm_up_all(threads=None, log=_say) -> None:
    """Every weight type `edgeqwen convert` writes (llama.cpp's common files use these), on small
    random models made with our converter (in a temporary directory)."""
    import tempfile

    from converters.hf_to_gguf import convert
    from converters.synthetic import make_checkpoint

    with tempfile.TemporaryDirectory() as tmp:        # 256 wide: the K-quant recipes keep their K types
        ckpt = make_checkpoint(Path(tmp) / "ckpt", hidden=256, intermediate=768, layers=1, heads=4, kv_heads=2,
                               head_dim=64)
        for t in ALL_TYPES:
            out = Path(tmp) / f"{t}.gguf"
            log(f"{t}: converting a small random model ...")
            convert(ckpt, out, t, progress=False)
            warm_up_file(out, threads, log)
