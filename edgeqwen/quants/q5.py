"""Q5_0 and Q5_1 weights: blocks of 32 5-bit values, as in ggml.

    Q5_0 (22 bytes): d (f16), qh (uint32 little-endian), qs[16]; value = d * (q - 16)
    Q5_1 (24 bytes): d (f16), m (f16), qh, qs[16];              value = d * q + m
q's low 4 bits: byte j of qs holds element j (low nibble) and j+16 (high nibble); its 5th bit is
bit i of qh for element i. Reference: gguf-py `gguf.quants.dequantize(..., Q5_0 / Q5_1)` (numpy).

Kernel (the unpackers below; drivers built from the shared helpers in `unpacked.py`): a row is
unpacked once into an int16 buffer (Q5_0: q - 16 in [-16, 15]; Q5_1: q in [0, 31]), per-block
scale dw = d and, for Q5_1, offset mw = m. Against the Q8_0 activation a block contributes
    Q5_0: dx * d * sum_j q_j xq_j                     (ggml's Q5_0 x Q8_0)
    Q5_1: dx * (d * sum_j q_j xq_j + m * xs)          (ggml's Q5_1 x Q8_1; xs = sum xq, exact)
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .unpacked import (dequantize_row_with, ffn_with, matmul3_with, matmul_with, no_half_sums, rows_min32,
                       rows_plain)

BLOCK_BYTES_Q5_0 = 22
BLOCK_BYTES_Q5_1 = 24
MODE_Q5_0 = 0     # no offsets (see unpacked.py)
MODE_Q5_1 = 1     # per-32-block offsets


@njit(inline="always")
def _f16(w, r, o, f16):
    return f16[np.int64(w[r, o]) | (np.int64(w[r, o + 1]) << 8)]


@njit(inline="always")
def _u32(w, r, o):
    return (np.uint32(w[r, o]) | (np.uint32(w[r, o + 1]) << np.uint32(8))
            | (np.uint32(w[r, o + 2]) << np.uint32(16)) | (np.uint32(w[r, o + 3]) << np.uint32(24)))


@njit(inline="always")
def _fives(w, r, o, qh, q, base, offset):
    """The 32 five-bit values of a block whose qs start at byte o, minus `offset`, into q[base:].
    A fixed 16-long body, unsigned indices, constant per-lane masks for the 5th bits: the shape
    LLVM's SLP vectorizer handles (see kquants.py)."""
    src = np.uint64(o)
    dst = np.uint64(base)
    for j in range(16):
        u = np.uint64(j)
        byte = w[r, src + u]
        h0 = np.int16(16) * np.int16((qh & np.uint32(1 << j)) != 0)
        h1 = np.int16(16) * np.int16((qh & np.uint32(1 << (j + 16))) != 0)
        q[dst + u] = (np.int16(byte & np.uint8(15)) + h0) - offset
        q[dst + np.uint64(16) + u] = (np.int16(byte >> np.uint8(4)) + h1) - offset


@njit(inline="always")
def unpack_q5_0(w, r, q, dw, mw, f16):
    """Row r of w: (N, K/32*22) uint8 -> q: (K,) int16 (q - 16), dw: (K/32,) f32 (d). mw unused."""
    nb = q.shape[0] // 32
    for b in range(nb):
        o = b * BLOCK_BYTES_Q5_0
        dw[b] = _f16(w, r, o, f16)
        _fives(w, r, o + 6, _u32(w, r, o + 2), q, b * 32, np.int16(16))


@njit(inline="always")
def unpack_q5_1(w, r, q, dw, mw, f16):
    """Row r of w: (N, K/32*24) uint8 -> q: (K,) int16 (q), dw, mw: (K/32,) f32 (d, m)."""
    nb = q.shape[0] // 32
    for b in range(nb):
        o = b * BLOCK_BYTES_Q5_1
        dw[b] = _f16(w, r, o, f16)
        mw[b] = _f16(w, r, o + 2, f16)
        _fives(w, r, o + 8, _u32(w, r, o + 4), q, b * 32, np.int16(0))


# ---- drivers (see unpacked.py)

@njit(parallel=True, cache=True, fastmath=True)
def matmul_q5_0(w, xq, xd, xs, out, f16):
    """out (T, N) = dequant(xq, xd) @ dequant(w).T"""
    matmul_with(rows_plain, no_half_sums, unpack_q5_0, w, xq, xd, xs, out, f16)


@njit(parallel=True, cache=True, fastmath=True)
def matmul3_q5_0(w0, w1, w2, xq, xd, xs, out0, out1, out2, f16):
    """Q, K, V of the same input in one parallel region."""
    matmul3_with(rows_plain, no_half_sums, unpack_q5_0, w0, w1, w2, xq, xd, xs, out0, out1, out2, f16)


@njit(parallel=True, cache=True, fastmath=True)
def ffn_q5_0(wg, wu, xq, xd, xs, g, u, f16):
    """g = silu(x @ Wg.T) * (x @ Wu.T); u is scratch."""
    ffn_with(rows_plain, no_half_sums, unpack_q5_0, wg, wu, xq, xd, xs, g, u, f16)


@njit(cache=True)
def dequantize_row_q5_0(w, r, out, f16):
    dequantize_row_with(unpack_q5_0, MODE_Q5_0, w, r, out, f16)


@njit(parallel=True, cache=True, fastmath=True)
def matmul_q5_1(w, xq, xd, xs, out, f16):
    """out (T, N) = dequant(xq, xd) @ dequant(w).T"""
    matmul_with(rows_min32, no_half_sums, unpack_q5_1, w, xq, xd, xs, out, f16)


@njit(parallel=True, cache=True, fastmath=True)
def matmul3_q5_1(w0, w1, w2, xq, xd, xs, out0, out1, out2, f16):
    """Q, K, V of the same input in one parallel region."""
    matmul3_with(rows_min32, no_half_sums, unpack_q5_1, w0, w1, w2, xq, xd, xs, out0, out1, out2, f16)


@njit(parallel=True, cache=True, fastmath=True)
def ffn_q5_1(wg, wu, xq, xd, xs, g, u, f16):
    """g = silu(x @ Wg.T) * (x @ Wu.T); u is scratch."""
    ffn_with(rows_min32, no_half_sums, unpack_q5_1, wg, wu, xq, xd, xs, g, u, f16)


@njit(cache=True)
def dequantize_row_q5_1(w, r, out, f16):
    dequantize_row_with(unpack_q5_1, MODE_Q5_1, w, r, out, f16)
