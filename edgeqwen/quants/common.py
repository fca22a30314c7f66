"""Shared pieces of the quantized kernels: the f16 table and Q8_0 activation quantization.

Each matmul quantizes its activation once, exactly as ggml's `quantize_row_q8_0_ref` (and
gguf-py's Q8_0) do: blocks of 32 values, d = max|x| / 127, q = round-half-away(x * (1/d)) as
int8, and d stored rounded to float16. `xs` keeps each block's integer sum (Q4_0's "-8"
offset then costs one multiply per block).
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from .. import simd

# LLVM's SLP vectorizer turns the fixed 32-long int8 block dot products into vpmaddwd (AVX2) /
# sdot (ARM); numba leaves it off by default. It applies to code compiled from here on.
numba.config.SLP_VECTORIZE = 1

QK = 32
PARALLEL_MIN_TOKENS = 16     # = kernels.PREFILL_MIN_TOKENS: prompts quantize on all threads

# float16 bit pattern -> float32 value; numba has no float16 arithmetic, so scales go through it.
# (The NaN patterns make aarch64's numpy warn "invalid value encountered in cast" at import.)
with np.errstate(invalid="ignore"):
    F16_TABLE = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)


@njit(cache=True)
def round_to_f16(x):
    """float32 -> nearest float16 value (ties to even), as float32. For positive finite x."""
    if x == 0:
        return np.float32(0.0)
    if x < 6.103515625e-05:                       # float16 subnormal range: steps of 2^-24
        return np.float32(np.rint(x * 16777216.0) / 16777216.0)
    m, e = math.frexp(x)                          # x = m * 2^e, m in [0.5, 1)
    return np.float32(math.ldexp(np.rint(m * 2048.0), e - 11))


@njit(inline="always")
def _quantize_block(x, xq, xd, xs, t, b):
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
    xd[t, b] = round_to_f16(d)
    xs[t, b] = s


@njit(cache=True)
def quantize_act_q8_0(x, xq, xd, xs):
    """x: (T, K) f32 -> xq: (T, K) int8, xd: (T, K/32) f32 scales, xs: (T, K/32) int32 block sums."""
    T, K = x.shape
    nb = K // 32
    for i in range(T * nb):
        _quantize_block(x, xq, xd, xs, i // nb, i % nb)


@njit(parallel=True, cache=True)
def quantize_act_q8_0_parallel(x, xq, xd, xs):
    """`quantize_act_q8_0` over the threads (prompts), with the same result."""
    T, K = x.shape
    nb = K // 32
    for i in prange(T * nb):
        _quantize_block(x, xq, xd, xs, i // nb, i % nb)


class QuantizedActivation:
    """Scratch for one activation matrix quantized to Q8_0 blocks (reused across calls)."""

    def __init__(self, max_tokens: int, k: int):
        self.xq = np.zeros((max_tokens, k), np.int8)
        self.xd = np.zeros((max_tokens, k // QK), np.float32)
        self.xs = np.zeros((max_tokens, k // QK), np.int32)

    def quantize(self, x: np.ndarray):
        t = x.shape[0]
        xq, xd, xs = self.xq[:t], self.xd[:t], self.xs[:t]
        if simd.PATH == "avx2" and x.dtype == np.float32 and x.strides[1] == 4:   # same codes, vector code
            (simd.kernels.quantize_act_parallel if t >= PARALLEL_MIN_TOKENS else simd.kernels.quantize_act)(x, xq, xd, xs)
        else:
            (quantize_act_q8_0_parallel if t >= PARALLEL_MIN_TOKENS else quantize_act_q8_0)(x, xq, xd, xs)
        return xq, xd, xs
