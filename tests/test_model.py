"""The Qwen3 forward against independent references: Hugging Face transformers'
Qwen3ForCausalLM (float checkpoints) and a plain-numpy forward over gguf-py-dequantized
weights (quantized files)."""
import numpy as np
import pytest
import torch
from transformers import Qwen3ForCausalLM

import edgeqwen
from edgeqwen.generate import Timings, generate_step
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


@pytest.mark.parametrize("name", ["tiny", "untied", "yarn"])
def test_f32_matches_transformers(name, checkpoints, gguf_file):
    model = edgeqwen.load(gguf_file(name, "f32"), ctx_size=256)
    hf, ref = hf_logits(checkpoints[name], PROMPT)
    ours = model.logits(PROMPT)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-3 * np.abs(ref).max()
    assert our_greedy(model, PROMPT[:5], 32) == hf_greedy(hf, PROMPT[:5], 32)


@pytest.mark.parametrize("name,out_type", [("bf16", "bf16"), ("tiny", "f16"), ("untied", "f16")])
def test_half_types_match_transformers(name, out_type, checkpoints, gguf_file):
    model = edgeqwen.load(gguf_file(name, out_type), ctx_size=256)
    _, ref = hf_logits(checkpoints[name], PROMPT)
    ours = model.logits(PROMPT)
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
    assert np.abs(ours - ref).max() <= 1e-2 * np.abs(ref).max()


@pytest.mark.parametrize("name,out_type", [("tiny", "q8_0"), ("tiny", "q4_0"), ("untied", "q4_0"), ("untied", "q8_0")])
def test_quantized_match_numpy_reference(name, out_type, gguf_file):
    path = gguf_file(name, out_type)
    ref = NumpyQwen3(path).logits(PROMPT, q8_activations=True)
    ours = edgeqwen.load(path, ctx_size=256).logits(PROMPT)
    assert np.abs(ours - ref).max() <= 1e-3 * np.abs(ref).max()


def test_decode_equals_prefill(gguf_file):
    """Token-by-token decode over the KV cache gives the batched prefill's logits."""
    model = edgeqwen.load(gguf_file("untied", "q8_0"), ctx_size=64)
    full = model.logits(PROMPT)
    cache = KVCache(model.config, 64)
    steps = np.stack([model.model.forward([t], cache, "last") for t in PROMPT])
    assert np.abs(steps - full).max() <= 1e-4 * np.abs(full).max()


def test_prefill_in_chunks_equals_one_batch(gguf_file):
    model = edgeqwen.load(gguf_file("tiny", "q4_0"), ctx_size=64)
    full = model.logits(PROMPT)
    model.model.max_batch = 5
    assert np.abs(model.logits(PROMPT) - full).max() <= 1e-4 * np.abs(full).max()
