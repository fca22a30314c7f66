"""Aggregate generated tok/s of `edgeqwen batch`'s engine for several --parallel values, in one run.

    python benchmarks/batch_throughput.py -m qwen3-0.6b-q4_0.gguf [-P 1 2 4 8] [-n 64] [-t 2]

Each setting runs 2 x P items (short distinct prompts, raw completion, greedy, `max_tokens` each,
no prefix sharing) through `BatchRunner` after an untimed warm-up, and prints items, generated
tokens, seconds, tok/s and the ratio to --parallel 1. (Make a 0.6B-shaped file with
benchmarks/make_random_gguf.py --size 0.6b --type q4_0.)
"""
from __future__ import annotations

import argparse
import time

import edgeqwen
from edgeqwen.batch import BatchRunner, items_from_api


def run(model, parallel: int, n_items: int, max_tokens: int, tag: str) -> tuple[int, float]:
    items = [{"id": i, "prompt": f"{tag} {i}: a story about the number {i * 37}", "max_tokens": max_tokens}
             for i in range(n_items)]
    runner = BatchRunner(model, parallel=parallel, prefix_cache=False, sampling={"temperature": 0})
    t0 = time.perf_counter()
    recs = list(runner.run(items_from_api(items)))
    dt = time.perf_counter() - t0
    assert all("error" not in r for r in recs), recs
    return sum(r["completion_tokens"] for r in recs), dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-P", "--parallel", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("-n", "--max-tokens", type=int, default=64)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    a = ap.parse_args()
    model = edgeqwen.load(a.model, threads=a.threads, ctx_size=a.ctx_size)
    run(model, max(a.parallel), max(a.parallel), 4, "warm-up")            # compile / page in, untimed
    print(f"{a.model} | threads {model.threads} | max_tokens {a.max_tokens} | items = 2 x parallel")
    print(f"{'parallel':>8} {'items':>6} {'tokens':>7} {'seconds':>8} {'tok/s':>8} {'vs P=1':>7}")
    base = None
    for p in a.parallel:
        toks, dt = run(model, p, 2 * p, a.max_tokens, f"P{p}")
        rate = toks / dt
        base = base or rate
        print(f"{p:>8} {2 * p:>6} {toks:>7} {dt:>8.2f} {rate:>8.2f} {rate / base:>6.2f}x")


if __name__ == "__main__":
    main()
