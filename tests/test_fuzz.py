"""Issue 12: no traceback, hang, crash or out-of-bounds read on hostile GGUF files.

The corpus (tests/fuzz_gguf.py, deterministic) is >= 300 mutations of a small valid model: header
fields, every hyperparameter and tokenizer key with wrong types and values, tensor infos (dims,
types, offsets, names), NaN / inf weights, hostile chat templates, truncations and seeded byte
flips. Each file goes through `edgeqwen info` and `edgeqwen run -n 2` (templates: `edgeqwen chat
--messages`), many files per worker process with a timeout and an address-space cap
(tests/fuzz_driver.py). Allowed outcomes: the command works, or it ends with one clean
`error:` line (EdgeQwenError) or a click usage error. Anything else fails the test: another
exception type (a traceback for a user), a signal, a hang, an out-of-memory, or an error message
that spans lines, has control characters or is very long.

    python tests/fuzz_driver.py report      # the same corpus, with counts per class
"""
from __future__ import annotations

from fuzz_driver import OK_CLASSES, counts, gguf_entries, run_corpus


def test_gguf_corpus_gives_only_clean_outcomes(tmp_path):
    entries = gguf_entries(tmp_path)
    assert len(entries) >= 300
    results = run_corpus(entries, tmp_path / "work", timeout=60)
    base = [results[(0, c)][0] for c in range(len(entries[0]["commands"]))]
    assert base == ["ok"] * len(base), results[(0, 1)]
    bad = [f"{cls} {entries[i]['commands'][c][0]} {entries[i]['name'][:80]!r}: {detail[:200]!r}"
           for (i, c), (cls, detail) in sorted(results.items()) if cls not in OK_CLASSES]
    assert not bad, f"{len(bad)} bad outcomes:\n" + "\n".join(bad)
    per_command = counts(entries, results)
    assert all(set(cnt) <= set(OK_CLASSES) for cnt in per_command.values()), per_command
    # the corpus is not trivially refused: many files still run, many are refused
    assert per_command["run"]["ok"] > 50 and per_command["run"]["clean"] > 200, per_command
