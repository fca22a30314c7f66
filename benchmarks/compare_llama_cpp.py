"""edgeqwen vs llama.cpp on the same GGUF file, in one run, side by side.

    python benchmarks/compare_llama_cpp.py -m FILE.gguf -p 512 -n 128 -t 2 -r 3 [--json]
        [--llama-bench PATH] [--engines edgeqwen,llama-cpp-python,llama-bench]

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

With --llama-bench PATH (or $EDGEQWEN_LLAMA_BENCH), llama.cpp is also measured natively: its own
`llama-bench` binary (build it with benchmarks/build_llama_bench.sh: the llama.cpp vendored in the
same llama-cpp-python release, cmake -DGGML_NATIVE=ON, Release), run once per repetition, in turn
with the other engines, as `llama-bench -m FILE -p P -n N -t T -r 1 -o json` (llama-bench does its
own untimed warm-up run first; its tg starts on an empty context rather than after an 8-token
prompt, and it draws its own random tokens). From its JSON: avg_ts of the pp test (n_prompt=P,
n_gen=0) and of the tg test (n_prompt=0, n_gen=N). Its peak RSS: the worker that runs it is a
small Python wrapper process whose only child is llama-bench; it reports
resource.getrusage(RUSAGE_CHILDREN).ru_maxrss (the binary's own ru_maxrss, as for the other
engines). llama-bench reports no load or warm-up time: the table shows "-" there (the JSON has
the wrapper's wall time). The table names the engines:
  edgeqwen     this project,
  llama.cpp    the llama-cpp-python wheel (`--engines` name: llama-cpp-python),
  llama-bench  the native llama-bench build.
`--engines` picks which run (comma-separated; default edgeqwen, llama-cpp-python when it is
importable, and llama-bench when a binary is given).

Printed: per engine mean ± sd of tok/s over repetitions, load and warm-up times, peak RSS, and
the ratios edgeqwen / llama.cpp and edgeqwen / llama-bench (of the means, and paired per
repetition). --json: the same as JSON; "ratio" is edgeqwen / the wheel as before, "ratio_vs"
holds the ratios to each llama.cpp engine that ran, keyed by engine.

-d DEPTH (llama-bench's -d; edgeqwen and llama-bench only): DEPTH random tokens are put in the
context first (untimed, in each worker); pp and tg then start from those positions (tg without its
8-token prompt). --cache-type TYPE sets the KV cache type of both (edgeqwen's --cache-type,
llama-bench's -ctk/-ctv); without it each engine keeps its default (edgeqwen's Python API: f32,
llama-bench: f16).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# as `import edgeqwen` does before numpy loads OpenBLAS (see edgeqwen/__init__.py); this script imports
# numpy first, so without it the edgeqwen worker would run with OpenBLAS's default spin-wait
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

MARK = "@@COMPARE_RESULT@@ "
TG_PROMPT = 8         # = edgeqwen.bench.TG_PROMPT (not imported here: the llama worker stays edgeqwen-free)
WARMUP_PROMPT = 2
ENGINES = ("edgeqwen", "llama.cpp", "llama-bench")      # run order within a repetition
BASELINES = ("llama.cpp", "llama-bench")                # edgeqwen's ratio is taken to each of these
ENGINE_NAMES = {"edgeqwen": "edgeqwen", "llama-cpp-python": "llama.cpp", "llama.cpp": "llama.cpp",
                "wheel": "llama.cpp", "llama-bench": "llama-bench"}   # --engines name -> engine
RSS_METHOD = {"edgeqwen": "getrusage(RUSAGE_SELF).ru_maxrss of the worker",
              "llama.cpp": "getrusage(RUSAGE_SELF).ru_maxrss of the worker",
              "llama-bench": "getrusage(RUSAGE_CHILDREN).ru_maxrss of a wrapper process running only llama-bench"}


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
    m = Model(a.model, threads=a.threads, ctx_size=a.depth + a.p + a.n + TG_PROMPT,
              **({"cache_type": a.cache_type} if a.cache_type else {}))
    warm, warm1, pp_toks, tg_prompt, tg_toks = _tokens(a.seed, m.config.n_vocab, a.p, a.n)
    fwd, cache = m.model.forward, m.model.new_cache()

    t0 = time.perf_counter()
    fwd(warm, cache, "last")
    fwd(warm1, cache, "last")
    warmup_s = time.perf_counter() - t0
    if a.depth:                        # llama-bench's -d: the context holds DEPTH tokens first
        from edgeqwen.bench import fill_depth, time_pp, time_tg
        fill_s = fill_depth(m, cache, np.random.default_rng(a.seed), a.depth)
        res = {"import_s": import_s, "load_s": m.load_seconds, "warmup_s": warmup_s, "threads": m.threads,
               "depth_fill_s": fill_s}
        if a.p:
            res["warmup_pp_s"] = time_pp(m, cache, pp_toks, a.depth)
            res["pp_s"] = time_pp(m, cache, pp_toks, a.depth)
        if a.n:
            res["tg_s"] = time_tg(m, cache, tg_prompt, tg_toks, a.depth)
        res["peak_rss_bytes"] = peak_rss_bytes()
        return res
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


def parse_llama_bench_json(text: str) -> dict:
    """llama-bench's `-o json` output (a JSON array, one object per test) ->
    {"tests": {"pp64": {...}, "tg16": {...}}, "build_commit", "build_number", "cpu_info", ...}.
    A test with n_prompt > 0 and n_gen = 0 is "pp<n_prompt>", n_gen > 0 and n_prompt = 0 is
    "tg<n_gen>", both > 0 is "pp<n_prompt>+tg<n_gen>"; "@d<n_depth>" is appended when n_depth > 0.
    Each test keeps n_prompt, n_gen, n_depth, avg_ts, stddev_ts, avg_ns, samples_ts."""
    text = text.strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        i, j = text.find("["), text.rfind("]")         # tolerate stray lines around the array
        if i < 0 or j < i:
            raise ValueError("no JSON array in llama-bench's output") from None
        data = json.loads(text[i:j + 1])
    if not isinstance(data, list) or not data:
        raise ValueError("llama-bench's JSON output has no tests")
    out: dict = {"tests": {}}
    for k in ("build_commit", "build_number", "cpu_info", "backends", "model_type", "model_size",
              "model_n_params", "n_threads", "n_batch", "n_ubatch"):
        if k in data[0]:
            out[k] = data[0][k]
    for t in data:
        n_prompt, n_gen, n_depth = int(t["n_prompt"]), int(t["n_gen"]), int(t.get("n_depth", 0))
        name = "+".join(([f"pp{n_prompt}"] if n_prompt else []) + ([f"tg{n_gen}"] if n_gen else []))
        if n_depth:
            name += f"@d{n_depth}"
        out["tests"][name] = {"n_prompt": n_prompt, "n_gen": n_gen, "n_depth": n_depth,
                              "avg_ts": float(t["avg_ts"]), "stddev_ts": float(t.get("stddev_ts", 0.0)),
                              "avg_ns": int(t["avg_ns"]) if "avg_ns" in t else None,
                              "samples_ts": [float(x) for x in t.get("samples_ts", [])]}
    return out


def llama_bench_command(a) -> list[str]:
    return [a.llama_bench, "-m", a.model, "-p", str(a.p), "-n", str(a.n), "-t", str(a.threads),
            "-r", "1", "-o", "json"] + (["-d", str(a.depth)] if a.depth else []) + \
        (["-ctk", a.cache_type, "-ctv", a.cache_type] if a.cache_type else [])


def worker_llama_bench(a) -> dict:
    """Runs llama-bench as this process's only child; its peak RSS is RUSAGE_CHILDREN's ru_maxrss."""
    import resource
    cmd = llama_bench_command(a)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall_s = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        how = f"exit status {proc.returncode}"
        if proc.returncode < 0:
            import signal
            how = f"killed by {signal.Signals(-proc.returncode).name}"
            if -proc.returncode == signal.SIGILL:
                how += (" (an instruction this CPU or VM refuses: on an AMX CPU, build with "
                        "benchmarks/build_llama_bench.sh, which leaves AMX out)")
        raise SystemExit(f"{' '.join(cmd)}: {how}")
    parsed = parse_llama_bench_json(proc.stdout)
    r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res = {"wall_s": wall_s, "threads": a.threads, "command": cmd,
           "version": f"build {parsed.get('build_number')} ({parsed.get('build_commit')})",
           "peak_rss_bytes": int(r) if sys.platform == "darwin" else int(r) * 1024,
           "llama_bench": {k: v for k, v in parsed.items() if k != "tests"}}
    tests = parsed["tests"]
    at = f"@d{a.depth}" if a.depth else ""
    for key, n, name in (("pp_s", a.p, f"pp{a.p}{at}"), ("tg_s", a.n, f"tg{a.n}{at}")):
        if n:
            if name not in tests:
                raise SystemExit(f"llama-bench's output has no {name} test (it has {', '.join(tests)})")
            res[key] = n / tests[name]["avg_ts"]
    return res


def run_worker(engine: str, a, seed: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, "-m", a.model,
           "-p", str(a.p), "-n", str(a.n), "-t", str(a.threads), "--seed", str(seed), "-d", str(a.depth)]
    if a.cache_type:
        cmd += ["--cache-type", a.cache_type]
    if engine == "llama-bench":
        cmd += ["--llama-bench", a.llama_bench]
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
           "n_gen": a.n, "tg_prompt_tokens": TG_PROMPT, "reps": a.reps, "engines": {}, "ratio": {},
           "ratio_vs": {}}
    for eng, rs in runs.items():
        e = {k: _stats([r[k] for r in rs]) for k in ("import_s", "load_s", "warmup_s", "warmup_pp_s", "wall_s")
             if k in rs[0]}
        if a.p:
            e["pp_tok_s"] = _stats([a.p / r["pp_s"] for r in rs])
        if a.n:
            e["tg_tok_s"] = _stats([a.n / r["tg_s"] for r in rs])
        e["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in rs)
        e["peak_rss_method"] = RSS_METHOD[eng]
        for k in ("version", "command", "llama_bench"):
            if k in rs[0]:
                e[k] = rs[0][k]
        out["engines"][eng] = e
    if "edgeqwen" in out["engines"]:
        for base in BASELINES:
            if base not in out["engines"]:
                continue
            rat = {}
            for key in ("pp_tok_s", "tg_tok_s"):
                if key in out["engines"]["edgeqwen"]:
                    eq, ll = out["engines"]["edgeqwen"][key], out["engines"][base][key]
                    paired = [x / y for x, y in zip(eq["samples"], ll["samples"])]
                    rat[key] = {"of_means": eq["mean"] / ll["mean"], "paired": _stats(paired)}
            out["ratio_vs"][base] = rat
        out["ratio"] = out["ratio_vs"].get("llama.cpp", {})      # edgeqwen / the wheel, as before
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
    mean = lambda e, k: f"{e[k]['mean']:.2f}" if k in e else "-"  # noqa: E731
    for eng, e in s["engines"].items():
        row = [eng, mean(e, "load_s"), mean(e, "warmup_s")]
        if p:
            row.append(f"{e['pp_tok_s']['mean']:.2f} ± {e['pp_tok_s']['sd']:.2f}")
        if n:
            row.append(f"{e['tg_tok_s']['mean']:.2f} ± {e['tg_tok_s']['sd']:.2f}")
        row.append(f"{e['peak_rss_bytes'] / 2**20:.0f} MiB")
        rows.append(row)
    for base, rat in s["ratio_vs"].items():
        ratio = [f"edgeqwen/{base}", "", ""]
        for key in (["pp_tok_s"] if p else []) + (["tg_tok_s"] if n else []):
            ratio.append(f"{rat[key]['of_means']:.3f}x")
        ratio.append("")
        rows.append(ratio)
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w[0]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(cells))  # noqa: E731
    engines = " / ".join(s["engines"])
    out = [f"{s['file']} ({s['file_bytes'] / 2**20:.1f} MiB), {s['threads']} threads, {s['reps']} reps "
           f"alternating {engines} (one process each), tg after a {s['tg_prompt_tokens']}-token prompt",
           line(head), "  ".join("-" * x for x in w), *(line(r) for r in rows)]
    for base, rat in s["ratio_vs"].items():
        paired = [f"{k[:2]} {r['paired']['mean']:.3f} ± {r['paired']['sd']:.3f}" for k, r in rat.items()]
        if paired:
            vs = "" if base == "llama.cpp" else f" vs {base}"
            out.append(f"paired per-rep ratio{vs}: " + ", ".join(paired))
    if "llama-bench" in s["engines"]:
        e = s["engines"]["llama-bench"]
        wheel = s["engines"].get("llama.cpp", {}).get("version")
        out.append((f"llama.cpp = llama-cpp-python {wheel} wheel; " if wheel else "")
                   + f"llama-bench = native llama-bench {e['version']}, tg from an empty context; "
                   f"its peak RSS via getrusage(RUSAGE_CHILDREN) in a wrapper process")
    return "\n".join(out)


def select_engines(ap, a) -> list[str]:
    """The engines to run, in ENGINES order, from --engines (or the default) and --llama-bench."""
    import importlib.util
    if a.engines:
        names = [x.strip() for x in a.engines.split(",") if x.strip()]
        bad = [x for x in names if x not in ENGINE_NAMES]
        if bad or not names:
            ap.error(f"--engines: unknown {', '.join(bad) or '(empty)'}; "
                     f"choose from edgeqwen, llama-cpp-python, llama-bench")
        chosen = {ENGINE_NAMES[x] for x in names}
        if "llama.cpp" in chosen and importlib.util.find_spec("llama_cpp") is None:
            ap.error("llama-cpp-python is not installed (pip install llama-cpp-python); "
                     "leave it out of --engines to skip it")
    else:
        chosen = {"edgeqwen"}
        if importlib.util.find_spec("llama_cpp") is not None:
            chosen.add("llama.cpp")
        else:
            print("note: llama-cpp-python is not installed: not running the wheel", file=sys.stderr)
        if a.llama_bench:
            chosen.add("llama-bench")
    if "llama-bench" in chosen:
        if not a.llama_bench:
            ap.error("llama-bench needs --llama-bench PATH (or $EDGEQWEN_LLAMA_BENCH); build it with "
                     "benchmarks/build_llama_bench.sh")
        if not (os.path.isfile(a.llama_bench) and os.access(a.llama_bench, os.X_OK)):
            ap.error(f"--llama-bench {a.llama_bench}: not an executable file")
        a.llama_bench = os.path.abspath(a.llama_bench)
    return [e for e in ENGINES if e in chosen]


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
    ap.add_argument("--llama-bench", metavar="PATH", default=os.environ.get("EDGEQWEN_LLAMA_BENCH") or None,
                    help="llama.cpp's llama-bench binary (benchmarks/build_llama_bench.sh prints it): also "
                         "measure llama.cpp natively. Default: $EDGEQWEN_LLAMA_BENCH")
    ap.add_argument("--engines", metavar="LIST",
                    help="comma-separated engines to run: edgeqwen, llama-cpp-python, llama-bench "
                         "(default: edgeqwen, llama-cpp-python if installed, llama-bench if --llama-bench)")
    ap.add_argument("-d", "--depth", type=int, default=0, help="tokens already in the context (llama-bench's -d)")
    ap.add_argument("--cache-type", choices=("f32", "f16", "q8_0"), default=None,
                    help="KV cache type of both engines (default: each engine's own)")
    ap.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.p < 0 or a.n < 0 or (a.p == 0 and a.n == 0) or a.reps < 1 or a.threads < 1:
        ap.error("need -p >= 0, -n >= 0 (not both 0), -r >= 1, -t >= 1")
    if not os.path.isfile(a.model):
        ap.error(f"{a.model}: no such file")

    if a.worker:
        res = {"edgeqwen": worker_edgeqwen, "llama.cpp": worker_llama, "llama-bench": worker_llama_bench}[a.worker](a)
        sys.stdout.flush()
        print(MARK + json.dumps(res), flush=True)
        return

    engines = select_engines(ap, a)
    if a.depth < 0 or (a.depth and "llama.cpp" in engines):
        ap.error("-d must be >= 0, and is measured by edgeqwen and llama-bench only (--engines edgeqwen,llama-bench)")
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for rep in range(a.reps):
        for eng in engines:
            r = run_worker(eng, a, a.seed + rep)
            runs[eng].append(r)
            if "load_s" in r:
                msg = [f"rep {rep + 1}/{a.reps} {eng:9s} load {r['load_s']:.2f} s, warm-up {r['warmup_s']:.2f} s"]
            else:
                msg = [f"rep {rep + 1}/{a.reps} {eng:9s} wall {r['wall_s']:.2f} s"]
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
