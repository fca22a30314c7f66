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
  * -d DEPTH   — llama-bench's -d: DEPTH random tokens are put in the cache first (once, untimed,
                `depth_fill_s`); every pp and tg run then starts from those DEPTH positions (the
                cache truncated back to them; tg without its short prompt), named "pp<P> @ d<DEPTH>".
                The KV cache type (--cache-type, default f16 like llama.cpp's) is reported.
  * peak RSS  — `resource.getrusage` ru_maxrss of this process (includes the weight pages the
                mmap brought in, like llama.cpp's figure with mmap); taken before the bandwidth
                probe below, whose buffer it would otherwise include.
  * roofline  — decoding a token reads every weight once: the bytes of weights a decode step
                reads (`decode_weight_bytes`: every layer's matrices and norms, the output norm,
                the output matrix — token_embd itself when tied — and one token_embd row) times
                tg tok/s is the weight-read rate in GB/s (1 GB = 1e9 bytes), shown next to the
                memory-read bandwidth measured on the spot (`memory_read_bandwidth`: a numba
                parallel sum over a buffer of 4 x L3 within [256 MiB, 1 GiB], same thread count,
                best of a few passes, < 2 s) and as "% of bandwidth limit" (their ratio; the limit in tok/s
                is bandwidth / bytes per token). KV-cache and activation traffic are not counted.
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

import numba
import numpy as np

from . import constants as C
from . import simd
from .cpu import cpu_info
from .errors import EdgeQwenError

TG_PROMPT = 8          # tokens in the cache before a tg run (untimed)
WARMUP_PROMPT = 2
GB = 1e9               # bandwidths in GB/s, decimal like memory vendors and STREAM
BW_BYTES = 1 << 30      # bandwidth probe buffer: 4 x L3 within [256 MiB, 1 GiB]; 1 GiB when L3 is unknown
BW_MIN_BYTES = 256 << 20
BW_BUDGET_S = 1.0       # the probe's passes stop when this time is spent (fill + at least 2 passes)


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


def fill_depth(model, cache, rng, depth: int) -> float:
    """Put `depth` random tokens in the empty cache (in batches of the model's size). Seconds."""
    cache.truncate(0)
    t0 = time.perf_counter()
    if depth:
        model.model.forward(random_tokens(rng, model.config.n_vocab, depth), cache, "none")
    return time.perf_counter() - t0


def time_pp(model, cache, tokens: list[int], depth: int = 0) -> float:
    """Seconds for the forward of `tokens` after the cache's first `depth` positions (logits of the last token)."""
    cache.truncate(depth)
    t0 = time.perf_counter()
    model.model.forward(tokens, cache, "last")
    return time.perf_counter() - t0


def time_tg(model, cache, prompt: list[int], tokens: list[int], depth: int = 0) -> float:
    """Seconds for len(tokens) single-token forwards after an (untimed) prompt, or after the
    cache's first `depth` positions when depth > 0."""
    cache.truncate(depth)
    if not depth:
        model.model.forward(prompt, cache, "last")
    fwd = model.model.forward
    t0 = time.perf_counter()
    for tok in tokens:
        fwd([tok], cache, "last")
    return time.perf_counter() - t0


def decode_weight_bytes(mf) -> dict:
    """Bytes of weight tensors one decode step reads from `mf` (a gguf_model.ModelFile), by part:
    layers (every layer's matrices and norms), output_norm, output (output.weight; token_embd when
    the embedding is tied), embd_row (one token_embd row: the token's embedding), and total."""
    t, cfg = mf.gguf.tensors, mf.config
    layer_names = [n for n in cfg.tensor_shapes() if n not in (C.TOKEN_EMBD, C.OUTPUT_NORM)]
    embd = t[C.TOKEN_EMBD]
    parts = {
        "layers": sum(t[n].nbytes * cfg.n_expert_used // cfg.n_expert if n.endswith("_exps.weight") else t[n].nbytes
                      for n in layer_names),             # qwen3moe: only the selected experts' slices
        "output_norm": t[C.OUTPUT_NORM].nbytes,
        "output": (t[C.OUTPUT] if C.OUTPUT in t else embd).nbytes,
        "embd_row": embd.nbytes // embd.shape[0],
    }
    parts["total"] = sum(parts.values())
    return parts


@numba.njit(parallel=True, cache=True)
def _bw_fill(a):
    for i in numba.prange(a.size):
        a[i] = i


@numba.njit(parallel=True, cache=True)
def _bw_sum(a):
    s = 0
    for i in numba.prange(a.size):
        s += a[i]
    return s


def l3_cache_bytes() -> int | None:
    """Size of the last-level (L3) cache, or None when unknown."""
    try:
        v = os.sysconf("SC_LEVEL3_CACHE_SIZE")
        if v and v > 0:
            return int(v)
    except (ValueError, OSError, AttributeError):
        pass
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for d in sorted(os.listdir(root)):
            with open(f"{root}/{d}/level") as f:
                if f.read().strip() != "3":
                    continue
            with open(f"{root}/{d}/size") as f:
                txt = f.read().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1:], 1)
            return int(txt.rstrip("KMG")) * mult
    except (OSError, ValueError):
        pass
    return None


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for ln in f:
                if ln.startswith("MemAvailable:"):
                    return int(ln.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_read_bandwidth(threads: int | None = None, nbytes: int | None = None, max_passes: int = 5,
                          budget_s: float = BW_BUDGET_S) -> dict:
    """Memory-read bandwidth measured now: a numba parallel (prange) sum of an int64 buffer of
    `nbytes` (default 4 x L3 within [256 MiB, 1 GiB], 1 GiB when the L3 size is unknown; at most
    a quarter of MemAvailable),
    written first so that its pages are real, with `threads` numba threads (default: numba's
    current count, which `Model` set). Best of up to `max_passes` passes, stopping after
    `budget_s` (at least 2 passes). Returns GB/s (1e9 bytes/s) and how it was measured."""
    if nbytes is None:
        l3 = l3_cache_bytes()
        nbytes = min(max(4 * l3, BW_MIN_BYTES), BW_BYTES) if l3 else BW_BYTES
        avail = _available_memory()
        if avail:
            nbytes = max(min(nbytes, avail // 4), 64 << 20)
    n = max(int(nbytes) // 8, 1024)
    prev = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(int(threads))
    try:
        t0 = time.perf_counter()
        small = np.ones(1024, dtype=np.int64)        # compile (or load from cache) outside the timing
        _bw_fill(small)
        _bw_sum(small)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        buf = np.empty(n, dtype=np.int64)
        _bw_fill(buf)                                # first touch in parallel, like the reads
        fill_s = time.perf_counter() - t0
        samples = []
        for _ in range(max(max_passes, 2)):
            t1 = time.perf_counter()
            s = _bw_sum(buf)
            samples.append(n * 8 / (time.perf_counter() - t1) / GB)
            if len(samples) >= 2 and time.perf_counter() - t0 > budget_s:
                break
        assert s == n * (n - 1) // 2                 # the sum was really computed
        seconds = time.perf_counter() - t0
        used = numba.get_num_threads()
        del buf
    finally:
        numba.set_num_threads(prev)
    return {"GB_s": max(samples), "samples_GB_s": [round(x, 2) for x in samples], "buffer_bytes": n * 8,
            "threads": used, "l3_bytes": l3_cache_bytes(), "fill_s": round(fill_s, 3),
            "seconds": round(seconds, 3), "compile_s": round(compile_s, 3),
            "method": "numba prange sum over an int64 buffer, best pass"}


def roofline(weight_bytes: dict, tg_tok_s: float | None, bandwidth: dict | None) -> dict:
    """Weight-read rate of decode vs the measured memory-read bandwidth (see module docstring)."""
    total = weight_bytes["total"]
    bw = bandwidth["GB_s"] if bandwidth else None
    read = total * tg_tok_s / GB if tg_tok_s else None
    return {
        "weight_bytes_per_token": total,
        "weight_bytes": weight_bytes,
        "tg_weight_read_GB_s": read,
        "memory_read_GB_s": bw,
        "pct_of_bandwidth_limit": (100.0 * read / bw) if (read is not None and bw) else None,
        "tg_tok_s_limit": (bw * GB / total) if bw else None,
        "bandwidth_probe": bandwidth,
    }


def summarize(samples_tok_s: list[float]) -> dict:
    return {
        "tok_s_mean": statistics.fmean(samples_tok_s) if samples_tok_s else None,
        "tok_s_sd": statistics.stdev(samples_tok_s) if len(samples_tok_s) > 1 else 0.0,
        "samples_tok_s": [round(x, 3) for x in samples_tok_s],
    }


def run_bench(path: str | os.PathLike, n_prompt: int = 512, n_gen: int = 128, threads: int | None = None,
              reps: int = 5, batch_size: int | None = None, seed: int = 0,
              log: Callable[[str], None] | None = None, bandwidth_probe: bool = True, depth: int = 0,
              cache_type: str = "f16", cache_type_k: str | None = None, cache_type_v: str | None = None) -> dict:
    """Run the benchmark and return its results as a JSON-ready dict (see module docstring).
    bandwidth_probe=False skips the memory-bandwidth measurement (the roofline then has the
    weight bytes and GB/s read, but no bandwidth or percentage)."""
    from .api import Model

    if n_prompt < 0 or n_gen < 0:
        raise EdgeQwenError("-p and -n must be >= 0")
    if n_prompt == 0 and n_gen == 0:
        raise EdgeQwenError("nothing to measure: -p and -n are both 0")
    if reps < 1:
        raise EdgeQwenError(f"repetitions must be >= 1, got {reps}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise EdgeQwenError(f"-d/--depth must be an integer >= 0, got {depth!r}")
    if not os.path.isfile(path):
        raise EdgeQwenError(f"{path}: no such file")
    log = log or (lambda msg: None)
    n_ctx = depth + context_for(n_prompt, n_gen)
    kw = {} if batch_size is None else {"batch_size": int(batch_size)}
    model = Model(path, threads=threads, ctx_size=n_ctx, cache_type=cache_type, cache_type_k=cache_type_k,
                  cache_type_v=cache_type_v, **kw)
    cfg = model.config
    log(f"loaded {path} in {model.load_seconds:.2f} s; warming up ...")
    rng = np.random.default_rng(seed)
    cache = model.model.new_cache()
    warmup_s = warm_up(model, cache, rng)
    log(f"warm-up {warmup_s:.2f} s")
    depth_fill_s = fill_depth(model, cache, rng, depth)
    if depth:
        log(f"depth {depth}: filled in {depth_fill_s:.2f} s (untimed)")
    warmup_pp_s = None
    if n_prompt:
        warmup_pp_s = time_pp(model, cache, random_tokens(rng, cfg.n_vocab, n_prompt), depth)
        log(f"warm-up pp{n_prompt} {warmup_pp_s:.2f} s (untimed)")

    pp, tg = [], []
    for r in range(reps):
        if n_prompt:
            dt = time_pp(model, cache, random_tokens(rng, cfg.n_vocab, n_prompt), depth)
            pp.append(n_prompt / dt)
            log(f"rep {r + 1}/{reps}: pp{n_prompt} {pp[-1]:.2f} tok/s")
        if n_gen:
            prompt = random_tokens(rng, cfg.n_vocab, TG_PROMPT)
            dt = time_tg(model, cache, prompt, random_tokens(rng, cfg.n_vocab, n_gen), depth)
            tg.append(n_gen / dt)
            log(f"rep {r + 1}/{reps}: tg{n_gen} {tg[-1]:.2f} tok/s")

    peak_rss = peak_rss_bytes()          # before the bandwidth probe's buffer
    bandwidth = None
    if bandwidth_probe:
        bandwidth = memory_read_bandwidth(threads=model.threads)
        log(f"memory read {bandwidth['GB_s']:.1f} GB/s ({bandwidth['seconds']:.2f} s)")
    tg_stats = summarize(tg) if n_gen else None
    roof = roofline(decode_weight_bytes(model.file), tg_stats["tok_s_mean"] if tg_stats else None, bandwidth)

    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = None
    mf = model.file
    cpu = cpu_info()
    at = f" @ d{depth}" if depth else ""
    res = {
        "engine": "edgeqwen",
        "file": str(path),
        "file_bytes": os.path.getsize(path),
        "model": {
            "name": mf.metadata.get("general.name"),
            "params": int(sum(int(np.prod(t.shape)) for t in mf.gguf.tensors.values())),
            "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_ff": cfg.n_ff, "n_head": cfg.n_head,
            "n_head_kv": cfg.n_head_kv, "n_vocab": cfg.n_vocab, "tied": mf.tied, "arch": cfg.arch,
            "n_expert": cfg.n_expert, "n_expert_used": cfg.n_expert_used,
            "tensor_types": mf.type_counts(),
        },
        "threads": model.threads,
        "batch_size": model.model.max_batch,
        "n_ctx": n_ctx,
        "n_prompt": n_prompt,
        "n_gen": n_gen,
        "tg_prompt_tokens": 0 if depth else TG_PROMPT,
        "depth": depth,
        "depth_fill_s": depth_fill_s,
        "cache_type_k": model.model.type_k,
        "cache_type_v": model.model.type_v,
        "reps": reps,
        "seed": seed,
        "load_s": model.load_seconds,
        "warmup_s": warmup_s,
        "warmup_pp_s": warmup_pp_s,
        "pp": ({"test": f"pp{n_prompt}{at}", **summarize(pp)} if n_prompt else None),
        "tg": ({"test": f"tg{n_gen}{at}", **tg_stats} if n_gen else None),
        "peak_rss_bytes": peak_rss,
        "roofline": roof,
        "kernels": {"path": simd.PATH, "reason": simd.REASON},
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
    name = f"{m.get('arch', 'qwen3')} {m['n_layer']}L/{m['n_embd']}d"
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
        f"kernels   {res['kernels']['path']} ({res['kernels']['reason']}; EDGEQWEN_KERNELS=scalar|avx2 to choose)",
        f"runs      {res['reps']} reps; tg after a {res['tg_prompt_tokens']}-token prompt; "
        f"batch {res['batch_size']}; numba threading layer {res['numba']['threading_layer']}",
        f"KV cache  K {res.get('cache_type_k', 'f32')}, V {res.get('cache_type_v', 'f32')}"
        + (f"; depth {res['depth']} (filled once in {res['depth_fill_s']:.1f} s, untimed)" if res.get("depth") else ""),
        *roofline_lines(res),
        "",
        line(head), sep, *(line(r) for r in body),
    ]
    return "\n".join(out)


def roofline_lines(res: dict) -> list[str]:
    r = res.get("roofline")
    if not r:
        return []
    wb, mib = r["weight_bytes"], 2**20
    tied = " (token_embd: tied)" if res["model"]["tied"] else ""
    out = [f"weights   {wb['total'] / mib:.1f} MiB read per decoded token: layers {wb['layers'] / mib:.1f} MiB, "
           f"output {wb['output'] / mib:.1f} MiB{tied}, output norm + 1 embedding row "
           f"{(wb['output_norm'] + wb['embd_row']) / 2**10:.1f} KiB"]
    bw = r["bandwidth_probe"]
    probe = (f"memory read {bw['GB_s']:.1f} GB/s ({bw['threads']} threads, {bw['buffer_bytes'] / 2**30:.2f} GiB "
             f"buffer, best of {len(bw['samples_GB_s'])} in {bw.get('seconds', 0):.1f} s)") if bw \
        else "memory bandwidth not measured"
    if r["tg_weight_read_GB_s"] is not None:
        line = (f"roofline  tg{res['n_gen']} {res['tg']['tok_s_mean']:.2f} tok/s x {wb['total'] / GB * 1e3:.1f} MB "
                f"= {r['tg_weight_read_GB_s']:.2f} GB/s of weights; {probe}")
        if r["pct_of_bandwidth_limit"] is not None:
            line += (f" -> {r['pct_of_bandwidth_limit']:.0f}% of bandwidth limit "
                     f"(limit {r['tg_tok_s_limit']:.1f} tok/s)")
    else:
        line = f"roofline  no tg test; {probe}" + (
            f" -> limit {r['tg_tok_s_limit']:.1f} tok/s" if r["tg_tok_s_limit"] else "")
    return out + [line]
