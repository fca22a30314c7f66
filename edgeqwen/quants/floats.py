"""F32, F16 and BF16 weights: float32 activations, float32 accumulation.

F16 values go through a 65,536-entry table (numba has no float16 arithmetic); BF16 is the
upper half of a float32. Reference: numpy `astype(np.float32)` / gguf-py BF16 dequantize.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, fastmath=True)
def matmul_f32(w, x, out):
    """w: (N, K) f32; x: (T, K) f32; out: (T, N) f32."""
    N, K = w.shape
    T = x.shape[0]
    for r in prange(N):
        for t in range(T):
            acc = np.float32(0.0)
            for j in range(K):
                acc += w[r, j] * x[t, j]
            out[t, r] = acc


@njit(parallel=True, cache=True, fastmath=True)
def matmul_f16(w, x, out, f16):
    """w: (N, K) uint16 float16 bits; x: (T, K) f32; out: (T, N) f32."""
    N, K = w.shape
    T = x.shape[0]
    for r in prange(N):
        row = np.empty(K, np.float32)
        for j in range(K):
            row[j] = f16[w[r, j]]
        for t in range(T):
            acc = np.float32(0.0)
            for j in range(K):
                acc += row[j] * x[t, j]
            out[t, r] = acc


@njit(parallel=True, cache=True, fastmath=True)
def matmul_bf16(w, x, out):
    """w: (N, K) uint16 bfloat16 bits; x: (T, K) f32; out: (T, N) f32."""
    N, K = w.shape
    T = x.shape[0]
    for r in prange(N):
        bits = np.empty(K, np.uint32)
        for j in range(K):
            bits[j] = np.uint32(w[r, j]) << 16
        row = bits.view(np.float32)
        for t in range(T):
            acc = np.float32(0.0)
            for j in range(K):
                acc += row[j] * x[t, j]
            out[t, r] = acc
