"""Bounded property fuzzing (issue 12, item 5) with hypothesis, derandomized so CI is deterministic:

* the GGUF reader: a small valid file from the fixtures, mutated (bytes flipped at any offset, cut at
  any length, header / metadata regions overwritten with arbitrary bytes), opened in-process with
  ModelFile (GGUFFile's parse, then the model checks): it opens (every tensor inside the file), or
  it is refused with one EdgeQwenError line; nothing else;
* the batch reader: arbitrary byte lines in a JSONL or text file: every non-blank line becomes exactly
  one item (valid or an error record), never an exception.

The corpus in test_fuzz.py / test_fuzz_inputs.py runs hand-made cases through the CLI; this explores
around them. The whole file runs in well under a minute."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeqwen.batch import read_items
from edgeqwen.errors import EdgeQwenError
from edgeqwen.gguf_model import ModelFile
from edgeqwen.gguf_reader import GGUFFile

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def base(gguf_file, tmp_path_factory):
    """(bytes of a valid tiny GGUF, where its tensor data start, a scratch path)."""
    path = gguf_file("tiny", "q8_0")
    data = path.read_bytes()
    g = GGUFFile(path)
    header_end = min(t.offset for t in g.tensors.values())
    del g
    return data, header_end, tmp_path_factory.mktemp("prop") / "m.gguf"


def _open(data: bytes, path) -> None:
    """Open with ModelFile (GGUFFile, then the model checks): success or one clean EdgeQwenError line."""
    path.write_bytes(data)
    try:
        f = ModelFile(path)
    except EdgeQwenError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
        assert len(msg) < 2000, msg[:300]
        return
    for t in f.gguf.tensors.values():               # every tensor's bytes within the file
        assert t.offset + t.nbytes <= len(data)
        t.raw()


def _edits(header_end: int):
    at = st.one_of(st.integers(0, header_end - 1), st.integers(0, 1 << 30))
    flip = st.tuples(st.just("flip"), at, st.integers(1, 255))
    put = st.tuples(st.just("put"), st.integers(0, header_end - 1), st.binary(min_size=1, max_size=64))
    cut = st.tuples(st.just("cut"), at, st.just(0))
    return st.lists(st.one_of(flip, put, cut), min_size=1, max_size=4)


def _mutate(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for kind, pos, arg in edits:
        if not b:
            break
        pos %= len(b)
        if kind == "flip":
            b[pos] ^= arg
        elif kind == "put":
            b[pos:pos + len(arg)] = arg
        else:
            del b[pos:]
    return bytes(b)


def test_gguf_mutations_open_or_fail_cleanly(base):
    data, header_end, path = base

    @settings(max_examples=120, **SETTINGS)
    @given(st.data())
    def check(d):
        _open(_mutate(data, d.draw(_edits(header_end))), path)

    check()


def test_gguf_header_overwritten_with_arbitrary_bytes(base):
    data, header_end, path = base

    @settings(max_examples=80, **SETTINGS)
    @given(st.integers(0, 64), st.binary(min_size=1, max_size=256))
    def check(pos, junk):                            # the fixed header and the first metadata keys
        _open(data[:pos] + junk + data[pos + len(junk):], path)

    check()


def test_gguf_truncated_anywhere(base):
    data, header_end, path = base

    @settings(max_examples=60, **SETTINGS)
    @given(st.one_of(st.integers(0, header_end + 64), st.integers(0, len(data) - 1)))
    def check(n):
        _open(data[:n], path)

    check()


LINE = st.one_of(
    st.binary(max_size=80),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(
                     st.sampled_from(["id", "prompt", "messages", "max_tokens", "stop", "x"]), c, max_size=4),
                 max_leaves=8).map(lambda v: json.dumps(v).encode()),
    st.builds(lambda p, i: json.dumps({"id": i, "prompt": p}).encode(), st.text(max_size=20),
              st.one_of(st.integers(), st.text(max_size=5))),
)


@pytest.mark.parametrize("fmt", ["jsonl", "text"])
def test_batch_lines_each_become_one_item(fmt, tmp_path_factory):
    path = tmp_path_factory.mktemp("propb") / f"in.{fmt}"

    @settings(max_examples=150, **SETTINGS)
    @given(st.lists(LINE.map(lambda b: b.replace(b"\n", b" ")), min_size=1, max_size=6))
    def check(lines):
        path.write_bytes(b"\n".join(lines) + b"\n")
        items = read_items(path, fmt=fmt)             # never raises on line content
        wanted = {n for n, b in enumerate(lines, 1) if _not_blank(b, n == 1)}
        assert len(items) == len(wanted), (lines, items)
        assert sorted(it.where for it in items) == sorted(f"line {n}" for n in wanted)
        assert len({it.key for it in items}) == len(items)    # one record per item: ids unique
        for it in items:
            if it.error is None:
                assert it.prompt or it.messages
            else:
                assert it.error and "\n" not in it.error
            json.dumps(it.id, ensure_ascii=True)             # the record's id can be written

    check()


def _not_blank(line: bytes, first: bool) -> bool:
    """The reader's rule: a line that decodes to only whitespace is skipped; an undecodable one is an item."""
    if first and line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        return bool(line.decode("utf-8").strip())
    except UnicodeDecodeError:
        return True
