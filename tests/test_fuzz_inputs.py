"""Issue 12: malformed text and JSON input never gives a traceback, a multi-line error, a lost valid
item or two records for one id.

The corpus (tests/fuzz_inputs.py, deterministic) has > 100 batch inputs (each a JSONL or text file
with one malformed line between two valid items: broken JSON, wrong types, unknown fields, lone
surrogates, JSON nested 10^5 deep, 5,000-digit integers, invalid UTF-8 bytes, raw U+2028 / U+2029 /
\\x85 / control characters, BOMs, CRLF, duplicate ids), ~40 `chat --messages` files, ~17 `run`
argument sets, all run through the CLI in worker processes (tests/fuzz_driver.py: many per process,
a timeout and a memory cap), and ~50 calls of the Python API run here.

    python tests/fuzz_inputs.py [OUT_DIR]      # the same corpus, with counts per class
"""
from __future__ import annotations

import collections

import edgeqwen
from fuzz_driver import OK_CLASSES, run_corpus
from fuzz_inputs import classify, input_entries, run_api, write_model


def test_malformed_inputs_give_only_clean_outcomes(tmp_path):
    model = write_model(tmp_path)
    entries, meta = input_entries(tmp_path / "in", model)
    rows = classify(entries, meta, run_corpus(entries, tmp_path / "work", timeout=120))
    m = edgeqwen.load(model, threads=1, ctx_size=64)
    rows += [("api", name, cls, detail) for name, cls, detail in run_api(m)]
    per_kind = collections.Counter(kind for kind, *_ in rows)
    assert len(rows) >= 200 and per_kind["batch"] >= 100 and per_kind["chat"] >= 30 and per_kind["api"] >= 40, per_kind
    bad = [f"{cls} {name[:60]!r}: {detail[:200]!r}" for kind, name, cls, detail in rows if cls not in OK_CLASSES]
    assert not bad, f"{len(bad)} bad outcomes:\n" + "\n".join(bad)
    counts = collections.defaultdict(collections.Counter)
    for kind, _, cls, _ in rows:
        counts[kind][cls] += 1
    # batch inputs always run (a bad line is that item's record); the others are often refused cleanly
    assert counts["batch"]["ok"] == per_kind["batch"], counts
    assert counts["chat"]["clean"] > 20 and counts["api"]["clean"] > 30, counts
