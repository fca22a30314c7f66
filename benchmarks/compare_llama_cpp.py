"""edgeqwen vs llama.cpp on the same GGUF file, in one run, side by side.

    python benchmarks/compare_llama_cpp.py -m FILE.gguf -p 512 -n 128 -t 2 -r 3 [--json]

Each repetition runs edgeqwen, then llama.cpp (llama-cpp-python), each in its own fresh
subprocess (this script with --worker), so each engine's peak RSS is its own and the two
alternate in time (machine noise hits both alike). A worker: imports its engine, loads the
file (timed), warms up (a 2-token prompt + 1 decode step, timed: for edgeqwen this is numba
compile or cache load; then, as llama-bench does, one untimed pp run at full size, whose time is
kept as warmup_pp_s), then measures
  * pp: one forward/eval of P random tokens on an empty context (last-token logits only), and
  * tg: N single-token forwards/evals after an untimed 8-token prompt,
and reports its peak RSS (ru_maxrss, including mmapped weight pages). Both engines get the same
token ids in a repetition. llama.cpp runs as `Llama(n_threads=T, n_threads_batch=T,
n_batch=512, n_ctx=P+N+8, logits_all=False, verbose=False)`, pp as `llm.reset(); llm.eval(tokens)`,
tg as `llm.eval([tok])` in a loop; edgeqwen as `edgeqwen bench` does (Qwen3Model.forward with
logits='last').

Printed: per engine mean ± sd of tok/s over repetitions, load and warm-up times, peak RSS, and
the ratios edgeqwen / llama.cpp (of the means, and paired per repetition).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

MARK = "@@COMPARE_RESULT@@ "
TG_PROMPT = 8         # = edgeqwen.bench.TG_PROMPT (not imported here: the llama worker stays edgeqwen-free)
WARMUP_PROMPT = 2
ENGINES = ("edgeqwen", "llama.cpp")


def _peak_rss() -> int:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def _tokens(seed: int, n_vocab: int, p: int, n: int):
    rng = np.random.default_rng(seed)
    ints = lambda k: [int(t) for t in rng.integers(0, n_vocab, k)]  # noqa: E731
    return ints(WARMUP_PROMPT), ints(1), ints(p), ints(TG_PROMPT), ints(n)


def worker_edgeqwen(a) -> dict:
    t0 = time.perf_counter()
    from edgeqwen.api import Model
    from edgeqwen.bench import TG_PROMPT as EQ_TG_PROMPT, peak_rss_bytes
    assert EQ_TG_PROMPT == TG_PROMPT
    import_s = time.perf_counter() - t0
    m = Model(a.model, threads=a.threads, ctx_size=a.p + a.n + TG_PROMPT)
    warm, warm1, pp_toks, tg_prompt, tg_toks = _tokens(a.seed, m.config.n_vocab, a.p, a.n)
    fwd, cache = m.model.forward, m.model.new_cache()

    t0 = time.perf_counter()
    fwd(warm, cache, "last")
    fwd(warm1, cache, "last")
    warmup_s = time.perf_counter() - t0
    res = {"import_s": import_s, "load_s": m.load_seconds, "warmup_s": warmup_s, "threads": m.threads}
    if a.p:
        cache.truncate(0)
        t0 = time.perf_counter()
        fwd(pp_toks, cache, "last")
        res["warmup_pp_s"] = time.perf_counter() - t0
        cache.truncate(0)
        t0 = time.perf_counter()
        fwd(pp_toks, cache, "last")
        res["pp_s"] = time.perf_counter() - t0
    if a.n:
        cache.truncate(0)
        fwd(tg_prompt, cache, "last")
        t0 = time.perf_counter()
        for tok in tg_toks:
            fwd([tok], cache, "last")
        res["tg_s"] = time.perf_counter() - t0
    res["peak_rss_bytes"] = peak_rss_bytes()
    return res


def worker_llama(a) -> dict:
    t0 = time.perf_counter()
    import llama_cpp
    from llama_cpp import Llama
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    llm = Llama(model_path=a.model, n_threads=a.threads, n_threads_batch=a.threads, n_batch=512,
                n_ctx=a.p + a.n + TG_PROMPT, logits_all=False, verbose=False)
    load_s = time.perf_counter() - t0
    warm, warm1, pp_toks, tg_prompt, tg_toks = _tokens(a.seed, llm.n_vocab(), a.p, a.n)

    t0 = time.perf_counter()
    llm.eval(warm)
    llm.eval(warm1)
    warmup_s = time.perf_counter() - t0
    res = {"import_s": import_s, "load_s": load_s, "warmup_s": warmup_s, "threads": a.threads,
           "version": llama_cpp.__version__}
    if a.p:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(pp_toks)
        res["warmup_pp_s"] = time.perf_counter() - t0
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(pp_toks)
        res["pp_s"] = time.perf_counter() - t0
    if a.n:
        llm.reset()
        llm.eval(tg_prompt)
        t0 = time.perf_counter()
        for tok in tg_toks:
            llm.eval([tok])
        res["tg_s"] = time.perf_counter() - t0
    res["peak_rss_bytes"] = _peak_rss()
    return res


def run_worker(engine: str, a, seed: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, "-m", a.model,
           "-p", str(a.p), "-n", str(a.n), "-t", str(a.threads), "--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{engine} worker failed (exit status {proc.returncode})")
    return json.loads(lines[-1][len(MARK):])


def _stats(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "samples": [round(x, 4) for x in xs]}


def summarize(a, runs: dict[str, list[dict]]) -> dict:
    out = {"file": a.model, "file_bytes": os.path.getsize(a.model), "threads": a.threads, "n_prompt": a.p,
           "n_gen": a.n, "tg_prompt_tokens": TG_PROMPT, "reps": a.reps, "engines": {}, "ratio": {}}
    for eng, rs in runs.items():
        e = {k: _stats([r[k] for r in rs]) for k in ("import_s", "load_s", "warmup_s", "warmup_pp_s") if k in rs[0]}
        if a.p:
            e["pp_tok_s"] = _stats([a.p / r["pp_s"] for r in rs])
        if a.n:
            e["tg_tok_s"] = _stats([a.n / r["tg_s"] for r in rs])
        e["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in rs)
        if "version" in rs[0]:
            e["version"] = rs[0]["version"]
        out["engines"][eng] = e
    for key in ("pp_tok_s", "tg_tok_s"):
        if key in out["engines"]["edgeqwen"]:
            eq, ll = out["engines"]["edgeqwen"][key], out["engines"]["llama.cpp"][key]
            paired = [x / y for x, y in zip(eq["samples"], ll["samples"])]
            out["ratio"][key] = {"of_means": eq["mean"] / ll["mean"], "paired": _stats(paired)}
    return out


def format_table(s: dict) -> str:
    p, n = s["n_prompt"], s["n_gen"]
    head = ["engine", "load s", "warm-up s"]
    if p:
        head.append(f"pp{p} tok/s")
    if n:
        head.append(f"tg{n} tok/s")
    head.append("peak RSS")
    rows = []
    for eng, e in s["engines"].items():
        row = [eng, f"{e['load_s']['mean']:.2f}", f"{e['warmup_s']['mean']:.2f}"]
        if p:
            row.append(f"{e['pp_tok_s']['mean']:.2f} ± {e['pp_tok_s']['sd']:.2f}")
        if n:
            row.append(f"{e['tg_tok_s']['mean']:.2f} ± {e['tg_tok_s']['sd']:.2f}")
        row.append(f"{e['peak_rss_bytes'] / 2**20:.0f} MiB")
        rows.append(row)
    ratio = ["edgeqwen/llama.cpp", "", ""]
    for key in (["pp_tok_s"] if p else []) + (["tg_tok_s"] if n else []):
        r = s["ratio"][key]
        ratio.append(f"{r['of_means']:.3f}x")
    ratio.append("")
    rows.append(ratio)
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w[0]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(cells))  # noqa: E731
    out = [f"{s['file']} ({s['file_bytes'] / 2**20:.1f} MiB), {s['threads']} threads, {s['reps']} reps "
           f"alternating edgeqwen / llama.cpp (one process each), tg after a {s['tg_prompt_tokens']}-token prompt",
           line(head), "  ".join("-" * x for x in w), *(line(r) for r in rows)]
    paired = [f"{k[:2]} {r['paired']['mean']:.3f} ± {r['paired']['sd']:.3f}" for k, r in s["ratio"].items()]
    if paired:
        out.append("paired per-rep ratio: " + ", ".join(paired))
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True, help="GGUF file")
    ap.add_argument("-p", type=int, default=512, help="prompt tokens for pp (0 = skip)")
    ap.add_argument("-n", type=int, default=128, help="decoded tokens for tg (0 = skip)")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.p < 0 or a.n < 0 or (a.p == 0 and a.n == 0) or a.reps < 1 or a.threads < 1:
        ap.error("need -p >= 0, -n >= 0 (not both 0), -r >= 1, -t >= 1")
    if not os.path.isfile(a.model):
        ap.error(f"{a.model}: no such file")

    if a.worker:
        res = (worker_edgeqwen if a.worker == "edgeqwen" else worker_llama)(a)
        sys.stdout.flush()
        print(MARK + json.dumps(res), flush=True)
        return

    runs: dict[str, list[dict]] = {e: [] for e in ENGINES}
    for rep in range(a.reps):
        for eng in ENGINES:
            r = run_worker(eng, a, a.seed + rep)
            runs[eng].append(r)
            msg = [f"rep {rep + 1}/{a.reps} {eng:9s} load {r['load_s']:.2f} s, warm-up {r['warmup_s']:.2f} s"]
            if a.p:
                msg.append(f"pp{a.p} {a.p / r['pp_s']:.2f} tok/s")
            if a.n:
                msg.append(f"tg{a.n} {a.n / r['tg_s']:.2f} tok/s")
            msg.append(f"peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB")
            print(", ".join(msg), file=sys.stderr, flush=True)
    s = summarize(a, runs)
    print(json.dumps(s, indent=2) if a.json else format_table(s))


if __name__ == "__main__":
    main()
