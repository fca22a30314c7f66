"""`edgeqwen bench`: a llama-bench-like measurement of one GGUF file.

Reported, in this order of events:
  * load      — `Model(...)`: open, validate and map the file (weights are mmapped, not read).
  * warm-up   — the first tiny forward (a 2-token prompt then 1 decode step): numba compilation
                or loading of its on-disk cache, plus the first touch of every weight page. It is
                part of a user's first-token latency, so it is reported, but apart.
                Then, as llama-bench does, one untimed pp run at full size (code paths that only
                larger batches take, e.g. a BLAS prefill, compile or initialize there); its time
                is reported as `warmup_pp_s`.
  * pp<P>     — prompt processing: forward of P random tokens on an empty cache, logits of the
                last token only. tok/s = P / time.
  * tg<N>     — decode: after a short prompt (TG_PROMPT tokens, untimed), N single-token
                forwards, each computing the last token's logits. tok/s = N / time.
  * peak RSS  — `resource.getrusage` ru_maxrss of this process (includes the weight pages the
                mmap brought in, like llama.cpp's figure with mmap).
pp and tg are mean ± sample standard deviation of the per-repetition tok/s, as llama-bench does.
Random token ids, no sampling (llama-bench does not sample either).

The per-step functions (`warm_up`, `time_pp`, `time_tg`) are shared with
`benchmarks/compare_llama_cpp.py`, which runs llama.cpp on the same file in the same run.
"""
from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from typing import Callable

import numpy as np

from .cpu import cpu_info
from .errors import EdgeQwenError

TG_PROMPT = 8          # tokens in the cache before a tg run (untimed)
WARMUP_PROMPT = 2


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024   # Linux reports KiB


def random_tokens(rng: np.random.Generator, n_vocab: int, n: int) -> list[int]:
    return [int(t) for t in rng.integers(0, n_vocab, n)]


def context_for(n_prompt: int, n_gen: int) -> int:
    """Context (KV cache) size a bench with these sizes needs."""
    return max(n_prompt, TG_PROMPT + n_gen, WARMUP_PROMPT + 1, 1)


def warm_up(model, cache, rng) -> float:
    """The first forward on a model: a short batch, then one decode step. Seconds."""
    n_vocab = model.config.n_vocab
    cache.truncate(0)
    t0 = time.perf_counter()
    model.model.forward(random_tokens(rng, n_vocab, WARMUP_PROMPT), cache, "last")
    model.model.forward(random_tokens(rng, n_vocab, 1), cache, "last")
    dt = time.perf_counter() - t0
    cache.truncate(0)
    return dt


def time_pp(model, cache, tokens: list[int]) -> float:
    """Seconds for the forward of `tokens` on an empty cache (logits of the last token)."""
    cache.truncate(0)
    t0 = time.perf_counter()
    model.model.forward(tokens, cache, "last")
    return time.perf_counter() - t0


def time_tg(model, cache, prompt: list[int], tokens: list[int]) -> float:
    """Seconds for len(tokens) single-token forwards after an (untimed) prompt."""
    cache.truncate(0)
    model.model.forward(prompt, cache, "last")
    fwd = model.model.forward
    t0 = time.perf_counter()
    for tok in tokens:
        fwd([tok], cache, "last")
    return time.perf_counter() - t0


def summarize(samples_tok_s: list[float]) -> dict:
    return {
        "tok_s_mean": statistics.fmean(samples_tok_s) if samples_tok_s else None,
        "tok_s_sd": statistics.stdev(samples_tok_s) if len(samples_tok_s) > 1 else 0.0,
        "samples_tok_s": [round(x, 3) for x in samples_tok_s],
    }


def run_bench(path: str | os.PathLike, n_prompt: int = 512, n_gen: int = 128, threads: int | None = None,
              reps: int = 5, batch_size: int | None = None, seed: int = 0,
              log: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark and return its results as a JSON-ready dict (see module docstring)."""
    from .api import Model

    if n_prompt < 0 or n_gen < 0:
        raise EdgeQwenError("-p and -n must be >= 0")
    if n_prompt == 0 and n_gen == 0:
        raise EdgeQwenError("nothing to measure: -p and -n are both 0")
    if reps < 1:
        raise EdgeQwenError(f"repetitions must be >= 1, got {reps}")
    if not os.path.isfile(path):
        raise EdgeQwenError(f"{path}: no such file")
    log = log or (lambda msg: None)
    n_ctx = context_for(n_prompt, n_gen)
    kw = {} if batch_size is None else {"batch_size": int(batch_size)}
    model = Model(path, threads=threads, ctx_size=n_ctx, **kw)
    cfg = model.config
    log(f"loaded {path} in {model.load_seconds:.2f} s; warming up ...")
    rng = np.random.default_rng(seed)
    cache = model.model.new_cache()
    warmup_s = warm_up(model, cache, rng)
    log(f"warm-up {warmup_s:.2f} s")
    warmup_pp_s = None
    if n_prompt:
        warmup_pp_s = time_pp(model, cache, random_tokens(rng, cfg.n_vocab, n_prompt))
        log(f"warm-up pp{n_prompt} {warmup_pp_s:.2f} s (untimed)")

    pp, tg = [], []
    for r in range(reps):
        if n_prompt:
            dt = time_pp(model, cache, random_tokens(rng, cfg.n_vocab, n_prompt))
            pp.append(n_prompt / dt)
            log(f"rep {r + 1}/{reps}: pp{n_prompt} {pp[-1]:.2f} tok/s")
        if n_gen:
            prompt = random_tokens(rng, cfg.n_vocab, TG_PROMPT)
            dt = time_tg(model, cache, prompt, random_tokens(rng, cfg.n_vocab, n_gen))
            tg.append(n_gen / dt)
            log(f"rep {r + 1}/{reps}: tg{n_gen} {tg[-1]:.2f} tok/s")

    import numba
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = None
    mf = model.file
    cpu = cpu_info()
    res = {
        "engine": "edgeqwen",
        "file": str(path),
        "file_bytes": os.path.getsize(path),
        "model": {
            "name": mf.metadata.get("general.name"),
            "params": int(sum(int(np.prod(t.shape)) for t in mf.gguf.tensors.values())),
            "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_ff": cfg.n_ff, "n_head": cfg.n_head,
            "n_head_kv": cfg.n_head_kv, "n_vocab": cfg.n_vocab, "tied": mf.tied,
            "tensor_types": mf.type_counts(),
        },
        "threads": model.threads,
        "batch_size": model.model.max_batch,
        "n_ctx": n_ctx,
        "n_prompt": n_prompt,
        "n_gen": n_gen,
        "tg_prompt_tokens": TG_PROMPT,
        "reps": reps,
        "seed": seed,
        "load_s": model.load_seconds,
        "warmup_s": warmup_s,
        "warmup_pp_s": warmup_pp_s,
        "pp": ({"test": f"pp{n_prompt}", **summarize(pp)} if n_prompt else None),
        "tg": ({"test": f"tg{n_gen}", **summarize(tg)} if n_gen else None),
        "peak_rss_bytes": peak_rss_bytes(),
        "numba": {"version": numba.__version__, "threading_layer": layer,
                  "num_threads_max": numba.config.NUMBA_NUM_THREADS},
        "machine": {"cpu": cpu.name, "arch": cpu.arch, "physical_cores": cpu.physical_cores,
                    "logical_cpus": cpu.logical_cpus, "cpu_features": cpu.features, "jit_target": cpu.jit_target,
                    "python": platform.python_version(), "summary": cpu.summary()},
    }
    return res


def fmt_tok_s(stats: dict | None) -> str:
    if not stats:
        return "-"
    return f"{stats['tok_s_mean']:.2f} ± {stats['tok_s_sd']:.2f}"


def format_table(res: dict) -> str:
    """llama-bench-like markdown table plus the one-off figures."""
    m = res["model"]
    types = ", ".join(f"{k} {v}" for k, v in sorted(m["tensor_types"].items()))
    size = f"{res['file_bytes'] / 2**20:.1f} MiB"
    params = f"{m['params'] / 1e9:.3f} B"
    rows = [(t["test"], fmt_tok_s(t)) for t in (res["pp"], res["tg"]) if t]
    head = ("model", "size", "params", "threads", "test", "t/s")
    name = f"qwen3 {m['n_layer']}L/{m['n_embd']}d"
    body = [(name, size, params, str(res["threads"]), test, ts) for test, ts in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
    right = {1, 2, 3, 5}

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "| " + " | ".join(("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)) + " |"
    out = [
        f"file      {res['file']} ({size}; {types})",
        f"load      {res['load_s']:.3f} s",
        f"warm-up   {res['warmup_s']:.3f} s (first tiny forward: numba compile or cache load, first touch of weights)"
        + (f"; then one untimed pp{res['n_prompt']}: {res['warmup_pp_s']:.3f} s" if res["warmup_pp_s"] is not None else ""),
        f"peak RSS  {res['peak_rss_bytes'] / 2**20:.1f} MiB",
        f"cpu       {res['machine']['summary']}",
        f"runs      {res['reps']} reps; tg after a {res['tg_prompt_tokens']}-token prompt; "
        f"batch {res['batch_size']}; numba threading layer {res['numba']['threading_layer']}",
        "",
        line(head), sep, *(line(r) for r in body),
    ]
    return "\n".join(out)
