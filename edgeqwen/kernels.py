"""The non-matmul kernels of the Qwen3 forward (numba): RMSNorm, QK-norm + NeoX RoPE,
grouped-query causal attention over the KV cache, SwiGLU. All write into caller arrays."""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import simd

# batches of this many tokens and more take the BLAS paths (quants/prefill.py uses the same)
PREFILL_MIN_TOKENS = 16


# The small per-token kernels run serially: a parallel region costs more than their work.
# RMSNorm and RoPE are compiled without fastmath: their float operations then happen in source
# order, so simd/avx2.py's one-region decode step (which repeats them) gives bit-identical
# results, and a sequence decoded alone equals the same sequence inside a batch.

@njit(inline="always")
def _rmsnorm_row(x, w, eps, out, t):
    D = x.shape[1]
    ss = np.float32(0.0)
    for j in range(D):
        ss += x[t, j] * x[t, j]
    inv = np.float32(1.0) / np.sqrt(ss / np.float32(D) + np.float32(eps))
    for j in range(D):
        out[t, j] = w[j] * (x[t, j] * inv)


def rmsnorm(x, w, eps, out):
    """x: (T, D) f32; w: (D,) f32 -> out (T, D) = x / rms(x) * w. Prompts on all threads."""
    (rmsnorm_parallel if x.shape[0] >= PREFILL_MIN_TOKENS else rmsnorm_serial)(x, w, eps, out)


@njit(cache=True)
def rmsnorm_serial(x, w, eps, out):
    for t in range(x.shape[0]):
        _rmsnorm_row(x, w, eps, out, t)


@njit(parallel=True, cache=True)
def rmsnorm_parallel(x, w, eps, out):
    """`rmsnorm` over the threads (prompts), with the same result."""
    for t in prange(x.shape[0]):
        _rmsnorm_row(x, w, eps, out, t)


@njit(inline="always")
def _qk_norm_rope_head(x, w, eps, cos, sin, p0, t, h):
    D = x.shape[2]
    half = D // 2
    ss = np.float32(0.0)
    for j in range(D):
        ss += x[t, h, j] * x[t, h, j]
    inv = np.float32(1.0) / np.sqrt(ss / np.float32(D) + np.float32(eps))
    p = p0 + t
    for j in range(half):
        a = w[j] * (x[t, h, j] * inv)
        b = w[j + half] * (x[t, h, j + half] * inv)
        c = cos[p, j]
        s = sin[p, j]
        x[t, h, j] = a * c - b * s
        x[t, h, j + half] = b * c + a * s


def qk_norm_rope(x, w, eps, cos, sin, p0):
    """In place on x: (T, H, D) f32. Per head RMSNorm with w: (D,), then NeoX RoPE (pairs i and
    i + D/2) at positions p0 + t using cos, sin: (ctx, D/2) f32 tables. Prompts on all threads."""
    fn = qk_norm_rope_parallel if x.shape[0] >= PREFILL_MIN_TOKENS else qk_norm_rope_serial
    fn(x, w, eps, cos, sin, p0)


@njit(cache=True)
def qk_norm_rope_serial(x, w, eps, cos, sin, p0):
    T, H, D = x.shape
    for i in range(T * H):
        _qk_norm_rope_head(x, w, eps, cos, sin, p0, i // H, i % H)


@njit(parallel=True, cache=True)
def qk_norm_rope_parallel(x, w, eps, cos, sin, p0):
    """`qk_norm_rope` over the threads (prompts), with the same result."""
    T, H, D = x.shape
    for i in prange(T * H):
        _qk_norm_rope_head(x, w, eps, cos, sin, p0, i // H, i % H)




@njit(inline="always")
def _attend(q, kc, vc, p0, scale, out, t, h, group):
    """One query head h of token t: softmax(q.K^T * scale) V over positions 0..p0+t."""
    D = q.shape[2]
    kh = h // group
    n = p0 + t + 1
    sc = np.empty(n, np.float32)
    m = -np.inf
    for j in range(n):
        s = np.float32(0.0)
        for d in range(D):
            s += q[t, h, d] * kc[j, kh, d]
        s *= scale
        sc[j] = s
        if s > m:
            m = s
    tot = np.float32(0.0)
    for j in range(n):
        e = np.exp(sc[j] - m)
        sc[j] = e
        tot += e
    for d in range(D):
        out[t, h, d] = 0.0
    inv = np.float32(1.0) / tot
    for j in range(n):
        wgt = sc[j] * inv
        for d in range(D):
            out[t, h, d] += wgt * vc[j, kh, d]


@njit(parallel=True, cache=True, fastmath=True)
def attention_parallel(q, kc, vc, p0, scale, out):
    """Causal GQA attention. q: (T, H, D) f32 at positions p0..p0+T-1; kc, vc: (ctx, Hkv, D) f32
    caches already holding positions 0..p0+T-1; out: (T, H, D). Query head h reads KV head
    h // (H / Hkv)."""
    T, H, D = q.shape
    group = H // kc.shape[1]
    for i in prange(T * H):
        _attend(q, kc, vc, p0, scale, out, i // H, i % H, group)


@njit(cache=True, fastmath=True)
def attention_serial(q, kc, vc, p0, scale, out):
    """`attention_parallel` without a parallel region, for short decode steps."""
    T, H, D = q.shape
    group = H // kc.shape[1]
    for i in range(T * H):
        _attend(q, kc, vc, p0, scale, out, i // H, i % H, group)


PREFILL_TILE = 128           # query tokens per BLAS score block in prefill attention


def attention_blas(q, kc, vc, p0, scale, out):
    """`attention_parallel` for prompts: per KV head and tile of PREFILL_TILE query tokens, the
    scores of the group's query heads against the keys they may see are one float32 GEMM
    (numpy's BLAS), masked causally, softmaxed in place and multiplied by V in a second GEMM.
    Scores exist for one tile at a time: (tile x G, positions) floats."""
    T, H, D = q.shape
    Hkv = kc.shape[1]
    G = H // Hkv
    for t0 in range(0, T, PREFILL_TILE):
        t1 = min(T, t0 + PREFILL_TILE)
        n = p0 + t1                                          # keys visible to the tile's last token
        tq = np.arange(t0, t1).repeat(G)[:, None]            # score row -> its token
        masked = np.arange(p0 + t0, n)[None, :] > p0 + tq    # the tile's own block: causal mask
        for kh in range(Hkv):
            qg = q[t0:t1, kh * G:(kh + 1) * G].reshape(-1, D)                # (tile x G, D)
            s = qg @ kc[:n, kh].T                                            # (tile x G, n)
            s *= scale
            blk = s[:, p0 + t0:]
            blk[masked] = -np.inf
            s -= s.max(axis=1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=1, keepdims=True)
            out[t0:t1, kh * G:(kh + 1) * G] = (s @ vc[:n, kh]).reshape(t1 - t0, G, D)


def attention(q, kc, vc, p0, scale, out):
    """Causal GQA attention of q (T, H, D) at positions p0.. over the caches kc, vc (ctx, Hkv, D)
    (holding positions 0..p0+T-1) into out (T, H, D): BLAS for prompts, else the SIMD kernel of
    this machine's path when there is one, else the portable numba loops above."""
    T, H, D = q.shape
    if T >= PREFILL_MIN_TOKENS:
        return attention_blas(q, kc, vc, p0, scale, out)
    work = T * H * (p0 + T) * D
    if simd.PATH == "avx2" and D % 8 == 0 and all(a.flags.c_contiguous for a in (q, kc, vc, out)):
        (simd.kernels.attention_parallel if work > 1_000_000 else simd.kernels.attention)(q, kc, vc, p0, scale, out)
    else:
        (attention_parallel if work > 1_000_000 else attention_serial)(q, kc, vc, p0, scale, out)


@njit(parallel=True, cache=True)      # no fastmath: exp(-v) overflows to inf for v << 0 (silu -> -0)
def silu_mul(g, u, out):
    """out = silu(g) * u, all (T, F) f32 (prompts and the scalar path; the SIMD decode step has its own)."""
    T, F = g.shape
    for t in prange(T):
        for j in range(F):
            v = g[t, j]
            out[t, j] = v / (np.float32(1.0) + np.exp(-v)) * u[t, j]


def rope_tables(n_ctx: int, head_dim: int, base: float, scaling: dict | None):
    """cos, sin: (n_ctx, head_dim/2) float32 for NeoX RoPE, with YaRN when `scaling` says so
    (frequencies and attention factor as Hugging Face's `_compute_yarn_parameters`)."""
    dim = head_dim
    pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    inv_freq = 1.0 / pos_freqs
    mscale = 1.0
    if scaling and scaling.get("type") == "yarn":
        factor = scaling["factor"]
        orig = scaling["orig_ctx"]
        beta_fast = scaling.get("beta_fast") or 32.0
        beta_slow = scaling.get("beta_slow") or 1.0

        def corr_dim(n_rot):
            return dim * math.log(orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(corr_dim(beta_fast)), 0)
        high = min(math.ceil(corr_dim(beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        extrap = 1.0 - ramp
        inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrap) + inv_freq * extrap
        attn = scaling.get("attn_factor")
        mscale = attn if attn else (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)
    ang = np.arange(n_ctx, dtype=np.float64)[:, None] * inv_freq[None, :]
    return (np.cos(ang) * mscale).astype(np.float32), (np.sin(ang) * mscale).astype(np.float32)
