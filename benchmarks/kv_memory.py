"""Resident memory by KV cache type at long contexts: `edgeqwen.memory.estimate` vs the measured
peak RSS, and the estimate for the Qwen3-4B Q4_K_M shape (README "Long context").

    python benchmarks/kv_memory.py -m FILE.gguf [--ctx 8192 32768] [--types f32 f16 q8_0] [-t 2]

Per (context, type), a fresh process (this script with --worker) loads FILE with that context and
cache type, runs a 256-token prompt (the forward's largest buffers), then makes the whole cache
resident without the hours a real prefill of 32k tokens takes on a small machine: every remaining
position of every layer is written through KVCache.store (random K and V of the real shape), and
4 tokens are decoded at the end of the context (attention over all of it). Its VmHWM (peak RSS)
is compared with the estimate of the same model, context and type (memory.for_model). The kernels
are compiled before the measured processes (numba's cache), so the estimate without the first
run's compile is the one to compare with.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MARK = "KV_MEMORY "


def worker(a) -> None:
    import numpy as np

    import edgeqwen
    from edgeqwen.memory import for_model

    m = edgeqwen.load(a.model, threads=a.threads, ctx_size=a.ctx, cache_type=a.types[0])
    cfg, rng = m.config, np.random.default_rng(0)
    cache = m.model.new_cache()
    m.model.forward(rng.integers(0, cfg.n_vocab, 256).tolist(), cache, "none")
    end = a.ctx - 4
    kv = rng.standard_normal((1024, cfg.n_head_kv, cfg.head_dim)).astype(np.float32)
    for li in range(cfg.n_layer):
        for p in range(256, end, 1024):
            n = min(1024, end - p)
            cache.store(li, p, kv[:n], kv[:n])
    cache.n = end
    for t in rng.integers(0, cfg.n_vocab, 4).tolist():
        m.model.forward([t], cache, "last")
    hwm = int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024
    e = for_model(m)
    print(MARK + json.dumps({"ctx": a.ctx, "type": a.types[0], "peak_rss": hwm, "estimate": e.total,
                             "kv_cache": e.kv_cache, "weights": e.weights, "buffers": e.buffers}), flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--ctx", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--types", nargs="+", default=["f32", "f16", "q8_0"], choices=["f32", "f16", "q8_0"])
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        a.ctx = a.ctx[0]
        return worker(a)
    from edgeqwen.memory import estimate, fmt_bytes

    # compile (or load) the kernels of every type once, outside the measured processes
    subprocess.run([sys.executable, __file__, "--worker", "-m", a.model, "--ctx", "512", "-t", str(a.threads),
                    "--types", *a.types[:1]], check=True, capture_output=True)
    for t in a.types[1:]:
        subprocess.run([sys.executable, __file__, "--worker", "-m", a.model, "--ctx", "512", "-t", str(a.threads),
                        "--types", t], check=True, capture_output=True)
    print(f"{a.model}, {a.threads} threads")
    print("| context | KV cache | KV cache size | estimate | measured peak RSS | measured / estimate |")
    print("| ------: | -------- | ------------: | -------: | ----------------: | ------------------: |")
    for ctx in a.ctx:
        for t in a.types:
            r = subprocess.run([sys.executable, __file__, "--worker", "-m", a.model, "--ctx", str(ctx),
                                "-t", str(a.threads), "--types", t], capture_output=True, text=True)
            lines = [ln for ln in r.stdout.splitlines() if ln.startswith(MARK)]
            if r.returncode or not lines:
                sys.exit(f"worker ctx {ctx} {t} failed: {r.stderr[-2000:]}")
            d = json.loads(lines[-1][len(MARK):])
            print(f"| {ctx} | {t} | {fmt_bytes(d['kv_cache'])} | {fmt_bytes(d['estimate'])} | "
                  f"{fmt_bytes(d['peak_rss'])} | {d['peak_rss'] / d['estimate']:.2f} |", flush=True)
    # the 4B shape, Q4_K_M (llama.cpp's recipe), from benchmarks/memory_table.py's sizes
    import importlib.util
    spec = importlib.util.spec_from_file_location("memory_table", Path(__file__).with_name("memory_table.py"))
    mt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mt)
    cfg = mt.config("Qwen3-4B")
    size = mt.file_bytes(cfg, True, "Q4_K_M")
    print(f"\nQwen3-4B Q4_K_M ({fmt_bytes(size)}), estimate only")
    print("| context | KV cache | KV cache size | estimate |")
    print("| ------: | -------- | ------------: | -------: |")
    for ctx in a.ctx:
        for t in a.types:
            e = estimate(cfg, size, ctx, type_k=t, type_v=t)
            print(f"| {ctx} | {t} | {fmt_bytes(e.kv_cache)} | {fmt_bytes(e.total)} |")


if __name__ == "__main__":
    main()
