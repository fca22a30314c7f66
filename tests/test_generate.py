"""The generation loop (generate / stream) against independent expectations: the argmax (or seeded
sampling) chain recomputed from scratch with Model.logits over prompt + generated tokens each step,
and the reference tokenizer (Qwen3's tokenizer.json in HF `tokenizers`) for the text. Plus stop
strings, stop ids, max_tokens, a full context, and argument errors."""
from __future__ import annotations

import gzip
import re
from importlib import resources

import numba
import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer

import edgeqwen
from edgeqwen.api import set_threads
from edgeqwen.errors import EdgeQwenError
from edgeqwen.generate import Timings, generate_step, stream_generate
from edgeqwen.kv_cache import KVCache
from edgeqwen.sampling import Sampler, SamplingParams

VOCAB = 151936
PROMPT = "The capital of France is"
# Control tokens the converter (like llama.cpp) types CONTROL but HF does not mark special: our
# skip_special decoding drops them, the reference's skip_special_tokens keeps them.
CONTROL_NOT_HF_SPECIAL = {151659, 151660, 151661, 151662, 151663, 151664}


@pytest.fixture(scope="module")
def ref_tok() -> HFTokenizer:
    data = resources.files("edgeqwen").joinpath("data/tokenizer.json.gz").read_bytes()
    return HFTokenizer.from_str(gzip.decompress(data).decode())


@pytest.fixture(scope="module")
def stop_ids(ref_tok) -> set[int]:
    ids = {ref_tok.token_to_id("<|endoftext|>"), ref_tok.token_to_id("<|im_end|>")}
    assert ids == {151643, 151645}
    return ids


@pytest.fixture(scope="module")
def model_path(gguf_file):
    return gguf_file("tiny", "q8_0")


@pytest.fixture(scope="module")
def model(model_path):
    return edgeqwen.load(model_path, ctx_size=64, threads=1)


@pytest.fixture(scope="module")
def model16(model_path):
    return edgeqwen.load(model_path, ctx_size=16, threads=1)


@pytest.fixture(autouse=True)
def one_thread():
    """One numba thread: on a loaded 2-core machine two threads can be 10x slower. (Each load sets
    the process-wide thread count, so it is set again before every test.)"""
    before = numba.get_num_threads()
    set_threads(1)
    yield
    numba.set_num_threads(before)


def ref_decode(ref_tok, ids) -> str:
    return ref_tok.decode([i for i in ids if i not in CONTROL_NOT_HF_SPECIAL], skip_special_tokens=True)


def reference_chain(model, prompt_ids, n, stop_ids, repetition_penalty=1.0):
    """Greedy tokens recomputed from scratch each step: argmax of Model.logits(prompt + generated)[-1],
    after the HF/CTRL repetition penalty over every id seen. Ends before a stop id."""
    ids, out = list(prompt_ids), []
    for _ in range(n):
        x = model.logits(ids)[-1].copy()
        if repetition_penalty != 1.0:
            seen = np.unique(ids)
            v = x[seen]
            x[seen] = np.where(v < 0, v * np.float32(repetition_penalty), v / np.float32(repetition_penalty))
        t = int(np.argmax(x))
        if t in stop_ids:
            return out, "stop"
        out.append(t)
        ids.append(t)
    return out, "length"


def no_forward(monkeypatch, model):
    """Make any forward pass fail the test: errors must come before any work."""
    def forward(*a, **k):
        raise AssertionError("forward ran")
    monkeypatch.setattr(model.model, "forward", forward)


# ---------------------------------------------------------------- greedy against the logits

def test_tokenize_matches_reference(model, ref_tok):
    assert model.tokenize(PROMPT) == ref_tok.encode(PROMPT).ids


@pytest.mark.parametrize("penalty", [1.0, 1.5])
def test_greedy_is_the_argmax_chain_of_logits(model, ref_tok, stop_ids, penalty):
    prompt_ids = ref_tok.encode(PROMPT).ids
    n = 16
    expected, reason = reference_chain(model, prompt_ids, n, stop_ids, penalty)
    assert len(set(expected)) >= 2      # the chain changes token: feeding back generated tokens matters
    r = model.generate(PROMPT, max_tokens=n, temperature=0, repetition_penalty=penalty)
    assert r.token_ids == expected
    assert r.finish_reason == reason
    assert r.text == ref_decode(ref_tok, expected)
    assert r.timings.prompt_tokens == len(prompt_ids) and r.timings.generated_tokens == len(expected)
    # A prompt given as ids is the same request.
    assert model.generate(prompt_ids, max_tokens=n, temperature=0, repetition_penalty=penalty).token_ids == expected


def test_seeded_sampling_replays_from_logits(model, ref_tok):
    """temperature 0.9 with a seed: the same seed gives the same tokens, and they are exactly what a
    fresh Sampler with that seed draws from logits recomputed over prompt + generated."""
    prompt_ids = ref_tok.encode("Once upon a time").ids
    n = 10
    a = model.generate(prompt_ids, max_tokens=n, temperature=0.9, seed=7)
    b = model.generate(prompt_ids, max_tokens=n, temperature=0.9, seed=7)
    assert (a.token_ids, a.text) == (b.token_ids, b.text)

    params = SamplingParams(**{**model.default_sampling().__dict__, "temperature": 0.9, "seed": 7})
    sampler, ids, gen = Sampler(params), list(prompt_ids), []
    for _ in range(len(a.token_ids)):
        t = sampler(model.logits(ids)[-1], prompt_ids, gen)
        gen.append(t)
        ids.append(t)
    assert gen == a.token_ids

    others = {tuple(model.generate(prompt_ids, max_tokens=n, temperature=0.9, seed=s).token_ids) for s in range(4)}
    assert len(others) > 1              # the seed is used


# ---------------------------------------------------------------- max_tokens, streaming, text

@pytest.mark.parametrize("n", [1, 5])
def test_max_tokens(model, n):
    r = model.generate(PROMPT, max_tokens=n, temperature=0)
    assert r.finish_reason == "length" and len(r.token_ids) == n and r.message is None
    assert r.timings.generated_tokens == n


def test_max_tokens_zero_and_negative(model, monkeypatch):
    r = model.generate(PROMPT, max_tokens=0, temperature=0)
    assert (r.text, r.token_ids, r.finish_reason) == ("", [], "length")
    no_forward(monkeypatch, model)
    for bad in (-1, 2.5, "3"):
        with pytest.raises(EdgeQwenError, match="max_tokens"):
            model.generate(PROMPT, max_tokens=bad)


def test_stream_chunks_concatenate_to_the_text(model, ref_tok):
    kw = dict(temperature=0, repetition_penalty=1.5)
    chunks = list(model.stream(PROMPT, 12, **kw))
    assert [c.finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert chunks[-1].timings is not None
    assert all(len(c.token_ids) == 1 for c in chunks)       # one chunk per token
    ids = [t for c in chunks for t in c.token_ids]
    text = "".join(c.text for c in chunks)
    r = model.generate(PROMPT, 12, **kw)
    assert r.token_ids == ids and len(ids) == 12
    assert r.text == text == ref_decode(ref_tok, ids)


class ScriptedModel:
    """Stands in for Qwen3Model: each forward appends its tokens to the cache and returns logits whose
    argmax is the next token of the script."""

    def __init__(self, script):
        self.script, self.i = list(script), 0

    def forward(self, tokens, cache, logits="last"):
        assert cache.n + len(tokens) <= cache.n_ctx
        cache.n += len(tokens)
        x = np.zeros(VOCAB, np.float32)
        x[self.script[self.i]] = 1.0
        self.i += 1
        return x


def _scripted(model, script, max_tokens=100, stop=(), n_ctx=64):
    cache = KVCache(model.config, n_ctx)
    gen = stream_generate(ScriptedModel(script), model.tokenizer, cache, [1, 2, 3],
                          Sampler(SamplingParams(temperature=0)), max_tokens, stop)
    return list(gen)


def test_stream_never_splits_a_character(model, ref_tok):
    text = "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🫠🫠 héllo"
    ids = ref_tok.encode(text).ids
    assert len(ids) > len(text.split())           # characters spread over several byte tokens
    chunks = _scripted(model, ids + [151645])
    assert "".join(c.text for c in chunks) == text
    assert not any("\ufffd" in c.text for c in chunks)
    assert chunks[-1].finish_reason == "stop"
    assert [t for c in chunks for t in c.token_ids] == ids       # the stop id is not part of the output


@pytest.mark.parametrize("stop_id", [151643, 151645])
def test_stop_ids_end_generation(model, ref_tok, stop_id):
    ids = ref_tok.encode("Hello there, world").ids
    chunks = _scripted(model, ids + [stop_id] + ids)
    assert chunks[-1].finish_reason == "stop" and chunks[-1].message is None
    assert [t for c in chunks for t in c.token_ids] == ids
    assert "".join(c.text for c in chunks) == "Hello there, world"


def test_stop_string_over_several_tokens_with_false_starts(model, ref_tok):
    text = "xx ST STO STOP yy"
    ids = ref_tok.encode(text).ids
    chunks = _scripted(model, ids, stop=["STOP"])
    out = "".join(c.text for c in chunks)
    assert out == "xx ST STO "
    assert chunks[-1].finish_reason == "stop"
    assert not any("STOP" in c.text for c in chunks)


# ---------------------------------------------------------------- stop strings on the real model

@pytest.fixture(scope="module")
def unconstrained(model):
    """Greedy output (penalized so that it varies) as per-token chunks: ids and texts."""
    chunks = list(model.stream(PROMPT, 16, temperature=0, repetition_penalty=1.5))
    return [c.token_ids[0] for c in chunks], [c.text for c in chunks]


def test_stop_string_from_unconstrained_output(model, unconstrained):
    ids, texts = unconstrained
    full = "".join(texts)
    # A stop string across the last boundary where the token changes, so that earlier copies of
    # its first half are held back and released again.
    j = max(i for i in range(1, len(ids)) if ids[i] != ids[i - 1] and texts[i] and texts[i - 1])
    stop = texts[j - 1][-4:] + texts[j][:3]
    k = next(k for k in range(1, len(texts) + 1) if stop in "".join(texts[:k]))
    chunks = list(model.stream(PROMPT, 16, temperature=0, repetition_penalty=1.5, stop=[stop]))
    text = "".join(c.text for c in chunks)
    assert text == full[:full.index(stop)]
    assert chunks[-1].finish_reason == "stop"
    assert not any(stop in c.text for c in chunks) and stop not in text
    assert [t for c in chunks for t in c.token_ids] == ids[:k]
    # A plain string is one stop string (not a set of characters); the earliest of several wins.
    r = model.generate(PROMPT, 16, temperature=0, repetition_penalty=1.5, stop=stop)
    assert (r.text, r.finish_reason) == (text, "stop")
    later = full[full.index(stop) + 1:][:5]
    r = model.generate(PROMPT, 16, temperature=0, repetition_penalty=1.5, stop=[later, stop])
    assert r.text == full[:min(full.index(later), full.index(stop))]


def test_stop_string_never_produced_runs_to_length(model, unconstrained):
    ids, texts = unconstrained
    r = model.generate(PROMPT, 16, temperature=0, repetition_penalty=1.5, stop=["\x00never\x00"])
    assert (r.token_ids, r.text, r.finish_reason) == (ids, "".join(texts), "length")


# ---------------------------------------------------------------- context

def test_context_full(model16, ref_tok, stop_ids):
    """ctx_size 16, prompt 10: the prompt and every generated token but the last go through the KV
    cache, so generation ends after ctx_size - prompt + 1 = 7 tokens, with the cache exactly full."""
    prompt = ref_tok.encode("one two three four five six seven eight nine ten eleven twelve").ids[:10]
    assert len(prompt) == 10
    r = model16.generate(prompt, max_tokens=100, temperature=0)
    assert r.finish_reason == "length"
    assert "context" in r.message and "16" in r.message
    assert len(r.token_ids) == 16 - 10 + 1
    expected, reason = reference_chain(model16, prompt, 7, stop_ids)
    assert (r.token_ids, reason) == (expected, "length")

    cache = KVCache(model16.config, 16)
    steps = list(generate_step(model16.model, cache, prompt, Sampler(SamplingParams(temperature=0)), Timings()))
    assert steps == expected and cache.n == 16

    # One free position after the prompt: two tokens.
    r = model16.generate(ref_tok.encode("a b c d e f g h i j k l m n o p q").ids[:15], max_tokens=100, temperature=0)
    assert len(r.token_ids) == 2 and r.finish_reason == "length" and "context" in r.message


def test_prompt_that_does_not_fit_is_refused_before_any_work(model16, ref_tok, monkeypatch):
    no_forward(monkeypatch, model16)
    ids = ref_tok.encode("a b c d e f g h i j k l m n o p q r s t").ids
    for prompt in (ids[:16], ids, "word " * 40):
        with pytest.raises(EdgeQwenError, match=r"does not fit the context of 16 tokens"):
            model16.generate(prompt, max_tokens=4, temperature=0)
        with pytest.raises(EdgeQwenError, match="does not fit"):
            model16.stream(prompt, max_tokens=4, temperature=0)   # raised by the call itself


def test_empty_and_invalid_prompts(model, monkeypatch):
    no_forward(monkeypatch, model)
    with pytest.raises(EdgeQwenError, match="empty"):
        model.generate("", max_tokens=3)
    with pytest.raises(EdgeQwenError, match="no tokens"):
        model.generate([], max_tokens=3)
    for bad in ([5, -1], [VOCAB], [3, VOCAB + 10]):
        with pytest.raises(EdgeQwenError, match="outside the vocabulary"):
            model.generate(bad, max_tokens=3)
    with pytest.raises(EdgeQwenError, match="no tokens"):
        model.logits([])


def test_api_ids_and_sizes_are_checked(model, monkeypatch):
    """Issue 12: ids index the embedding in numba (no bounds checks): each one is checked where it
    enters; sizes are bounded before anything is allocated."""
    no_forward(monkeypatch, model)
    for bad, needle in (([1.5], "token ids must be integers, got 1.5"), (["7"], "got '7'"), ([True], "got True"),
                        ("abc", "a sequence of integers"), (5, "a sequence of integers"),
                        ([10**5000], "outside the vocabulary"), ([np.int64(VOCAB)], "outside the vocabulary")):
        if not isinstance(bad, str):                    # a str is a prompt for generate
            with pytest.raises(EdgeQwenError, match=re.escape(needle)):
                model.generate(bad, max_tokens=3)
        with pytest.raises(EdgeQwenError, match=re.escape(needle)):
            model.logits(bad)
    with pytest.raises(EdgeQwenError, match="do not fit the context"):
        model.logits([1] * (model.n_ctx + 1))           # the RoPE tables have n_ctx positions
    with pytest.raises(EdgeQwenError, match="the prompt is not valid text: a lone surrogate"):
        model.generate("abc\ud800", max_tokens=3)
    assert model.generate([np.int32(5), 6], max_tokens=0).finish_reason == "length"


@pytest.mark.parametrize("kw, needle", [
    (dict(ctx_size=0), "ctx_size must be an integer in 1..1048576, got 0"), (dict(ctx_size=2**62), "ctx_size"),
    (dict(ctx_size=True), "ctx_size"), (dict(ctx_size="64"), "ctx_size"), (dict(ctx_size=1.5), "ctx_size"),
    (dict(threads=10**20), "threads must be an integer in 1..1024"), (dict(threads=0), "threads"),
    (dict(threads=2.5), "threads"),
])
def test_load_options_are_checked(gguf_file, kw, needle):
    with pytest.raises(EdgeQwenError, match=re.escape(needle)):
        edgeqwen.load(gguf_file("tiny", "q8_0"), **kw)


def test_context_too_big_for_memory_is_a_clear_error(gguf_file):
    # 2 layers x 2 KV heads x 32 x 4 bytes x 2 = 1 KiB per token: 2^20 tokens fit; force the failure
    import edgeqwen.kv_cache as kvc

    real = np.zeros

    def fail(shape, *a, **k):
        if isinstance(shape, tuple) and len(shape) == 4:
            raise MemoryError
        return real(shape, *a, **k)
    m = edgeqwen.load(gguf_file("tiny", "q8_0"), threads=1, ctx_size=64)
    kvc.np.zeros, saved = fail, kvc.np.zeros
    try:
        with pytest.raises(EdgeQwenError, match="not enough memory for a KV cache of 64 tokens"):
            m.generate("hi", max_tokens=1)
    finally:
        kvc.np.zeros = saved


@pytest.mark.parametrize("kw", [
    dict(temperature=-0.5), dict(temperature=float("nan")), dict(top_k=-1), dict(top_k=2.5), dict(top_p=0.0),
    dict(top_p=1.5), dict(min_p=-0.1), dict(min_p=2.0), dict(repetition_penalty=0.0), dict(presence_penalty=3.0),
    dict(frequency_penalty=-2.5), dict(seed=-1), dict(seed=1.5), dict(temperature="hot"),
])
def test_invalid_sampling_values(model, monkeypatch, kw):
    no_forward(monkeypatch, model)
    name = next(iter(kw))
    with pytest.raises(EdgeQwenError, match=name):
        model.generate(PROMPT, max_tokens=3, **kw)
    with pytest.raises(EdgeQwenError, match=name):
        model.stream(PROMPT, max_tokens=3, **kw)
    with pytest.raises(EdgeQwenError, match=name):
        model.generate(PROMPT, max_tokens=3, sampling=SamplingParams(**kw))


@pytest.mark.parametrize("stop", [[""], ["ok", ""], [None], [3]])
def test_invalid_stop_strings(model, monkeypatch, stop):
    no_forward(monkeypatch, model)
    with pytest.raises(EdgeQwenError, match="stop"):
        model.generate(PROMPT, max_tokens=3, stop=stop)


def test_logits_shape_dtype_and_causality(model, ref_tok):
    ids = ref_tok.encode("Hello world, this is a test").ids
    x = model.logits(ids)
    assert x.dtype == np.float32 and x.shape == (len(ids), VOCAB)
    assert np.isfinite(x).all()
    head = model.logits(ids[:3])
    assert head.shape == (3, VOCAB)
    err = np.abs(head - x[:3]).max() / np.abs(x).max()
    assert err <= 2e-6, err              # a position never sees later tokens (measured 0; was 1e-4)
    assert not np.allclose(x[0], x[1])
