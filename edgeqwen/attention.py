"""Causal GQA attention over a KVCache of any storage type (kv_cache.py: f32, f16, q8_0).

float32 caches keep kernels.attention (BLAS for prompts, the SIMD or numba loops for decode).
Other types go through the kernels below, flash-attention style: keys and values are read a
tile of positions at a time, converted to float32 once per tile for all the query heads that
share the KV head, and the softmax is kept online (running max m, sum l, rescaled output), so
no (tokens x context) score matrix exists:

  decode (fewer than PREFILL_MIN_TOKENS tokens)  numba, one task per KV head (parallel when the
                     work is large), a row of K or V converted to float32 in a small buffer and
                     used by the group's query heads of every token
  prompts            f16 caches on the SIMD path: simd.prompt_attention (simd/avx2_attention.py,
                     the same scheme in registers, causal blocks skipped); otherwise
                     per tile of KEY_TILE positions: the tile converted once (cache.keys /
                     cache.values), then two batched float32 GEMMs over the KV heads (numpy's
                     BLAS, on all threads) for the query heads of all tokens that see the tile
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import simd
from .kernels import PREFILL_MIN_TOKENS, attention
from .quants.common import F16_TABLE

KEY_TILE = 1024              # positions per K/V tile in prompt attention
DECODE_TILE = 64             # positions per score block in decode attention
_KIND = {"f32": 0, "f16": 1, "q8_0": 2}
_NO_SCALE = np.zeros((1, 1), np.uint16)
_F16_MAGIC = np.float32(2.0 ** 112)     # half bits << 13 read as float32, times 2^112 = the half's value
# fast math without "no NaN / no inf" (masked and empty rows rely on exp(-1e30) = 0)
_FAST = {"reassoc", "contract", "arcp", "nsz", "afn"}


def attend(q, cache, layer: int, p0: int, scale, out) -> None:
    """Causal GQA attention of q (T, H, D) float32 at positions p0..p0+T-1 over `layer` of the
    cache (already holding positions 0..p0+T-1) into out (T, H, D)."""
    if cache.type_k == "f32" and cache.type_v == "f32":
        return attention(q, cache.k[layer], cache.v[layer], p0, scale, out)
    T, H, D = q.shape
    kc, vc = cache.k[layer], cache.v[layer]
    if (cache.type_k == cache.type_v == "f16" and T < PREFILL_MIN_TOKENS and D % 8 == 0
            and getattr(simd.kernels, "F16_CACHE", False) and all(a.flags.c_contiguous for a in (q, kc, vc, out))):
        # the SIMD path's kernel, which the one-region decode step runs too (same results)
        big = T * H * (p0 + T) * D > 1_000_000
        return (simd.kernels.attention_parallel if big else simd.kernels.attention)(q, kc, vc, p0, np.float32(scale), out)
    if (T >= PREFILL_MIN_TOKENS and cache.type_k == cache.type_v == "f16" and simd.prompt_attention is not None
            and D % 16 == 0 and all(a.flags.c_contiguous for a in (q, kc, vc, out))):
        return simd.prompt_attention(q, kc, vc, p0, np.float32(scale), out)     # tiled in registers
    if T >= PREFILL_MIN_TOKENS:
        return attention_tiled(q, cache, layer, p0, scale, out)
    ks = _NO_SCALE if cache.k_scale is None else cache.k_scale[layer]
    vs = _NO_SCALE if cache.v_scale is None else cache.v_scale[layer]
    args = (q, cache.k[layer], ks, _KIND[cache.type_k], cache.v[layer], vs, _KIND[cache.type_v],
            p0, np.float32(scale), out)
    (attention_typed_parallel if T * H * (p0 + T) * D > 200_000 else attention_typed_serial)(*args)


@njit(inline="always")
def _load_row(c, s, kind, j, kh, row, bits, fbits):
    """Row j, KV head kh of a cache layer c (pos, Hkv, D) as float32 into row (D,)."""
    D = row.shape[0]
    if kind == 1:                                   # f16 bits: exponent/mantissa moved, sign kept
        for d in range(D):
            h = np.uint32(c[j, kh, d])
            bits[d] = ((h & np.uint32(0x7FFF)) << np.uint32(13)) | ((h & np.uint32(0x8000)) << np.uint32(16))
        for d in range(D):
            row[d] = fbits[d] * _F16_MAGIC
    elif kind == 2:                                 # q8_0: blocks of 32 along the (Hkv x D) row
        w = min(D, 32)
        for d0 in range(0, D, w):
            sc = F16_TABLE[s[j, (kh * D + d0) >> 5]]
            for d in range(d0, d0 + w):
                row[d] = np.float32(c[j, kh, d]) * sc
    else:
        for d in range(D):
            row[d] = np.float32(c[j, kh, d])


@njit(inline="always")
def _attend_head(q, kc, ks, kkind, vc, vs, vkind, p0, scale, out, kh):
    """All query heads of KV head kh, all T tokens: rows r = t * G + g."""
    T, H, D = q.shape
    G = H // kc.shape[1]
    R, n = T * G, p0 + T
    qr = np.empty((R, D), np.float32)
    for r in range(R):
        for d in range(D):
            qr[r, d] = q[r // G, kh * G + r % G, d] * scale
    m = np.full(R, np.float32(-1e30))
    lsum = np.zeros(R, np.float32)
    acc = np.zeros((R, D), np.float32)
    sc = np.empty((R, DECODE_TILE), np.float32)
    row = np.empty(D, np.float32)
    bits = np.empty(D, np.uint32)
    fbits = bits.view(np.float32)
    for j0 in range(0, n, DECODE_TILE):
        j1 = min(n, j0 + DECODE_TILE)
        for j in range(j0, j1):
            _load_row(kc, ks, kkind, j, kh, row, bits, fbits)
            for r in range(R):
                s = np.float32(0.0)
                for d in range(D):
                    s += qr[r, d] * row[d]
                sc[r, j - j0] = s
        for r in range(R):
            lim = min(j1, p0 + r // G + 1)          # row r sees positions < lim
            mx = m[r]
            for j in range(j0, lim):
                mx = max(mx, sc[r, j - j0])
            alpha = np.exp(m[r] - mx)
            tot = np.float32(0.0)
            for j in range(j0, lim):
                e = np.exp(sc[r, j - j0] - mx)
                sc[r, j - j0] = e
                tot += e
            for j in range(max(j0, lim), j1):
                sc[r, j - j0] = 0.0
            lsum[r] = lsum[r] * alpha + tot
            m[r] = mx
            for d in range(D):
                acc[r, d] *= alpha
        for j in range(j0, j1):
            _load_row(vc, vs, vkind, j, kh, row, bits, fbits)
            for r in range(R):
                w = sc[r, j - j0]
                for d in range(D):
                    acc[r, d] += w * row[d]
    for r in range(R):
        inv = np.float32(1.0) / lsum[r]
        for d in range(D):
            out[r // G, kh * G + r % G, d] = acc[r, d] * inv


@njit(parallel=True, cache=True, fastmath=_FAST)
def attention_typed_parallel(q, kc, ks, kkind, vc, vs, vkind, p0, scale, out):
    """Causal GQA attention over one cache layer of any type: q (T, H, D) f32 at positions
    p0..p0+T-1; kc, vc (ctx, Hkv, D) f32 / uint16 (f16 bits) / int8 (q8_0) with their kinds
    0 / 1 / 2 and q8_0 scales ks, vs (ctx, Hkv x D / 32) f16 bits; out (T, H, D). One task per KV head."""
    for kh in prange(kc.shape[1]):
        _attend_head(q, kc, ks, kkind, vc, vs, vkind, p0, scale, out, kh)


@njit(cache=True, fastmath=_FAST)
def attention_typed_serial(q, kc, ks, kkind, vc, vs, vkind, p0, scale, out):
    """`attention_typed_parallel` without a parallel region, for short decode steps."""
    for kh in range(kc.shape[1]):
        _attend_head(q, kc, ks, kkind, vc, vs, vkind, p0, scale, out, kh)


def attention_tiled(q, cache, layer, p0, scale, out):
    """Prompt attention, flash style over tiles of KEY_TILE positions (see the module doc). Each
    step works on all KV heads at once (batched GEMMs), so BLAS's threads stay busy between calls."""
    T, H, D = q.shape
    Hkv = cache.k.shape[2]
    G = H // Hkv
    R, n = T * G, p0 + T
    qh = (q.reshape(T, Hkv, G, D).transpose(1, 0, 2, 3) * np.float32(scale)).reshape(Hkv, R, D)
    pos = p0 + np.arange(T).repeat(G)                          # row -> its token's position
    m = np.full((Hkv, R), -np.inf, np.float32)
    lsum = np.zeros((Hkv, R), np.float32)
    acc = np.zeros((Hkv, R, D), np.float32)
    for j0 in range(0, n, KEY_TILE):
        j1 = min(n, j0 + KEY_TILE)
        kt = np.ascontiguousarray(cache.keys(layer, j0, j1).transpose(1, 0, 2))       # (Hkv, tile, D)
        vt = np.ascontiguousarray(cache.values(layer, j0, j1).transpose(1, 0, 2))
        r0 = max(0, j0 - p0) * G                               # rows before r0 see none of the tile
        s = np.matmul(qh[:, r0:], kt.transpose(0, 2, 1))       # (Hkv, rows, tile); BLAS per head
        if j1 - 1 > pos[r0]:                                   # the causal edge crosses the tile
            s[:, np.arange(j0, j1)[None, :] > pos[r0:, None]] = -np.inf
        mx = np.maximum(m[:, r0:], s.max(axis=2))
        alpha = np.exp(m[:, r0:] - mx)                         # 0 on a row's first tile
        s -= mx[:, :, None]
        np.exp(s, out=s)
        lsum[:, r0:] = lsum[:, r0:] * alpha + s.sum(axis=2)
        m[:, r0:] = mx
        acc[:, r0:] *= alpha[:, :, None]
        acc[:, r0:] += np.matmul(s, vt)
    acc /= lsum[:, :, None]
    out[:] = acc.reshape(Hkv, T, G, D).transpose(1, 0, 2, 3).reshape(T, H, D)
