"""Context shift (issue 16, item 3; edgeqwen/context_shift.py): after a shift the next logits are
those of a fresh prefill of the shifted sequence (the kept tokens at their new positions), in our
runtime and in transformers; generation goes on past the context.

A fresh prefill is what a shift gives only with one layer: from the second layer on, a kept
position's key and value were computed attending to the tokens the shift drops (in llama.cpp
too). So the logit comparisons use one-layer models (plain RoPE, and YaRN with its attention
factor), and on two layers the first layer's cache is compared with a fresh prefill and every
layer's moved keys with transformers' own rotation (`apply_rotary_pos_emb`) by -d."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import import_reference

import edgeqwen
from edgeqwen import context_shift
from edgeqwen.cli import main
from edgeqwen.errors import EdgeQwenError
from edgeqwen.sampling import Sampler, SamplingParams
from converters.hf_to_gguf import convert
from converters.synthetic import make_checkpoint

torch = import_reference("torch", "torch is not installed (pip install -e .[test])", module_level=True)
transformers = import_reference("transformers", "transformers is not installed (pip install -e .[test])",
                                module_level=True)

N_CTX, KEEP = 64, 5


def rel_err(ours, ref):
    return np.abs(ours - ref).max() / np.abs(ref).max()


@pytest.fixture(scope="module")
def one_layer(checkpoints, gguf_file, tmp_path_factory):
    """name -> F32 GGUF of a one-layer model: "one" (plain RoPE, GQA 4/2, untied) and conftest's "yarn"."""
    root = tmp_path_factory.mktemp("one")
    ckpt = make_checkpoint(root / "one", hidden=64, intermediate=128, layers=1, heads=4, kv_heads=2, head_dim=32,
                           tied=False, seed=9)         # untied: sampling is not stuck on the last token
    checkpoints["one"] = ckpt
    convert(ckpt, root / "one.gguf", "f32", progress=False)
    return {"one": root / "one.gguf", "yarn": gguf_file("yarn", "f32")}


@pytest.fixture(scope="module")
def hf(checkpoints):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = transformers.Qwen3ForCausalLM.from_pretrained(checkpoints[name], dtype=torch.float32).eval()
        return cache[name]
    return get


def shifted_logits(model, ids, nxt):
    """Fill a cache of N_CTX positions with ids, shift it, run `nxt`: (logits, the shifted sequence)."""
    m = model.model
    cache = m.new_cache()
    m.forward(ids, cache, "none")
    d = context_shift.shift(m, cache, KEEP)
    assert cache.n == N_CTX - d and d == (N_CTX - KEEP) // 2
    seq = list(ids)
    context_shift.shift_tokens(seq, KEEP, d)
    return m.forward([nxt], cache, "last"), seq + [nxt]


# f32: float32 rounding only; f16 / q8_0: the rotated keys are rounded to the cache type a second time
@pytest.mark.parametrize("name,cache_type,tol", [("one", "f32", 2e-6), ("yarn", "f32", 2e-6),
                                                 ("one", "f16", 2e-3), ("yarn", "q8_0", 2e-2)])
def test_shift_equals_a_fresh_prefill_of_the_shifted_sequence(name, cache_type, tol, one_layer, hf):
    model = edgeqwen.load(one_layer[name], ctx_size=N_CTX, cache_type=cache_type)
    ids = np.random.default_rng(3).integers(0, 151_000, N_CTX).tolist()
    ours, seq = shifted_logits(model, ids, 4242)
    fresh = model.model.forward(seq, model.model.new_cache(), "last")
    assert rel_err(ours, fresh) <= tol   # measured f32 2.5e-7 .. 4.6e-7, f16 8.9e-5, q8_0 1.6e-3
    if cache_type == "f32":
        with torch.no_grad():
            ref = hf(name)(torch.tensor([seq])).logits[0, -1].double().numpy()
        assert rel_err(ours, ref) <= 2e-6   # measured 2.7e-7 .. 5.4e-7


def test_two_layers_keys_rotated_as_transformers_does(gguf_file, hf):
    """Layer 0 equals a fresh prefill of the shifted sequence; every layer's moved keys are the old
    ones rotated by -d with transformers' rotary embedding and `apply_rotary_pos_emb`, the values
    are moved unchanged, the kept ones untouched."""
    from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

    m = edgeqwen.load(gguf_file("tiny", "f32"), ctx_size=N_CTX, cache_type="f32").model
    ids = np.random.default_rng(3).integers(0, 151_000, N_CTX).tolist()
    cache = m.new_cache()
    m.forward(ids, cache, "none")
    old = [(cache.keys(li, 0, N_CTX), cache.values(li, 0, N_CTX)) for li in range(2)]
    d = context_shift.shift(m, cache, KEEP)
    fresh = m.new_cache()
    m.forward(ids[:KEEP] + ids[KEEP + d:], fresh, "none")
    assert np.abs(cache.keys(0, 0, cache.n) - fresh.keys(0, 0, cache.n)).max() <= 1e-5   # measured 4.8e-7
    assert np.abs(cache.values(0, 0, cache.n) - fresh.values(0, 0, cache.n)).max() <= 1e-6
    rot = hf("tiny").model.rotary_emb
    k = torch.zeros(1, 1, 1, 32)
    cos, sin = rot(k, torch.tensor([[d]]))                          # (1, 1, hd): the angle of d positions
    for li, (k_old, v_old) in enumerate(old):
        moved = torch.from_numpy(k_old[KEEP + d:]).transpose(0, 1)[None]     # (1, Hkv, T, hd)
        ref, _ = apply_rotary_pos_emb(moved, moved, cos, -sin)               # rotation by -d
        ref = ref[0].transpose(0, 1).numpy()
        assert np.abs(cache.keys(li, KEEP, cache.n) - ref).max() <= 1e-5 * np.abs(ref).max()
        assert np.array_equal(cache.keys(li, 0, KEEP), k_old[:KEEP])
        assert np.array_equal(cache.values(li, 0, cache.n), np.concatenate([v_old[:KEEP], v_old[KEEP + d:]]))


def test_keys_must_be_rotated(one_layer, monkeypatch):
    """The check sees the rotation: moving the keys without it (or rotating the wrong way) is far off."""
    model = edgeqwen.load(one_layer["one"], ctx_size=N_CTX, cache_type="f32")
    ids = np.random.default_rng(3).integers(0, 151_000, N_CTX).tolist()
    _, seq = shifted_logits(model, ids, 4242)
    fresh = model.model.forward(seq, model.model.new_cache(), "last")
    real = context_shift.unrotation
    for fake in (lambda cos, sin, d: (np.ones_like(cos[0]), np.zeros_like(sin[0])),
                 lambda cos, sin, d: (lambda c, s: (c, -s))(*real(cos, sin, d))):
        monkeypatch.setattr(context_shift, "unrotation", fake)
        assert rel_err(shifted_logits(model, ids, 4242)[0], fresh) > 1e-2     # measured 0.18, 0.24


def test_generation_goes_on_past_the_context(one_layer):
    """Sampled tokens with context shift = those sampled (same sampler and seed) from a fresh
    forward of the shifted sequence, shifting the same way each time the context is full
    (independent of the cache moves)."""
    n_ctx, keep, n = 16, 3, 30
    model = edgeqwen.load(one_layer["one"], ctx_size=n_ctx, cache_type="f32")
    prompt = np.random.default_rng(5).integers(0, 151_000, 10).tolist()
    opts = dict(temperature=1.0, top_k=40, top_p=1.0, min_p=0.0, seed=7)
    r = model.generate(prompt, n, context_shift=True, keep=keep, **opts)
    sampler = Sampler(SamplingParams(**{**model.default_sampling().__dict__, **opts}))
    seq, expect = list(prompt), []
    for _ in range(n):
        t = sampler(model.logits(seq)[-1], prompt, expect)
        if t in model.tokenizer.stop_ids:
            break
        expect.append(t)
        if len(seq) + 1 > n_ctx:
            del seq[keep:keep + (len(seq) - keep) // 2]
        seq.append(t)
    assert r.token_ids == expect and len(expect) == n and r.finish_reason == "length"
    assert len(set(expect)) > 20
    # without it: stops at the context (the last token is sampled, not run)
    r = model.generate(prompt, n, context_shift=False, **opts)
    assert len(r.token_ids) == n_ctx - len(prompt) + 1 and r.finish_reason == "length" and "context full" in r.message


def test_run_goes_on_past_the_context(gguf_file):
    path = gguf_file("tiny", "f32")
    args = ["run", "-m", path, "-p", "Once upon a time", "-c", 16, "-n", 40, "--temperature", 0, "-t", 1,
            "--cache-type", "f16"]
    r = CliRunner().invoke(main, [str(a) for a in args + ["--context-shift", "--keep", 2]])
    assert r.exit_code == 0, r.output
    assert "generated 40 tok" in r.stderr and "finish: length" in r.stderr
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0 and "context full" in r.stderr and "generated 40 tok" not in r.stderr
    r = CliRunner().invoke(main, [str(a) for a in args + ["--context-shift", "--keep", 15]])
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1].startswith("error: keep must be an integer in 0..14")
    r = CliRunner().invoke(main, [str(a) for a in args + ["--keep", 2]])
    assert r.exit_code == 1 and "--keep applies to --context-shift" in r.stderr


def test_bad_keep_is_one_clear_error(gguf_file):
    model = edgeqwen.load(gguf_file("tiny", "f32"), ctx_size=N_CTX)
    for bad in (-1, N_CTX - 1, 2.5, True, "3"):
        with pytest.raises(EdgeQwenError, match=r"keep must be an integer in 0\.\.62"):
            model.stream([1, 2, 3], 4, context_shift=True, keep=bad)
    with pytest.raises(EdgeQwenError, match="context_shift must be True or False"):
        model.stream([1, 2, 3], 4, context_shift="yes")


def test_chat_goes_on_past_the_context(one_layer):
    """A chat answer and then a whole conversation longer than the context: the system prompt's
    tokens stay first, the cache holds exactly the engine's tokens (one layer: their fresh prefill)."""
    from edgeqwen.chat import ChatSession

    model = edgeqwen.load(one_layer["one"], ctx_size=40, cache_type="f32")
    opts = dict(enable_thinking=False, max_tokens=50, temperature=1.0, seed=3)
    s = ChatSession(model, system="Be brief.", context_shift=True, **opts)
    system = model.tokenize("<|im_start|>system\nBe brief.<|im_end|>\n")
    for text in ("Tell me a long story.", "Go on."):
        r = s.send(text)
        e = s.engine
        assert r.finish_reason == "length" and r.completion_tokens == 50
        assert e.tokens[:len(system)] == system and e.cache.n == len(e.tokens) <= 40
        ours = e.feed([4242], "last")
        fresh = model.model.forward(e.tokens, model.model.new_cache(), "last")
        assert rel_err(ours, fresh) <= 2e-6
    r = ChatSession(model, system="Be brief.", **opts).send("Tell me a long story.")
    assert r.finish_reason == "length" and "context full" in r.message and r.completion_tokens < 40
    with pytest.raises(EdgeQwenError, match="tokens kept by a context shift"):
        ChatSession(model, context_shift=True, keep=39, **opts)
