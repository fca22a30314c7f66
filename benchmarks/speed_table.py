"""The before/after speed table of the README: edgeqwen with the scalar kernels
(EDGEQWEN_KERNELS=scalar, "before") and with the explicit-SIMD kernels ("after") against
llama.cpp's native llama-bench, on several files and thread counts, every run by
compare_llama_cpp.py (engines alternating, one process each).

    python benchmarks/speed_table.py --llama-bench PATH -m a.gguf b.gguf -t 1 2 -p 128 -n 64 -r 2 \
        [--paths scalar avx2] [--engines edgeqwen,llama-bench] [-o results.jsonl]

Prints one markdown row per (file, threads, kernel path): tok/s of both engines and the ratio,
and appends every run's JSON summary to -o.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(model: str, threads: int, path: str, a) -> dict:
    env = {**os.environ, "EDGEQWEN_KERNELS": path}
    cmd = [sys.executable, str(HERE / "compare_llama_cpp.py"), "-m", model, "-p", str(a.p), "-n", str(a.n),
           "-t", str(threads), "-r", str(a.reps), "--json", "--engines", a.engines]
    if a.llama_bench:
        cmd += ["--llama-bench", a.llama_bench]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"compare_llama_cpp.py failed on {model} ({threads} threads, {path}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout[r.stdout.index("{"):])


def fmt(s: dict, base: str) -> str:
    eq, ll = s["engines"]["edgeqwen"], s["engines"][base]
    cells = []
    for key in ("pp_tok_s", "tg_tok_s"):
        if key in eq:
            cells.append(f"{eq[key]['mean']:.1f} / {ll[key]['mean']:.1f} = **{eq[key]['mean'] / ll[key]['mean']:.2f}x**")
    rss = f"{eq['peak_rss_bytes'] / 2**20:.0f} / {ll['peak_rss_bytes'] / 2**20:.0f} MiB"
    return " | ".join(cells + [rss])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--models", nargs="+", required=True)
    ap.add_argument("-t", "--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-r", "--reps", type=int, default=2)
    ap.add_argument("--paths", nargs="+", default=["scalar", "avx2"])
    ap.add_argument("--llama-bench", default=os.environ.get("EDGEQWEN_LLAMA_BENCH"))
    ap.add_argument("--engines", default="edgeqwen,llama-bench")
    ap.add_argument("-o", "--output", help="append each run's JSON summary here")
    a = ap.parse_args(argv)
    base = "llama-bench" if "llama-bench" in a.engines else "llama.cpp"
    print(f"| file | threads | kernels | pp{a.p} tok/s (ours / {base}) | tg{a.n} tok/s (ours / {base}) | peak RSS |")
    print("|---|---|---|---|---|---|")
    for model in a.models:
        for t in a.threads:
            for path in a.paths:
                s = run(model, t, path, a)
                s["kernels"] = path
                if a.output:
                    with open(a.output, "a") as f:
                        f.write(json.dumps(s) + "\n")
                print(f"| {Path(model).name} | {t} | {path} | {fmt(s, base)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
