"""KV state on disk (issue 16, item 4; edgeqwen/state.py): Model.save_state / load_state, chat's
/save and /load with the cache, refusals of truncated, corrupt and foreign files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import edgeqwen
from edgeqwen.chat import ChatSession
from edgeqwen.errors import EdgeQwenError

MESSAGES = [{"role": "system", "content": "You summarize documents. " * 8},
            {"role": "user", "content": "A long document: " + "lorem ipsum dolor sit amet " * 20}]
GREEDY = dict(enable_thinking=False, max_tokens=4, temperature=0)


def load(gguf_file, name="tiny", cache_type="f32"):
    return edgeqwen.load(gguf_file(name, "f32"), ctx_size=512, cache_type=cache_type)


@pytest.fixture(scope="module")
def saved(gguf_file, tmp_path_factory):
    """(model, state path per cache type) after one chat turn saved with save_state."""
    out = {}
    for cache_type in ("f32", "q8_0"):
        m = load(gguf_file, cache_type=cache_type)
        m.chat(MESSAGES, **GREEDY)
        path = tmp_path_factory.mktemp("state") / f"doc-{cache_type}.kv"
        assert m.save_state(path) == path.stat().st_size
        out[cache_type] = m, path
    return out


@pytest.mark.parametrize("cache_type", ["f32", "q8_0"])
def test_logits_after_load_equal_the_original_session(cache_type, saved, gguf_file, tmp_path):
    original, path = saved[cache_type]
    copy = tmp_path / "renamed.gguf"            # another process, the same model file under another name
    shutil.copyfile(gguf_file("tiny", "f32"), copy)
    fresh = edgeqwen.load(copy, ctx_size=512, cache_type=cache_type)
    n = fresh.load_state(path)
    a, b = original._engine(), fresh._engine()
    assert n == len(a.tokens) == b.cache.n > 100 and b.tokens == a.tokens
    for name, buf in a.cache.buffers().items():
        assert np.array_equal(b.cache.buffers()[name][:, :n], buf[:, :n])
    nxt = [1234, 99]
    la, lb = a.feed(nxt, "all"), b.feed(nxt, "all")
    assert np.array_equal(la, lb)
    if cache_type == "f32":      # and they are the logits of the whole sequence (independent batched forward)
        ref = fresh.logits(a.tokens)[-2:]
        assert np.abs(lb - ref).max() <= 1e-5 * np.abs(ref).max()
    # the next chat turn of the loaded model prefills only what follows the saved tokens
    r = fresh.chat(MESSAGES + [{"role": "assistant", "content": "Ok."}, {"role": "user", "content": "More?"}],
                   **GREEDY)
    assert r.cached_tokens >= n - 8 and r.cached_tokens > 100


def test_refused_with_one_clear_line(saved, gguf_file, tmp_path):
    m, path = saved["f32"]
    data = path.read_bytes()
    cases = {
        "truncated": (data[:-100], "truncated"),
        "half": (data[:len(data) // 2], "truncated"),
        "corrupt": (data[:-5] + bytes([data[-5] ^ 1]) + data[-4:], "corrupt"),
        "header": (data.replace(b'"n_layer":2', b'"n_layer":9'), "n_layer"),
        "json": (data[:40] + b"\xff" + data[41:], "not valid JSON"),
        "notastate": (b"GGUF" + bytes(100), "signature"),
        "empty": (b"", "signature"),
    }
    fresh = load(gguf_file)
    for name, (content, problem) in cases.items():
        p = tmp_path / f"{name}.kv"
        p.write_bytes(content)
        with pytest.raises(EdgeQwenError) as e:
            fresh.load_state(p)
        msg = str(e.value)
        assert "\n" not in msg and str(p) in msg and problem in msg, (name, msg)
        assert fresh._engine().cache is None or fresh._engine().cache.n == 0   # nothing half-loaded
    other = edgeqwen.load(gguf_file("untied", "f32"), ctx_size=512, cache_type="f32")
    with pytest.raises(EdgeQwenError, match="belongs to another model file"):
        other.load_state(path)
    with pytest.raises(EdgeQwenError, match=r"type_k = 'f32', this session 'f16' \(cache type differs"):
        load(gguf_file, cache_type="f16").load_state(path)
    small = edgeqwen.load(gguf_file("tiny", "f32"), ctx_size=64, cache_type="f32")
    with pytest.raises(EdgeQwenError, match="more than the context of 64"):
        small.load_state(path)
    with pytest.raises(EdgeQwenError, match="nothing to save"):
        fresh.save_state(tmp_path / "x.kv")
    with pytest.raises(EdgeQwenError, match="cannot write the KV state"):
        m.save_state(tmp_path / "no" / "such" / "dir.kv")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []   # no temp file left


def test_chat_save_and_load_keep_the_cache(gguf_file, tmp_path):
    s = ChatSession(load(gguf_file), system=MESSAGES[0]["content"], **GREEDY)
    s.send(MESSAGES[1]["content"])
    conv = tmp_path / "conv.json"
    n = s.save(conv)
    assert n > 100 and (tmp_path / "conv.json.kv").is_file() and json.loads(conv.read_text()) == s.messages
    t = ChatSession(load(gguf_file), **GREEDY)
    assert t.load(conv) == n and t.messages == s.messages
    r, ref = t.send("And then?"), s.send("And then?")
    assert r.cached_tokens == ref.cached_tokens > 100 and r.content == ref.content


def test_batch_prompt_cache_reused_across_runs(gguf_file, tmp_path):
    """The shared instruction block is saved by the first run and loaded by the second, whose first
    item then prefills only its own part; the outputs are the same as without a cache."""
    from click.testing import CliRunner

    from edgeqwen.cli import main

    prompts = tmp_path / "q.txt"
    prompts.write_text("What is two plus two?\nName a color.\nCount to three.\n")
    cache_dir = tmp_path / "pc"
    instruction = "You are a careful assistant. Answer every question briefly and exactly. " * 6 + "{text}"

    def run(out, *extra):
        args = ["batch", prompts, "-m", gguf_file("tiny", "f32"), "-o", out, "--raw", "--template", instruction,
                "-n", 2, "-P", 1, "--temperature", 0, "-c", 256, "--cache-type", "f32", "-q", *extra]
        r = CliRunner().invoke(main, [str(a) for a in args])
        assert r.exit_code == 0, r.output
        run.stderr = r.stderr
        return [json.loads(line) for line in out.read_text().splitlines()]

    first = run(tmp_path / "1.jsonl", "--prompt-cache", cache_dir)
    files = list(cache_dir.glob("*/*.kv"))
    assert len(files) == 1 and first[0]["cached_tokens"] == 0 and first[1]["cached_tokens"] >= 64
    second = run(tmp_path / "2.jsonl", "--prompt-cache", cache_dir)
    shared = int(files[0].name.split("-")[0])
    assert [r["cached_tokens"] for r in second] == [shared] * 3          # the first item too, from disk
    plain = run(tmp_path / "3.jsonl")
    assert [r["content"] for r in second] == [r["content"] for r in first] == [r["content"] for r in plain]
    good = files[0].read_bytes()
    files[0].write_bytes(good[:-10])                                     # a damaged entry is skipped, not fatal
    third = run(tmp_path / "4.jsonl", "--prompt-cache", cache_dir)
    assert "prompt cache: skipping" in run.stderr and "truncated" in run.stderr
    assert files[0].read_bytes() == good                                 # and written again
    assert third[0]["cached_tokens"] == 0 and [r["content"] for r in third] == [r["content"] for r in first]
