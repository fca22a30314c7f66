"""Q4_K, Q5_K and Q6_K quantizers, bit-exact with ggml's reference C quantization.

gguf-py only dequantizes K-quants. These are ports of ggml-quants.c (llama.cpp as vendored by
llama-cpp-python 0.3.36): `quantize_row_q4_K_ref`, `quantize_row_q5_K_ref`,
`quantize_row_q6_K_ref` with their helpers `make_qkx2_quants` (Q4_K/Q5_K: per 32-value sub-block
an affine scale + min, searched over 21/16 candidate scales weighted by av|x| + |x|),
`make_qx_quants(rmse_type=1)` (Q6_K: per 16-value sub-block a symmetric scale, searched over 19
candidates weighted by x^2), `nearest_int` and ggml's fp32->fp16 conversion of the super-block
scales. ggml's `quantize_q4_K/q5_K/q6_K` without an importance matrix -- what llama.cpp's
quantizer uses for `llama-quantize ... Q4_K_M` with no --imatrix -- call exactly these.

Bit-exactness rests on doing the same IEEE float32 operations in the same order as the C code:
  * every intermediate is float32 (C `float`, SSE, FLT_EVAL_METHOD 0; int operands such as nmax,
    the step index or a quant level are converted to float first, as C does); numba keeps
    float32 op float32 in float32, so every constant is written as np.float32 and every integer
    operand is converted explicitly (an int64 operand would silently promote to float64);
  * no fused multiply-add and no reassociation: numba without fastmath emits neither, and the
    shipped libggml-base.so contains no FMA instruction (it is built for baseline x86-64; a
    build with -march=native and FP contraction could round differently);
  * `nearest_int` is ggml's bit trick (add 1.5 * 2^23 in float32, take the low mantissa bits),
    reproduced literally so that even out-of-range or NaN arguments give ggml's integers;
  * d and dmin are rounded to float16 with ggml's own `ggml_compute_fp32_to_fp16` (round to
    nearest even; NaN -> 0x7E00) and the rest of the block is quantized with the rounded value;
  * integer conversions follow C: `uint8_t ls = nearest_int(...)` wraps modulo 256 before the
    MIN(63, .); Q6_K's int8 scales wrap likewise; sub-blocks whose rounded scale is 0 keep the
    levels the scale search left in L (C `if (!d) continue;`);
  * divisions by zero give inf/NaN (error_model="numpy"), as in C.

Block layouts (ggml-common.h; bytes per 256 values), checked against `gguf.GGML_QUANT_SIZES` and
gguf-py's dequantizers:
    Q4_K (144): d f16, dmin f16, scales[12] (8 x 6-bit scale and min, packed), qs[128]
    Q5_K (176): d f16, dmin f16, scales[12], qh[32], qs[128]
    Q6_K (210): ql[128], qh[64], scales[16] (int8), d f16

Entry point: `quantize(x, qtype)` for a float32 array whose last dimension is a multiple of 256;
returns uint8 of shape (*x.shape[:-1], row bytes). Work is spread over numba's threads by
super-block (blocks are independent; ggml quantizes a chunk of rows as one long row).
"""
from __future__ import annotations

import gguf
import numpy as np
from numba import njit, prange

QK_K = 256
T = gguf.GGMLQuantizationType
BLOCK_BYTES = {T.Q4_K: 144, T.Q5_K: 176, T.Q6_K: 210}
TYPES = tuple(BLOCK_BYTES)

_f32 = np.float32
_GROUP_MAX_EPS = np.float32(1e-15)
_BLOCKS_PER_TASK = 32
# float16 bits -> float32 (exact): ggml's GGML_FP16_TO_FP32
with np.errstate(invalid="ignore"):      # the NaN patterns warn on aarch64's numpy
    _F16_TO_F32 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)

_JIT = dict(cache=True, error_model="numpy")


@njit(inline="always", **_JIT)
def nearest_int(fval):
    """ggml's nearest_int: round to nearest (ties to even) for |fval| <= 2^22, by the bit trick."""
    val = np.float32(np.float32(fval) + np.float32(12582912.0))
    i = np.int64(val.view(np.int32))
    return (i & 0x007FFFFF) - 0x00400000


@njit(inline="always", **_JIT)
def fp32_to_fp16(f):
    """ggml_compute_fp32_to_fp16 (ggml-impl.h): float32 -> float16 bits, round to nearest even."""
    f = np.float32(f)
    base = (abs(f) * np.float32(5.192296858534828e+33)) * np.float32(7.703719777548943e-34)   # 2^112, 2^-110
    w = np.int64(f.view(np.int32)) & 0xFFFFFFFF
    shl1_w = (w + w) & 0xFFFFFFFF
    sign = w & 0x80000000
    bias = shl1_w & 0xFF000000
    if bias < 0x71000000:
        bias = 0x71000000
    base = np.float32(np.uint32((bias >> 1) + 0x07800000).view(np.float32) + base)
    bits = np.int64(base.view(np.int32)) & 0xFFFFFFFF
    exp_bits = (bits >> 13) & 0x00007C00
    mantissa_bits = bits & 0x00000FFF
    nonsign = exp_bits + mantissa_bits
    return ((sign >> 16) | (0x7E00 if shl1_w > 0xFF000000 else nonsign)) & 0xFFFF


@njit(**_JIT)
def make_qkx2_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    """ggml's make_qkx2_quants: levels L (0..nmax) and (scale, the_min) with x ~ scale*L - the_min."""
    mn = x[0]
    mx = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if mn > 0:
        mn = _f32(0.0)
    if mx == mn:
        for i in range(n):
            L[i] = 0
        return _f32(0.0), -mn
    fnmax = _f32(nmax)
    iscale = fnmax / (mx - mn)
    scale = _f32(1.0) / iscale
    best_error = _f32(0.0)
    for i in range(n):
        l = nearest_int(iscale * (x[i] - mn))
        l = max(0, min(nmax, l))
        L[i] = l
        diff = scale * _f32(l) + mn - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    if nstep < 1:
        return scale, -mn
    for is_ in range(nstep + 1):
        iscale = (rmin + rdelta * _f32(is_) + fnmax) / (mx - mn)
        sum_l = _f32(0.0)
        sum_l2 = _f32(0.0)
        sum_xl = _f32(0.0)
        for i in range(n):
            l = nearest_int(iscale * (x[i] - mn))
            l = max(0, min(nmax, l))
            Laux[i] = l
            w = weights[i]
            fl = _f32(l)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = _f32(0.0)
                this_scale = sum_xl / sum_l2
            cur_error = _f32(0.0)
            for i in range(n):
                diff = this_scale * _f32(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                cur_error += weights[i] * diff
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                mn = this_min
    return scale, -mn


@njit(inline="always", **_JIT)
def _qx_weight(xi, rmse_type):
    if rmse_type == 1:
        return xi * xi
    if rmse_type == 2:
        return _f32(1.0)
    if rmse_type == 3:
        return abs(xi)
    return np.sqrt(abs(xi))


@njit(**_JIT)
def make_qx_quants(n, nmax, x, L, rmse_type):
    """ggml's make_qx_quants without importance weights (qw = NULL): levels L (0..2 nmax - 1,
    offset by nmax) and the scale, x ~ scale * (L - nmax)."""
    mx = _f32(0.0)
    amax = _f32(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < _GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return _f32(0.0)
    iscale = _f32(-nmax) / mx
    if rmse_type == 0:
        for i in range(n):
            l = nearest_int(iscale * x[i])
            L[i] = nmax + max(-nmax, min(nmax - 1, l))
        return _f32(1.0) / iscale
    return_early = False
    if rmse_type < 0:
        rmse_type = -rmse_type
        return_early = True
    sumlx = _f32(0.0)
    suml2 = _f32(0.0)
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l + nmax
        w = _qx_weight(x[i], rmse_type)
        fl = _f32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    scale = sumlx / suml2 if suml2 != 0 else _f32(0.0)
    if return_early:
        return _f32(0.5) * (scale + _f32(1.0) / iscale) if suml2 > 0 else _f32(1.0) / iscale
    best = scale * sumlx
    for is_ in range(-9, 10):
        if is_ == 0:
            continue
        iscale = -(_f32(nmax) + _f32(0.1) * _f32(is_)) / mx
        sumlx = _f32(0.0)
        suml2 = _f32(0.0)
        for i in range(n):
            l = nearest_int(iscale * x[i])
            l = max(-nmax, min(nmax - 1, l))
            w = _qx_weight(x[i], rmse_type)
            fl = _f32(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                l = nearest_int(iscale * x[i])
                L[i] = nmax + max(-nmax, min(nmax - 1, l))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(inline="always", **_JIT)
def _scale_min_k4(j, q):
    """ggml's get_scale_min_k4 on the 12 packed scale bytes q."""
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


@njit(**_JIT)
def _k_scales_and_levels(x, y, L, Laux, weights, scales, mins, f16, nmax, rmin, rdelta, nstep):
    """The shared part of quantize_row_q4_K_ref / quantize_row_q5_K_ref for one super-block x:
    writes d, dmin and the 12 scale bytes into y[0:16] and the levels (0..nmax) into L."""
    max_scale = _f32(0.0)
    max_min = _f32(0.0)
    for j in range(QK_K // 32):
        xs = x[32 * j:32 * j + 32]
        sum_x2 = _f32(0.0)
        for l in range(32):
            sum_x2 += xs[l] * xs[l]
        av_x = np.sqrt(sum_x2 / _f32(32.0))
        for l in range(32):
            weights[l] = av_x + abs(xs[l])
        scale, the_min = make_qkx2_quants(32, nmax, xs, weights, L[32 * j:32 * j + 32], Laux,
                                          rmin, rdelta, nstep, False)
        scales[j] = scale
        mins[j] = the_min
        if scale > max_scale:
            max_scale = scale
        if the_min > max_min:
            max_min = the_min

    inv_scale = _f32(63.0) / max_scale if max_scale > 0 else _f32(0.0)
    inv_min = _f32(63.0) / max_min if max_min > 0 else _f32(0.0)
    sc = y[4:16]
    for j in range(QK_K // 32):
        ls = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)     # uint8_t, then MIN(63, .)
        lm = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
        if j < 4:
            sc[j] = ls
            sc[j + 4] = lm
        else:
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            sc[j - 4] |= (ls >> 4) << 6
            sc[j] |= (lm >> 4) << 6
    dh = fp32_to_fp16(max_scale / _f32(63.0))
    mh = fp32_to_fp16(max_min / _f32(63.0))
    y[0] = dh & 0xFF
    y[1] = dh >> 8
    y[2] = mh & 0xFF
    y[3] = mh >> 8
    d_all = f16[dh]
    dmin_all = f16[mh]
    for j in range(QK_K // 32):
        s, m = _scale_min_k4(j, sc)
        d = d_all * _f32(s)
        if d == 0:
            continue
        dm = dmin_all * _f32(m)
        for ii in range(32):
            l = nearest_int((x[32 * j + ii] + dm) / d)
            L[32 * j + ii] = max(0, min(nmax, l))


@njit(parallel=True, **_JIT)
def _quantize_q4_k(xb, out, f16):
    nb = xb.shape[0]
    ntask = (nb + _BLOCKS_PER_TASK - 1) // _BLOCKS_PER_TASK
    for t in prange(ntask):
        L = np.empty(QK_K, np.uint8)
        Laux = np.empty(32, np.uint8)
        weights = np.empty(32, np.float32)
        scales = np.empty(8, np.float32)
        mins = np.empty(8, np.float32)
        for b in range(t * _BLOCKS_PER_TASK, min(nb, (t + 1) * _BLOCKS_PER_TASK)):
            y = out[b]
            _k_scales_and_levels(xb[b], y, L, Laux, weights, scales, mins, f16, 15, _f32(-1.0), _f32(0.1), 20)
            for j in range(0, QK_K, 64):          # qs: low nibble value j + l, high nibble j + l + 32
                o = 16 + j // 2
                for l in range(32):
                    y[o + l] = L[j + l] | (L[j + l + 32] << 4)


@njit(parallel=True, **_JIT)
def _quantize_q5_k(xb, out, f16):
    nb = xb.shape[0]
    ntask = (nb + _BLOCKS_PER_TASK - 1) // _BLOCKS_PER_TASK
    for t in prange(ntask):
        L = np.empty(QK_K, np.uint8)
        Laux = np.empty(32, np.uint8)
        weights = np.empty(32, np.float32)
        scales = np.empty(8, np.float32)
        mins = np.empty(8, np.float32)
        for b in range(t * _BLOCKS_PER_TASK, min(nb, (t + 1) * _BLOCKS_PER_TASK)):
            y = out[b]
            _k_scales_and_levels(xb[b], y, L, Laux, weights, scales, mins, f16, 31, _f32(-0.5), _f32(0.1), 15)
            qh = y[16:48]
            ql = y[48:176]
            for j in range(32):
                qh[j] = 0
            m1 = 1
            m2 = 2
            for n in range(0, QK_K, 64):
                o = n // 2
                for j in range(32):
                    l1 = np.int64(L[n + j])
                    if l1 > 15:
                        l1 -= 16
                        qh[j] |= m1
                    l2 = np.int64(L[n + j + 32])
                    if l2 > 15:
                        l2 -= 16
                        qh[j] |= m2
                    ql[o + j] = l1 | (l2 << 4)
                m1 <<= 2
                m2 <<= 2


@njit(parallel=True, **_JIT)
def _quantize_q6_k(xb, out, f16):
    nb = xb.shape[0]
    ntask = (nb + _BLOCKS_PER_TASK - 1) // _BLOCKS_PER_TASK
    for t in prange(ntask):
        L = np.empty(QK_K, np.int64)
        scales = np.empty(QK_K // 16, np.float32)
        for b in range(t * _BLOCKS_PER_TASK, min(nb, (t + 1) * _BLOCKS_PER_TASK)):
            x = xb[b]
            y = out[b]
            max_scale = _f32(0.0)
            max_abs_scale = _f32(0.0)
            for ib in range(QK_K // 16):
                scale = make_qx_quants(16, 32, x[16 * ib:16 * ib + 16], L[16 * ib:16 * ib + 16], 1)
                scales[ib] = scale
                abs_scale = abs(scale)
                if abs_scale > max_abs_scale:
                    max_abs_scale = abs_scale
                    max_scale = scale
            if max_abs_scale < _GROUP_MAX_EPS:
                for i in range(y.shape[0]):
                    y[i] = 0
                continue
            iscale = _f32(-128.0) / max_scale
            dh = fp32_to_fp16(_f32(1.0) / iscale)
            y[208] = dh & 0xFF
            y[209] = dh >> 8
            for ib in range(QK_K // 16):
                y[192 + ib] = min(127, nearest_int(iscale * scales[ib])) & 0xFF    # int8_t
            d_all = f16[dh]
            for j in range(QK_K // 16):
                s = np.int64(y[192 + j])
                if s > 127:
                    s -= 256
                d = d_all * _f32(s)
                if d == 0:
                    continue
                for ii in range(16):
                    l = nearest_int(x[16 * j + ii] / d)
                    L[16 * j + ii] = max(-32, min(31, l)) + 32
            for h in range(2):                      # 128 values per half: ql[64], qh[32]
                j = 128 * h
                for l in range(32):
                    q1 = L[j + l] & 0xF
                    q2 = L[j + l + 32] & 0xF
                    q3 = L[j + l + 64] & 0xF
                    q4 = L[j + l + 96] & 0xF
                    y[64 * h + l] = q1 | (q3 << 4)
                    y[64 * h + l + 32] = q2 | (q4 << 4)
                    y[128 + 32 * h + l] = ((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2)
                                           | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6))


_KERNELS = {T.Q4_K: _quantize_q4_k, T.Q5_K: _quantize_q5_k, T.Q6_K: _quantize_q6_k}


def quantize(x: np.ndarray, qtype) -> np.ndarray:
    """Quantize float32 values (last dimension a multiple of 256) to Q4_K, Q5_K or Q6_K blocks,
    bytes exactly as ggml's quantize_row_q*_K_ref writes them. Returns uint8 of shape
    (*x.shape[:-1], x.shape[-1] // 256 * block bytes)."""
    qtype = T(qtype)
    if qtype not in _KERNELS:
        raise ValueError(f"not a K-quant type this module quantizes: {qtype.name}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] % QK_K:
        raise ValueError(f"row length {x.shape[-1] if x.ndim else 0} is not a multiple of {QK_K}")
    xb = x.reshape(-1, QK_K)
    size = BLOCK_BYTES[qtype]
    out = np.empty((xb.shape[0], size), np.uint8)
    if xb.shape[0]:
        _KERNELS[qtype](xb, out, _F16_TO_F32)
    return out.reshape(*x.shape[:-1], x.shape[-1] // QK_K * size)
