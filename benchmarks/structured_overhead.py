"""What structured output costs: the per-token mask against a plain decode step, schema compile
time, and a --parallel batch with and without a schema.

    python benchmarks/structured_overhead.py [--model FILE.gguf] [--steps 32] [--items 8]

Default model: /work/models/qwen3-0.6b-q4_0.gguf if present, else the demo model. Timings are
wall-clock on whatever else the machine runs: give the load average with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

import edgeqwen
from edgeqwen import constrain
from edgeqwen.sampling import Sampler, SamplingParams

SCHEMAS = Path(__file__).resolve().parent.parent / "tests" / "data" / "schemas"
DEFAULT_MODEL = "/work/models/qwen3-0.6b-q4_0.gguf"


def rf(schema) -> dict:
    return {"type": "json_schema", "json_schema": {"schema": schema}}


def compile_times(model) -> tuple[float, list[float]]:
    """(tokenizer trie build s, [compile s per schema]) with the caches cleared."""
    constrain._ll_tokenizers.clear()
    constrain._compile.cache_clear()
    t = time.perf_counter()
    constrain._ll_tokenizer(model.tokenizer)
    trie = time.perf_counter() - t
    out = []
    for p in sorted(SCHEMAS.glob("*.json")):
        t = time.perf_counter()
        constrain.compile_format(model.tokenizer, rf(json.loads(p.read_text())))
        out.append(time.perf_counter() - t)
    return trie, out


def decode_vs_mask(model, schema, steps: int) -> tuple[float, float]:
    """(median s of a one-token forward, median s of mask + advance), both over the same greedy
    constrained decode at T=1 (sampling itself is excluded from both)."""
    cache = model.model.new_cache()
    logits = model.model.forward(model.tokenize("Extract the fields as JSON:"), cache, "last")
    state = constrain.compile_format(model.tokenizer, rf(schema)).start()
    sampler = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0))
    fwd, msk = [], []
    for _ in range(steps):
        t = time.perf_counter()
        x = state.mask(logits)
        msk.append(time.perf_counter() - t)
        tok = sampler(x)
        if tok in model.tokenizer.stop_ids:
            break
        t = time.perf_counter()
        state.advance(tok)
        msk[-1] += time.perf_counter() - t
        t = time.perf_counter()
        logits = model.model.forward([tok], cache, "last")
        fwd.append(time.perf_counter() - t)
        if state.done:
            break
    return statistics.median(fwd), statistics.median(msk)


def batch_tok_s(model, items: int, max_tokens: int, parallel: int, response_format) -> tuple[float, int]:
    texts = [f"Ticket {i}: the invoice for order {1000 + i} was charged twice." for i in range(items)]
    batch = [{"id": i, "messages": [{"role": "user", "content": f"Classify as JSON: {t}"}], "seed": i,
              "enable_thinking": False} for i, t in enumerate(texts)]
    t = time.perf_counter()
    recs = list(model.batch(batch, parallel=parallel, max_tokens=max_tokens, response_format=response_format))
    dt = time.perf_counter() - t
    n = sum(r.get("completion_tokens", 0) for r in recs)
    return n / dt, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL if os.path.exists(DEFAULT_MODEL) else None)
    ap.add_argument("--steps", type=int, default=32, help="decode steps for the mask-vs-step timing")
    ap.add_argument("--items", type=int, default=8, help="batch items")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--parallel", type=int, default=4)
    a = ap.parse_args()
    if a.model is None:
        from edgeqwen.demo import demo_model_path
        a.model = str(demo_model_path())
    model = edgeqwen.load(a.model, ctx_size=1024)
    print(f"model {a.model} | threads {model.threads} | load average {os.getloadavg()[0]:.2f} "
          f"(1 min), {os.getloadavg()[1]:.2f} (5 min)")
    trie, comp = compile_times(model)
    print(f"tokenizer trie (once per tokenizer): {trie * 1e3:.0f} ms | schema compile over {len(comp)} schemas: "
          f"median {statistics.median(comp) * 1e3:.1f} ms, max {max(comp) * 1e3:.1f} ms")
    model.generate("warm up", 4)
    for name in ("01_ticket", "23_recipe", "32_extraction"):
        schema = json.loads((SCHEMAS / f"{name}.json").read_text())
        step, mask = decode_vs_mask(model, schema, a.steps)
        print(f"{name}: decode step {step * 1e3:.1f} ms | mask + advance {mask * 1e3:.2f} ms "
              f"= {100 * mask / step:.1f}% of a step")
    schema = json.loads((SCHEMAS / "01_ticket.json").read_text())
    list(model.batch(["warm up"], parallel=a.parallel, max_tokens=2))
    for label, fmt in (("no schema", None), ("01_ticket schema", rf(schema))):
        tok_s, n = batch_tok_s(model, a.items, a.max_tokens, a.parallel, fmt)
        print(f"batch --parallel {a.parallel}, {a.items} items, {label}: {tok_s:.1f} tok/s ({n} tokens)")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
