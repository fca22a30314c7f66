"""Q8_0 weights: blocks of 32 int8 values with one float16 scale (34 bytes), as in ggml.

Reference: gguf-py `gguf.quants.dequantize(..., Q8_0)`. Kernel: int8 x int8 -> int32 dot per
block against the Q8_0-quantized activation, scaled by d_w * d_x, accumulated in float32.
The fixed 32-long block loop becomes vpmovsxbw + vpmaddwd through LLVM's SLP vectorizer
(enabled in quants/common.py). Drivers: one matrix, three matrices in one parallel region
(Q/K/V), and gate+up with SiLU fused (the FFN), so a layer needs few parallel regions.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

BLOCK_BYTES = 34
ROWS_PER_TASK = 16


@njit(inline="always")
def _rows(w, wi, r0, r1, xq, xd, out, f16):
    """out[t, r] for rows r0..r1 of w: (N, K/32*34) uint8 (wi: same bytes as int8);
    xq: (T, K) int8; xd: (T, K/32) f32; out: (T, N) f32."""
    T = xq.shape[0]
    nb = xd.shape[1]
    for r in range(r0, r1):
        for t in range(T):
            acc = np.float32(0.0)
            for b in range(nb):
                o = b * 34
                d = f16[np.int64(w[r, o]) | (np.int64(w[r, o + 1]) << 8)]
                xo = b * 32
                s = np.int32(0)
                for j in range(32):
                    s = np.int32(s + np.int32(wi[r, o + 2 + j]) * np.int32(xq[t, xo + j]))
                acc += d * xd[t, b] * np.float32(s)
            out[t, r] = acc


@njit(parallel=True, cache=True, fastmath=True)
def matmul_q8_0(w, wi, xq, xd, out, f16):
    """out (T, N) = dequant(xq, xd) @ dequant(w).T"""
    n = (w.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for task in prange(n):
        r0 = task * ROWS_PER_TASK
        _rows(w, wi, r0, min(w.shape[0], r0 + ROWS_PER_TASK), xq, xd, out, f16)


@njit(parallel=True, cache=True, fastmath=True)
def matmul3_q8_0(w0, wi0, w1, wi1, w2, wi2, xq, xd, out0, out1, out2, f16):
    """Three matmuls of the same input (Q, K, V) in one parallel region."""
    n0 = (w0.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    n1 = (w1.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    n2 = (w2.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for task in prange(n0 + n1 + n2):
        if task < n0:
            r0 = task * ROWS_PER_TASK
            _rows(w0, wi0, r0, min(w0.shape[0], r0 + ROWS_PER_TASK), xq, xd, out0, f16)
        elif task < n0 + n1:
            r0 = (task - n0) * ROWS_PER_TASK
            _rows(w1, wi1, r0, min(w1.shape[0], r0 + ROWS_PER_TASK), xq, xd, out1, f16)
        else:
            r0 = (task - n0 - n1) * ROWS_PER_TASK
            _rows(w2, wi2, r0, min(w2.shape[0], r0 + ROWS_PER_TASK), xq, xd, out2, f16)


@njit(parallel=True, cache=True, fastmath=True)
def ffn_q8_0(wg, wgi, wu, wui, xq, xd, g, u, f16):
    """g (T, F) = silu(x @ Wg.T) * (x @ Wu.T); u is scratch of the same shape."""
    n = (wg.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    T = xq.shape[0]
    for task in prange(n):
        r0 = task * ROWS_PER_TASK
        r1 = min(wg.shape[0], r0 + ROWS_PER_TASK)
        _rows(wg, wgi, r0, r1, xq, xd, g, f16)
        _rows(wu, wui, r0, r1, xq, xd, u, f16)
        for t in range(T):
            for r in range(r0, r1):
                v = g[t, r]
                g[t, r] = v / (np.float32(1.0) + np.exp(-v)) * u[t, r]


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
