"""K-quant weights (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): super-blocks of 256 values with a float16
super-scale d (and dmin) and small integer scales (and mins) per sub-block of 16 or 32, as in
ggml (`block_qN_K` in ggml-common.h, `dequantize_row_qN_K` in ggml-quants.c).

Layouts (bytes per super-block) and values, element e = 0..255 of a super-block:
    Q2_K (84):  scales[16] (low 4 bits: scale, high 4 bits: min, per 16), qs[64], d, dmin
                value = d * sc[e/16] * q - dmin * m[e/16],        q: 2 bits of qs
    Q3_K (110): hmask[32], qs[64], scales[12] (16 x 6-bit, packed), d
                value = d * (sc[e/16] - 32) * (q - 4 * !hbit),     q: 2 bits of qs, hbit of hmask
    Q4_K (144): d, dmin, scales[12] (8 x (6-bit scale, 6-bit min), packed), qs[128]
                value = d * sc[e/32] * q - dmin * m[e/32],        q: a nibble of qs
    Q5_K (176): d, dmin, scales[12], qh[32], qs[128]              as Q4_K, 5th bit of q from qh
    Q6_K (210): ql[128], qh[64], scales[16] (int8), d
                value = d * sc[e/16] * (q - 32),                  q: nibble of ql, 2 bits of qh
Reference: gguf-py `gguf.quants.dequantize(..., Q*_K)` (numpy), which mirrors ggml's
`dequantize_row_q*_K`.

Kernel (the unpackers below; drivers built from the shared helpers in `unpacked.py`). ggml pairs
K-quants with a Q8_K activation (one float32 scale per 256 values); edgeqwen reuses the Q8_0
activation (one float16 scale dx per 32 values, bit-exact with ggml's Q8_0) that every other
quantized weight already uses, so one activation quantization serves a whole layer whatever the
mix of weight types. Its scales are finer than Q8_K's, it costs one float multiply per 32 values,
and its reference is gguf-py's own Q8_0 round trip. A row is unpacked once into an int16 buffer
in which the integer sub-block scales are folded in where they are per 16 values (Q2_K, Q3_K,
Q6_K; |q * sc| <= 32 * 128 fits int16), with dw = d per 32-block; where they are per 32 (Q4_K,
Q5_K) q stays raw and dw = d * sc. The minimum terms become offsets mw multiplied by the
activation's integer block sums:
    Q3_K, Q6_K:  dx * d * sum_j (sc q)_j xq_j                                  (rows_plain)
    Q4_K, Q5_K:  dx * (d sc * sum_j q_j xq_j - dmin m * xs)                    (rows_min32)
    Q2_K:        dx * (d * sum_j (sc q)_j xq_j - dmin (m_a xs_a + m_b xs_b))   (rows_min16: the
                 two 16-halves a, b of a 32-block have their own mins; xs_a, xs_b are the int
                 sums of xq over each half)

Code shape matters for speed here (measured, numba 0.68 / LLVM, AVX2, decode of a 3072 x 1024
matrix on one core: 1.0-1.8 ms per matrix instead of 3-7 ms):
  * indices into w and q are unsigned (np.uint64) in the hot loops: numba's wrap-around of
    negative signed indices hides that the loads are consecutive, and LLVM's SLP vectorizer then
    assembles vectors byte by byte (vpinsrb) or not at all;
  * the hot loops have a fixed 16- or 32-long body with constant shifts and masks inside a
    run-time loop over chunks; one chunk reads 16 or 32 bytes of each array it needs and writes
    every value those bytes hold (2, 4 or 8 outputs per byte);
  * integer sub-block scales are applied in a separate 16-long pass (Q2_K, Q3_K, Q6_K); float
    scales are computed in their own run-time loop (a small fixed loop with branches in the same
    function leaves the unpacking scalar).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .unpacked import (dequantize_row_with, ffn_with, half_sums, matmul3_with, matmul_with, no_half_sums,
                       rows_min16, rows_min32, rows_plain)

QK_K = 256
BLOCK_BYTES_Q2_K = 84
BLOCK_BYTES_Q3_K = 110
BLOCK_BYTES_Q4_K = 144
BLOCK_BYTES_Q5_K = 176
BLOCK_BYTES_Q6_K = 210
MODE_Q2_K = 2     # offsets per 16 values (see unpacked.py)
MODE_Q3_K = 0     # no offsets
MODE_Q4_K = 1     # offsets per 32 values
MODE_Q5_K = 1
MODE_Q6_K = 0

_U = np.uint64    # index type of the hot loops
_B = np.uint8
_H = np.int16


@njit(inline="always")
def _f16(w, r, o, f16):
    return f16[np.int64(w[r, o]) | (np.int64(w[r, o + 1]) << 8)]


@njit(inline="always")
def _scale_min_k4(w, r, o, j):
    """ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7) from the 12
    packed bytes at o (Q4_K, Q5_K)."""
    if j < 4:
        sc = np.int64(w[r, o + j]) & 63
        m = np.int64(w[r, o + j + 4]) & 63
    else:
        sc = (np.int64(w[r, o + j + 4]) & 15) | ((np.int64(w[r, o + j - 4]) >> 6) << 4)
        m = (np.int64(w[r, o + j + 4]) >> 4) | ((np.int64(w[r, o + j]) >> 6) << 4)
    return sc, m


@njit(inline="always")
def _k4_scales(w, r, q, dw, mw, f16, nbytes):
    """dw = d * sc and mw = -dmin * m per 32-block (Q4_K, Q5_K: d, dmin, scales at 0, 2, 4)."""
    for b in range(q.shape[0] // 32):
        o = (b // 8) * nbytes
        sc, m = _scale_min_k4(w, r, o + 4, b % 8)
        dw[b] = _f16(w, r, o, f16) * np.float32(sc)
        mw[b] = -(_f16(w, r, o + 2, f16) * np.float32(m))


@njit(inline="always")
def _scale16(q, c, s):
    """q[16c : 16c+16] *= s (int16)."""
    dst = _U(c * 16)
    for l in range(16):
        u = dst + _U(l)
        q[u] = q[u] * s


@njit(inline="always")
def unpack_q2_k(w, r, q, dw, mw, f16):
    """Row r -> q: (K,) int16 = sc * q2, dw: (K/32,) = d, mw: (K/16,) = -dmin * m."""
    K = q.shape[0]
    for c in range(K // 16):
        o = (c // 16) * BLOCK_BYTES_Q2_K
        mw[c] = -(_f16(w, r, o + 82, f16) * np.float32(w[r, o + c % 16] >> _B(4)))
    for b in range(K // 32):
        dw[b] = _f16(w, r, (b // 8) * BLOCK_BYTES_Q2_K + 80, f16)
    for c in range(K // 64):              # 16 qs bytes -> 4 x 16 values (shifts 0, 2, 4, 6)
        sb, h, x = c // 4, (c // 2) % 2, c % 2
        src = _U(sb * BLOCK_BYTES_Q2_K + 16 + h * 32 + x * 16)
        e = _U(sb * QK_K + h * 128 + x * 16)
        for l in range(16):
            u = _U(l)
            a = w[r, src + u]
            q[e + u] = _H(a & _B(3))
            q[e + _U(32) + u] = _H((a >> _B(2)) & _B(3))
            q[e + _U(64) + u] = _H((a >> _B(4)) & _B(3))
            q[e + _U(96) + u] = _H(a >> _B(6))
    for c in range(K // 16):
        _scale16(q, c, _H(w[r, (c // 16) * BLOCK_BYTES_Q2_K + c % 16] & _B(15)))


@njit(inline="always")
def unpack_q3_k(w, r, q, dw, mw, f16):
    """Row r -> q: (K,) int16 = (sc - 32) * (q3 - 4 * !hbit), dw: (K/32,) = d. mw unused."""
    K = q.shape[0]
    for b in range(K // 32):
        dw[b] = _f16(w, r, (b // 8) * BLOCK_BYTES_Q3_K + 108, f16)
    for c in range(K // 64):              # 16 qs + 16 hmask bytes -> 4 x 16 values
        sb, h, x = c // 4, (c // 2) % 2, c % 2
        o = sb * BLOCK_BYTES_Q3_K
        src = _U(o + 32 + h * 32 + x * 16)
        msk = _U(o + x * 16)
        e = _U(sb * QK_K + h * 128 + x * 16)
        hs = _B(4 * h)                    # hmask bit 4h + j belongs to shift j of half h
        for l in range(16):
            u = _U(l)
            a = w[r, src + u]
            m = (w[r, msk + u] >> hs) ^ _B(15)            # bit j set: subtract 4
            q[e + u] = _H(a & _B(3)) - _H((m & _B(1)) << _B(2))
            q[e + _U(32) + u] = _H((a >> _B(2)) & _B(3)) - _H((m & _B(2)) << _B(1))
            q[e + _U(64) + u] = _H((a >> _B(4)) & _B(3)) - _H(m & _B(4))
            q[e + _U(96) + u] = _H(a >> _B(6)) - _H((m & _B(8)) >> _B(1))
    for c in range(K // 16):
        o = (c // 16) * BLOCK_BYTES_Q3_K
        i = c % 16
        lo = (w[r, o + 96 + (i % 8)] >> _B(4 * (i // 8))) & _B(15)
        hi = (w[r, o + 104 + (i % 4)] >> _B(2 * (i // 4))) & _B(3)
        _scale16(q, c, _H(lo | (hi << _B(4))) - _H(32))


@njit(inline="always")
def unpack_q4_k(w, r, q, dw, mw, f16):
    """Row r -> q: (K,) int16 = q4, dw: (K/32,) = d * sc, mw: (K/32,) = -dmin * m."""
    K = q.shape[0]
    _k4_scales(w, r, q, dw, mw, f16, BLOCK_BYTES_Q4_K)
    for c in range(K // 64):              # 32 qs bytes -> sub-blocks 2p (low), 2p+1 (high nibbles)
        src = _U((c // 4) * BLOCK_BYTES_Q4_K + 16 + (c % 4) * 32)
        dst = _U(c * 64)
        for l in range(32):
            u = _U(l)
            byte = w[r, src + u]
            q[dst + u] = _H(byte & _B(15))
            q[dst + _U(32) + u] = _H(byte >> _B(4))


@njit(inline="always")
def unpack_q5_k(w, r, q, dw, mw, f16):
    """Row r -> q: (K,) int16 = q5, dw: (K/32,) = d * sc, mw: (K/32,) = -dmin * m."""
    K = q.shape[0]
    _k4_scales(w, r, q, dw, mw, f16, BLOCK_BYTES_Q5_K)
    for c in range(K // 128):             # 16 qh bytes + 4 x 16 qs bytes -> 8 x 16 values
        sb, x = c // 2, c % 2
        o = sb * BLOCK_BYTES_Q5_K
        qs = _U(o + 48 + x * 16)
        hs = _U(o + 16 + x * 16)          # bit s of qh[l]: 5th bit of sub-block s
        e = _U(sb * QK_K + x * 16)
        for l in range(16):
            u = _U(l)
            hb = w[r, hs + u]
            b0 = w[r, qs + u]
            b1 = w[r, qs + _U(32) + u]
            b2 = w[r, qs + _U(64) + u]
            b3 = w[r, qs + _U(96) + u]
            q[e + u] = _H((b0 & _B(15)) | ((hb & _B(1)) << _B(4)))
            q[e + _U(32) + u] = _H((b0 >> _B(4)) | ((hb & _B(2)) << _B(3)))
            q[e + _U(64) + u] = _H((b1 & _B(15)) | ((hb & _B(4)) << _B(2)))
            q[e + _U(96) + u] = _H((b1 >> _B(4)) | ((hb & _B(8)) << _B(1)))
            q[e + _U(128) + u] = _H((b2 & _B(15)) | (hb & _B(16)))
            q[e + _U(160) + u] = _H((b2 >> _B(4)) | ((hb & _B(32)) >> _B(1)))
            q[e + _U(192) + u] = _H((b3 & _B(15)) | ((hb & _B(64)) >> _B(2)))
            q[e + _U(224) + u] = _H((b3 >> _B(4)) | ((hb & _B(128)) >> _B(3)))


@njit(inline="always")
def unpack_q6_k(w, r, q, dw, mw, f16):
    """Row r -> q: (K,) int16 = sc * (q6 - 32), dw: (K/32,) = d. mw unused."""
    K = q.shape[0]
    for b in range(K // 32):
        dw[b] = _f16(w, r, (b // 8) * BLOCK_BYTES_Q6_K + 208, f16)
    for c in range(K // 64):              # 2 x 16 ql + 16 qh bytes -> 4 x 16 values
        sb, h, x = c // 4, (c // 2) % 2, c % 2
        o = sb * BLOCK_BYTES_Q6_K
        lo = _U(o + h * 64 + x * 16)
        hi = _U(o + 128 + h * 32 + x * 16)
        e = _U(sb * QK_K + h * 128 + x * 16)
        for l in range(16):
            u = _U(l)
            a = w[r, lo + u]
            a2 = w[r, lo + _U(32) + u]
            b = w[r, hi + u]
            q[e + u] = _H((a & _B(15)) | ((b & _B(3)) << _B(4)))
            q[e + _U(32) + u] = _H((a2 & _B(15)) | ((b & _B(12)) << _B(2)))
            q[e + _U(64) + u] = _H((a >> _B(4)) | (b & _B(48)))
            q[e + _U(96) + u] = _H((a2 >> _B(4)) | ((b & _B(192)) >> _B(2)))
    for c in range(K // 16):
        s = _H(np.int8(w[r, (c // 16) * BLOCK_BYTES_Q6_K + 192 + c % 16]))
        dst = _U(c * 16)
        for l in range(16):
            u = dst + _U(l)
            q[u] = (q[u] - _H(32)) * s


# ---- drivers (see unpacked.py)

@njit(parallel=True, cache=True, fastmath=True)
def matmul_q2_k(w, xq, xd, xs, out, f16):
    """out (T, N) = dequant(xq, xd) @ dequant(w).T"""
    matmul_with(rows_min16, half_sums, unpack_q2_k, w, xq, xd, xs, out, f16)


@njit(parallel=True, cache=True, fastmath=True)
def matmul3_q2_k(w0, w1, w2, xq, xd, xs, out0, out1, out2, f16):
    """Q, K, V of the same input in one parallel region."""
    matmul3_with(rows_min16, half_sums, unpack_q2_k, w0, w1, w2, xq, xd, xs, out0, out1, out2, f16)


@njit(parallel=True, cache=True, fastmath=True)
def ffn_q2_k(wg, wu, xq, xd, xs, g, u, f16):
    """g = silu(x @ Wg.T) * (x @ Wu.T); u is scratch."""
    ffn_with(rows_min16, half_sums, unpack_q2_k, wg, wu, xq, xd, xs, g, u, f16)


@njit(cache=True)
def dequantize_row_q2_k(w, r, out, f16):
    dequantize_row_with(unpack_q2_k, MODE_Q2_K, w, r, out, f16)


@njit(parallel=True, cache=True, fastmath=True)
def matmul_q3_k(w, xq, xd, xs, out, f16):
    """out (T, N) = dequant(xq, xd) @ dequant(w).T"""
    matmul_with(rows_plain, no_half_sums, unpack_q3_k, w, xq, xd, xs, out, f16)


@njit(parallel=True, cache=True, fastmath=True)
def matmul3_q3_k(w0, w1, w2, xq, xd, xs, out0, out1, out2, f16):
    """Q, K, V of the same input in one parallel region."""
    matmul3_with(rows_plain, no_half_sums, unpack_q3_k, w0, w1, w2, xq, xd, xs, out0, out1, out2, f16)


@njit(parallel=True, cache=True, fastmath=True)
def ffn_q3_k(wg, wu, xq, xd, xs, g, u, f16):
    """g = silu(x @ Wg.T) * (x @ Wu.T); u is scratch."""
    ffn_with(rows_plain, no_half_sums, unpack_q3_k, wg, wu, xq, xd, xs, g, u, f16)


@njit(cache=True)
def dequantize_row_q3_k(w, r, out, f16):
    dequantize_row_with(unpack_q3_k, MODE_Q3_K, w, r, out, f16)


@njit(parallel=True, cache=True, fastmath=True)
def matmul_q4_k(w, xq, xd, xs, out, f16):
    """out (T, N) = dequant(xq, xd) @ dequant(w).T"""
    matmul_with(rows_min32, no_half_sums, unpack_q4_k, w, xq, xd, xs, out, f16)


@njit(parallel=True, cache=True, fastmath=True)
def matmul3_q4_k(w0, w1, w2, xq, xd, xs, out0, out1, out2, f16):
    """Q, K, V of the same input in one parallel region."""
    matmul3_with(rows_min32, no_half_sums, unpack_q4_k, w0, w1, w2, xq, xd, xs, out0, out1, out2, f16)


@njit(parallel=True, cache=True, fastmath=True)
def ffn_q4_k(wg, wu, xq, xd, xs, g, u, f16):
    """g = silu(x @ Wg.T) * (x @ Wu.T); u is scratch."""
    ffn_with(rows_min32, no_half_sums, unpack_q4_k, wg, wu, xq, xd, xs, g, u, f16)


@njit(cache=True)
def dequantize_row_q4_k(w, r, out, f16):
    dequantize_row_with(unpack_q4_k, MODE_Q4_K, w, r, out, f16)


@njit(parallel=True, cache=True, fastmath=True)
def matmul_q5_k(w, xq, xd, xs, out, f16):
    """out (T, N) = dequant(xq, xd) @ dequant(w).T"""
    matmul_with(rows_min32, no_half_sums, unpack_q5_k, w, xq, xd, xs, out, f16)


@njit(parallel=True, cache=True, fastmath=True)
def matmul3_q5_k(w0, w1, w2, xq, xd, xs, out0, out1, out2, f16):
    """Q, K, V of the same input in one parallel region."""
    matmul3_with(rows_min32, no_half_sums, unpack_q5_k, w0, w1, w2, xq, xd, xs, out0, out1, out2, f16)


@njit(parallel=True, cache=True, fastmath=True)
def ffn_q5_k(wg, wu, xq, xd, xs, g, u, f16):
    """g = silu(x @ Wg.T) * (x @ Wu.T); u is scratch."""
    ffn_with(rows_min32, no_half_sums, unpack_q5_k, wg, wu, xq, xd, xs, g, u, f16)


@njit(cache=True)
def dequantize_row_q5_k(w, r, out, f16):
    dequantize_row_with(unpack_q5_k, MODE_Q5_K, w, r, out, f16)


@njit(parallel=True, cache=True, fastmath=True)
def matmul_q6_k(w, xq, xd, xs, out, f16):
    """out (T, N) = dequant(xq, xd) @ dequant(w).T"""
    matmul_with(rows_plain, no_half_sums, unpack_q6_k, w, xq, xd, xs, out, f16)


@njit(parallel=True, cache=True, fastmath=True)
def matmul3_q6_k(w0, w1, w2, xq, xd, xs, out0, out1, out2, f16):
    """Q, K, V of the same input in one parallel region."""
    matmul3_with(rows_plain, no_half_sums, unpack_q6_k, w0, w1, w2, xq, xd, xs, out0, out1, out2, f16)


@njit(parallel=True, cache=True, fastmath=True)
def ffn_q6_k(wg, wu, xq, xd, xs, g, u, f16):
    """g = silu(x @ Wg.T) * (x @ Wu.T); u is scratch."""
    ffn_with(rows_plain, no_half_sums, unpack_q6_k, wg, wu, xq, xd, xs, g, u, f16)


@njit(cache=True)
def dequantize_row_q6_k(w, r, out, f16):
    dequantize_row_with(unpack_q6_k, MODE_Q6_K, w, r, out, f16)
