"""Q4_1 weights: blocks of 32 unsigned 4-bit values with a float16 scale and a float16 minimum
(20 bytes: d, m, qs[16]), as in ggml.

Byte j of `qs` holds element j in its low nibble and element j+16 in its high nibble;
value = d * nibble + m. Reference: gguf-py `gguf.quants.dequantize(..., Q4_1)` (numpy).

Kernel (the unpacker below; drivers built from the shared helpers in `unpacked.py`): a row is
unpacked once into an int16 buffer of nibbles, per-block scale dw = d and offset mw = m. Against
the Q8_0 activation (xq, dx, and the block sum xs = sum(xq)) a block contributes
    sum_j (d q_j + m)(dx xq_j) = dx * (d * sum_j q_j xq_j + m * xs),
one int32 dot plus one multiply-add per block: ggml's Q4_1 x Q8_1 pairing, with the activation's
block sum kept as an exact integer instead of Q8_1's float16 `s = d * sum`.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .unpacked import dequantize_row_with, ffn_with, matmul3_with, matmul_with, no_half_sums, rows_min32

BLOCK_BYTES = 20
MODE = 1          # per-32-block offsets (see unpacked.py)


@njit(inline="always")
def _f16(w, r, o, f16):
    return f16[np.int64(w[r, o]) | (np.int64(w[r, o + 1]) << 8)]


@njit(inline="always")
def unpack_q4_1(w, r, q, dw, mw, f16):
    """Row r of w: (N, K/32*20) uint8 -> q: (K,) int16 nibbles, dw, mw: (K/32,) f32 (d, m).
    (A run-time loop over blocks around a fixed 16-long body with unsigned indices: the shape
    LLVM's SLP vectorizer handles; see kquants.py.)"""
    nb = q.shape[0] // 32
    for b in range(nb):
        o = b * BLOCK_BYTES
        dw[b] = _f16(w, r, o, f16)
        mw[b] = _f16(w, r, o + 2, f16)
        src = np.uint64(o + 4)
        dst = np.uint64(b * 32)
        for j in range(16):
            u = np.uint64(j)
            byte = w[r, src + u]
            q[dst + u] = np.int16(byte & np.uint8(15))
            q[dst + np.uint64(16) + u] = np.int16(byte >> np.uint8(4))


# ---- drivers (see unpacked.py)

@njit(parallel=True, cache=True, fastmath=True)
def matmul_q4_1(w, xq, xd, xs, out, f16):
    """out (T, N) = dequant(xq, xd) @ dequant(w).T"""
    matmul_with(rows_min32, no_half_sums, unpack_q4_1, w, xq, xd, xs, out, f16)


@njit(parallel=True, cache=True, fastmath=True)
def matmul3_q4_1(w0, w1, w2, xq, xd, xs, out0, out1, out2, f16):
    """Q, K, V of the same input in one parallel region."""
    matmul3_with(rows_min32, no_half_sums, unpack_q4_1, w0, w1, w2, xq, xd, xs, out0, out1, out2, f16)


@njit(parallel=True, cache=True, fastmath=True)
def ffn_q4_1(wg, wu, xq, xd, xs, g, u, f16):
    """g = silu(x @ Wg.T) * (x @ Wu.T); u is scratch."""
    ffn_with(rows_min32, no_half_sums, unpack_q4_1, wg, wu, xq, xd, xs, g, u, f16)


@njit(cache=True)
def dequantize_row_q4_1(w, r, out, f16):
    dequantize_row_with(unpack_q4_1, MODE, w, r, out, f16)
