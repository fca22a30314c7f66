"""AVX2 kernels for the quantized matmuls, written as explicit vector code: LLVM IR emitted with
llvmlite's IRBuilder inside `numba.extending.intrinsic`s, called from ordinary numba drivers.
No C extension, nothing compiled at install time; numba's on-disk cache keeps the machine code.

Every kernel computes, for one weight row and 1-4 tokens, the dot products of the row with the
tokens' Q8_0 activations (xq int8, xd float32 scales per 32 values, xs int32 sums per 32; see
quants/common.py), the same quantity as the scalar kernels in quants/ (their reference), up to
float summation order. Per 32-value block, per token, as ggml's AVX2 loops do:

    p16 = vpmaddubsw(|w| or w_unsigned, x signed)     32 int8 products, pairwise summed -> 16 x i16
    p32 = vpmaddwd(p16, ones or integer scales)       -> 8 x i32
    acc = fma(sitofp(p32), splat(d_w * d_x), acc)     8 float lanes per token, kept across blocks

and one horizontal sum per row and token at the end. Weight-side work (unpacking nibbles, the
sign trick, K-quant scales) is done once per block and shared by the 1-4 tokens.

    Q8_0   w signed: |w| via vpsignb(w, w), x's sign flipped where w < 0 (vpsignb(x, w))
    Q4_0   nibbles (0..15) straight into vpmaddubsw; the -8 offset as -8 * xs (the activation's
           integer block sum) in the int32 accumulator
    Q5_0   as Q4_0 with the 5th bit of value i from bit i of qh (bytes from bits: vpshufb, vpand,
           vpcmpeqb), the offset -16
    Q4_1   nibbles into vpmaddubsw, no offset; the minimum as m * dx * xs (Q5_1: + the qh bit)
    Q4_K   nibbles (0..15) straight into vpmaddubsw; d*sc per 32-block in the float scale; the
           minima as dmin*m * dx * xs (xs: the activation's integer block sums), 8 blocks at once
    Q5_K   as Q4_K with the 5th bit from qh
    Q6_K   6-bit values (0..63); the int8 scale per 16 values as vpmaddwd's multiplier (lanes
           0-7: first 16 values, 8-15: the others); the -32 offset as one term per super-block,
           32 d sum_j sc_j dx_j s_j over the activation's per-16 sums s_j
    Q3_K   as Q6_K with 3-bit values (2 low bits | the hmask bit << 2: 0..7), 6-bit scales - 32
           unpacked from 12 bytes, and a -4 offset
    Q2_K   as Q3_K with 2-bit values and 4-bit scales; the minima per 16 values as one term per
           super-block, dmin sum_j m_j dx_j s_j over the per-16 sums

Block layouts as in ggml-common.h (see quants/q4_0.py, q8_0.py, kquants.py). The path is used
only when the CPU numba compiles for has AVX2, FMA and F16C (simd/__init__.py decides before
anything here is compiled: LLVM aborts the process on an intrinsic the target lacks).

Caching note: numba's cache is keyed on this file; the IR emitters and the drivers live in the
same file so that an edit to either recompiles both.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

I8, I16, I32, I64, F32, HALF = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType(), ir.HalfType()
I8P = I8.as_pointer()
V16I8, V32I8 = ir.VectorType(I8, 16), ir.VectorType(I8, 32)
V16I16, V8I32, V8F32 = ir.VectorType(I16, 16), ir.VectorType(I32, 8), ir.VectorType(F32, 8)

# GGML type codes of the formats with a kernel here
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 2, 3, 6, 7, 8, 10, 11, 12, 13, 14
CODES = (Q4_0, Q8_0, Q4_K, Q5_K, Q6_K, Q3_K, Q2_K, Q5_0, Q4_1, Q5_1)
NAMES = {Q4_0: "q4_0", Q4_1: "q4_1", Q5_0: "q5_0", Q5_1: "q5_1", Q8_0: "q8_0", Q2_K: "q2_k", Q3_K: "q3_k",
         Q4_K: "q4_k", Q5_K: "q5_k", Q6_K: "q6_k", 1000 + Q4_0: "q4_0_x8", 1000 + Q8_0: "q8_0_x8"}
SUPER = {Q4_0: False, Q4_1: False, Q5_0: False, Q5_1: False, Q8_0: False, Q2_K: True, Q3_K: True, Q4_K: True,
         Q5_K: True, Q6_K: True}   # loop over 256-value super-blocks
MAX_TOKENS = 4          # tokens per weight load
F16_CACHE = True        # `layers` and `attention` read float16 KV caches (as uint16 bit patterns)

# Use AVX-VNNI / AVX512-VNNI's vpdpbusd (u8 x s8 -> i32 in one instruction) in place of
# vpmaddubsw + vpmaddwd. Set by simd/__init__.py from the target CPU's features before anything
# is compiled; numba's cache is keyed on the target CPU and its features, so cached code always
# matches the setting for that CPU.
VNNI = False

# kernel(w_row, xq, xq_stride, xd, xd_stride, xs, xs_stride, n_blocks, out, out_stride): all byte
# pointers and byte strides; token i's data at base + i * stride; out[i] = float32 dot product.
KERNEL_TYPE = ir.FunctionType(ir.VoidType(), [I8P, I8P, I64, I8P, I64, I8P, I64, I64, I8P, I64])


def _const_vec(ty, value):
    return ir.Constant(ty, [value] * ty.count)


class _Emitter:
    """IR helpers on one builder."""

    def __init__(self, b: ir.IRBuilder):
        self.b = b
        m = b.module

        def fn(name, ret, *args):
            return cgutils.get_or_insert_function(m, ir.FunctionType(ret, args), name)

        self._psign = fn("llvm.x86.avx2.psign.b", V32I8, V32I8, V32I8)
        self._maddubs = fn("llvm.x86.avx2.pmadd.ub.sw", V16I16, V32I8, V32I8)
        self._madd = fn("llvm.x86.avx2.pmadd.wd", V8I32, V16I16, V16I16)
        self._fma = fn("llvm.fma.v8f32", V8F32, V8F32, V8F32, V8F32)
        self._dpbusd = fn("llvm.x86.avx512.vpdpbusd.256", V8I32, V8I32, V8I32, V8I32) if VNNI else None

    def ptr(self, p, off, ty):
        b = self.b
        q = b.gep(p, [off if isinstance(off, ir.Value) else ir.Constant(I64, off)])
        return b.bitcast(q, ty.as_pointer())

    def load(self, p, off, ty):
        return self.b.load(self.ptr(p, off, ty), align=1)

    def f16(self, p, off):
        return self.b.fpext(self.load(p, off, HALF), F32)

    def off(self, base, k):
        return self.b.add(base, ir.Constant(I64, k))

    def splat(self, v, vty):
        b = self.b
        one = b.insert_element(ir.Constant(vty, ir.Undefined), v, ir.Constant(I32, 0))
        return b.shuffle_vector(one, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(I32, vty.count), [0] * vty.count))

    def psign(self, a, s):
        return self.b.call(self._psign, [a, s])

    def maddubs(self, u, s):
        return self.b.call(self._maddubs, [u, s])

    def madd(self, a, c):
        return self.b.call(self._madd, [a, c])

    def dot_u8s8(self, u, s, init=None):
        """init + sums of 4 adjacent products u8 x s8 -> <8 x i32> (|u| <= 128 keeps vpmaddubsw
        exact)."""
        b = self.b
        if self._dpbusd is not None:
            acc = init if init is not None else ir.Constant(V8I32, [0] * 8)
            return b.call(self._dpbusd, [acc, b.bitcast(u, V8I32), b.bitcast(s, V8I32)])
        p = self.madd(self.maddubs(u, s), ONES16)
        return p if init is None else b.add(p, init)

    def fma_acc(self, p32, scale, acc):
        b = self.b
        return b.call(self._fma, [b.sitofp(p32, V8F32), self.splat(scale, V8F32), acc])

    def nibbles(self, raw):
        """<32 x i8> bytes -> (low nibbles, high nibbles) as <32 x i8> in 0..15."""
        b = self.b
        mask = _const_vec(V32I8, 15)
        return b.and_(raw, mask), b.and_(b.lshr(raw, _const_vec(V32I8, 4)), mask)

    def reduce(self, v, op):
        """op folded over the 8 lanes of v (rotations by 4, 2, 1): lane 0 of the result.
        op(a, b) -> vector; e.g. lambda a, b: b.add(a, b), or a NaN-ignoring max."""
        b = self.b
        for half in (4, 2, 1):
            v = op(b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, 8), [(i + half) % 8 for i in range(8)])), v)
        return b.extract_element(v, ir.Constant(I32, 0))

    def vmax(self, a, c):
        """Lane-wise max where a NaN lane of `a` never wins (as `if a > c` in scalar code)."""
        return self.b.select(self.b.fcmp_ordered(">", a, c), a, c)

    def hsum(self, v):
        b = self.b
        und = ir.Constant(V8F32, ir.Undefined)
        lo = b.shuffle_vector(v, und, ir.Constant(ir.VectorType(I32, 4), [0, 1, 2, 3]))
        hi = b.shuffle_vector(v, und, ir.Constant(ir.VectorType(I32, 4), [4, 5, 6, 7]))
        s4 = b.fadd(lo, hi)
        und4 = ir.Constant(ir.VectorType(F32, 4), ir.Undefined)
        s2 = b.fadd(b.shuffle_vector(s4, und4, ir.Constant(ir.VectorType(I32, 2), [0, 1])),
                    b.shuffle_vector(s4, und4, ir.Constant(ir.VectorType(I32, 2), [2, 3])))
        return b.fadd(b.extract_element(s2, ir.Constant(I32, 0)), b.extract_element(s2, ir.Constant(I32, 1)))


ONES16 = _const_vec(V16I16, 1)


def vector_exp(e, x):
    """exp(x) of <8 x float>: ggml's ggml_v_expf fast path (|n| <= 126, relative error ~1e-7) on x
    clamped to [-87, 88]; lanes below -87 (and -inf) give 0, above 88 (and +inf) +inf; NaN stays NaN."""
    b, fma = e.b, lambda a, c, d: e.b.call(e._fma, [a, c, d])
    _v = lambda v, ty=V8F32: ir.Constant(ty, [v] * ty.count)      # noqa: E731
    low, high = b.fcmp_ordered("<", x, _v(-87.0)), b.fcmp_ordered(">", x, _v(88.0))
    xc = b.select(high, _v(88.0), b.select(low, _v(-87.0), x))
    r = _v(float.fromhex("0x1.8p23"))
    z = fma(xc, _v(float.fromhex("0x1.715476p+0")), r)
    n = b.fsub(z, r)
    t = fma(n, _v(-float.fromhex("0x1.7f7d1cp-20")), fma(n, _v(-float.fromhex("0x1.62e4p-1")), xc))
    k = b.bitcast(b.add(b.shl(b.bitcast(z, V8I32), _v(23, V8I32)), b.bitcast(_v(1.0), V8I32)), V8F32)
    u = b.fmul(t, t)
    j = fma(fma(fma(_v(float.fromhex("0x1.0e4020p-7")), t, _v(float.fromhex("0x1.573e2ep-5"))), u,
                fma(_v(float.fromhex("0x1.555e66p-3")), t, _v(float.fromhex("0x1.fffdb6p-2")))),
            u, b.fmul(_v(float.fromhex("0x1.ffffecp-1")), t))
    return b.select(high, _v(float("inf")), b.select(low, _v(0.0), fma(j, k, k)))


def _signed_block(e, tok, blk, q, d, accs):
    """Q8_0/Q4_0 block `blk` with signed int8 weights q and float scale d, for every token."""
    aq = e.psign(q, q)
    out = []
    for t, acc in zip(tok, accs):
        x = e.load(t["xq"], e.b.mul(blk, ir.Constant(I64, 32)), V32I8)
        p = e.dot_u8s8(aq, e.psign(x, q))
        dx = e.load(t["xd"], e.b.mul(blk, ir.Constant(I64, 4)), F32)
        out.append(e.fma_acc(p, e.b.fmul(d, dx), acc))
    return out


def _body_q8_0(e, w, i, tok, accs, corrs):
    base = e.b.mul(i, ir.Constant(I64, 34))
    q = e.load(w, e.off(base, 2), V32I8)
    return _signed_block(e, tok, i, q, e.f16(w, base), accs), corrs


def _block_values(e, w, qs, qh=None):
    """The 32 unsigned values of a Q4_0/Q4_1/Q5_0/Q5_1 block as <32 x i8>: the 16 bytes at offset
    `qs` of w hold values j (low nibble) and j + 16 (high nibble); with `qh` (Q5), bit i of the i32
    there adds 16 to value i."""
    b = e.b
    raw = e.load(w, qs, V16I8)
    m15 = _const_vec(V16I8, 15)
    lo, hi = b.and_(raw, m15), b.and_(b.lshr(raw, _const_vec(V16I8, 4)), m15)
    q = b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(I32, 32), list(range(32))))
    return q if qh is None else b.or_(q, _high_bits(e, e.load(w, qh, I32)))


def _body_q4_0(e, w, i, tok, accs, corrs, five=False):
    """Nibbles (0..15) straight into the u8 x s8 dot, whose accumulator starts at -8 * sum(x)
    (lane 0): the "- 8" of every weight costs one scalar per block and token, not a subtraction
    and two sign flips per block. Q5_0 (five): bit i of qh adds 16 to value i, the offset is -16."""
    b = e.b
    base = b.mul(i, ir.Constant(I64, 22 if five else 18))
    q = _block_values(e, w, e.off(base, 6 if five else 2), e.off(base, 2) if five else None)
    d = e.f16(w, base)
    out = []
    for t, acc in zip(tok, accs):
        x = e.load(t["xq"], b.mul(i, ir.Constant(I64, 32)), V32I8)
        xs = e.load(t["xs"], b.mul(i, ir.Constant(I64, 4)), I32)
        init = b.insert_element(ir.Constant(V8I32, [0] * 8), b.mul(xs, ir.Constant(I32, -16 if five else -8)),
                                ir.Constant(I32, 0))
        p = e.dot_u8s8(q, x, init)
        dx = e.load(t["xd"], b.mul(i, ir.Constant(I64, 4)), F32)
        out.append(e.fma_acc(p, b.fmul(d, dx), acc))
    return out, corrs


def _body_q5_0(e, w, i, tok, accs, corrs):
    return _body_q4_0(e, w, i, tok, accs, corrs, five=True)


def _high_bits(e, qh):
    """<32 x i8>: 16 in byte i where bit i of the i32 qh is set (Q5_0/Q5_1's fifth bits)."""
    b = e.b
    v = b.bitcast(e.splat(qh, V8I32), V32I8)
    sel = b.shuffle_vector(v, ir.Constant(V32I8, ir.Undefined), ir.Constant(ir.VectorType(I32, 32), [k // 8 for k in range(32)]))
    bit = b.and_(sel, ir.Constant(V32I8, [1 << (k % 8) for k in range(32)]))
    return b.select(b.icmp_unsigned("!=", bit, _const_vec(V32I8, 0)), _const_vec(V32I8, 16), _const_vec(V32I8, 0))


def _body_q4_1(e, w, i, tok, accs, corrs, five=False):
    """w = d q + m: nibbles (Q5_1: + 16 per qh bit) into the u8 x s8 dot; the minimum's m dx xs
    (xs: the activation's integer block sum) into lane 0 of `corrs`, which is subtracted at the end."""
    b = e.b
    base = b.mul(i, ir.Constant(I64, 24 if five else 20))
    q = _block_values(e, w, e.off(base, 8 if five else 4), e.off(base, 4) if five else None)
    d, m = e.f16(w, base), e.f16(w, e.off(base, 2))
    out, cs = [], []
    for t, acc, corr in zip(tok, accs, corrs):
        x = e.load(t["xq"], b.mul(i, ir.Constant(I64, 32)), V32I8)
        dx = e.load(t["xd"], b.mul(i, ir.Constant(I64, 4)), F32)
        xs = b.sitofp(e.load(t["xs"], b.mul(i, ir.Constant(I64, 4)), I32), F32)
        out.append(e.fma_acc(e.dot_u8s8(q, x), b.fmul(d, dx), acc))
        mt = b.fmul(b.fmul(m, dx), xs)
        cs.append(b.fsub(corr, b.insert_element(_const_vec(V8F32, 0.0), mt, ir.Constant(I32, 0))))
    return out, cs


def _body_q5_1(e, w, i, tok, accs, corrs):
    return _body_q4_1(e, w, i, tok, accs, corrs, five=True)


def _accumulate(e, t, acc, terms):
    """acc + sum of p * s over terms [(p <8 x float>, s <8 x float>)] for token t, as two FMA
    chains: even terms into acc, odd ones into the token's second accumulator (e.acc2, added to
    the first once per row). One chain per token waited 4 cycles (the FMA latency) per block; the
    order does not depend on how many tokens share the weights (batch rows equal lone ones)."""
    b = e.b
    for k, (p, s) in enumerate(terms):
        if k % 2:
            e.acc2[t] = b.call(e._fma, [p, s, e.acc2[t]])
        else:
            acc = b.call(e._fma, [p, s, acc])
    return acc


def _body_q4_0_x8(e, w, i, tok, accs, corrs):
    """Eight Q4_0 blocks (8i..8i+7) per iteration, for rows of a multiple of 8 blocks: the 8
    float16 scales become one vector, d*dx for the 8 blocks is one multiply per token, and the
    "- 8" offset one FMA per token on the activation's 8 block sums (into `corrs`), so a block
    costs its nibble unpack and, per token, one vpdpbusd / vpmaddubsw, a conversion and an FMA."""
    b = e.b
    base = b.mul(i, ir.Constant(I64, 8 * 18))
    dh = ir.Constant(ir.VectorType(HALF, 8), ir.Undefined)
    for j in range(8):
        dh = b.insert_element(dh, e.load(w, e.off(base, 18 * j), HALF), ir.Constant(I32, j))
    d8 = b.fpext(dh, V8F32)
    off = b.mul(i, ir.Constant(I64, 32))                         # 8 blocks x 4 bytes of xd / xs
    ddx = [b.fmul(d8, e.load(t["xd"], off, V8F32)) for t in tok]
    corrs = [b.call(e._fma, [b.fmul(s, _const_vec(V8F32, 8.0)), b.sitofp(e.load(t["xs"], off, V8I32), V8F32), c])
             for t, s, c in zip(tok, ddx, corrs)]
    terms = [[] for _ in tok]
    for j in range(8):
        q = _block_values(e, w, e.off(base, 18 * j + 2))
        blk = b.add(b.mul(i, ir.Constant(I64, 8)), ir.Constant(I64, j))
        for t, st, tt in zip(tok, ddx, terms):
            x = e.load(t["xq"], b.mul(blk, ir.Constant(I64, 32)), V32I8)
            tt.append((b.sitofp(e.dot_u8s8(q, x), V8F32), _lane(e, st, j)))
    return [_accumulate(e, t, acc, tt) for t, (acc, tt) in enumerate(zip(accs, terms))], corrs


def _body_q8_0_x8(e, w, i, tok, accs, corrs):
    """Eight Q8_0 blocks per iteration, for rows of a multiple of 8 blocks: the 8 float16 scales as
    one vector, d*dx for the 8 blocks in one multiply per token, two FMA chains per token."""
    b = e.b
    base = b.mul(i, ir.Constant(I64, 8 * 34))
    dh = ir.Constant(ir.VectorType(HALF, 8), ir.Undefined)
    for j in range(8):
        dh = b.insert_element(dh, e.load(w, e.off(base, 34 * j), HALF), ir.Constant(I32, j))
    d8 = b.fpext(dh, V8F32)
    ddx = [b.fmul(d8, e.load(t["xd"], b.mul(i, ir.Constant(I64, 32)), V8F32)) for t in tok]
    terms = [[] for _ in tok]
    for j in range(8):
        q = e.load(w, e.off(base, 34 * j + 2), V32I8)
        aq = e.psign(q, q)
        blk = b.add(b.mul(i, ir.Constant(I64, 8)), ir.Constant(I64, j))
        for t, st, tt in zip(tok, ddx, terms):
            x = e.load(t["xq"], b.mul(blk, ir.Constant(I64, 32)), V32I8)
            tt.append((b.sitofp(e.dot_u8s8(aq, e.psign(x, q)), V8F32), _lane(e, st, j)))
    return [_accumulate(e, t, acc, tt) for t, (acc, tt) in enumerate(zip(accs, terms))], corrs


def _k4_scales(e, w, base):
    """The 8 scales and 8 mins of a Q4_K/Q5_K super-block as <8 x float> (ggml
    get_scale_min_k4 on vectors: one 16-byte load of the 12 packed bytes, four byte shuffles)."""
    b = e.b
    raw = e.load(w, e.off(base, 4), V16I8)        # bytes 4..19: the 12 scale bytes, then 4 unused
    und = ir.Constant(V16I8, ir.Undefined)

    def pick(idx):
        return b.zext(b.shuffle_vector(raw, und, ir.Constant(ir.VectorType(I32, 8), idx)), V8I32)

    x, y = pick([0, 1, 2, 3, 8, 9, 10, 11]), pick([4, 5, 6, 7, 8, 9, 10, 11])
    z, u = pick([0, 1, 2, 3, 0, 1, 2, 3]), pick([4, 5, 6, 7, 4, 5, 6, 7])
    c63, c15, c4, c6 = (_const_vec(V8I32, v) for v in (63, 15, 4, 6))
    first4 = ir.Constant(ir.VectorType(ir.IntType(1), 8), [1, 1, 1, 1, 0, 0, 0, 0])
    sc = b.select(first4, b.and_(x, c63), b.or_(b.and_(x, c15), b.shl(b.lshr(z, c6), c4)))
    mn = b.select(first4, b.and_(y, c63), b.or_(b.lshr(y, c4), b.shl(b.lshr(u, c6), c4)))
    return b.uitofp(sc, V8F32), b.uitofp(mn, V8F32)


def _lane(e, v, j):
    """Lane j of an <8 x float> broadcast to all 8 lanes."""
    return e.b.shuffle_vector(v, ir.Constant(V8F32, ir.Undefined), ir.Constant(ir.VectorType(I32, 8), [j] * 8))


def _min_terms(e, tok, i, mins, corrs):
    """corr (8 lanes) += dmin*m_j * dx_j * xs_j for the 8 32-blocks j of super-block i, one FMA
    per token (the activation's 8 block scales and sums are adjacent in memory)."""
    b = e.b
    out = []
    for t, corr in zip(tok, corrs):
        off = b.mul(i, ir.Constant(I64, 32))                    # 8 blocks x 4 bytes
        xs = b.sitofp(e.load(t["xs"], off, V8I32), V8F32)
        dx = e.load(t["xd"], off, V8F32)
        out.append(b.call(e._fma, [b.fmul(xs, dx), mins, corr]))   # 8 lanes, summed once per row
    return out


def _body_q4_k(e, w, i, tok, accs, corrs, five=False):
    b = e.b
    base = b.mul(i, ir.Constant(I64, 176 if five else 144))
    d, dmin = e.f16(w, base), e.f16(w, e.off(base, 2))
    sc, mn = _k4_scales(e, w, base)
    dsc = b.fmul(e.splat(d, V8F32), sc)                         # d * sc_j, 8 blocks
    # per token: d * sc_j * dx_j for the 8 blocks in one multiply (the 8 scales are adjacent)
    scales = [b.fmul(dsc, e.load(t["xd"], b.mul(i, ir.Constant(I64, 32)), V8F32)) for t in tok]
    qs = 48 if five else 16
    qh = e.load(w, e.off(base, 16), V32I8) if five else None
    terms = [[] for _ in tok]
    for p in range(4):
        lo, hi = e.nibbles(e.load(w, e.off(base, qs + 32 * p), V32I8))
        if five:
            one = _const_vec(V32I8, 1)
            lo = b.or_(lo, b.shl(b.and_(b.lshr(qh, _const_vec(V32I8, 2 * p)), one), _const_vec(V32I8, 4)))
            hi = b.or_(hi, b.shl(b.and_(b.lshr(qh, _const_vec(V32I8, 2 * p + 1)), one), _const_vec(V32I8, 4)))
        for j, q in ((2 * p, lo), (2 * p + 1, hi)):
            blk = b.add(b.mul(i, ir.Constant(I64, 8)), ir.Constant(I64, j))
            for t, st, tt in zip(tok, scales, terms):
                x = e.load(t["xq"], b.mul(blk, ir.Constant(I64, 32)), V32I8)
                tt.append((b.sitofp(e.dot_u8s8(q, x), V8F32), _lane(e, st, j)))
    corrs = _min_terms(e, tok, i, b.fmul(e.splat(dmin, V8F32), mn), corrs)
    return [_accumulate(e, t, acc, tt) for t, (acc, tt) in enumerate(zip(accs, terms))], corrs


def _body_q5_k(e, w, i, tok, accs, corrs):
    return _body_q4_k(e, w, i, tok, accs, corrs, five=True)


def _body_q6_k(e, w, i, tok, accs, corrs):
    """q (0..63) straight into vpmaddubsw, the scale applied by vpmaddwd; the "- 32" of every
    weight is one term per super-block and token, 32 d sum_j sc_j dx_j s_j over the activation's
    per-16 sums s_j (the token's `xs` pointer holds them for Q6_K: see _sums16), into `corrs`."""
    b = e.b
    base = b.mul(i, ir.Constant(I64, 210))
    d = e.f16(w, e.off(base, 208))
    m15, m3 = _const_vec(V32I8, 15), _const_vec(V32I8, 3)
    scales16 = b.sext(e.load(w, e.off(base, 192), V16I8), V16I16)     # the 16 int8 scales
    # per token: d * dx_j for the 8 32-blocks in one multiply (their scales are adjacent)
    off = b.mul(i, ir.Constant(I64, 32))
    ddx = [b.fmul(e.splat(d, V8F32), e.load(t["xd"], off, V8F32)) for t in tok]
    # lane j of madd(scales, sums) = sc_2j s_2j + sc_2j+1 s_2j+1: the 16 values of 32-block j
    corrs = [b.call(e._fma, [b.sitofp(e.madd(scales16, e.load(t["xs"], off, V16I16)), V8F32),
                             b.fmul(st, _const_vec(V8F32, 32.0)), c]) for t, st, c in zip(tok, ddx, corrs)]
    terms = [[] for _ in tok]
    for h in range(2):
        ql0 = e.load(w, e.off(base, 64 * h), V32I8)
        ql1 = e.load(w, e.off(base, 64 * h + 32), V32I8)
        qh = e.load(w, e.off(base, 128 + 32 * h), V32I8)
        hb = [b.shl(b.and_(b.lshr(qh, _const_vec(V32I8, 2 * k)), m3), _const_vec(V32I8, 4)) for k in range(4)]
        qs = [b.or_(b.and_(ql0, m15), hb[0]), b.or_(b.and_(ql1, m15), hb[1]),
              b.or_(b.lshr(ql0, _const_vec(V32I8, 4)), hb[2]), b.or_(b.lshr(ql1, _const_vec(V32I8, 4)), hb[3])]
        for k, q in enumerate(qs):
            si = 8 * h + 2 * k                       # the two scales of this 32-block: lanes 0-7, 8-15
            scv = b.shuffle_vector(scales16, ir.Constant(V16I16, ir.Undefined),
                                   ir.Constant(ir.VectorType(I32, 16), [si] * 8 + [si + 1] * 8))
            j = 4 * h + k
            blk = b.add(b.mul(i, ir.Constant(I64, 8)), ir.Constant(I64, j))
            for t, st, tt in zip(tok, ddx, terms):
                x = e.load(t["xq"], b.mul(blk, ir.Constant(I64, 32)), V32I8)
                tt.append((b.sitofp(e.madd(e.maddubs(q, x), scv), V8F32), _lane(e, st, j)))
    # a chain of FMAs even for one token: here the tree measured 3-5% slower (more work per
    # block hides the FMA latency)
    accs = list(accs)
    for t in range(len(accs)):
        for p, sc in terms[t]:
            accs[t] = b.call(e._fma, [p, sc, accs[t]])
    return accs, corrs


def _q3_k_scales(e, w, base):
    """The 16 scales of a Q3_K super-block (6 bits each, packed in 12 bytes; minus 32) as
    <16 x i16>: ggml's unpack of the three 32-bit words, on scalars."""
    b = e.b
    a0, a1, tmp = (e.load(w, e.off(base, 96 + 4 * k), I32) for k in range(3))
    m4, m2 = ir.Constant(I32, 0x0F0F0F0F), ir.Constant(I32, 0x03030303)

    def word(v, vshift, tshift):
        lo = b.and_(b.lshr(v, ir.Constant(I32, vshift)), m4)
        return b.or_(lo, b.shl(b.and_(b.lshr(tmp, ir.Constant(I32, tshift)), m2), ir.Constant(I32, 4)))

    v = ir.Constant(ir.VectorType(I32, 4), ir.Undefined)
    for k, x in enumerate((word(a0, 0, 0), word(a1, 0, 2), word(a0, 4, 4), word(a1, 4, 6))):
        v = b.insert_element(v, x, ir.Constant(I32, k))
    return b.sext(b.sub(b.bitcast(v, V16I8), _const_vec(V16I8, 32)), V16I16)


def _body_q2_k(e, w, i, tok, accs, corrs):
    """Q2_K: q = 2 bits (0..3) into vpmaddubsw, the 4-bit scale per 16 values by vpmaddwd, the
    minima as dmin sum_j m_j dx_j s_j over the per-16 sums, into `corrs`. Layout: scales[16] (low
    nibble scale, high nibble min; 16-block 8h+2j and 8h+2j+1), qs[64] (bits 2j..2j+1 of byte
    32h+l: 32-block 4h+j), d, dmin."""
    b = e.b
    base = b.mul(i, ir.Constant(I64, 84))
    d, dmin = e.f16(w, e.off(base, 80)), e.f16(w, e.off(base, 82))
    raw = e.load(w, base, V16I8)
    m15 = _const_vec(V16I8, 15)
    scales16 = b.zext(b.and_(raw, m15), V16I16)
    mins16 = b.zext(b.lshr(raw, _const_vec(V16I8, 4)), V16I16)
    off = b.mul(i, ir.Constant(I64, 32))
    dx = [e.load(t["xd"], off, V8F32) for t in tok]
    ddx = [b.fmul(e.splat(d, V8F32), v) for v in dx]
    corrs = [b.call(e._fma, [b.sitofp(e.madd(mins16, e.load(t["xs"], off, V16I16)), V8F32),
                             b.fmul(e.splat(dmin, V8F32), v), c]) for t, v, c in zip(tok, dx, corrs)]
    m3 = _const_vec(V32I8, 3)
    terms = [[] for _ in tok]
    for h in range(2):
        q = e.load(w, e.off(base, 16 + 32 * h), V32I8)
        for j in range(4):
            qj = b.and_(b.lshr(q, _const_vec(V32I8, 2 * j)), m3) if j else b.and_(q, m3)
            si = 8 * h + 2 * j
            scv = b.shuffle_vector(scales16, ir.Constant(V16I16, ir.Undefined),
                                   ir.Constant(ir.VectorType(I32, 16), [si] * 8 + [si + 1] * 8))
            jb = 4 * h + j
            blk = b.add(b.mul(i, ir.Constant(I64, 8)), ir.Constant(I64, jb))
            for t, st, tt in zip(tok, ddx, terms):
                x = e.load(t["xq"], b.mul(blk, ir.Constant(I64, 32)), V32I8)
                tt.append((b.sitofp(e.madd(e.maddubs(qj, x), scv), V8F32), _lane(e, st, jb)))
    return [_accumulate(e, t, acc, tt) for t, (acc, tt) in enumerate(zip(accs, terms))], corrs


def _body_q3_k(e, w, i, tok, accs, corrs):
    """Q3_K as Q6_K: q = 2 low bits | hmask bit << 2 (0..7) into vpmaddubsw, the signed scale per
    16 values by vpmaddwd, the "- 4" as 4 d sum_j sc_j dx_j s_j over the per-16 sums, into `corrs`.
    Layout: hmask[32] (bit 4h+j: 32-block 4h+j), qs[64] (bits 2j..2j+1 of byte 32h+l), scales[12], d."""
    b = e.b
    base = b.mul(i, ir.Constant(I64, 110))
    d = e.f16(w, e.off(base, 108))
    scales16 = _q3_k_scales(e, w, base)
    off = b.mul(i, ir.Constant(I64, 32))
    ddx = [b.fmul(e.splat(d, V8F32), e.load(t["xd"], off, V8F32)) for t in tok]
    corrs = [b.call(e._fma, [b.sitofp(e.madd(scales16, e.load(t["xs"], off, V16I16)), V8F32),
                             b.fmul(st, _const_vec(V8F32, 4.0)), c]) for t, st, c in zip(tok, ddx, corrs)]
    hm = e.load(w, base, V32I8)
    m3, one = _const_vec(V32I8, 3), _const_vec(V32I8, 1)
    terms = [[] for _ in tok]
    for h in range(2):
        q = e.load(w, e.off(base, 32 + 32 * h), V32I8)
        for j in range(4):
            lo = b.and_(b.lshr(q, _const_vec(V32I8, 2 * j)), m3)
            hb = b.shl(b.and_(b.lshr(hm, _const_vec(V32I8, 4 * h + j)), one), _const_vec(V32I8, 2))
            si = 8 * h + 2 * j
            scv = b.shuffle_vector(scales16, ir.Constant(V16I16, ir.Undefined),
                                   ir.Constant(ir.VectorType(I32, 16), [si] * 8 + [si + 1] * 8))
            jb = 4 * h + j
            blk = b.add(b.mul(i, ir.Constant(I64, 8)), ir.Constant(I64, jb))
            for t, st, tt in zip(tok, ddx, terms):
                x = e.load(t["xq"], b.mul(blk, ir.Constant(I64, 32)), V32I8)
                tt.append((b.sitofp(e.madd(e.maddubs(b.or_(lo, hb), x), scv), V8F32), _lane(e, st, jb)))
    return [_accumulate(e, t, acc, tt) for t, (acc, tt) in enumerate(zip(accs, terms))], corrs


# rows of a multiple of 8 blocks: 8 blocks per iteration (pseudo-codes, not GGML types)
Q4_0_X8, Q8_0_X8 = 1000 + Q4_0, 1000 + Q8_0
X8 = {Q4_0: Q4_0_X8, Q8_0: Q8_0_X8}
BODIES = {Q4_0: _body_q4_0, Q4_0_X8: _body_q4_0_x8, Q8_0: _body_q8_0, Q8_0_X8: _body_q8_0_x8, Q4_K: _body_q4_k,
          Q5_K: _body_q5_k, Q6_K: _body_q6_k, Q3_K: _body_q3_k, Q2_K: _body_q2_k, Q5_0: _body_q5_0, Q4_1: _body_q4_1,
          Q5_1: _body_q5_1}


def _kernel(module, code: int, nt: int):
    """The LLVM function computing one row against nt tokens (emitted once per module)."""
    name = f"edgeqwen_avx2_{NAMES[code]}_x{nt}"
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    fn = ir.Function(module, KERNEL_TYPE, name)
    fn.linkage = "internal"
    w, xq, xqs, xd, xds, xs, xss, nblk, out, outs = fn.args
    entry, loop, done = fn.append_basic_block("entry"), fn.append_basic_block("loop"), fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    e = _Emitter(b)
    tok = []
    for t in range(nt):
        k = ir.Constant(I64, t)
        tok.append({"xq": b.gep(xq, [b.mul(xqs, k)]), "xd": b.gep(xd, [b.mul(xds, k)]),
                    "xs": b.gep(xs, [b.mul(xss, k)]), "out": b.gep(out, [b.mul(outs, k)])})
    zero_v = ir.Constant(V8F32, [0.0] * 8)
    b.cbranch(b.icmp_signed(">", nblk, ir.Constant(I64, 0)), loop, done)

    b.position_at_end(loop)
    i = b.phi(I64)
    accs = [b.phi(V8F32) for _ in range(nt)]
    corrs = [b.phi(V8F32) for _ in range(nt)]
    acc2 = [b.phi(V8F32) for _ in range(nt)]          # a second accumulator, for bodies that use it
    e.acc2 = list(acc2)
    new_accs, new_corrs = BODIES[code](e, w, i, tok, accs, corrs)
    new_accs2 = e.acc2
    i1 = b.add(i, ir.Constant(I64, 1))
    end = b.block
    i.add_incoming(ir.Constant(I64, 0), entry)
    i.add_incoming(i1, end)
    two = any(n is not p for n, p in zip(new_accs2, acc2))   # did the body use the second accumulator?
    for phi, new in zip(accs + corrs + acc2, new_accs + new_corrs + new_accs2):
        phi.add_incoming(zero_v, entry)
        phi.add_incoming(new, end)
    b.cbranch(b.icmp_signed("<", i1, nblk), loop, done)

    b.position_at_end(done)
    finals = []
    for t in range(nt):                                  # all PHIs first in the block
        fa, fc, f2 = b.phi(V8F32), b.phi(V8F32), b.phi(V8F32)
        for phi, new in ((fa, new_accs[t]), (fc, new_corrs[t]), (f2, new_accs2[t])):
            phi.add_incoming(zero_v, entry)
            phi.add_incoming(new, end)
        finals.append((fa, f2, fc))
    for t, (fa, f2, fc) in enumerate(finals):
        total = b.fadd(fa, f2) if two else fa
        b.store(e.hsum(b.fsub(total, fc)), b.bitcast(tok[t]["out"], F32.as_pointer()), align=4)
    b.ret_void()
    return fn


def _make_dot(code: int):
    @intrinsic
    def dot(typingctx, w, r, xq, xd, xs, t0, nt, out):
        """out[t0 + i, r] = row r of w . token t0 + i, i < nt (1..4)."""
        sig = types.void(w, r, xq, xd, xs, t0, nt, out)

        def codegen(context, builder, signature, args):
            aw, ar, axq, axd, axs, at0, ant, aout = args
            sw, sr, sxq, sxd, sxs, st0, snt, sout = signature.args
            r_ = context.cast(builder, ar, sr, types.int64)
            t0_ = context.cast(builder, at0, st0, types.int64)
            nt_ = context.cast(builder, ant, snt, types.int64)

            def arr(val, ty):
                a = context.make_array(ty)(context, builder, val)
                return (builder.bitcast(a.data, I8P), cgutils.unpack_tuple(builder, a.strides, ty.ndim),
                        cgutils.unpack_tuple(builder, a.shape, ty.ndim))

            pw, stw, _ = arr(aw, sw)
            pxq, stxq, _ = arr(axq, sxq)
            pxd, stxd, shxd = arr(axd, sxd)
            pxs, stxs, _ = arr(axs, sxs)
            pout, stout, _ = arr(aout, sout)
            row = builder.gep(pw, [builder.mul(r_, stw[0])])
            xq0 = builder.gep(pxq, [builder.mul(t0_, stxq[0])])
            xd0 = builder.gep(pxd, [builder.mul(t0_, stxd[0])])
            xs0 = builder.gep(pxs, [builder.mul(t0_, stxs[0])])
            o0 = builder.gep(pout, [builder.add(builder.mul(t0_, stout[0]), builder.mul(r_, stout[1]))])
            nblk = shxd[1]
            if SUPER[code]:
                nblk = builder.sdiv(nblk, ir.Constant(I64, 8))

            def call(kcode, n):
                for k in range(1, MAX_TOKENS + 1):
                    with builder.if_then(builder.icmp_signed("==", nt_, ir.Constant(I64, k))):
                        builder.call(_kernel(builder.module, kcode, k),
                                     [row, xq0, stxq[0], xd0, stxd[0], xs0, stxs[0], n, o0, stout[0]])

            if code in X8:                            # 8 blocks per iteration when the row allows
                eight = builder.icmp_signed("==", builder.srem(nblk, ir.Constant(I64, 8)), ir.Constant(I64, 0))
                with builder.if_else(eight) as (then, otherwise):
                    with then:
                        call(X8[code], builder.sdiv(nblk, ir.Constant(I64, 8)))
                    with otherwise:
                        call(code, nblk)
            else:
                call(code, nblk)
            return context.get_dummy_value()

        return sig, codegen

    return dot


(dot_q4_0, dot_q8_0, dot_q4_k, dot_q5_k, dot_q6_k, dot_q3_k, dot_q2_k, dot_q5_0, dot_q4_1,
 dot_q5_1) = (_make_dot(c) for c in CODES)

ROWS_PER_TASK = 16


@njit(inline="always")
def _sums16(xq, x16):
    """x16 (T, K/16) int16 = sums of 16 consecutive xq: the per-16 activation sums of Q6_K, Q3_K
    and Q2_K (their kernels take them in place of xs)."""
    T, K = xq.shape
    for t in range(T):
        for j in range(K // 16):
            acc = np.int32(0)
            for l in range(16 * j, 16 * j + 16):
                acc += np.int32(xq[t, l])
            x16[t, j] = acc


@njit(inline="always")
def _x16(codes, xq):
    """_sums16 of xq when one of the codes is Q6_K, Q3_K or Q2_K, else a dummy."""
    for c in codes:
        if c == Q6_K or c == Q3_K or c == Q2_K:
            x16 = np.empty((xq.shape[0], xq.shape[1] // 16), np.int16)
            _sums16(xq, x16)
            return x16
    return np.zeros((1, 1), np.int16)


@intrinsic
def _prefetch(typingctx, w, row):
    """Prefetch the cache lines of row `row` of the C-contiguous 2-D uint8 array w (a hint: an
    address past the array is never dereferenced)."""
    sig = types.void(w, row)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        stride = cgutils.unpack_tuple(builder, a.strides, 2)[0]
        r = context.cast(builder, args[1], signature.args[1], types.int64)
        base = builder.gep(builder.bitcast(a.data, I8P), [builder.mul(r, stride)])
        pf = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [I8P, I32, I32, I32]),
                                            "llvm.prefetch.p0i8")
        nl = builder.sdiv(builder.add(stride, ir.Constant(I64, 63)), ir.Constant(I64, 64))
        with cgutils.for_range(builder, nl) as loop:
            p = builder.gep(base, [builder.mul(loop.index, ir.Constant(I64, 64))])
            builder.call(pf, [p, ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])
        return context.get_dummy_value()

    return sig, codegen


PREFETCH_ROWS = 4       # decode: rows ahead whose lines are requested before a row is computed


@njit(inline="always")
def _rows(code, w, r0, r1, xq, xd, xs, x16, out):
    """out[:, r0:r1] for weight w of format `code` (a GGML type code in CODES); x16 = _sums16(xq)
    when code is Q6_K, Q3_K or Q2_K."""
    T = xq.shape[0]
    for t0 in range(0, T, MAX_TOKENS):              # tokens outer: their activations stay in L1
        nt = min(MAX_TOKENS, T - t0)                 # while the task's rows stream past them
        for r in range(r0, r1):
            if r + PREFETCH_ROWS < w.shape[0]:
                _prefetch(w, r + PREFETCH_ROWS)
            if code == Q4_0:
                dot_q4_0(w, r, xq, xd, xs, t0, nt, out)
            elif code == Q8_0:
                dot_q8_0(w, r, xq, xd, xs, t0, nt, out)
            elif code == Q4_K:
                dot_q4_k(w, r, xq, xd, xs, t0, nt, out)
            elif code == Q5_K:
                dot_q5_k(w, r, xq, xd, xs, t0, nt, out)
            elif code == Q3_K:
                dot_q3_k(w, r, xq, xd, x16, t0, nt, out)
            elif code == Q2_K:
                dot_q2_k(w, r, xq, xd, x16, t0, nt, out)
            elif code == Q5_0:
                dot_q5_0(w, r, xq, xd, xs, t0, nt, out)
            elif code == Q4_1:
                dot_q4_1(w, r, xq, xd, xs, t0, nt, out)
            elif code == Q5_1:
                dot_q5_1(w, r, xq, xd, xs, t0, nt, out)
            else:
                dot_q6_k(w, r, xq, xd, x16, t0, nt, out)


@njit(parallel=True, cache=True)
def matmul(code, w, xq, xd, xs, out):
    """out (T, N) = dequant(xq, xd) @ dequant(w).T; w: (N, bytes per row) uint8 of format code."""
    n = (w.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    x16 = _x16((code,), xq)
    for task in prange(n):
        r0 = task * ROWS_PER_TASK
        _rows(code, w, r0, min(w.shape[0], r0 + ROWS_PER_TASK), xq, xd, xs, x16, out)


@njit(parallel=True, cache=True)
def matmul3(c0, w0, c1, w1, c2, w2, xq, xd, xs, out0, out1, out2):
    """Three matmuls of one input (Q, K, V), any mix of formats, in one parallel region."""
    n0 = (w0.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    n1 = (w1.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    n2 = (w2.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    x16 = _x16((c0, c1, c2), xq)
    for task in prange(n0 + n1 + n2):
        if task < n0:
            r0 = task * ROWS_PER_TASK
            _rows(c0, w0, r0, min(w0.shape[0], r0 + ROWS_PER_TASK), xq, xd, xs, x16, out0)
        elif task < n0 + n1:
            r0 = (task - n0) * ROWS_PER_TASK
            _rows(c1, w1, r0, min(w1.shape[0], r0 + ROWS_PER_TASK), xq, xd, xs, x16, out1)
        else:
            r0 = (task - n0 - n1) * ROWS_PER_TASK
            _rows(c2, w2, r0, min(w2.shape[0], r0 + ROWS_PER_TASK), xq, xd, xs, x16, out2)


@njit(parallel=True, cache=True)
def ffn(cg, wg, cu, wu, xq, xd, xs, g, u):
    """g (T, F) = silu(x @ Wg.T) * (x @ Wu.T) in one parallel region; u is scratch."""
    n = (wg.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    T = xq.shape[0]
    x16 = _x16((cg, cu), xq)
    for task in prange(n):
        r0 = task * ROWS_PER_TASK
        r1 = min(wg.shape[0], r0 + ROWS_PER_TASK)
        _rows(cg, wg, r0, r1, xq, xd, xs, x16, g)
        _rows(cu, wu, r0, r1, xq, xd, xs, x16, u)
        for t in range(T):
            for r in range(r0, r1):
                v = g[t, r]
                g[t, r] = v / (np.float32(1.0) + np.exp(-v)) * u[t, r]


# ---- attention over the KV cache: float32 dot products and axpy on 8-lane vectors ----
#
# numba leaves the float reductions of kernels.py's scalar attention unvectorized (scalar
# vfmadd231ss), so the decode step's attention is written here too: per KV head, the G query
# heads that share it (GQA) score each cached key row, softmax, and accumulate the value rows.
# Rows are addressed by flat element offsets into C-contiguous float32 arrays; n (the head
# dimension) is a multiple of 8 (attention() checks).

def _f32_ptr(context, builder, ty, val, off):
    a = context.make_array(ty)(context, builder, val)
    return builder.gep(a.data, [off])


def _load8(builder, ty, p, off):
    """8 values at element offset `off` of an array of `ty` as <8 x float>: float32, or float16
    bit patterns (uint16, a half-precision KV cache: vcvtph2ps)."""
    q = builder.gep(p, [off])
    if ty.dtype == types.uint16:
        h = builder.load(builder.bitcast(q, ir.VectorType(I16, 8).as_pointer()), align=2)
        return builder.fpext(builder.bitcast(h, ir.VectorType(HALF, 8)), V8F32)
    return builder.load(builder.bitcast(q, V8F32.as_pointer()), align=4)


@intrinsic
def dot_f32(typingctx, a, ia, b, ib, n):
    """sum(a.flat[ia:ia+n] * b.flat[ib:ib+n]) for C-contiguous float32 arrays (b may also hold
    float16 bit patterns as uint16), n % 8 == 0. Four accumulators while 32 values remain (FMA
    latency), then one."""
    sig = types.float32(a, ia, b, ib, n)

    def codegen(context, builder, signature, args):
        aa, aia, ab, aib, an = args
        sa, sia, sb, sib, sn = signature.args
        pa = _f32_ptr(context, builder, sa, aa, context.cast(builder, aia, sia, types.int64))
        pb = _f32_ptr(context, builder, sb, ab, context.cast(builder, aib, sib, types.int64))
        n_ = context.cast(builder, an, sn, types.int64)
        e = _Emitter(builder)
        zero = ir.Constant(V8F32, [0.0] * 8)

        def both(off):
            return _load8(builder, sa, pa, off), _load8(builder, sb, pb, off)

        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(4)]
        n32 = builder.sdiv(n_, ir.Constant(I64, 32))
        with cgutils.for_range(builder, n32) as loop:
            base = builder.mul(loop.index, ir.Constant(I64, 32))
            for k, acc in enumerate(accs):
                off = builder.add(base, ir.Constant(I64, 8 * k))
                builder.store(builder.call(e._fma, [*both(off), builder.load(acc)]), acc)
        rest = builder.sdiv(builder.sub(n_, builder.mul(n32, ir.Constant(I64, 32))), ir.Constant(I64, 8))
        with cgutils.for_range(builder, rest) as loop:
            off = builder.add(builder.mul(n32, ir.Constant(I64, 32)), builder.mul(loop.index, ir.Constant(I64, 8)))
            builder.store(builder.call(e._fma, [*both(off), builder.load(accs[0])]), accs[0])
        v = [builder.load(acc) for acc in accs]
        return e.hsum(builder.fadd(builder.fadd(v[0], v[1]), builder.fadd(v[2], v[3])))

    return sig, codegen


@njit(parallel=True, cache=True)
def matmul_f16(w, x, out):
    """out (T, N) = x (T, K) float32 @ w.T for w (N, K) float16 bit patterns (uint16), K % 8 == 0:
    the decode matmul of F16 files, vcvtph2ps + FMA in registers (the scalar kernel converts
    through a 256 KiB table), rows prefetched ahead."""
    N, K = w.shape
    T = x.shape[0]
    for task in prange((N + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        for r in range(task * ROWS_PER_TASK, min(N, task * ROWS_PER_TASK + ROWS_PER_TASK)):
            if r + PREFETCH_ROWS < N:
                _prefetch(w, r + PREFETCH_ROWS)
            for t in range(T):
                out[t, r] = dot_f32(x, t * K, w, r * K, K)


@intrinsic
def axpy_f32(typingctx, y, iy, alpha, x, ix, n):
    """y.flat[iy:iy+n] += alpha * x.flat[ix:ix+n] for C-contiguous float32 arrays (x may also
    hold float16 bit patterns as uint16), n % 8 == 0."""
    sig = types.void(y, iy, alpha, x, ix, n)

    def codegen(context, builder, signature, args):
        ay, aiy, aal, ax, aix, an = args
        sy, siy, sal, sx, six, sn = signature.args
        py = _f32_ptr(context, builder, sy, ay, context.cast(builder, aiy, siy, types.int64))
        px = _f32_ptr(context, builder, sx, ax, context.cast(builder, aix, six, types.int64))
        nv = builder.sdiv(context.cast(builder, an, sn, types.int64), ir.Constant(I64, 8))
        e = _Emitter(builder)
        va_ = e.splat(context.cast(builder, aal, sal, types.float32), V8F32)
        with cgutils.for_range(builder, nv) as loop:
            off = builder.mul(loop.index, ir.Constant(I64, 8))
            yp = builder.bitcast(builder.gep(py, [off]), V8F32.as_pointer())
            vx = _load8(builder, sx, px, off)
            builder.store(builder.call(e._fma, [va_, vx, builder.load(yp, align=4)]), yp, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _to_cache(typingctx, x, arr):
    """float32 x as an element of arr: itself, or its float16 bit pattern (round to nearest
    even, as numpy's astype(float16)) when arr holds uint16."""
    half = arr.dtype == types.uint16
    sig = (types.uint16 if half else types.float32)(x, arr)

    def codegen(context, builder, signature, args):
        if half:
            return builder.bitcast(builder.fptrunc(args[0], HALF), I16)
        return args[0]

    return sig, codegen


@intrinsic
def _silu_mul8(typingctx, g, u, out, i):
    """out.flat[i:i+8] = g / (1 + exp(-g)) * u over 8 values of C-contiguous float32 arrays."""
    sig = types.void(g, u, out, i)

    def codegen(context, builder, signature, args):
        b = builder
        e = _Emitter(b)
        off = context.cast(b, args[3], signature.args[3], types.int64)
        p = [b.bitcast(_f32_ptr(context, b, signature.args[k], args[k], off), V8F32.as_pointer()) for k in range(3)]
        gv, uv = b.load(p[0], align=4), b.load(p[1], align=4)
        den = b.fadd(_const_vec(V8F32, 1.0), vector_exp(e, b.fsub(_const_vec(V8F32, 0.0), gv)))
        b.store(b.fmul(b.fdiv(gv, den), uv), p[2], align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(parallel=True, cache=True)
def silu_mul(g, u, out):
    """kernels.silu_mul (out = silu(g) * u, all (T, F) float32, C-contiguous) with the vector exp:
    the prompt FFN. Large negative g give -0 as there (exp overflows to inf)."""
    T, F = g.shape
    for t in prange(T):
        f8 = F - F % 8
        for j in range(0, f8, 8):
            _silu_mul8(g, u, out, t * F + j)
        for j in range(f8, F):
            v = g[t, j]
            out[t, j] = v / (np.float32(1.0) + np.exp(-v)) * u[t, j]


@njit(cache=True)
def to_f16(x, out):
    """out (1-D uint16) = the float16 bit patterns of x (1-D float32), rounded to nearest even as
    numpy's astype(float16) (vcvtps2ph): the KV cache's f16 stores."""
    for i in range(x.size):
        out[i] = _to_cache(x[i], out)


@njit(inline="always")
def _softmax_rows(sc, h0, h1, n):
    """sc[h, :n] = softmax(sc[h, :n]) for h in h0..h1-1."""
    for h in range(h0, h1):
        m = sc[h, 0]
        for j in range(1, n):
            m = max(m, sc[h, j])
        tot = np.float32(0.0)
        for j in range(n):
            e = np.exp(sc[h, j] - m)
            sc[h, j] = e
            tot += e
        inv = np.float32(1.0) / tot
        for j in range(n):
            sc[h, j] *= inv


@njit(inline="always")
def _attend(q, kc, vc, t, kh0, kh1, n, scale, sc, acc, out):
    """Query heads of KV heads kh0..kh1-1 (GQA: query head h reads KV head h // G) for token t
    over cached positions 0..n-1: out = softmax(q K^T * scale) V. The cache is read in position
    order (all the heads of a position are adjacent). sc (H, >= n), acc (H, D): scratch."""
    H, D = q.shape[1], q.shape[2]
    Hkv = kc.shape[1]
    G = H // Hkv
    for j in range(n):
        for kh in range(kh0, kh1):
            ko = (j * Hkv + kh) * D
            for h in range(kh * G, kh * G + G):
                sc[h, j] = dot_f32(q, (t * H + h) * D, kc, ko, D) * scale
    _softmax_rows(sc, kh0 * G, kh1 * G, n)
    for h in range(kh0 * G, kh1 * G):
        for d in range(D):
            acc[h, d] = 0.0
    for j in range(n):
        for kh in range(kh0, kh1):
            vo = (j * Hkv + kh) * D
            for h in range(kh * G, kh * G + G):
                axpy_f32(acc, h * D, sc[h, j], vc, vo, D)
    for h in range(kh0 * G, kh1 * G):
        for d in range(D):
            out[t, h, d] = acc[h, d]


@njit(cache=True)
def attention(q, kc, vc, p0, scale, out):
    """Causal GQA attention, serially. q, out: (T, H, D) f32 at positions p0..p0+T-1; kc, vc:
    (ctx, Hkv, D) f32 caches already holding positions 0..p0+T-1. All C-contiguous, D % 8 == 0."""
    T, H, D = q.shape
    sc = np.empty((H, p0 + T), np.float32)
    acc = np.empty((H, D), np.float32)
    for t in range(T):
        _attend(q, kc, vc, t, 0, kc.shape[1], p0 + t + 1, scale, sc, acc, out)


@njit(parallel=True, cache=True)
def attention_parallel(q, kc, vc, p0, scale, out):
    """`attention` with (token, KV head) pairs spread over the threads (long contexts)."""
    T, H, D = q.shape
    Hkv = kc.shape[1]
    for i in prange(T * Hkv):
        t, kh = i // Hkv, i % Hkv
        sc = np.empty((H, p0 + t + 1), np.float32)
        acc = np.empty((H, D), np.float32)
        _attend(q, kc, vc, t, kh, kh + 1, p0 + t + 1, scale, sc, acc, out)


# ---- the whole decoder stack of a short step in one parallel region ----
#
# A decode step through the per-op drivers above opens 4 parallel regions per layer (Q/K/V,
# O, gate/up, down) from Python, with serial norms, quantization, RoPE and attention between
# them. `layers` runs all the layers in ONE region: each thread keeps a private copy of the
# residual stream and does the (cheap) norms and activation quantizations itself, the matmul
# rows and the attention's KV heads are split between the threads, and a spin barrier (atomics
# below) separates the phases: 5 barriers per layer instead of 4 region launches and returns.

@intrinsic
def _atomic_add(typingctx, arr, idx, val):
    """Atomically arr[idx] += val (int64 array, sequentially consistent); returns the old value."""
    sig = types.int64(arr, idx, val)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        p = builder.gep(a.data, [context.cast(builder, args[1], signature.args[1], types.int64)])
        v = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", p, v, "seq_cst")

    return sig, codegen


@intrinsic
def _atomic_load(typingctx, arr, idx):
    """arr[idx] read atomically (acquire) from an int64 array."""
    sig = types.int64(arr, idx)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        p = builder.gep(a.data, [context.cast(builder, args[1], signature.args[1], types.int64)])
        return builder.load_atomic(p, "acquire", 8)

    return sig, codegen


@intrinsic
def _pause(typingctx):
    """The spin-wait hint (x86 `pause`)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
        builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _yield(typingctx):
    """sched_yield(): let the thread we wait for run when the machine has more threads than cores."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(I32, []), "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _u8_ptr(typingctx, addr):
    """An int64 address as a uint8 pointer (for numba.carray)."""
    sig = types.CPointer(types.uint8)(addr)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], I8P)

    return sig, codegen


@intrinsic
def _f32_ptr_at(typingctx, addr):
    """An int64 address as a float32 pointer (for numba.carray)."""
    sig = types.CPointer(types.float32)(addr)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], F32.as_pointer())

    return sig, codegen


@intrinsic
def _u16_ptr_at(typingctx, addr):
    """An int64 address as a uint16 pointer (a float16 KV cache, for numba.carray)."""
    sig = types.CPointer(types.uint16)(addr)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], I16.as_pointer())

    return sig, codegen


SPINS_BEFORE_YIELD = 1 << 12    # ~50-100 us of `pause`, then sched_yield() between checks
WAIT_LIMIT = 1 << 24            # default sync[3]: yields before a barrier gives up (tens of seconds)


@njit(inline="always")
def _barrier(sync, nth):
    """Wait until all nth threads got here. sync[0]: arrivals, sync[1]: generation, sync[2]:
    set when a wait timed out (the caller then reports failure instead of hanging), sync[3]:
    the yields a wait may take (a thread never came: e.g. a threading layer that ran two of
    the prange's iterations on one thread)."""
    if nth == 1:
        return
    gen = _atomic_load(sync, 1)
    if _atomic_add(sync, 0, 1) == nth - 1:
        _atomic_add(sync, 0, -nth)
        _atomic_add(sync, 1, 1)
        return
    spins = 0
    while _atomic_load(sync, 1) == gen:
        spins += 1
        if spins < SPINS_BEFORE_YIELD:
            _pause()
        else:
            _yield()
            if spins > SPINS_BEFORE_YIELD + sync[3] or _atomic_load(sync, 2) != 0:
                _atomic_add(sync, 2, 1)
                return


@njit(inline="always")
def _norm_rows(x, w, eps, out):
    """out (T, D) = rmsnorm(x (T, D)) * w."""
    T, D = x.shape
    for t in range(T):
        ss = np.float32(0.0)
        for j in range(D):
            ss += x[t, j] * x[t, j]
        inv = np.float32(1.0) / np.sqrt(ss / np.float32(D) + np.float32(eps))
        for j in range(D):
            out[t, j] = w[j] * (x[t, j] * inv)


@njit(inline="always")
def _all_finite(a):
    """No NaN or inf in the float32 array a (tested on the bits: immune to fastmath)."""
    bits = a.reshape(a.size).view(np.uint32)
    for i in range(bits.size):
        if bits[i] & np.uint32(0x7F800000) == np.uint32(0x7F800000):
            return False
    return True


@njit(inline="always")
def _round_to_f16(x):
    """quants/common.round_to_f16 (not imported: quants imports this package)."""
    if x == 0:
        return np.float32(0.0)
    if x < 6.103515625e-05:
        return np.float32(np.rint(x * 16777216.0) / 16777216.0)
    m, e = math.frexp(x)
    return np.float32(math.ldexp(np.rint(m * 2048.0), e - 11))


@intrinsic
def _q8_block(typingctx, x, t, c, xq):
    """Q8_0 of the 32 values x[t, c:c+32] (2-D float32, unit column stride) into xq[t, c:c+32]
    (2-D int8): returns (d = max|x| / 127, sum of the 32 codes). Element by element the
    operations of quants/common._quantize_block (|x * (1/d)| + 0.5, floor, the sign; no FMA
    contraction), so the codes are identical; max and sum are exact in any order."""
    sig = types.Tuple((types.float32, types.int32))(x, t, c, xq)

    def codegen(context, builder, signature, args):
        b = builder
        sx, st, sc, sq = signature.args

        def at(i, size):
            a = context.make_array(signature.args[i])(context, b, args[i])
            row = cgutils.unpack_tuple(b, a.strides, 2)[0]
            off = b.add(b.mul(context.cast(b, args[1], st, types.int64), row),
                        b.mul(context.cast(b, args[2], sc, types.int64), ir.Constant(I64, size)))
            return b.gep(b.bitcast(a.data, I8P), [off])

        px, pq = at(0, 4), at(3, 1)
        m = b.module
        fabs = cgutils.get_or_insert_function(m, ir.FunctionType(V8F32, [V8F32]), "llvm.fabs.v8f32")
        floor = cgutils.get_or_insert_function(m, ir.FunctionType(V8F32, [V8F32]), "llvm.floor.v8f32")
        vs = [b.load(b.bitcast(b.gep(px, [ir.Constant(I64, 32 * k)]), V8F32.as_pointer()), align=4) for k in range(4)]
        e = _Emitter(b)
        mx = _const_vec(V8F32, 0.0)
        for v in vs:                                  # NaN lanes never win, as `if v > amax` in the scalar code
            mx = e.vmax(b.call(fabs, [v]), mx)
        d = b.fdiv(e.reduce(mx, e.vmax), ir.Constant(F32, 127.0))
        inv = b.select(b.fcmp_ordered(">", d, ir.Constant(F32, 0.0)), b.fdiv(ir.Constant(F32, 1.0), d), ir.Constant(F32, 0.0))
        invv, half_ = e.splat(inv, V8F32), _const_vec(V8F32, 0.5)
        tot = ir.Constant(V8I32, [0] * 8)
        for k, v in enumerate(vs):
            y = b.fmul(v, invv)
            qi = b.fptosi(b.call(floor, [b.fadd(b.call(fabs, [y]), half_)]), V8I32)
            qi = b.select(b.fcmp_ordered(">=", y, _const_vec(V8F32, 0.0)), qi, b.sub(ir.Constant(V8I32, [0] * 8), qi))
            b.store(b.trunc(qi, ir.VectorType(I8, 8)), b.bitcast(b.gep(pq, [ir.Constant(I64, 8 * k)]),
                                                                 ir.VectorType(I8, 8).as_pointer()), align=1)
            tot = b.add(tot, qi)
        return context.make_tuple(b, signature.return_type, [d, e.reduce(tot, b.add)])

    return sig, codegen


@intrinsic
def _half_round(typingctx, x):
    """float32 x rounded to the nearest float16 (ties to even: vcvtps2ph), back as float32."""
    sig = types.float32(x)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.fptrunc(args[0], HALF), F32)

    return sig, codegen


@njit(inline="always")
def _quantize_block(x, xq, xd, xs, t, blk):
    d, s = _q8_block(x, t, blk * 32, xq)
    # = _round_to_f16(d) where float16 has the value (past 65504 that one stays finite)
    xd[t, blk] = _half_round(d) if d <= np.float32(65504.0) else _round_to_f16(d)
    xs[t, blk] = s


@njit(inline="always")
def _quantize(x, xq, xd, xs):
    """Q8_0 activation of x (T, K) exactly as quants/common.quantize_act_q8_0 (x, xq with unit
    column stride)."""
    T, K = x.shape
    for t in range(T):
        for blk in range(K // 32):
            _quantize_block(x, xq, xd, xs, t, blk)


@njit(cache=True)
def quantize_act(x, xq, xd, xs):
    """quants/common.quantize_act_q8_0 in vector code, the same result (x, xq: unit column stride)."""
    _quantize(x, xq, xd, xs)


@njit(parallel=True, cache=True)
def quantize_act_parallel(x, xq, xd, xs):
    """`quantize_act` over the threads (prompts)."""
    T, K = x.shape
    nb = K // 32
    for i in prange(T * nb):
        _quantize_block(x, xq, xd, xs, i // nb, i % nb)


@njit(inline="always")
def _rope_heads(x, w, eps, cos, sin, p0, h0, h1):
    """In place on x (T, H, D): heads h0..h1-1 RMS-normed with w (D,), then NeoX RoPE at p0 + t."""
    T, H, D = x.shape
    half = D // 2
    for t in range(T):
        p = p0 + t
        for h in range(h0, h1):
            ss = np.float32(0.0)
            for j in range(D):
                ss += x[t, h, j] * x[t, h, j]
            inv = np.float32(1.0) / np.sqrt(ss / np.float32(D) + np.float32(eps))
            for j in range(half):
                a = w[j] * (x[t, h, j] * inv)
                b = w[j + half] * (x[t, h, j + half] * inv)
                x[t, h, j] = a * cos[p, j] - b * sin[p, j]
                x[t, h, j + half] = b * cos[p, j] + a * sin[p, j]


@njit(inline="always")
def _share(n, tid, nth):
    """Thread tid's contiguous part [a, b) of range(n)."""
    return n * tid // nth, n * (tid + 1) // nth


@njit(inline="always")
def _matrix(wmat, i):
    """Matrix i of wmat (address, rows, bytes per row) as a (rows, bytes) uint8 array."""
    return numba.carray(_u8_ptr(wmat[i, 0]), (wmat[i, 1], wmat[i, 2]))


@njit(inline="always")
def _n_tasks(rows):
    return (rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK


@njit(inline="always")
def _cache_attend(qs, ks, vs, kc, vc, p0, kh0, kh1, scale, sc, acc, out):
    """Write the step's keys and values of KV heads kh0..kh1-1 at positions p0.. of the layer's
    caches kc, vc (float32, or float16 bit patterns), then attend those heads' queries."""
    Tn, hd = qs.shape[0], qs.shape[2]
    for t in range(Tn):
        for kh in range(kh0, kh1):
            for j in range(hd):
                kc[p0 + t, kh, j] = _to_cache(ks[t, kh, j], kc)
                vc[p0 + t, kh, j] = _to_cache(vs[t, kh, j], vc)
    for t in range(Tn):
        _attend(qs, kc, vc, t, kh0, kh1, p0 + t + 1, scale, sc, acc, out)


@njit(parallel=True, cache=True)
def layers(x, codes, wmat, attn_norm, ffn_norm, q_norm, k_norm, eps, cos, sin, segs, kv, scale,
           H, Hkv, nth, sync, status):
    """Run every decoder layer on x (T, d), the rows of one or more sequences: segs[i] = (start,
    end, p0) puts rows start..end-1 at positions p0.. of sequence i's caches: kv[i] = (address of
    K, address of V, ctx, bytes per value), each a C-contiguous (layers, ctx, Hkv, hd) array of
    float32 (4) or of float16 bit patterns (2). x is replaced
    by the last layer's output. codes (layers, 7): the type codes of q, k, v, o, gate, up, down;
    wmat (layers * 7, 3): their raw blocks as (address, rows, bytes per row) of C-contiguous
    arrays (the mapped file; addresses rather than a typed list, whose first use in a process
    compiles for seconds). The caller keeps every array alive. Norms stacked per layer. status[0] = 1 + layer when a non-finite value reached o's input,
    status[1] likewise for down's; sync[2] != 0 when a barrier timed out (results invalid)."""
    T, d = x.shape
    n_layer = codes.shape[0]
    hd = q_norm.shape[1]
    G = H // Hkv
    nq, nkv = H * hd, Hkv * hd
    n_ff = wmat[4, 1]
    kmax = max(d, nq, n_ff)
    q = np.empty((T, nq), np.float32)
    k = np.empty((T, nkv), np.float32)
    v = np.empty((T, nkv), np.float32)
    att = np.empty((T, nq), np.float32)
    o = np.empty((T, d), np.float32)
    g = np.empty((T, n_ff), np.float32)
    u = np.empty((T, n_ff), np.float32)
    dn = np.empty((T, d), np.float32)
    for tid in prange(nth):                             # nth = numba.get_num_threads(): one each
        xr = x.copy()                                   # this thread's residual stream
        h = np.empty((T, d), np.float32)
        xq = np.empty((T, kmax), np.int8)
        xd = np.empty((T, kmax // 32), np.float32)
        xs = np.empty((T, kmax // 32), np.int32)
        x16 = np.zeros((T, kmax // 16), np.int16)       # per-16 sums of Q6_K, Q3_K, Q2_K (_sums16)
        has6 = False
        for li in range(n_layer):
            for m in range(7):
                has6 = has6 or codes[li, m] == Q6_K or codes[li, m] == Q3_K or codes[li, m] == Q2_K
        maxn = 0
        for si in range(segs.shape[0]):
            maxn = max(maxn, segs[si, 2] + segs[si, 1] - segs[si, 0])
        sc = np.empty((H, maxn), np.float32)
        acc = np.empty((H, hd), np.float32)
        q3, k3, v3, a3 = q.reshape((T, H, hd)), k.reshape((T, Hkv, hd)), v.reshape((T, Hkv, hd)), att.reshape((T, H, hd))
        for li in range(n_layer):
            base = li * 7
            # -- Q, K, V
            _norm_rows(xr, attn_norm[li], eps, h)
            _quantize(h, xq[:, :d], xd[:, :d // 32], xs[:, :d // 32])
            if has6:
                _sums16(xq[:, :d], x16[:, :d // 16])
            t0, t1 = _n_tasks(wmat[base, 1]), _n_tasks(wmat[base + 1, 1])
            lo, hi = _share(t0 + t1 + _n_tasks(wmat[base + 2, 1]), tid, nth)
            for task in range(lo, hi):
                if task < t0:
                    r0, m, out = task * ROWS_PER_TASK, 0, q
                elif task < t0 + t1:
                    r0, m, out = (task - t0) * ROWS_PER_TASK, 1, k
                else:
                    r0, m, out = (task - t0 - t1) * ROWS_PER_TASK, 2, v
                w = _matrix(wmat, base + m)
                _rows(codes[li, m], w, r0, min(w.shape[0], r0 + ROWS_PER_TASK), xq[:, :d], xd[:, :d // 32], xs[:, :d // 32], x16[:, :d // 16], out)
            _barrier(sync, nth)
            # -- QK norm + RoPE, cache, attention: this thread's (sequence, KV head) pairs
            lo, hi = _share(segs.shape[0] * Hkv, tid, nth)
            for si in range(segs.shape[0]):
                kh0, kh1 = max(lo - si * Hkv, 0), min(hi - si * Hkv, Hkv)
                if kh1 <= kh0:
                    continue
                s0, s1, p0 = segs[si, 0], segs[si, 1], segs[si, 2]
                qs, ks, vs, os_ = q3[s0:s1], k3[s0:s1], v3[s0:s1], a3[s0:s1]
                _rope_heads(ks, k_norm[li], eps, cos, sin, p0, kh0, kh1)
                _rope_heads(qs, q_norm[li], eps, cos, sin, p0, kh0 * G, kh1 * G)
                shape = (n_layer, kv[si, 2], Hkv, hd)
                if kv[si, 3] == 2:                      # float16 cache (uint16 bit patterns)
                    _cache_attend(qs, ks, vs, numba.carray(_u16_ptr_at(kv[si, 0]), shape)[li],
                                  numba.carray(_u16_ptr_at(kv[si, 1]), shape)[li], p0, kh0, kh1, scale, sc, acc, os_)
                else:
                    _cache_attend(qs, ks, vs, numba.carray(_f32_ptr_at(kv[si, 0]), shape)[li],
                                  numba.carray(_f32_ptr_at(kv[si, 1]), shape)[li], p0, kh0, kh1, scale, sc, acc, os_)
            _barrier(sync, nth)
            # -- O
            if not _all_finite(att) and status[0] == 0:
                status[0] = 1 + li
            _quantize(att, xq[:, :nq], xd[:, :nq // 32], xs[:, :nq // 32])
            if has6:
                _sums16(xq[:, :nq], x16[:, :nq // 16])
            wo = _matrix(wmat, base + 3)
            lo, hi = _share(_n_tasks(d), tid, nth)
            for task in range(lo, hi):
                r0 = task * ROWS_PER_TASK
                _rows(codes[li, 3], wo, r0, min(d, r0 + ROWS_PER_TASK), xq[:, :nq], xd[:, :nq // 32], xs[:, :nq // 32], x16[:, :nq // 16], o)
            _barrier(sync, nth)
            # -- gate, up, SiLU
            for t in range(T):
                for j in range(d):
                    xr[t, j] += o[t, j]
            _norm_rows(xr, ffn_norm[li], eps, h)
            _quantize(h, xq[:, :d], xd[:, :d // 32], xs[:, :d // 32])
            if has6:
                _sums16(xq[:, :d], x16[:, :d // 16])
            wg, wu = _matrix(wmat, base + 4), _matrix(wmat, base + 5)
            lo, hi = _share(_n_tasks(n_ff), tid, nth)
            for task in range(lo, hi):
                r0 = task * ROWS_PER_TASK
                r1 = min(n_ff, r0 + ROWS_PER_TASK)
                _rows(codes[li, 4], wg, r0, r1, xq[:, :d], xd[:, :d // 32], xs[:, :d // 32], x16[:, :d // 16], g)
                _rows(codes[li, 5], wu, r0, r1, xq[:, :d], xd[:, :d // 32], xs[:, :d // 32], x16[:, :d // 16], u)
                for t in range(T):
                    for r in range(r0, r1):
                        z = g[t, r]
                        g[t, r] = z / (np.float32(1.0) + np.exp(-z)) * u[t, r]
            _barrier(sync, nth)
            # -- down
            if not _all_finite(g) and status[1] == 0:
                status[1] = 1 + li
            _quantize(g, xq[:, :n_ff], xd[:, :n_ff // 32], xs[:, :n_ff // 32])
            if has6:
                _sums16(xq[:, :n_ff], x16[:, :n_ff // 16])
            wd = _matrix(wmat, base + 6)
            lo, hi = _share(_n_tasks(d), tid, nth)
            for task in range(lo, hi):
                r0 = task * ROWS_PER_TASK
                _rows(codes[li, 6], wd, r0, min(d, r0 + ROWS_PER_TASK), xq[:, :n_ff], xd[:, :n_ff // 32], xs[:, :n_ff // 32], x16[:, :n_ff // 16], dn)
            _barrier(sync, nth)
            for t in range(T):
                for j in range(d):
                    xr[t, j] += dn[t, j]
        if tid == 0:
            x[:, :] = xr
