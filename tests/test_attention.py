"""Causal GQA attention over the KV cache: every implementation (the portable numba loops, the
SIMD kernels of this machine's path, the BLAS prompt path) against the definition in float64
numpy (reference_forward.causal_attention)."""
import numpy as np
import pytest

from edgeqwen import kernels, simd
from reference_forward import causal_attention as reference


def case(rng, T, p0, H, Hkv, D, ctx=None):
    ctx = ctx or p0 + T + 3
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    kc = (rng.standard_normal((ctx, Hkv, D)) * 2).astype(np.float32)   # spread-out scores
    vc = rng.standard_normal((ctx, Hkv, D)).astype(np.float32)
    return q, kc, vc, np.float32(1 / np.sqrt(D))


IMPLS = {"scalar": kernels.attention_serial, "scalar-parallel": kernels.attention_parallel,
         "blas": kernels.attention_blas, "dispatch": kernels.attention}
if simd.PATH == "avx2":
    IMPLS.update({"avx2": simd.kernels.attention, "avx2-parallel": simd.kernels.attention_parallel,
                  "avx2-prompt": simd.prompt_attention})

SHAPES = [(4, 4, 32), (8, 4, 16), (16, 8, 128), (8, 2, 32), (10, 2, 64)]   # (H, Hkv, D): G = 1, 2, 2, 4, 5


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("H,Hkv,D", SHAPES)
def test_attention_matches_definition(impl, H, Hkv, D):
    rng = np.random.default_rng(H * 100 + D)
    fn = IMPLS[impl]
    worst = 0.0
    for T, p0 in ((1, 0), (1, 37), (2, 5), (4, 0), (15, 9), (16, 0), (17, 3), (40, 130)):
        q, kc, vc, scale = case(rng, T, p0, H, Hkv, D)
        out = np.full_like(q, np.nan)
        fn(q, kc, vc, p0, scale, out)
        worst = max(worst, float(np.abs(out - reference(q, kc, vc, p0, scale)).max()))
    # float32 against float64: measured <= 1.4e-6 on every implementation (values of order 1)
    assert worst < 1e-5, f"{impl}: max |diff| {worst:.2e}"


def test_blas_prompt_tiles_cross_the_causal_block():
    """More tokens than one BLAS tile, a prefix in the cache: each tile's mask covers only its
    own block of keys, earlier tiles' tokens and the prefix stay visible."""
    rng = np.random.default_rng(7)
    q, kc, vc, scale = case(rng, kernels.PREFILL_TILE * 2 + 5, 11, 8, 2, 32)
    out = np.empty_like(q)
    kernels.attention_blas(q, kc, vc, 11, scale, out)
    assert np.abs(out - reference(q, kc, vc, 11, scale)).max() < 1e-5


def test_future_positions_are_never_read():
    """Garbage (NaN) in the cache beyond position p0 + T - 1 must not reach the output."""
    rng = np.random.default_rng(3)
    for fn in IMPLS.values():
        for T, p0 in ((1, 20), (3, 4), (18, 2)):
            q, kc, vc, scale = case(rng, T, p0, 8, 4, 32, ctx=p0 + T + 8)
            kc[p0 + T:] = np.nan
            vc[p0 + T:] = np.nan
            out = np.empty_like(q)
            fn(q, kc, vc, p0, scale, out)
            assert np.isfinite(out).all()
            assert np.abs(out - reference(q, kc[:p0 + T], vc[:p0 + T], p0, scale)).max() < 1e-5


@pytest.mark.skipif(simd.prompt_attention is None, reason="no SIMD prompt attention on this path (x86 AVX2 only)")
@pytest.mark.parametrize("H,Hkv,D", SHAPES)
def test_prompt_attention_reads_float16_caches(H, Hkv, D):
    """The SIMD prompt kernel on a float16 cache (bit patterns as uint16, as kv_cache stores them)
    equals the definition on the float16-rounded keys and values; prompts longer than a tile,
    key blocks cut by the causal edge, a prefix in the cache."""
    rng = np.random.default_rng(H + D)
    for T, p0 in ((16, 0), (33, 7), (70, 100)):
        q, kc, vc, scale = case(rng, T, p0, H, Hkv, D)
        k16, v16 = kc.astype(np.float16), vc.astype(np.float16)
        out = np.full_like(q, np.nan)
        simd.prompt_attention(q, k16.view(np.uint16), v16.view(np.uint16), p0, scale, out)
        want = reference(q, k16.astype(np.float32), v16.astype(np.float32), p0, scale)
        assert np.abs(out - want).max() < 1e-5


@pytest.mark.skipif(simd.prompt_attention is None, reason="no SIMD prompt attention on this path (x86 AVX2 only)")
@pytest.mark.parametrize("tq", [1, 5, 16, 40, 64])
def test_prompt_attention_any_query_tile(tq):
    """The tile length is chosen from the thread count: every length gives the definition (tiles
    cut by the causal edge, rows that see none of a key block, a last partial tile)."""
    from edgeqwen.simd import avx2_attention
    rng = np.random.default_rng(tq)
    for (H, Hkv, D), (T, p0) in zip(SHAPES, ((40, 0), (40, 70), (33, 5), (64, 0), (17, 40))):
        q, kc, vc, scale = case(rng, T, p0, H, Hkv, D)
        k16, v16 = kc.astype(np.float16), vc.astype(np.float16)
        out = np.full_like(q, np.nan)
        avx2_attention._attention(q, k16.view(np.uint16), v16.view(np.uint16), p0, scale, out, tq, avx2_attention.KB)
        want = reference(q, k16.astype(np.float32), v16.astype(np.float32), p0, scale)
        assert np.abs(out - want).max() < 1e-5, (H, Hkv, D, T, p0)
