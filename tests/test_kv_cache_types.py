"""KV cache storage types (kv_cache.py: f32, f16, q8_0) and the attention over them (attention.py).

References: numpy's float16 conversion and gguf-py's Q8_0 quantizer (bit-exact with ggml's
quantize_row_q8_0_ref) for the stored blocks; a float64 numpy softmax attention over the values
those references give back for the kernels; transformers' Qwen3ForCausalLM for the logits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gguf import GGMLQuantizationType, quants
from transformers import Qwen3ForCausalLM

import edgeqwen
from edgeqwen import attention as attn_mod
from edgeqwen import memory
from edgeqwen.attention import attend
from edgeqwen.cli import main
from edgeqwen.errors import EdgeQwenError
from edgeqwen.kv_cache import KVCache
from reference_forward import causal_attention as reference_attention

PROMPT = [785, 3974, 13876, 38835, 151644, 872, 198, 14990, 1879, 0, 11, 99, 220, 151667, 271, 5000, 60000,
          17, 2000, 42, 9999, 151645, 198, 30, 5]
Q8 = GGMLQuantizationType.Q8_0


class Cfg:
    def __init__(self, n_layer=2, n_head_kv=2, head_dim=32):
        self.n_layer, self.n_head_kv, self.head_dim = n_layer, n_head_kv, head_dim


def gguf_q8_0(x: np.ndarray) -> np.ndarray:
    """gguf-py's Q8_0 blocks (d f16 + 32 int8) of each position's (kv_head x head_dim) row."""
    return quants.quantize(x.reshape(len(x), -1), Q8).reshape(len(x), -1, 34)


def reference_values(t: str, x: np.ndarray) -> np.ndarray:
    """What a cache of type t gives back for x, by the independent references."""
    if t == "f32":
        return x
    if t == "f16":
        return x.astype(np.float16).astype(np.float32)
    return quants.dequantize(gguf_q8_0(x).reshape(len(x), -1), Q8).reshape(x.shape)


def test_stored_blocks_match_gguf_py():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, 4, 64)) * rng.uniform(1e-3, 50, (7, 4, 1))).astype(np.float32)
    x[0, 0, :32] = 0                                    # an all-zero block: d = 0, q = 0
    x[1, 1] = np.round(x[1, 1] * 2) / 2                 # halves: roundf rounds away from zero
    x[2, 2, :32] = np.linspace(-127, 127, 32)           # values x / d landing on .5 exactly
    cache = KVCache(Cfg(2, 4, 64), 16, "q8_0", "f16")
    cache.store(1, 5, x, x)
    ref = gguf_q8_0(x)
    assert np.array_equal(cache.k_scale[1, 5:12], ref[:, :, :2].copy().view(np.uint16)[..., 0])
    assert np.array_equal(cache.k[1, 5:12].reshape(7, -1, 32), ref[:, :, 2:].view(np.int8))
    assert np.array_equal(cache.v[1, 5:12], x.astype(np.float16).view(np.uint16))
    assert np.array_equal(cache.keys(1, 5, 12), reference_values("q8_0", x))
    assert np.array_equal(cache.values(1, 5, 12), reference_values("f16", x))
    assert not cache.k[0].any() and not cache.k[1, :5].any()      # nothing else written
    # a copied prefix carries the scales too
    other = KVCache(Cfg(2, 4, 64), 16, "q8_0", "f16")
    other.copy_prefix_from(cache, 12)
    assert other.n == 12 and np.array_equal(other.keys(1, 5, 12), cache.keys(1, 5, 12))
    assert set(cache.buffers()) == {"k", "v", "k_scale"}
    # f16 stores round as numpy does, specials and float16 subnormals / overflow included
    y = x * np.float32(1e-5)
    y[3, 3, :6] = [np.nan, np.inf, -np.inf, 70000.0, 65519.0, -3e-8]
    f16 = KVCache(Cfg(2, 4, 64), 16, "f16", "f16")
    f16.store(0, 2, y, x)
    with np.errstate(over="ignore"):
        assert np.array_equal(f16.k[0, 2:9], y.astype(np.float16).view(np.uint16))


def test_sizes_and_the_memory_estimate_follow_the_type():
    cfg = Cfg(n_layer=3, n_head_kv=2, head_dim=64)
    for tk, tv in (("f32", "f32"), ("f16", "f16"), ("q8_0", "q8_0"), ("q8_0", "f16")):
        cache = KVCache(cfg, 100, tk, tv)
        allocated = sum(a.nbytes for a in cache.buffers().values())
        assert allocated == KVCache.nbytes_for(cfg, 100, tk, tv) == memory.kv_cache_bytes(cfg, 100, tk, tv)
    # Qwen3-4B (36 layers, 8 KV heads of 128), 32k context: llama.cpp's f16 default is 4.5 GiB
    q4b = Cfg(36, 8, 128)
    assert memory.kv_cache_bytes(q4b, 32768, "f16", "f16") == int(4.5 * 2**30)
    assert memory.kv_cache_bytes(q4b, 32768, "f32", "f32") == 9 * 2**30
    assert memory.kv_cache_bytes(q4b, 32768, "q8_0", "q8_0") == int(4.5 * 2**30 * 34 / 64)


@pytest.mark.parametrize("tk,tv", [("f32", "f32"), ("f16", "f16"), ("q8_0", "q8_0"), ("f16", "q8_0"), ("q8_0", "f32")])
def test_attention_matches_numpy_reference(tk, tv, monkeypatch):
    """Decode (T < 16: numba, serial and parallel) and prompt (tiled BLAS) kernels on odd shapes,
    with key tiles small enough that prompts span several."""
    monkeypatch.setattr(attn_mod, "KEY_TILE", 96)
    rng = np.random.default_rng(1)
    D, Hkv, scale = 32, 2, 1 / np.sqrt(32)
    for G in (1, 2, 4):
        for T in (1, 3, 17, 130):
            for p0 in (0, 1, 300):
                n = p0 + T
                k = (rng.standard_normal((n, Hkv, D)) * 2).astype(np.float32)
                v = rng.standard_normal((n, Hkv, D)).astype(np.float32)
                cache = KVCache(Cfg(1, Hkv, D), n + 5, tk, tv)
                cache.store(0, 0, k[:p0], v[:p0])
                cache.store(0, p0, k[p0:], v[p0:])
                q = rng.standard_normal((T, Hkv * G, D)).astype(np.float32)
                out = np.full_like(q, np.nan)
                attend(q, cache, 0, p0, np.float32(scale), out)
                ref = reference_attention(q, reference_values(tk, k), reference_values(tv, v), p0, scale)
                assert np.abs(out - ref).max() <= 2e-5, (G, T, p0)      # measured <= 2.0e-6


def rel_err(ours, ref):
    return np.abs(ours - ref).max() / np.abs(ref).max()


@pytest.fixture(scope="module")
def hf_reference(checkpoints):
    out = {}
    for name in ("tiny", "untied"):
        m = Qwen3ForCausalLM.from_pretrained(checkpoints[name], dtype=torch.float32).eval()
        with torch.no_grad():
            out[name] = m(torch.tensor([PROMPT])).logits[0].double().numpy()
    return out


# the bounds (1% and 3% of max|logit|); measured rel. error (prompt / decode): f32 3.2e-7 / 3.8e-7,
# f16 1.4e-4 / 1.5e-4 (tiny), 2.0e-4 / 1.7e-4 (untied); q8_0 3.9e-3 / 3.9e-3 (tiny)
@pytest.mark.parametrize("name,cache_type,bound", [("tiny", "f16", 0.01), ("untied", "f16", 0.01), ("tiny", "q8_0", 0.03)])
def test_logits_match_transformers(name, cache_type, bound, gguf_file, hf_reference):
    """F32 weights, so the cache type is the only difference from the float32 reference: the
    prompt (tiled attention) and then token by token (decode kernel)."""
    model = edgeqwen.load(gguf_file(name, "f32"), ctx_size=64, cache_type=cache_type)
    ref = hf_reference[name]
    ours = model.logits(PROMPT)
    cache = model.model.new_cache()
    assert cache.type_k == cache.type_v == cache_type
    model.model.forward(PROMPT[:4], cache, "none")
    steps = np.stack([model.model.forward([t], cache, "last") for t in PROMPT[4:]])
    for got, want in ((ours, ref), (steps, ref[4:])):
        assert (got.argmax(-1) == want.argmax(-1)).all()
        assert rel_err(got, want) <= bound


def test_bad_cache_type_is_one_line(gguf_file):
    path = gguf_file("tiny", "q8_0")
    r = CliRunner().invoke(main, ["run", "-m", str(path), "-p", "Hi", "-n", "1", "--cache-type", "q4"])
    assert r.exit_code == 2
    assert "Invalid value for '--cache-type': 'q4' is not one of 'f32', 'f16', 'q8_0'." in r.stderr
    assert "Traceback" not in r.stderr
    with pytest.raises(EdgeQwenError, match=r"^cache_type_v: unknown KV cache type 'bf8'; expected one of "
                                            r"f32, f16, q8_0$"):
        edgeqwen.load(path, ctx_size=16, cache_type_v="bf8")
    with pytest.raises(EdgeQwenError, match=r"q8_0 KV cache needs kv_heads x head_dim to be a multiple of 32, "
                                            r"this model has 1 x 16"):
        KVCache(Cfg(1, 1, 16), 8, "f16", "q8_0")


def test_bench_depth_starts_every_run_at_depth(gguf_file, monkeypatch):
    """`edgeqwen bench -d`: the cache is filled once with DEPTH tokens; each pp and tg run starts at
    position DEPTH (as llama-bench restores its depth state), and the KV cache type is the one asked."""
    from edgeqwen.bench import format_table, run_bench
    from edgeqwen.model import Qwen3Model

    calls = []
    forward = Qwen3Model.forward

    def spy(self, tokens, cache, logits="last"):
        calls.append((cache.n, len(tokens), cache.type_k, cache.type_v))
        return forward(self, tokens, cache, logits)

    monkeypatch.setattr(Qwen3Model, "forward", spy)
    res = run_bench(gguf_file("tiny", "q8_0"), n_prompt=20, n_gen=3, reps=2, depth=37, bandwidth_probe=False,
                    cache_type="q8_0", cache_type_v="f16")
    assert res["depth"] == 37 and res["n_ctx"] >= 37 + 20 and (res["cache_type_k"], res["cache_type_v"]) == ("q8_0", "f16")
    assert res["pp"]["test"] == "pp20 @ d37" and res["tg"]["test"] == "tg3 @ d37"
    assert {(k, v) for *_, k, v in calls} == {("q8_0", "f16")}
    runs = calls[[c[:2] for c in calls].index((0, 37)):]      # from the depth fill on (before it: warm-ups)
    assert all(n < 3 for _, n, *_ in calls[:-len(runs)])
    pp = [c[:2] for c in runs[1:] if c[1] == 20]
    tg = [c[:2] for c in runs[1:] if c[1] == 1]
    assert pp == [(37, 20)] * 3                        # the untimed warm-up pp, then 2 reps
    assert tg == [(37 + i, 1) for i in range(3)] * 2
    assert len(runs) == 1 + len(pp) + len(tg)
    assert "pp20 @ d37" in format_table(res)
    assert "KV cache  K q8_0, V f16; depth 37" in format_table(res)
