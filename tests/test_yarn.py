"""RoPE and YaRN at long positions against transformers' Qwen3ForCausalLM (issue 16, item 5), on
small random models with Qwen3's real head_dim of 128 (one layer, GQA 2/1, hidden 32): one with
plain RoPE (Qwen3's native 32k, base 1e6) and one with the YaRN rope_scaling Qwen advises for
131k (factor 4 over 32,768), converted to GGUF by our converter (rope scaling keys included).

- ~8k positions: a real 8,200-token random prompt prefilled in our runtime and in transformers
  (YaRN file); the logits of its last 8 positions are compared.
- ~32k and ~100k positions: a 64-token window placed at position P. transformers runs it with
  position_ids P..P+63; our runtime runs it with the rows P.. of its own cos/sin tables (built for
  P+64 positions by the model, as a real context of that size would use them). RoPE attention
  depends on positions only through those tables (q.k sees the relative angle), so this checks
  what changes with depth -- the tables' angles and YaRN's interpolated frequencies at that depth
  -- without a 32k-token prefill (~80 s at head_dim 128 here). The long-cache attention itself
  is checked by the 8k prefill.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import import_reference
from converters.hf_to_gguf import convert
from converters.synthetic import make_checkpoint

import edgeqwen
from edgeqwen.kernels import rope_tables

torch = import_reference("torch", "torch is not installed (pip install -e .[test])", module_level=True)
transformers = import_reference("transformers", "transformers is not installed (pip install -e .[test])",
                                module_level=True)

SHAPE = dict(hidden=32, intermediate=64, layers=1, heads=2, kv_heads=1, head_dim=128, tied=True)
YARN = dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
            max_position_embeddings=131072)
WINDOW = 64


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> (HF checkpoint dir, F32 GGUF path) for "plain" and "yarn"."""
    root = tmp_path_factory.mktemp("rope128")
    out = {}
    for name, extra, seed in (("plain", {}, 21), ("yarn", YARN, 22)):
        ckpt = make_checkpoint(root / name, seed=seed, **SHAPE, **extra)
        convert(ckpt, root / f"{name}.gguf", "f32", progress=False)
        out[name] = ckpt, root / f"{name}.gguf"
    return out


def hf_model(ckpt):
    return transformers.Qwen3ForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()


def rel_err(ours, ref):
    return np.abs(ours - ref).max() / np.abs(ref).max()


@pytest.mark.parametrize("name", ["yarn"])          # (plain RoPE: the same path, checked at depth below)
def test_logits_after_an_8k_prefill(name, files):
    ckpt, path = files[name]
    ids = np.random.default_rng(8).integers(0, 151_000, 8200).tolist()
    model = edgeqwen.load(path, ctx_size=len(ids), cache_type="f32")
    assert model.config.rope_scaling == ({"type": "yarn", "factor": 4.0, "orig_ctx": 32768, "beta_fast": None,
                                          "beta_slow": None, "attn_factor": None} if name == "yarn" else None)
    cache = model.model.new_cache()
    model.model.forward(ids[:-8], cache, "none")
    ours = model.model.forward(ids[-8:], cache, "all")
    with torch.no_grad():
        ref = hf_model(ckpt)(torch.tensor([ids]), logits_to_keep=8).logits[0].double().numpy()
    assert rel_err(ours, ref) <= 2e-5          # measured 3.0e-6 (yarn)


def window_logits(model, ids, p):
    """Our logits of `ids` at positions p..p+len-1 (the model's own table rows from p on)."""
    m = model.model
    cos, sin = m.cos, m.sin
    assert len(cos) == p + len(ids)                  # the tables the model built for its context
    m.cos, m.sin = cos[p:], sin[p:]
    try:
        return m.forward(ids, m.new_cache(len(ids)), "all")
    finally:
        m.cos, m.sin = cos, sin


@pytest.mark.parametrize("name,p", [("plain", 32_700), ("yarn", 32_700), ("yarn", 131_072 - WINDOW)])
def test_logits_at_depth(name, p, files):
    """transformers computes its angles in float32 (position x inv_freq): at depth they are off by up
    to ~ulp(angle), so its logits at P differ from its own at 0 by 1.3e-4 (32k) .. 5.2e-4 (131k);
    with transformers' float32 angles put in our tables the difference was 3e-7. Our tables come from
    float64 angles: against transformers at positions 0.. (where its angles are exact; RoPE logits do
    not change when every position moves by P) the window matches to float32 precision."""
    ckpt, path = files[name]
    ids = np.random.default_rng(p).integers(0, 151_000, WINDOW).tolist()
    model = edgeqwen.load(path, ctx_size=p + WINDOW, cache_type="f32")
    ours = window_logits(model, ids, p)
    hf = hf_model(ckpt)
    with torch.no_grad():
        at = lambda p0: hf(torch.tensor([ids]), position_ids=torch.arange(p0, p0 + WINDOW)[None]  # noqa: E731
                           ).logits[0].double().numpy()
        ref, ref0 = at(p), at(0)
    assert rel_err(ours, ref) <= 1e-3           # measured (yarn) 1.3e-4 at 32k, 5.2e-4 at 131k: transformers' own
    assert rel_err(ours, ref0) <= 3e-6          # measured 5e-7 .. 6.3e-7
    if name == "yarn":                          # tables without YaRN (no interpolation, no attention factor)
        c, m = model.config, model.model
        m.cos, m.sin = rope_tables(p + WINDOW, c.head_dim, c.rope_base, None)
        assert rel_err(window_logits(model, ids, p), ref0) > 1e-2
