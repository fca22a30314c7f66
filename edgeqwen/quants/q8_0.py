"""Q8_0 weights: blocks of 32 int8 values with one float16 scale (34 bytes), as in ggml.

Reference: gguf-py `gguf.quants.dequantize(..., Q8_0)`. Kernel: int8 x int8 -> int32 dot per
block against the Q8_0-quantized activation, scaled by d_w * d_x, accumulated in float32.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

BLOCK_BYTES = 34


@njit(parallel=True, cache=True, fastmath=True)
def matmul_q8_0(w, wi, xq, xd, out, f16, qk):
    """w: (N, K/32*34) uint8 raw blocks; wi: the same bytes as int8; xq: (T, K) int8;
    xd: (T, K/32) f32; out: (T, N) f32. qk (=32) is an argument so LLVM vectorizes the block loop."""
    N = w.shape[0]
    T = xq.shape[0]
    nb = xd.shape[1]
    for r in prange(N):
        for t in range(T):
            acc = np.float32(0.0)
            for b in range(nb):
                o = b * (qk + 2)
                d = f16[np.int64(w[r, o]) | (np.int64(w[r, o + 1]) << 8)]
                xo = b * qk
                s = np.int32(0)
                for j in range(qk):
                    s = np.int32(s + np.int32(wi[r, o + 2 + j]) * np.int32(xq[t, xo + j]))
                acc += d * xd[t, b] * np.float32(s)
            out[t, r] = acc


@njit(cache=True)
def dequantize_row_q8_0(w, r, out, f16):
    """One row r of raw Q8_0 blocks -> out (K,) f32 (embedding lookup)."""
    nb = out.shape[0] // 32
    for b in range(nb):
        o = b * 34
        d = f16[np.int64(w[r, o]) | (np.int64(w[r, o + 1]) << 8)]
        for j in range(32):
            v = np.int32(w[r, o + 2 + j])
            if v > 127:
                v -= 256
            out[b * 32 + j] = d * np.float32(v)
