"""The Qwen3 forward against independent references: Hugging Face transformers'
Qwen3ForCausalLM (float checkpoints) and a plain-numpy forward over gguf-py-dequantized
weights (quantized files), itself checked against transformers.

Tolerances are a few times the error measured on these fixtures (relative to max|logit|; the
measured value is beside each bound). Both sides compute in float32 (or float64), so the error is
float32 summation order, ~3e-7; a real bug moves logits much more: with the RMSNorm epsilon 10x
too large, activation rounding skipped, or YaRN's frequency interpolation dropped the tests below
fail (see each bound's comment)."""
import numpy as np
import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.modeling_rope_utils import _compute_yarn_parameters

import edgeqwen
from edgeqwen.generate import Timings, generate_step
from edgeqwen.kernels import rope_tables
from edgeqwen.kv_cache import KVCache
from edgeqwen.sampling import Sampler, SamplingParams

from reference_forward import NumpyQwen3

PROMPT = [785, 3974, 13876, 38835, 151644, 872, 198, 14990, 1879, 0, 11, 99, 220, 151667, 271, 5000, 60000]


def hf_logits(ckpt, ids):
    m = Qwen3ForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        return m, m(torch.tensor([ids])).logits[0].double().numpy()


def hf_greedy(m, ids, n):
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(m(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-n:]


def our_greedy(model, ids, n):
    cache = KVCache(model.config, 256)
    steps = generate_step(model.model, cache, ids, Sampler(SamplingParams(temperature=0)), Timings())
    return [next(steps) for _ in range(n)]


def rel_err(ours, ref):
    return np.abs(ours - ref).max() / np.abs(ref).max()


@pytest.mark.parametrize("name", ["tiny", "untied", "yarn"])
def test_f32_matches_transformers(name, checkpoints, gguf_file):
    model = edgeqwen.load(gguf_file(name, "f32"), ctx_size=256, cache_type="f32")
    hf, ref = hf_logits(checkpoints[name], PROMPT)
    ours = model.logits(PROMPT)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert rel_err(ours, ref) <= 2e-6          # measured 2.9e-7 .. 3.9e-7
    assert our_greedy(model, PROMPT[:5], 32) == hf_greedy(hf, PROMPT[:5], 32)


@pytest.mark.parametrize("name", ["tiny", "untied", "yarn"])
def test_numpy_reference_matches_transformers(name, checkpoints, gguf_file):
    """The numpy forward that the quantized files are checked against, on F32 files (with YaRN)."""
    _, ref = hf_logits(checkpoints[name], PROMPT)
    assert rel_err(NumpyQwen3(gguf_file(name, "f32")).logits(PROMPT), ref) <= 2e-6   # measured 2.8e-7 .. 3.4e-7


def test_yarn_tables_match_transformers(checkpoints, gguf_file):
    """cos/sin tables and attention factor against transformers' `_compute_yarn_parameters`, over
    the whole 131,072-position context. The frequency of each pair is read back from the table at
    the position where its angle is largest below pi/2 (float32 cos/sin give it to ~1e-7)."""
    hf_inv, hf_attn = _compute_yarn_parameters(Qwen3Config.from_pretrained(checkpoints["yarn"]))
    hf_inv = hf_inv.double().numpy()                                      # (hd/2,) float32 in HF
    cfg = edgeqwen.load(gguf_file("yarn", "f32"), ctx_size=64, cache_type="f32").config
    n = cfg.rope_scaling["factor"] * cfg.rope_scaling["orig_ctx"]
    cos, sin = rope_tables(int(n), cfg.head_dim, cfg.rope_base, cfg.rope_scaling)   # (n, hd/2)
    assert np.abs(np.hypot(cos, sin) - hf_attn).max() <= 1e-6 * hf_attn   # measured 1.0e-7; no YaRN: 0.12
    pos = np.minimum(np.floor(1.5 / hf_inv), n - 1).astype(np.int64)
    cols = np.arange(len(hf_inv))
    inv = np.arctan2(sin[pos, cols], cos[pos, cols]) / pos
    assert np.abs(inv / hf_inv - 1).max() <= 2e-6                         # measured 1.6e-7; no interpolation: 3.06


def test_yarn_logits_at_positions_in_the_thousands(checkpoints, gguf_file):
    """At positions ~4,100 the interpolated frequencies have turned by radians where the
    extrapolated ones would have (at the 17 positions of PROMPT they differ by ~1e-3 rad)."""
    ids = np.random.default_rng(0).integers(0, 151_000, 4100).tolist()
    model = edgeqwen.load(gguf_file("yarn", "f32"), ctx_size=4352, cache_type="f32")
    cache = model.model.new_cache()
    model.model.forward(ids[:-16], cache, "none")
    ours = model.model.forward(ids[-16:], cache, "all")
    hf = Qwen3ForCausalLM.from_pretrained(checkpoints["yarn"], dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([ids]), logits_to_keep=16).logits[0].double().numpy()
    assert rel_err(ours, ref) <= 3e-6          # measured 5.9e-7; without YaRN's interpolation 4.3e-2


@pytest.mark.parametrize("name,out_type", [("bf16", "bf16"), ("tiny", "f16"), ("untied", "f16")])
def test_half_types_match_transformers(name, out_type, checkpoints, gguf_file):
    """Against transformers on the float32 checkpoint (the f16 rounding of the weights is the
    error there) and against the numpy forward on the same file's weights (exact up to float32)."""
    path = gguf_file(name, out_type)
    model = edgeqwen.load(path, ctx_size=256, cache_type="f32")
    _, ref = hf_logits(checkpoints[name], PROMPT)
    ours = model.logits(PROMPT)
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
    # measured: bf16 4.4e-7 (the checkpoint is bf16 itself), f16 3.7e-4 .. 4.2e-4
    assert rel_err(ours, ref) <= (2e-6 if out_type == "bf16" else 1.5e-3)
    assert rel_err(ours, NumpyQwen3(path).logits(PROMPT)) <= 2e-6      # measured 2.6e-7 .. 3.2e-7


@pytest.mark.parametrize("name,out_type", [("tiny", "q8_0"), ("tiny", "q4_0"), ("untied", "q4_0"), ("untied", "q8_0")])
def test_quantized_match_numpy_reference(name, out_type, gguf_file):
    path = gguf_file(name, out_type)
    ref = NumpyQwen3(path).logits(PROMPT, q8_activations=True)
    ours = edgeqwen.load(path, ctx_size=256, cache_type="f32").logits(PROMPT)
    # measured 2.6e-7 .. 3.0e-7; without the activation rounding (q8_activations=False) 9.5e-3 .. 1.0e-2
    assert rel_err(ours, ref) <= 2e-6


def test_decode_equals_prefill(gguf_file):
    """Token-by-token decode over the KV cache gives the batched prefill's logits."""
    model = edgeqwen.load(gguf_file("untied", "q8_0"), ctx_size=64, cache_type="f32")
    full = model.logits(PROMPT)
    cache = KVCache(model.config, 64)
    steps = np.stack([model.model.forward([t], cache, "last") for t in PROMPT])
    assert rel_err(steps, full) <= 2e-6        # measured 3.1e-7


def test_prefill_in_chunks_equals_one_batch(gguf_file):
    model = edgeqwen.load(gguf_file("tiny", "q4_0"), ctx_size=64, cache_type="f32")
    full = model.logits(PROMPT)
    model.model.max_batch = 5
    assert rel_err(model.logits(PROMPT), full) <= 2e-6    # measured 2.5e-7
