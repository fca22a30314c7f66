"""Q4_0 weights: blocks of 32 4-bit values with one float16 scale (18 bytes), as in ggml.

Byte j of a block holds element j in its low nibble and element j+16 in its high nibble;
value = (nibble - 8) * d. Reference: gguf-py `gguf.quants.dequantize(..., Q4_0)`.
Kernel: sum(nibble * xq) - 8 * sum(xq) per block in int32, scaled by d_w * d_x.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

BLOCK_BYTES = 18


@njit(parallel=True, cache=True, fastmath=True)
def matmul_q4_0(w, xq, xd, xs, out, f16, half):
    """w: (N, K/32*18) uint8 raw blocks; xq: (T, K) int8; xd: (T, K/32) f32; xs: (T, K/32) int32
    block sums of xq; out: (T, N) f32. half (=16) is an argument so LLVM vectorizes."""
    N = w.shape[0]
    T = xq.shape[0]
    nb = xd.shape[1]
    for r in prange(N):
        for t in range(T):
            acc = np.float32(0.0)
            for b in range(nb):
                o = b * (half + 2)
                d = f16[np.int64(w[r, o]) | (np.int64(w[r, o + 1]) << 8)]
                xo = b * 2 * half
                s = np.int32(0)
                for j in range(half):
                    q = np.int32(w[r, o + 2 + j])
                    s = np.int32(s + (q & 15) * np.int32(xq[t, xo + j]) + (q >> 4) * np.int32(xq[t, xo + half + j]))
                acc += d * xd[t, b] * np.float32(s - 8 * xs[t, b])
            out[t, r] = acc


@njit(cache=True)
def dequantize_row_q4_0(w, r, out, f16):
    nb = out.shape[0] // 32
    for b in range(nb):
        o = b * 18
        d = f16[np.int64(w[r, o]) | (np.int64(w[r, o + 1]) << 8)]
        for j in range(16):
            q = np.int32(w[r, o + 2 + j])
            out[b * 32 + j] = d * np.float32((q & 15) - 8)
            out[b * 32 + 16 + j] = d * np.float32((q >> 4) - 8)
