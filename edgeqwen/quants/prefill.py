"""Prompt processing (many tokens per matmul) through BLAS on dequantized weight tiles.

Used for the types the SIMD path has no prompt GEMM for (simd/avx2_gemm.py: Q4_0 and the
K-quants on x86-64 with AVX2), e.g. F16/BF16/Q8_0, and on every type elsewhere. For a batch of
T >= PREFILL_MIN_TOKENS tokens the one-row int8 kernels are compute-bound, while a
float32 GEMM (numpy's OpenBLAS) runs several times faster. So for prefill each weight matrix
is unpacked tile by tile (TILE_ROWS rows at a time, never the whole matrix) into float32 and
multiplied by the activation, which for quantized weights is first quantized to Q8_0 and
dequantized again: the result equals the int8 path's dequant(xq) @ dequant(W).T up to float
summation order. llama.cpp's BLAS backend does the same (without the activation rounding).

The tiles are dequantized serially, on purpose: OpenBLAS's worker threads spin for a while
after each GEMM and numba's OpenMP threads after each parallel region, so alternating a
parallel dequantization with the GEMM made each steal the other's cores. Measured on 0.6B Q4_0,
pp512 with 2 threads: 24.2 s with parallel tiles, 16.4 s serial (decode does not use this path).
"""
from __future__ import annotations

import gguf
import numpy as np
from numba import njit, prange

from ..kernels import PREFILL_MIN_TOKENS  # noqa: F401  (re-exported: batch, server)
from .common import F16_TABLE
from .kquants import dequantize_row_q4_k, dequantize_row_q5_k, dequantize_row_q6_k

T = gguf.GGMLQuantizationType
TILE_ROWS = 512


@njit(cache=True)
def dequant_tile_q8_0(wi, r0, out, f16):
    """Rows r0.. of raw Q8_0 blocks (wi: (N, K/32*34) int8 view) -> out (R, K) f32."""
    R, K = out.shape
    nb = K // 32
    for i in prange(R):
        r = r0 + i
        for b in range(nb):
            o = b * 34
            d = f16[(np.int64(wi[r, o]) & 255) | ((np.int64(wi[r, o + 1]) & 255) << 8)]
            for j in range(32):
                out[i, b * 32 + j] = d * np.float32(wi[r, o + 2 + j])


@njit(cache=True)
def dequant_tile_q4_0(w, r0, out, f16):
    """Rows r0.. of raw Q4_0 blocks (w: (N, K/32*18) uint8) -> out (R, K) f32."""
    R, K = out.shape
    nb = K // 32
    for i in prange(R):
        r = r0 + i
        for b in range(nb):
            o = b * 18
            d = f16[np.int64(w[r, o]) | (np.int64(w[r, o + 1]) << 8)]
            for j in range(16):
                byte = np.int32(w[r, o + 2 + j])
                out[i, b * 32 + j] = d * np.float32((byte & 15) - 8)
                out[i, b * 32 + 16 + j] = d * np.float32((byte >> 4) - 8)


@njit(cache=True)
def dequant_tile_f16(w, r0, out, f16):
    R, K = out.shape
    for i in prange(R):
        for j in range(K):
            out[i, j] = f16[w[r0 + i, j]]


@njit(cache=True)
def dequant_tile_bf16(w, r0, out):
    R, K = out.shape
    for i in prange(R):
        bits = np.empty(K, np.uint32)
        for j in range(K):
            bits[j] = np.uint32(w[r0 + i, j]) << 16
        out[i] = bits.view(np.float32)


@njit(cache=True)
def dequant_tile_q4_k(w, r0, out, f16):
    for i in range(out.shape[0]):
        dequantize_row_q4_k(w, r0 + i, out[i], f16)


@njit(cache=True)
def dequant_tile_q5_k(w, r0, out, f16):
    for i in range(out.shape[0]):
        dequantize_row_q5_k(w, r0 + i, out[i], f16)


@njit(cache=True)
def dequant_tile_q6_k(w, r0, out, f16):
    for i in range(out.shape[0]):
        dequantize_row_q6_k(w, r0 + i, out[i], f16)


K_TILES = {T.Q4_K: dequant_tile_q4_k, T.Q5_K: dequant_tile_q5_k, T.Q6_K: dequant_tile_q6_k}
# Types whose prefill goes through BLAS (else the int8 kernels, tiled 4 tokens per weight load).
BLAS_TYPES = {T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_K, T.Q5_K, T.Q6_K}


def supports(w) -> bool:
    return w.qtype in BLAS_TYPES


def activation(x: np.ndarray, act) -> np.ndarray:
    """The float activation the int8 kernels effectively see: dequant(quant_q8_0(x))."""
    xq, xd, _ = act
    t, k = xq.shape
    return (xq.reshape(t, k // 32, 32).astype(np.float32) * xd[:, :, None]).reshape(t, k)


def matmul(w, x: np.ndarray, out: np.ndarray, xf: np.ndarray) -> np.ndarray:
    """out (T, rows) = xf (T, cols) @ W.T with W unpacked TILE_ROWS rows at a time."""
    if w.qtype == T.F32:
        np.matmul(xf, w.data.T, out=out)
        return out
    tile = np.empty((min(TILE_ROWS, w.rows), w.cols), np.float32)
    for r0 in range(0, w.rows, TILE_ROWS):
        r1 = min(w.rows, r0 + TILE_ROWS)
        t = tile[:r1 - r0]
        if w.qtype == T.Q8_0:
            dequant_tile_q8_0(w.idata, r0, t, F16_TABLE)
        elif w.qtype == T.Q4_0:
            dequant_tile_q4_0(w.data, r0, t, F16_TABLE)
        elif w.qtype in K_TILES:
            K_TILES[w.qtype](w.raw, r0, t, F16_TABLE)
        elif w.qtype == T.F16:
            dequant_tile_f16(w.data, r0, t, F16_TABLE)
        else:
            dequant_tile_bf16(w.data, r0, t)
        out[:, r0:r1] = xf @ t.T
    return out
