"""aarch64 NEON dot-product kernels for the quantized matmuls (ARMv8.2 `sdot`: Raspberry Pi 5's
Cortex-A76, Neoverse, Apple M), written as explicit vector code: LLVM IR emitted with llvmlite's
IRBuilder inside `numba.extending.intrinsic`s, called from ordinary numba drivers, exactly as
simd/avx2.py does for x86 (same interface: CODES, NAMES, matmul, matmul3, ffn). No C extension,
nothing compiled at install time; numba's on-disk cache keeps the machine code.

Every kernel computes, for one weight row and 1-4 tokens, the dot products of the row with the
tokens' Q8_0 activations (xq int8, xd float32 scales per 32 values, xs int32 sums per 32; see
quants/common.py), the same quantity as the scalar kernels in quants/ (their reference), up to
float summation order. Per 32-value block, per token, as ggml's NEON loops do:

    p = sdot(sdot(0, w[0:16], x[0:16]), w[16:32], x[16:32])    32 int8 products -> 4 x i32
    acc = fma(scvtf(p), splat(d_w * d_x), acc)                 4 float lanes per token, kept
                                                               across all blocks of the row
and one horizontal sum per row and token at the end. Weight-side work (unpacking nibbles, the
offsets, K-quant scales) is done once per block and shared by the 1-4 tokens.

    Q8_0   w signed int8 straight in
    Q4_0   nibbles minus 8 (-8..7, signed int8), once per block for all tokens
    Q4_K   nibbles (0..15 are valid signed int8) straight in; d*sc per 32-block in the float
           scale; the minima as dmin*m * dx * xs (xs: the activation's integer block sums), 8
           blocks at once
    Q5_K   as Q4_K with the 5th bit from qh (0..31)
    Q6_K   6-bit values minus 32 (-32..31); the int8 scale per 16 values multiplies each of the
           two sdot results (one sdot per 16-half) before the float convert

Block layouts as in ggml-common.h (see quants/q4_0.py, q8_0.py, kquants.py). The path is used
only when the CPU numba compiles for has dotprod (simd/__init__.py decides before anything here
is compiled: LLVM aborts the process when `sdot` is compiled for a CPU without it, e.g.
cortex-a72 or generic ARMv8-A). Importing this module compiles nothing.

Caching note: numba's cache is keyed on this file; the IR emitters and the drivers live in the
same file so that an edit to either recompiles both. The drivers are copies of avx2.py's (this
module must not need the x86 one).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

I8, I16, I32, I64, F32, HALF = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType(), ir.HalfType()
I8P = I8.as_pointer()
V16I8 = ir.VectorType(I8, 16)
V4I32, V4F32 = ir.VectorType(I32, 4), ir.VectorType(F32, 4)
V8I32, V8F32 = ir.VectorType(I32, 8), ir.VectorType(F32, 8)

# GGML type codes of the formats with a kernel here
Q4_0, Q8_0, Q4_K, Q5_K, Q6_K = 2, 8, 12, 13, 14
CODES = (Q4_0, Q8_0, Q4_K, Q5_K, Q6_K)
NAMES = {Q4_0: "q4_0", Q8_0: "q8_0", Q4_K: "q4_k", Q5_K: "q5_k", Q6_K: "q6_k"}
SUPER = {Q4_0: False, Q8_0: False, Q4_K: True, Q5_K: True, Q6_K: True}   # loop over 256-value super-blocks
MAX_TOKENS = 4          # tokens per weight load
SDOT = "llvm.aarch64.neon.sdot.v4i32.v16i8"

# kernel(w_row, xq, xq_stride, xd, xd_stride, xs, xs_stride, n_blocks, out, out_stride): all byte
# pointers and byte strides; token i's data at base + i * stride; out[i] = float32 dot product.
KERNEL_TYPE = ir.FunctionType(ir.VoidType(), [I8P, I8P, I64, I8P, I64, I8P, I64, I64, I8P, I64])


def _const_vec(ty, value):
    return ir.Constant(ty, [value] * ty.count)


ZERO4 = _const_vec(V4I32, 0)


class _Emitter:
    """IR helpers on one builder."""

    def __init__(self, b: ir.IRBuilder):
        self.b = b
        m = b.module

        def fn(name, ret, *args):
            return cgutils.get_or_insert_function(m, ir.FunctionType(ret, args), name)

        self._sdot = fn(SDOT, V4I32, V4I32, V16I8, V16I8)
        self._fma = fn("llvm.fma.v4f32", V4F32, V4F32, V4F32, V4F32)

    def c64(self, v):
        return ir.Constant(I64, v)

    def ptr(self, p, off, ty):
        b = self.b
        q = b.gep(p, [off if isinstance(off, ir.Value) else ir.Constant(I64, off)])
        return b.bitcast(q, ty.as_pointer())

    def load(self, p, off, ty):
        return self.b.load(self.ptr(p, off, ty), align=1)

    def f16(self, p, off):
        return self.b.fpext(self.load(p, off, HALF), F32)     # fcvt: base ARMv8, no libcall

    def off(self, base, k):
        return self.b.add(base, ir.Constant(I64, k))

    def splat(self, v, vty):
        b = self.b
        one = b.insert_element(ir.Constant(vty, ir.Undefined), v, ir.Constant(I32, 0))
        return b.shuffle_vector(one, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(I32, vty.count), [0] * vty.count))

    def sdot(self, acc, a, x):
        return self.b.call(self._sdot, [acc, a, x])

    def xq(self, t, blk):
        """Token t's 32 activation bytes of 32-block blk as two <16 x i8>."""
        off = self.b.mul(blk, self.c64(32))
        return self.load(t["xq"], off, V16I8), self.load(t["xq"], self.off(off, 16), V16I8)

    def xd(self, t, blk):
        return self.load(t["xd"], self.b.mul(blk, self.c64(4)), F32)

    def dot32(self, a0, a1, t, blk):
        """sum(w x) of a 32-block (weights a0 | a1, signed int8) as <4 x i32>: two sdot."""
        x0, x1 = self.xq(t, blk)
        return self.sdot(self.sdot(ZERO4, a0, x0), a1, x1)

    def fma_acc(self, p32, scale, acc):
        b = self.b
        return b.call(self._fma, [b.sitofp(p32, V4F32), self.splat(scale, V4F32), acc])

    def nibbles(self, raw):
        """<16 x i8> bytes -> (low nibbles, high nibbles) in 0..15."""
        b = self.b
        return b.and_(raw, _const_vec(V16I8, 15)), b.lshr(raw, _const_vec(V16I8, 4))

    def hsum4(self, v):
        b = self.b
        und = ir.Constant(V4F32, ir.Undefined)
        s2 = b.fadd(b.shuffle_vector(v, und, ir.Constant(ir.VectorType(I32, 2), [0, 1])),
                    b.shuffle_vector(v, und, ir.Constant(ir.VectorType(I32, 2), [2, 3])))
        return b.fadd(b.extract_element(s2, ir.Constant(I32, 0)), b.extract_element(s2, ir.Constant(I32, 1)))

    def hsum8(self, v):
        b = self.b
        und = ir.Constant(V8F32, ir.Undefined)
        lo = b.shuffle_vector(v, und, ir.Constant(ir.VectorType(I32, 4), [0, 1, 2, 3]))
        hi = b.shuffle_vector(v, und, ir.Constant(ir.VectorType(I32, 4), [4, 5, 6, 7]))
        return self.hsum4(b.fadd(lo, hi))


def _body_q8_0(e, w, i, tok, accs, corrs):
    b = e.b
    base = b.mul(i, e.c64(34))
    w0, w1 = e.load(w, e.off(base, 2), V16I8), e.load(w, e.off(base, 18), V16I8)
    d = e.f16(w, base)
    out = [e.fma_acc(e.dot32(w0, w1, t, i), b.fmul(d, e.xd(t, i)), acc) for t, acc in zip(tok, accs)]
    return out, corrs


def _body_q4_0(e, w, i, tok, accs, corrs):
    """Byte j: element j in the low nibble, element j + 16 in the high one; minus 8 once per
    block (shared by the tokens) gives signed int8 weights for sdot."""
    b = e.b
    base = b.mul(i, e.c64(18))
    lo, hi = e.nibbles(e.load(w, e.off(base, 2), V16I8))
    c8 = _const_vec(V16I8, 8)
    w0, w1 = b.sub(lo, c8), b.sub(hi, c8)
    d = e.f16(w, base)
    out = [e.fma_acc(e.dot32(w0, w1, t, i), b.fmul(d, e.xd(t, i)), acc) for t, acc in zip(tok, accs)]
    return out, corrs


def _k4_scales(e, w, base):
    """The 8 scales and 8 minima of a Q4_K/Q5_K super-block (ggml get_scale_min_k4) as two
    <8 x float>, unpacked as vectors: with A = bytes 0..7 and B = bytes 4..11 of scales[12],
        sc = A & 63 (j < 4),  (B & 15) | (A[j-4] >> 6) << 4 (j >= 4)
        m  = B & 63 (j < 4),  (B >> 4) | (A[j] >> 6) << 4   (j >= 4)"""
    b = e.b
    v8 = ir.VectorType(I8, 8)
    c = lambda v: _const_vec(v8, v)                       # noqa: E731
    A, B = e.load(w, e.off(base, 4), v8), e.load(w, e.off(base, 8), v8)
    a_lo = b.shuffle_vector(A, ir.Constant(v8, ir.Undefined), ir.Constant(ir.VectorType(I32, 8), [0, 1, 2, 3, 0, 1, 2, 3]))
    sc_hi = b.or_(b.and_(B, c(15)), b.shl(b.lshr(a_lo, c(6)), c(4)))
    mn_hi = b.or_(b.lshr(B, c(4)), b.shl(b.lshr(A, c(6)), c(4)))
    pick = ir.Constant(ir.VectorType(I32, 8), [0, 1, 2, 3, 12, 13, 14, 15])
    sc = b.shuffle_vector(b.and_(A, c(63)), sc_hi, pick)
    mn = b.shuffle_vector(b.and_(B, c(63)), mn_hi, pick)
    return b.uitofp(sc, V8F32), b.uitofp(mn, V8F32)


def _min_terms(e, tok, i, mins, corrs):
    """corr += sum_j dmin*m_j * dx_j * xs_j over the 8 32-blocks of super-block i, as one 8-lane
    product per token (the activation's 8 block scales and sums are adjacent in memory)."""
    b = e.b
    out = []
    for t, corr in zip(tok, corrs):
        off = b.mul(i, e.c64(32))                               # 8 blocks x 4 bytes
        xs = b.sitofp(e.load(t["xs"], off, V8I32), V8F32)
        dx = e.load(t["xd"], off, V8F32)
        out.append(b.fadd(corr, e.hsum8(b.fmul(b.fmul(xs, dx), mins))))
    return out


def _body_q4_k(e, w, i, tok, accs, corrs, five=False):
    """Chunk p (32 bytes of qs): low nibbles are 32-block 2p, high nibbles 2p + 1 (and the bits
    2p, 2p + 1 of qh their 5th bits for Q5_K). The float scale of block j for token t is lane j
    of (d * sc) * dx_t (8 lanes: one vector multiply per super-block and token)."""
    b = e.b
    base = b.mul(i, e.c64(176 if five else 144))
    d, dmin = e.f16(w, base), e.f16(w, e.off(base, 2))
    sc, mn = _k4_scales(e, w, base)
    dsc = b.fmul(e.splat(d, V8F32), sc)
    off8 = b.mul(i, e.c64(32))                                  # the super-block's 8 xd
    tsc = [b.fmul(dsc, e.load(t["xd"], off8, V8F32)) for t in tok]
    qs = 48 if five else 16
    qh = [e.load(w, e.off(base, 16 + 16 * h), V16I8) for h in range(2)] if five else None
    one, c4 = _const_vec(V16I8, 1), _const_vec(V16I8, 4)
    for p in range(4):
        halves = [e.nibbles(e.load(w, e.off(base, qs + 32 * p + 16 * h), V16I8)) for h in range(2)]
        lo, hi = [halves[0][0], halves[1][0]], [halves[0][1], halves[1][1]]
        if five:
            for h in range(2):
                lo[h] = b.or_(lo[h], b.shl(b.and_(b.lshr(qh[h], _const_vec(V16I8, 2 * p)), one), c4))
                hi[h] = b.or_(hi[h], b.shl(b.and_(b.lshr(qh[h], _const_vec(V16I8, 2 * p + 1)), one), c4))
        for j, q in ((2 * p, lo), (2 * p + 1, hi)):
            blk = b.add(b.mul(i, e.c64(8)), e.c64(j))
            lane = ir.Constant(I32, j)
            accs = [e.fma_acc(e.dot32(q[0], q[1], t, blk), b.extract_element(ts, lane), acc)
                    for t, ts, acc in zip(tok, tsc, accs)]
    corrs = _min_terms(e, tok, i, b.fmul(e.splat(dmin, V8F32), mn), corrs)
    return accs, corrs


def _body_q5_k(e, w, i, tok, accs, corrs):
    return _body_q4_k(e, w, i, tok, accs, corrs, five=True)


def _body_q6_k(e, w, i, tok, accs, corrs):
    """Half h (128 values): for l < 32, values 128h + 32k + l, k = 0..3, from the nibbles of
    ql[64h + l] (k = 0, 2) and ql[64h + 32 + l] (k = 1, 3) and bits 2k..2k+1 of qh[32h + l];
    scale index 8h + 2k + l // 16."""
    b = e.b
    base = b.mul(i, e.c64(210))
    d = e.f16(w, e.off(base, 208))
    m15, c4, c32 = (_const_vec(V16I8, v) for v in (15, 4, 32))
    scales = b.sext(e.load(w, e.off(base, 192), V16I8), ir.VectorType(I16, 16))   # the 16 int8 scales
    off8 = b.mul(i, e.c64(32))                                  # the super-block's 8 xd
    tdx = [b.fmul(e.splat(d, V8F32), e.load(t["xd"], off8, V8F32)) for t in tok]   # d * dx per block
    for h in range(2):
        qv = [[None, None] for _ in range(4)]              # qv[k][half of 16] in -32..31
        for hh in range(2):
            ql0 = e.load(w, e.off(base, 64 * h + 16 * hh), V16I8)
            ql1 = e.load(w, e.off(base, 64 * h + 32 + 16 * hh), V16I8)
            qh = e.load(w, e.off(base, 128 + 32 * h + 16 * hh), V16I8)
            m48 = _const_vec(V16I8, 48)                        # bits 2k..2k+1 of qh moved to 4..5
            hb = [b.and_(b.shl(qh, c4), m48), b.and_(b.shl(qh, _const_vec(V16I8, 2)), m48),
                  b.and_(qh, m48), b.and_(b.lshr(qh, _const_vec(V16I8, 2)), m48)]
            raw = [b.or_(b.and_(ql0, m15), hb[0]), b.or_(b.and_(ql1, m15), hb[1]),
                   b.or_(b.lshr(ql0, c4), hb[2]), b.or_(b.lshr(ql1, c4), hb[3])]
            for k in range(4):
                qv[k][hh] = b.sub(raw[k], c32)
        for k in range(4):
            si = 8 * h + 2 * k
            s01 = b.sext(b.shuffle_vector(scales, ir.Constant(scales.type, ir.Undefined),
                                          ir.Constant(ir.VectorType(I32, 4), [si, si, si + 1, si + 1])), V4I32)
            blk = b.add(b.mul(i, e.c64(8)), e.c64(4 * h + k))
            na = []
            for t, td, acc in zip(tok, tdx, accs):
                x0, x1 = e.xq(t, blk)
                p0, p1 = e.sdot(ZERO4, qv[k][0], x0), e.sdot(ZERO4, qv[k][1], x1)
                # addp: lanes 0-1 from the first 16 values, 2-3 from the others; times their scales
                p = b.mul(b.add(b.shuffle_vector(p0, p1, ir.Constant(V4I32, [0, 2, 4, 6])),
                                b.shuffle_vector(p0, p1, ir.Constant(V4I32, [1, 3, 5, 7]))), s01)
                na.append(e.fma_acc(p, b.extract_element(td, ir.Constant(I32, 4 * h + k)), acc))
            accs = na
    return accs, corrs


BODIES = {Q4_0: _body_q4_0, Q8_0: _body_q8_0, Q4_K: _body_q4_k, Q5_K: _body_q5_k, Q6_K: _body_q6_k}


def _kernel(module, code: int, nt: int):
    """The LLVM function computing one row against nt tokens (emitted once per module)."""
    name = f"edgeqwen_neon_{NAMES[code]}_x{nt}"
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
    zero_v, zero_f = ir.Constant(V4F32, [0.0] * 4), ir.Constant(F32, 0.0)
    b.cbranch(b.icmp_signed(">", nblk, ir.Constant(I64, 0)), loop, done)

    b.position_at_end(loop)
    i = b.phi(I64)
    accs = [b.phi(V4F32) for _ in range(nt)]
    corrs = [b.phi(F32) for _ in range(nt)]
    new_accs, new_corrs = BODIES[code](e, w, i, tok, accs, corrs)
    i1 = b.add(i, ir.Constant(I64, 1))
    end = b.block
    i.add_incoming(ir.Constant(I64, 0), entry)
    i.add_incoming(i1, end)
    for phi, new in zip(accs + corrs, new_accs + new_corrs):
        phi.add_incoming(zero_v if phi.type == V4F32 else zero_f, entry)
        phi.add_incoming(new, end)
    b.cbranch(b.icmp_signed("<", i1, nblk), loop, done)

    b.position_at_end(done)
    finals = []
    for t in range(nt):                                  # all PHIs first in the block
        fa, fc = b.phi(V4F32), b.phi(F32)
        fa.add_incoming(zero_v, entry)
        fa.add_incoming(new_accs[t], end)
        fc.add_incoming(zero_f, entry)
        fc.add_incoming(new_corrs[t], end)
        finals.append((fa, fc))
    for t, (fa, fc) in enumerate(finals):
        b.store(b.fsub(e.hsum4(fa), fc), b.bitcast(tok[t]["out"], F32.as_pointer()), align=4)
    b.ret_void()
    return fn


def kernel_ir(code: int, nt: int = 1) -> str:
    """The textual LLVM IR of one kernel alone (for reading its assembly on any machine: see
    benchmarks/asm_check.py --arm-ir)."""
    module = ir.Module(name=f"neon_{NAMES[code]}")
    module.triple = "aarch64-unknown-linux-gnu"
    fn = _kernel(module, code, nt)
    fn.linkage = "external"
    return str(module)


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
            for k in range(1, MAX_TOKENS + 1):
                with builder.if_then(builder.icmp_signed("==", nt_, ir.Constant(I64, k))):
                    builder.call(_kernel(builder.module, code, k),
                                 [row, xq0, stxq[0], xd0, stxd[0], xs0, stxs[0], nblk, o0, stout[0]])
            return context.get_dummy_value()

        return sig, codegen

    return dot


dot_q4_0, dot_q8_0, dot_q4_k, dot_q5_k, dot_q6_k = (_make_dot(c) for c in CODES)

ROWS_PER_TASK = 16


@njit(inline="always")
def _rows(code, w, r0, r1, xq, xd, xs, out):
    """out[:, r0:r1] for weight w of format `code` (a GGML type code in CODES)."""
    T = xq.shape[0]
    for t0 in range(0, T, MAX_TOKENS):              # tokens outer: their activations stay in L1
        nt = min(MAX_TOKENS, T - t0)                 # while the task's rows stream past them
        for r in range(r0, r1):
            if code == Q4_0:
                dot_q4_0(w, r, xq, xd, xs, t0, nt, out)
            elif code == Q8_0:
                dot_q8_0(w, r, xq, xd, xs, t0, nt, out)
            elif code == Q4_K:
                dot_q4_k(w, r, xq, xd, xs, t0, nt, out)
            elif code == Q5_K:
                dot_q5_k(w, r, xq, xd, xs, t0, nt, out)
            else:
                dot_q6_k(w, r, xq, xd, xs, t0, nt, out)


@njit(parallel=True, cache=True)
def matmul(code, w, xq, xd, xs, out):
    """out (T, N) = dequant(xq, xd) @ dequant(w).T; w: (N, bytes per row) uint8 of format code."""
    n = (w.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for task in prange(n):
        r0 = task * ROWS_PER_TASK
        _rows(code, w, r0, min(w.shape[0], r0 + ROWS_PER_TASK), xq, xd, xs, out)


@njit(parallel=True, cache=True)
def matmul3(c0, w0, c1, w1, c2, w2, xq, xd, xs, out0, out1, out2):
    """Three matmuls of one input (Q, K, V), any mix of formats, in one parallel region."""
    n0 = (w0.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    n1 = (w1.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    n2 = (w2.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for task in prange(n0 + n1 + n2):
        if task < n0:
            r0 = task * ROWS_PER_TASK
            _rows(c0, w0, r0, min(w0.shape[0], r0 + ROWS_PER_TASK), xq, xd, xs, out0)
        elif task < n0 + n1:
            r0 = (task - n0) * ROWS_PER_TASK
            _rows(c1, w1, r0, min(w1.shape[0], r0 + ROWS_PER_TASK), xq, xd, xs, out1)
        else:
            r0 = (task - n0 - n1) * ROWS_PER_TASK
            _rows(c2, w2, r0, min(w2.shape[0], r0 + ROWS_PER_TASK), xq, xd, xs, out2)


@njit(parallel=True, cache=True, fastmath=True)
def ffn(cg, wg, cu, wu, xq, xd, xs, g, u):
    """g (T, F) = silu(x @ Wg.T) * (x @ Wu.T) in one parallel region; u is scratch."""
    n = (wg.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    T = xq.shape[0]
    for task in prange(n):
        r0 = task * ROWS_PER_TASK
        r1 = min(wg.shape[0], r0 + ROWS_PER_TASK)
        _rows(cg, wg, r0, r1, xq, xd, xs, g)
        _rows(cu, wu, r0, r1, xq, xd, xs, u)
        for t in range(T):
            for r in range(r0, r1):
                v = g[t, r]
                g[t, r] = v / (np.float32(1.0) + np.exp(-v)) * u[t, r]
