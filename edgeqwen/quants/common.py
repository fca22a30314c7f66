"""Shared pieces of the quantized kernels: the f16 table and Q8_0 activation quantization.

Each matmul quantizes its activation once, the way ggml pairs Q8_0/Q4_0 weights: blocks of
32 values, scale d = max|x| / 127 (float32), q = round-half-away-from-zero(x / d) as int8.
`xs` keeps each block's integer sum (Q4_0's "-8" offset becomes one multiply per block).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

QK = 32

# float16 bit pattern -> float32 value; numba has no float16 arithmetic, so scales go through it.
F16_TABLE = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)


@njit(parallel=True, cache=True)
def quantize_act_q8_0(x, xq, xd, xs):
    """x: (T, K) f32 -> xq: (T, K) int8, xd: (T, K/32) f32 scales, xs: (T, K/32) int32 block sums."""
    T, K = x.shape
    nb = K // 32
    for i in prange(T * nb):
        t = i // nb
        b = i % nb
        o = b * 32
        amax = np.float32(0.0)
        for j in range(32):
            v = abs(x[t, o + j])
            if v > amax:
                amax = v
        d = amax / np.float32(127.0)
        inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
        s = 0
        for j in range(32):
            v = x[t, o + j] * inv
            q = np.floor(abs(v) + np.float32(0.5))
            qi = np.int32(q) if v >= 0 else -np.int32(q)
            xq[t, o + j] = qi
            s += qi
        xd[t, b] = d
        xs[t, b] = s


def quantize_act_q8_0_ref(x: np.ndarray):
    """numpy reference of `quantize_act_q8_0`: returns (xq, xd) for x of shape (T, K)."""
    T, K = x.shape
    blocks = x.reshape(T, K // QK, QK).astype(np.float32)
    d = (np.abs(blocks).max(axis=-1) / np.float32(127.0)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d > 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
    v = blocks * inv[..., None]
    q = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
    return q.astype(np.int8).reshape(T, K), d


class QuantizedActivation:
    """Scratch for one activation matrix quantized to Q8_0 blocks (reused across calls)."""

    def __init__(self, max_tokens: int, k: int):
        self.xq = np.zeros((max_tokens, k), np.int8)
        self.xd = np.zeros((max_tokens, k // QK), np.float32)
        self.xs = np.zeros((max_tokens, k // QK), np.int32)

    def quantize(self, x: np.ndarray):
        t = x.shape[0]
        xq, xd, xs = self.xq[:t], self.xd[:t], self.xs[:t]
        quantize_act_q8_0(x, xq, xd, xs)
        return xq, xd, xs
