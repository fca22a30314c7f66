"""MoE speed and memory in one run: native llama-bench and `edgeqwen bench` on the same qwen3moe
file (made by benchmarks/moe_make.py), alternating, then edgeqwen's memory after 64 tokens.

    python benchmarks/moe_bench.py -m /work/models/qwen3-30b-a3b-q4_0.gguf --llama-bench PATH \
        [-p 32 -n 16 -t 2 -r 1] [--repack 0 1]

* llama-bench: `llama-bench -m FILE -p P -n N -t T -r 1 -o json --repack R` per repetition, its peak
  RSS from wait4's rusage. With --repack 1 llama.cpp copies the Q4_0 weights into its repacked
  layout (anonymous memory of about the file's size, beside the mapped file); --repack 0 runs on
  the mapped blocks, as edgeqwen does.
* edgeqwen: `edgeqwen bench -m FILE -p P -n N -t T -r 1 --json --no-bandwidth` per repetition.
* memory: a fresh process runs a random 32-token prompt and decodes 32 tokens (64 tokens), then
  reports its peak RSS, how much of the mapped file it has resident (/proc/self/smaps), and the
  bound file + KV cache + 300 MiB.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from compare_llama_cpp import parse_llama_bench_json


_WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
         "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
         "sys.exit(r.returncode)")


def run(cmd: list[str]) -> tuple[str, int]:
    """stdout and peak RSS (bytes) of a command, run as the only child of a wrapper process."""
    p = subprocess.run([sys.executable, "-c", _WRAP, *cmd], capture_output=True, text=True)
    if p.returncode:
        sys.stderr.write(p.stderr[-3000:])
        raise SystemExit(f"{' '.join(cmd)}: exit status {p.returncode}")
    rss = int(p.stderr.strip().splitlines()[-1].split()[1]) * 1024
    return p.stdout, rss


MEMORY_WORKER = r"""
import json, re, sys, numpy as np, edgeqwen
from edgeqwen.bench import peak_rss_bytes
path, threads = sys.argv[1], int(sys.argv[2])
m = edgeqwen.load(path, threads=threads, ctx_size=128)
rng = np.random.default_rng(1)
ids = [int(t) for t in rng.integers(0, m.config.n_vocab, 32)]
cache = m.model.new_cache()
logits = m.model.forward(ids, cache, "last")
for _ in range(32):
    logits = m.model.forward([int(np.argmax(logits))], cache, "last")
rss = 0
smaps = open("/proc/self/smaps").read().split("\n")
inside = False
for line in smaps:
    if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
        inside = line.rstrip().endswith(path)
    elif inside and line.startswith("Rss:"):
        rss += int(line.split()[1]) * 1024
kv = cache.k.nbytes + cache.v.nbytes
print(json.dumps({"tokens": cache.n, "peak_rss_bytes": peak_rss_bytes(), "file_resident_bytes": rss, "kv_bytes": kv}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("-p", type=int, default=32)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--reps", type=int, default=1)
    ap.add_argument("--repack", type=int, nargs="+", default=[0], choices=[0, 1])
    a = ap.parse_args(argv)
    path = os.path.abspath(a.model)
    size = os.path.getsize(path)
    rows = []
    for rep in range(a.reps):
        for rp in a.repack:
            out, rss = run([a.llama_bench, "-m", path, "-p", str(a.p), "-n", str(a.n), "-t", str(a.threads),
                            "-r", "1", "-o", "json", "--repack", str(rp)])
            t = parse_llama_bench_json(out)["tests"]
            rows.append((f"llama-bench repack={rp}", t[f"pp{a.p}"]["avg_ts"], t[f"tg{a.n}"]["avg_ts"], rss))
            print(rows[-1], file=sys.stderr, flush=True)
        out, _ = run([sys.executable, "-m", "edgeqwen", "bench", "-m", path, "-p", str(a.p), "-n", str(a.n),
                      "-t", str(a.threads), "-r", "1", "--json", "--no-bandwidth"])
        r = json.loads(out[out.index("{"):])
        rows.append(("edgeqwen", r["pp"]["tok_s_mean"], r["tg"]["tok_s_mean"], r["peak_rss_bytes"]))
        print(rows[-1], file=sys.stderr, flush=True)
    out, _ = run([sys.executable, "-c", MEMORY_WORKER, path, str(a.threads)])
    mem = json.loads(out.strip().splitlines()[-1])

    print(f"file {path}: {size / 2**30:.2f} GiB; -p {a.p} -n {a.n} -t {a.threads}, {a.reps} rep(s)\n")
    print(f"| engine | pp{a.p} tok/s | tg{a.n} tok/s | peak RSS MiB |")
    print("|---|---:|---:|---:|")
    for name, pp, tg, rss in rows:
        print(f"| {name} | {pp:.2f} | {tg:.2f} | {rss / 2**20:.0f} |")
    ours = [r for r in rows if r[0] == "edgeqwen"]
    for rp in a.repack:
        ref = [r for r in rows if r[0] == f"llama-bench repack={rp}"]
        pp = sum(r[1] for r in ours) / sum(r[1] for r in ref)
        tg = sum(r[2] for r in ours) / sum(r[2] for r in ref)
        print(f"\nedgeqwen / llama-bench repack={rp}: pp {pp:.2f}x, tg {tg:.2f}x")
    bound = size + mem["kv_bytes"] + 300 * 2**20
    print(f"\nafter {mem['tokens']} tokens (32 random prompt + 32 decoded): peak RSS {mem['peak_rss_bytes'] / 2**20:.0f} MiB "
          f"(bound file + KV + 300 MiB = {bound / 2**20:.0f} MiB); mapped file resident in the process "
          f"{mem['file_resident_bytes'] / 2**20:.0f} MiB = {100 * mem['file_resident_bytes'] / size:.1f}% of the file")


if __name__ == "__main__":
    main()
