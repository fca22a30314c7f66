"""Shared kernel code for the weight formats that are unpacked row by row: Q4_1 (q4_1.py), Q5_0
and Q5_1 (q5.py), Q2_K ... Q6_K (kquants.py). Each format module has an unpacker

    unpack_<fmt>(w, r, q, dw, mw, f16)

that turns row r of the raw GGUF blocks (w: (N, bytes_per_row) uint8) into
    q:  (K,) int16     integer values, integer sub-block scales folded in where the format has them
                       per 16 values
    dw: (K/32,) f32    float scale of each 32-block
    mw: (K/32,) f32    float offset of each 32-block (mode 1) or (K/16,) of each 16-half (mode 2)
so that the row's value j of 32-block b is  dw[b] * q[j] + mw[...]  (up to float rounding).

Against the Q8_0-quantized activation (xq int8, xd = its float16 block scales, xs = its int32
block sums; see common.py) the dot product of a row with token t is, per 32-block b,
    s = sum_j q[32b+j] * xq[t, 32b+j]                         (int32; SLP -> vpmaddwd)
    mode 0: xd[t,b] * dw[b] * s
    mode 1: xd[t,b] * (dw[b] * s + mw[b] * xs[t,b])
    mode 2: xd[t,b] * (dw[b] * s + mw[2b] * xs16[t,2b] + mw[2b+1] * xs16[t,2b+1])
where xs16 are the int sums of xq over 16-halves (computed once per call, only for Q2_K).
A row is unpacked once per call and then dotted with every token, so prefill pays the unpacking
once per row, not per token.

The helpers here are `inline="always"` and take the `rows_*` scheme, the activation `prep`
(half_sums for Q2_K) and the unpacker as arguments (numba resolves and inlines them: each driver
compiles only its own format and scheme); each format module instantiates its drivers
`matmul_<fmt>`, `matmul3_<fmt>` (Q, K, V of one format in one parallel region), `ffn_<fmt>`
(gate + up + SiLU in one region) and `dequantize_row_<fmt>`, multithreaded over tasks of
ROWS_PER_TASK rows with per-task scratch. Mixed-format Q/K/V (Q4_K_M's Q4_K + Q6_K) run as
per-matrix regions (quants/__init__.py).

What keeps the unpacking vectorized (measured, numba 0.68, AVX2; see also kquants.py): LLVM
vectorizes it only inside a parallel region's body, whose array arguments numba marks noalias
(so the int16 stores cannot alias the weight loads), and only when that body holds a single
format's unpacker and each weight array in its own variable: a runtime switch between two
formats, or picking one of Q/K/V into a shared variable (presumably numba's alias analysis then
withholds noalias), leaves the unpacking scalar, 3-5x slower at decode. Hence one driver per format and one inlined `rows` per
matrix in the fused drivers (at the price of compile time: ~30 s per format on first use, then
cached on disk).

Caching note: numba's on-disk cache of a driver is keyed on the file that defines it; after
editing this file, touch the format modules (or clear __pycache__) to recompile them.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

ROWS_PER_TASK = 16


@njit(inline="always")
def _dot32(q, xq, t, xo):
    s = np.int32(0)
    for j in range(32):
        s = np.int32(s + np.int32(q[xo + j]) * np.int32(xq[t, xo + j]))
    return s


# One `rows_*` per offset scheme (passed to the drivers as a function, so each driver compiles
# only its own; a runtime mode switch would compile all three).

@njit(inline="always")
def rows_plain(unpack, w, r0, r1, xq, xd, xs, xs16, out, f16, q, dw, mw):
    """Mode 0: out[t, r] for rows r0..r1 of w; q, dw, mw: per-task scratch."""
    T = xq.shape[0]
    nb = xd.shape[1]
    for r in range(r0, r1):
        unpack(w, r, q, dw, mw, f16)
        for t in range(T):
            acc = np.float32(0.0)
            for b in range(nb):
                acc += xd[t, b] * (dw[b] * np.float32(_dot32(q, xq, t, b * 32)))
            out[t, r] = acc


@njit(inline="always")
def rows_min32(unpack, w, r0, r1, xq, xd, xs, xs16, out, f16, q, dw, mw):
    """Mode 1: as rows_plain, with an offset per 32-block."""
    T = xq.shape[0]
    nb = xd.shape[1]
    for r in range(r0, r1):
        unpack(w, r, q, dw, mw, f16)
        for t in range(T):
            acc = np.float32(0.0)
            for b in range(nb):
                s = _dot32(q, xq, t, b * 32)
                acc += xd[t, b] * (dw[b] * np.float32(s) + mw[b] * np.float32(xs[t, b]))
            out[t, r] = acc


@njit(inline="always")
def rows_min16(unpack, w, r0, r1, xq, xd, xs, xs16, out, f16, q, dw, mw):
    """Mode 2: as rows_plain, with an offset per 16-half (xs16: the activation's half sums)."""
    T = xq.shape[0]
    nb = xd.shape[1]
    for r in range(r0, r1):
        unpack(w, r, q, dw, mw, f16)
        for t in range(T):
            acc = np.float32(0.0)
            for b in range(nb):
                s = _dot32(q, xq, t, b * 32)
                acc += xd[t, b] * (dw[b] * np.float32(s) + mw[2 * b] * np.float32(xs16[t, 2 * b])
                                   + mw[2 * b + 1] * np.float32(xs16[t, 2 * b + 1]))
            out[t, r] = acc


@njit(inline="always")
def half_sums(xq):
    """(T, K/16) int32 sums of xq over 16-halves (for rows_min16)."""
    T, K = xq.shape
    xs16 = np.empty((T, K // 16), np.int32)
    for t in range(T):
        for h in range(K // 16):
            s = np.int32(0)
            for j in range(16):
                s = np.int32(s + np.int32(xq[t, h * 16 + j]))
            xs16[t, h] = s
    return xs16


@njit(inline="always")
def no_half_sums(xq):
    return np.zeros((1, 1), np.int32)


@njit(inline="always")
def matmul_with(rows, prep, unpack, w, xq, xd, xs, out, f16):
    """out (T, N) = dequant(xq, xd) @ dequant(w).T"""
    N = w.shape[0]
    K = xq.shape[1]
    n = (N + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    xs16 = prep(xq)
    for task in prange(n):
        q = np.empty(K, np.int16)
        dw = np.empty(K // 32, np.float32)
        mw = np.empty(K // 16, np.float32)
        r0 = task * ROWS_PER_TASK
        rows(unpack, w, r0, min(N, r0 + ROWS_PER_TASK), xq, xd, xs, xs16, out, f16, q, dw, mw)


@njit(inline="always")
def matmul3_with(rows, prep, unpack, w0, w1, w2, xq, xd, xs, out0, out1, out2, f16):
    """Three matmuls of the same input (Q, K, V), all of one format, in one parallel region."""
    n0 = (w0.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    n1 = (w1.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    n2 = (w2.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    K = xq.shape[1]
    xs16 = prep(xq)
    for task in prange(n0 + n1 + n2):
        q = np.empty(K, np.int16)
        dw = np.empty(K // 32, np.float32)
        mw = np.empty(K // 16, np.float32)
        # (one `rows` per matrix: selecting the matrix into one variable would make numba drop
        # the noalias marking of the region's arrays, and the unpacking would stay scalar)
        if task < n0:
            r0 = task * ROWS_PER_TASK
            rows(unpack, w0, r0, min(w0.shape[0], r0 + ROWS_PER_TASK), xq, xd, xs, xs16, out0, f16, q, dw, mw)
        elif task < n0 + n1:
            r0 = (task - n0) * ROWS_PER_TASK
            rows(unpack, w1, r0, min(w1.shape[0], r0 + ROWS_PER_TASK), xq, xd, xs, xs16, out1, f16, q, dw, mw)
        else:
            r0 = (task - n0 - n1) * ROWS_PER_TASK
            rows(unpack, w2, r0, min(w2.shape[0], r0 + ROWS_PER_TASK), xq, xd, xs, xs16, out2, f16, q, dw, mw)


@njit(inline="always")
def ffn_with(rows, prep, unpack, wg, wu, xq, xd, xs, g, u, f16):
    """g (T, F) = silu(x @ Wg.T) * (x @ Wu.T), both of one format; u is scratch of g's shape."""
    n = (wg.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    T, K = xq.shape
    xs16 = prep(xq)
    for task in prange(n):
        q = np.empty(K, np.int16)
        dw = np.empty(K // 32, np.float32)
        mw = np.empty(K // 16, np.float32)
        r0 = task * ROWS_PER_TASK
        r1 = min(wg.shape[0], r0 + ROWS_PER_TASK)
        rows(unpack, wg, r0, r1, xq, xd, xs, xs16, g, f16, q, dw, mw)
        rows(unpack, wu, r0, r1, xq, xd, xs, xs16, u, f16, q, dw, mw)
        for t in range(T):
            for r in range(r0, r1):
                v = g[t, r]
                g[t, r] = v / (np.float32(1.0) + np.exp(-v)) * u[t, r]


@njit(inline="always")
def dequantize_row_with(unpack, mode, w, r, out, f16):
    """Row r of w -> out (K,) f32 (the embedding lookup)."""
    K = out.shape[0]
    q = np.empty(K, np.int16)
    dw = np.empty(K // 32, np.float32)
    mw = np.empty(K // 16, np.float32)
    unpack(w, r, q, dw, mw, f16)
    for j in range(K):
        v = dw[j // 32] * np.float32(q[j])
        if mode == 1:
            v += mw[j // 32]
        elif mode == 2:
            v += mw[j // 16]
        out[j] = v
