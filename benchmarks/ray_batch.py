"""`edgeqwen batch` locally against `--ray` with 1 and 2 replicas on this machine: items/s, and Ray's cost.

    python benchmarks/ray_batch.py -m qwen3-0.6b-q4_0.gguf [--items 32] [-n 16] [-P 4] [--cpus 2]

All runs use the same CPUs (`--cpus`, default all): the local command with -t CPUS; one replica with
CPUS CPUs; two replicas with CPUS/2 each, on a local Ray cluster started here (its start time is printed
apart). Each run writes the same N greedy raw-completion items into a fresh output file through the
command's own code (batch.run_batch / integrations.ray.RayBatch.run) and is timed end to end: for Ray
that includes starting the actors and loading the model in each; "first" is the time to the first
record, "steady" the items/s after it. Overhead: one replica against the local command, at N/4 and N
items: the difference of the two runs' time differences over the 3N/4 extra items is Ray's cost per
item (the driver, the object store, the JSON lines), the rest its fixed cost (actors, model load).
The records of every run are checked equal to the local ones (greedy: same text).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import edgeqwen
from edgeqwen.batch import items_from_api, run_batch


def _items(n: int, max_tokens: int):
    return items_from_api([{"id": f"i{i}", "prompt": f"Story {i}: a tale about the number {i * 37} and",
                            "max_tokens": max_tokens} for i in range(n)])


def _timed(run, items, out: Path, **kw) -> tuple[float, float, dict]:
    """(seconds, seconds to the first record, {id: content}) of one run into a fresh `out`."""
    out.unlink(missing_ok=True)
    first = []
    t0 = time.perf_counter()
    s = run(items, out, on_record=lambda rec, s: first or first.append(time.perf_counter() - t0), **kw)
    dt = time.perf_counter() - t0
    assert s.done == len(items) and not s.errors, s
    return dt, first[0], {json.loads(ln)["id"]: json.loads(ln)["content"] for ln in out.read_text().splitlines()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("-n", "--max-tokens", type=int, default=16)
    ap.add_argument("-P", "--parallel", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("-c", "--ctx-size", type=int, default=256)
    a = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from edgeqwen.integrations.ray import RayBatch

    opts = dict(parallel=a.parallel, seed=0, max_tokens=a.max_tokens, sampling={"temperature": 0})
    n, small = a.items, max(1, a.items // 4)
    tmp = Path(tempfile.mkdtemp(prefix="ray_bench"))
    print(f"{a.model} | {n} items x {a.max_tokens} tokens, greedy | parallel {a.parallel} | {a.cpus} CPUs | "
          f"load {os.getloadavg()[0]:.2f}")

    t0 = time.perf_counter()
    model = edgeqwen.load(a.model, threads=a.cpus, ctx_size=a.ctx_size)
    load_s = time.perf_counter() - t0
    local = lambda items, out, **kw: run_batch(model, items, out, **opts, **kw)      # noqa: E731
    _timed(local, _items(a.parallel, 2), tmp / "warm.jsonl")          # compile / page in, untimed
    rows = []
    dt, first, ref = _timed(local, _items(n, a.max_tokens), tmp / "local.jsonl")
    rows.append(("local -t %d" % a.cpus, dt, first, load_s))
    small_local = _timed(local, _items(small, a.max_tokens), tmp / "local_small.jsonl")[0]

    t0 = time.perf_counter()
    ray.init(num_cpus=a.cpus, object_store_memory=200 * 2**20, include_dashboard=False, logging_level=logging.WARNING)
    print(f"Ray cluster started in {time.perf_counter() - t0:.1f} s (not counted below)")
    one = None
    for replicas in (1, 2):
        rb = RayBatch(a.model, replicas=replicas, cpus_per_replica=a.cpus // replicas, ctx_size=a.ctx_size)
        dt, first, got = _timed(lambda items, out, **kw: rb.run(items, out, **opts, **kw), _items(n, a.max_tokens),
                                tmp / f"ray{replicas}.jsonl")
        assert got == ref, "the records differ from the local command's"
        rows.append((f"--ray, {replicas} x {a.cpus // replicas} CPUs", dt, first, None))
        if replicas == 1:
            one = rb
    small_ray = _timed(lambda items, out, **kw: one.run(items, out, **opts, **kw), _items(small, a.max_tokens),
                       tmp / "ray_small.jsonl")[0]
    ray.shutdown()

    print(f"{'run':<24} {'seconds':>8} {'items/s':>8} {'first':>7} {'steady/s':>9} {'vs local':>9}")
    base = n / rows[0][1]
    for name, dt, first, load in rows:
        steady = (n - 1) / (dt - first) if dt > first else float("nan")
        print(f"{name:<24} {dt:>8.2f} {n / dt:>8.2f} {first:>7.2f} {steady:>9.2f} {n / dt / base:>8.2f}x"
              + (f"   (+ {load:.1f} s model load before)" if load is not None else ""))
    per_item = ((rows[1][1] - rows[0][1]) - (small_ray - small_local)) / (n - small)
    fixed = (small_ray - small_local) - small * per_item
    print(f"Ray's cost, 1 replica vs local ({small} and {n} items): {per_item * 1000:.0f} ms per item, "
          f"{fixed:.1f} s fixed (actor start + model load + first batch) | records equal to local: yes | "
          f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
