"""Q4_0 weights: blocks of 32 4-bit values with one float16 scale (18 bytes), as in ggml.

Byte j of a block holds element j in its low nibble and element j+16 in its high nibble;
value = (nibble - 8) * d. Reference: gguf-py `gguf.quants.dequantize(..., Q4_0)`.
Kernel: each row is unpacked once to int8 (nibble - 8, natural order) in a per-task buffer,
then dotted with every token's Q8_0 activation in fixed 32-long block loops (int32 sums,
SLP -> vpmaddwd), scaled by d_w * d_x. Unpacking is paid once per row, not per token.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

BLOCK_BYTES = 18
ROWS_PER_TASK = 16


@njit(inline="always")
def _rows(w, r0, r1, xq, xd, out, f16, q, dw):
    """out[t, r] for rows r0..r1 of w: (N, K/32*18) uint8; xq: (T, K) int8; xd: (T, K/32) f32;
    out: (T, N) f32; q: (K,) int8 and dw: (K/32,) f32 are scratch."""
    T = xq.shape[0]
    nb = xd.shape[1]
    for r in range(r0, r1):
        for b in range(nb):
            o = b * 18
            dw[b] = f16[np.int64(w[r, o]) | (np.int64(w[r, o + 1]) << 8)]
            for j in range(16):
                byte = w[r, o + 2 + j]
                q[b * 32 + j] = np.int8(byte & np.uint8(15)) - np.int8(8)
                q[b * 32 + 16 + j] = np.int8(byte >> np.uint8(4)) - np.int8(8)
        for t in range(T):
            acc = np.float32(0.0)
            for b in range(nb):
                xo = b * 32
                s = np.int32(0)
                for j in range(32):
                    s = np.int32(s + np.int32(q[xo + j]) * np.int32(xq[t, xo + j]))
                acc += dw[b] * xd[t, b] * np.float32(s)
            out[t, r] = acc


@njit(parallel=True, cache=True, fastmath=True)
def matmul_q4_0(w, xq, xd, out, f16):
    """out (T, N) = dequant(xq, xd) @ dequant(w).T"""
    n = (w.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    K = xq.shape[1]
    for task in prange(n):
        q = np.empty(K, np.int8)
        dw = np.empty(K // 32, np.float32)
        r0 = task * ROWS_PER_TASK
        _rows(w, r0, min(w.shape[0], r0 + ROWS_PER_TASK), xq, xd, out, f16, q, dw)


@njit(parallel=True, cache=True, fastmath=True)
def matmul3_q4_0(w0, w1, w2, xq, xd, out0, out1, out2, f16):
    """Three matmuls of the same input (Q, K, V) in one parallel region."""
    n0 = (w0.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    n1 = (w1.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    n2 = (w2.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    K = xq.shape[1]
    for task in prange(n0 + n1 + n2):
        q = np.empty(K, np.int8)
        dw = np.empty(K // 32, np.float32)
        if task < n0:
            r0 = task * ROWS_PER_TASK
            _rows(w0, r0, min(w0.shape[0], r0 + ROWS_PER_TASK), xq, xd, out0, f16, q, dw)
        elif task < n0 + n1:
            r0 = (task - n0) * ROWS_PER_TASK
            _rows(w1, r0, min(w1.shape[0], r0 + ROWS_PER_TASK), xq, xd, out1, f16, q, dw)
        else:
            r0 = (task - n0 - n1) * ROWS_PER_TASK
            _rows(w2, r0, min(w2.shape[0], r0 + ROWS_PER_TASK), xq, xd, out2, f16, q, dw)


@njit(parallel=True, cache=True, fastmath=True)
def ffn_q4_0(wg, wu, xq, xd, g, u, f16):
    """g (T, F) = silu(x @ Wg.T) * (x @ Wu.T); u is scratch of the same shape."""
    n = (wg.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    T, K = xq.shape
    for task in prange(n):
        q = np.empty(K, np.int8)
        dw = np.empty(K // 32, np.float32)
        r0 = task * ROWS_PER_TASK
        r1 = min(wg.shape[0], r0 + ROWS_PER_TASK)
        _rows(wg, r0, r1, xq, xd, g, f16, q, dw)
        _rows(wu, r0, r1, xq, xd, u, f16, q, dw)
        for t in range(T):
            for r in range(r0, r1):
                v = g[t, r]
                g[t, r] = v / (np.float32(1.0) + np.exp(-v)) * u[t, r]


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
