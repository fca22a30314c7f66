"""Prompt processing on AVX2: an int8 GEMM with eight weight rows in the vector lanes.

The decode kernels (avx2.py) dot one weight row with 1-4 tokens and keep each row's partial
sums spread over 8 lanes, so every 32-value block costs an int->float conversion and an FMA per
token for 32 multiply-adds. For a prompt (T >= PREFILL_MIN_TOKENS tokens) that bookkeeping, not
the multiplies, bounds the speed, and float32 BLAS on dequantized tiles was faster. Here the
layout is turned around, as ggml's repacked `q4_0_8x8` / `q4_K_8x8` GEMMs do: eight rows share
one vector, 4 consecutive values of each row per 32-bit lane,

    tile byte (c // 4) * 32 + r * 4 + c % 4  =  unsigned weight value of row r, column c

so one `vpdpbusd` (or `vpmaddubsw` + `vpmaddwd`) against 4 activation bytes broadcast to every
lane does 32 multiply-adds for eight rows at once, and the conversion + FMA per sub-block and
token serve eight rows. Every format is brought to one form, per row and sub-block of SB values:

    w = D * q - M        q unsigned (0..63), D and M float32

    Q4_0  SB 32  q = nibble, D = d, M = 8 d
    Q5_0  SB 32  q = nibble + 16 * qh bit, D = d, M = 16 d
    Q4_1  SB 32  q = nibble, D = d, M = -m                (Q5_1: + 16 * qh bit)
    Q8_0  SB 32  q = value + 128, D = d, M = 128 d   (VNNI only: q * x overflows vpmaddubsw's int16)
    Q4_K  SB 32  q = nibble, D = d * sc_j, M = dmin * m_j
    Q5_K  SB 32  q = nibble + 16 * high bit, D = d * sc_j, M = dmin * m_j
    Q6_K  SB 16  q = 6-bit value, D = d * sc_j, M = 32 d sc_j
    Q3_K  SB 16  q = 2 low bits + 4 * hmask bit, D = d * (sc_j - 32), M = 4 d (sc_j - 32)
    Q2_K  SB 16  q = 2 bits, D = d * sc_j, M = dmin * m_j

and dot(row, token) = sum over sub-blocks of D * dx * sum(q * xq) - M * dx * sum(xq), with the
token's Q8_0 activation (xq, dx per 32 values; see quants/common.py). The tile of 8 rows is
unpacked from the file's blocks when it is needed (a few KiB, stays in L1) and then used for
every token of the prompt, so nothing is repacked at load and resident memory does not grow.
The result equals the decode kernels' (and gguf-py's dequantize @ dequantized activation) up
to float summation order.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import avx2

I8, I32, I64, F32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
I8P = I8.as_pointer()
V32I8, V16I16, V8I32, V8F32 = (ir.VectorType(I8, 32), ir.VectorType(ir.IntType(16), 16),
                               ir.VectorType(I32, 8), ir.VectorType(F32, 8))
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = avx2.Q4_0, avx2.Q4_1, avx2.Q5_0, avx2.Q5_1, avx2.Q8_0
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = avx2.Q2_K, avx2.Q3_K, avx2.Q4_K, avx2.Q5_K, avx2.Q6_K
CODES = (Q4_0, Q4_K, Q5_K, Q6_K, Q3_K, Q2_K, Q5_0, Q4_1, Q5_1)      # + Q8_0 with VNNI: see codes()
ROWS = 8                  # weight rows per tile: 8 (one vector), or 16 (two) when the CPU has 32
                          # vector registers (AVX-512VL; set by simd/__init__.py before compiling:
                          # 1.0-1.4x per 0.6B matrix at T=256, alternated with 8 on the same run)
TOKENS = 4                # tokens per pass over a tile's sub-block
UNPACK_COLS = 1024        # columns of a tile unpacked for all its rows at a time (16-64 KiB of tile)
CHAINS = 2                # integer accumulators per token and 8 rows in a 32-column block


def codes() -> tuple:
    """The formats this machine's GEMM takes (avx2.VNNI is set before this is asked)."""
    return CODES + (Q8_0,) if avx2.VNNI else CODES


def sub_block(code) -> int:
    return 16 if code == Q6_K or code == Q3_K or code == Q2_K else 32


# ---- unpacking a file row into the tile (plain numba; once per row per prompt chunk) ----
# Four consecutive values of a row are one 32-bit word of the tile (lane r of group c // 4), and
# in every format four consecutive values come from four consecutive bytes: the unpacking works on
# 32-bit words (nibble masks and shifts on 4 values at once) and writes them straight into lane r.

M4, M2, M1 = np.uint32(0x0F0F0F0F), np.uint32(0x03030303), np.uint32(0x01010101)


@intrinsic
def _word(typingctx, w, row, o):
    """The 4 bytes at w[row, o:o+4] (a C-contiguous 2-D uint8 array) as a little-endian uint32,
    one unaligned load (the callers keep o + 4 within the row)."""
    sig = types.uint32(w, row, o)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        stride = cgutils.unpack_tuple(builder, a.strides, 2)[0]
        r = context.cast(builder, args[1], signature.args[1], types.int64)
        off = context.cast(builder, args[2], signature.args[2], types.int64)
        p = builder.gep(builder.bitcast(a.data, I8P), [builder.add(builder.mul(r, stride), off)])
        return builder.load(builder.bitcast(p, I32.as_pointer()), align=1)

    return sig, codegen


@njit(inline="always")
def _put(q32, r, c, v):
    """Values c..c+3 of tile row r (c a multiple of 4) = the 4 bytes of v."""
    q32[(c >> 2) * ROWS + r] = v


@njit(inline="always")
def _f16(w, row, o, f16):
    return f16[np.int64(w[row, o]) | (np.int64(w[row, o + 1]) << 8)]


@njit(inline="always")
def _scale_min_k4(w, row, base, j):
    """ggml get_scale_min_k4: the 6-bit scale and min of 32-block j of a Q4_K/Q5_K super-block."""
    s = base + 4
    if j < 4:
        return np.int64(w[row, s + j]) & 63, np.int64(w[row, s + j + 4]) & 63
    sc = (np.int64(w[row, s + j + 4]) & 15) | ((np.int64(w[row, s + j - 4]) >> 6) << 4)
    m = (np.int64(w[row, s + j + 4]) >> 4) | ((np.int64(w[row, s + j]) >> 6) << 4)
    return sc, m


@njit(inline="always")
def _unpack_q4_0(w, row, r, q32, D, M, f16, c0, c1):
    for b in range(c0 // 32, c1 // 32):
        o = b * 18
        d = _f16(w, row, o, f16)
        D[b, r] = d
        M[b, r] = np.float32(8.0) * d
        for j in range(0, 16, 4):
            v = _word(w, row, o + 2 + j)
            _put(q32, r, b * 32 + j, v & M4)
            _put(q32, r, b * 32 + 16 + j, (v >> 4) & M4)


@njit(inline="always")
def _unpack_q5_0(w, row, r, q32, D, M, f16, c0, c1):
    for b in range(c0 // 32, c1 // 32):
        o = b * 22
        d = _f16(w, row, o, f16)
        D[b, r] = d
        M[b, r] = np.float32(16.0) * d
        qh = _word(w, row, o + 2)
        for j in range(0, 16, 4):
            v = _word(w, row, o + 6 + j)
            _put(q32, r, b * 32 + j, (v & M4) | _bits4(qh >> np.uint32(j)))
            _put(q32, r, b * 32 + 16 + j, ((v >> 4) & M4) | _bits4(qh >> np.uint32(16 + j)))


@njit(inline="always")
def _unpack_q4_1(w, row, r, q32, D, M, f16, five, c0, c1):
    size, qs = (24, 8) if five else (20, 4)
    for b in range(c0 // 32, c1 // 32):
        o = b * size
        D[b, r] = _f16(w, row, o, f16)
        M[b, r] = -_f16(w, row, o + 2, f16)
        qh = _word(w, row, o + 4) if five else np.uint32(0)
        for j in range(0, 16, 4):
            v = _word(w, row, o + qs + j)
            _put(q32, r, b * 32 + j, (v & M4) | _bits4(qh >> np.uint32(j)))
            _put(q32, r, b * 32 + 16 + j, ((v >> 4) & M4) | _bits4(qh >> np.uint32(16 + j)))


@njit(inline="always")
def _bits4(x):
    """Bits 0..3 of x as 16 in bytes 0..3 (Q5_0's fifth bit of four consecutive values)."""
    return (((x & np.uint32(1)) << np.uint32(4)) | ((x & np.uint32(2)) << np.uint32(11)) |
            ((x & np.uint32(4)) << np.uint32(18)) | ((x & np.uint32(8)) << np.uint32(25)))


@njit(inline="always")
def _unpack_q8_0(w, row, r, q32, D, M, f16, c0, c1):
    for b in range(c0 // 32, c1 // 32):
        o = b * 34
        d = _f16(w, row, o, f16)
        D[b, r] = d
        M[b, r] = np.float32(128.0) * d
        for j in range(0, 32, 4):
            _put(q32, r, b * 32 + j, _word(w, row, o + 2 + j) ^ np.uint32(0x80808080))


@njit(inline="always")
def _unpack_q45_k(w, row, r, q32, D, M, f16, five, c0, c1):
    size = 176 if five else 144
    qs = 48 if five else 16
    for i in range(c0 // 256, c1 // 256):
        base = i * size
        d, dmin = _f16(w, row, base, f16), _f16(w, row, base + 2, f16)
        for j in range(8):
            sc, m = _scale_min_k4(w, row, base, j)
            D[i * 8 + j, r] = d * np.float32(sc)
            M[i * 8 + j, r] = dmin * np.float32(m)
        for p in range(4):
            for l in range(0, 32, 4):
                v = _word(w, row, base + qs + 32 * p + l)
                lo, hi = v & M4, (v >> 4) & M4
                if five:
                    h = _word(w, row, base + 16 + l)
                    lo |= ((h >> (2 * p)) & M1) << 4
                    hi |= ((h >> (2 * p + 1)) & M1) << 4
                _put(q32, r, i * 256 + 64 * p + l, lo)
                _put(q32, r, i * 256 + 64 * p + 32 + l, hi)


@njit(inline="always")
def _unpack_q6_k(w, row, r, q32, D, M, f16, c0, c1):
    for i in range(c0 // 256, c1 // 256):
        base = i * 210
        d = _f16(w, row, base + 208, f16)
        for s in range(16):
            sc = np.float32(np.int8(w[row, base + 192 + s]))
            D[i * 16 + s, r] = d * sc
            M[i * 16 + s, r] = np.float32(32.0) * d * sc
        for n in range(2):
            ql, qh = base + 64 * n, base + 128 + 32 * n
            for l in range(0, 32, 4):
                a, b, h = _word(w, row, ql + l), _word(w, row, ql + 32 + l), _word(w, row, qh + l)
                c = i * 256 + 128 * n + l
                _put(q32, r, c, (a & M4) | ((h & M2) << 4))
                _put(q32, r, c + 32, (b & M4) | (((h >> 2) & M2) << 4))
                _put(q32, r, c + 64, ((a >> 4) & M4) | (((h >> 4) & M2) << 4))
                _put(q32, r, c + 96, ((b >> 4) & M4) | (((h >> 6) & M2) << 4))


@njit(inline="always")
def _unpack_q3_k(w, row, r, q32, D, M, f16, c0, c1):
    for i in range(c0 // 256, c1 // 256):
        base = i * 110
        d = _f16(w, row, base + 108, f16)
        a0, a1, tmp = _word(w, row, base + 96), _word(w, row, base + 100), _word(w, row, base + 104)
        aux = ((a0 & M4) | ((tmp & M2) << 4), (a1 & M4) | (((tmp >> 2) & M2) << 4),
               ((a0 >> 4) & M4) | (((tmp >> 4) & M2) << 4), ((a1 >> 4) & M4) | (((tmp >> 6) & M2) << 4))
        for s in range(16):
            sc = d * np.float32(np.int64((aux[s // 4] >> np.uint32(8 * (s % 4))) & np.uint32(255)) - 32)
            D[i * 16 + s, r] = sc
            M[i * 16 + s, r] = np.float32(4.0) * sc
        for h in range(2):
            for l in range(0, 32, 4):
                q, hm = _word(w, row, base + 32 + 32 * h + l), _word(w, row, base + l)
                for j in range(4):
                    _put(q32, r, i * 256 + 128 * h + 32 * j + l,
                         ((q >> np.uint32(2 * j)) & M2) | (((hm >> np.uint32(4 * h + j)) & M1) << np.uint32(2)))


@njit(inline="always")
def _unpack_q2_k(w, row, r, q32, D, M, f16, c0, c1):
    for i in range(c0 // 256, c1 // 256):
        base = i * 84
        d, dmin = _f16(w, row, base + 80, f16), _f16(w, row, base + 82, f16)
        for s in range(16):
            sm = np.int64(w[row, base + s])
            D[i * 16 + s, r] = d * np.float32(sm & 15)
            M[i * 16 + s, r] = dmin * np.float32(sm >> 4)
        for h in range(2):
            for l in range(0, 32, 4):
                q = _word(w, row, base + 16 + 32 * h + l)
                for j in range(4):
                    _put(q32, r, i * 256 + 128 * h + 32 * j + l, (q >> np.uint32(2 * j)) & M2)


@njit(inline="always")
def _unpack(code, w, row, r, q32, D, M, f16, c0, c1):
    """Columns c0..c1-1 (multiples of 256, or of 32 for the 32-value blocks) of file row `row` into tile row r."""
    if code == Q4_0:
        _unpack_q4_0(w, row, r, q32, D, M, f16, c0, c1)
    elif code == Q8_0:
        _unpack_q8_0(w, row, r, q32, D, M, f16, c0, c1)
    elif code == Q4_K:
        _unpack_q45_k(w, row, r, q32, D, M, f16, False, c0, c1)
    elif code == Q5_K:
        _unpack_q45_k(w, row, r, q32, D, M, f16, True, c0, c1)
    elif code == Q3_K:
        _unpack_q3_k(w, row, r, q32, D, M, f16, c0, c1)
    elif code == Q2_K:
        _unpack_q2_k(w, row, r, q32, D, M, f16, c0, c1)
    elif code == Q5_0:
        _unpack_q5_0(w, row, r, q32, D, M, f16, c0, c1)
    elif code == Q4_1 or code == Q5_1:
        _unpack_q4_1(w, row, r, q32, D, M, f16, code == Q5_1, c0, c1)
    else:
        _unpack_q6_k(w, row, r, q32, D, M, f16, c0, c1)


# ---- the tile kernel: 8 rows x 1..4 tokens, emitted as LLVM IR ----

def _splat(b, v, vty):
    one = b.insert_element(ir.Constant(vty, ir.Undefined), v, ir.Constant(I32, 0))
    return b.shuffle_vector(one, ir.Constant(vty, ir.Undefined),
                            ir.Constant(ir.VectorType(I32, vty.count), [0] * vty.count))


def _sum(b, vals):
    """Pairwise sum of IR values."""
    while len(vals) > 1:
        vals = [b.add(vals[i], vals[i + 1]) if i + 1 < len(vals) else vals[i] for i in range(0, len(vals), 2)]
    return vals[0]


def _tile_kernel(module, sb: int, nt: int, offset: bool):
    """void f(qt, D, M, nblk, xq, xq_stride, dx, dx_stride, xs, xs_stride, out): out[t*ROWS + r]
    = dot of tile row r with token t (t < nt); all pointers are byte pointers, strides in bytes.
    The loop runs over 32-column blocks (the activation's), each of 32 // sb sub-blocks. xs per
    sub-block: with `offset` (formats whose M = c * D) the int32 c * sum(xq), subtracted from the
    integer sum, so a block costs one conversion and multiply per sub-block and one FMA by dx;
    else the float dx * sum(xq) (M's term as its own FMA, Q4_K / Q5_K)."""
    name = f"edgeqwen_avx2_gemm_sb{sb}_r{ROWS}_x{nt}_o{int(offset)}"
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    fnty = ir.FunctionType(ir.VoidType(), [I8P, I8P, I8P, I64, I8P, I64, I8P, I64, I8P, I64, I8P])
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    qt, pD, pM, nblk, xq, xqs, dx, dxst, xs, xss, out = fn.args
    entry, loop, done = (fn.append_basic_block(n) for n in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)

    def decl(nm, ret, *args):
        return cgutils.get_or_insert_function(module, ir.FunctionType(ret, args), nm)

    fma = decl("llvm.fma.v8f32", V8F32, V8F32, V8F32, V8F32)
    if avx2.VNNI:
        dpbusd = decl("llvm.x86.avx512.vpdpbusd.256", V8I32, V8I32, V8I32, V8I32)
    else:
        maddubs = decl("llvm.x86.avx2.pmadd.ub.sw", V16I16, V32I8, V32I8)
        madd = decl("llvm.x86.avx2.pmadd.wd", V8I32, V16I16, V16I16)
        ones = ir.Constant(V16I16, [1] * 16)

    def at(p, off, ty):
        return b.bitcast(b.gep(p, [off]), ty.as_pointer())

    c = lambda v: ir.Constant(I64, v)
    toks = [(b.gep(xq, [b.mul(xqs, c(t))]), b.gep(dx, [b.mul(dxst, c(t))]), b.gep(xs, [b.mul(xss, c(t))]))
            for t in range(nt)]
    zero = ir.Constant(V8F32, [0.0] * 8)
    b.cbranch(b.icmp_signed(">", nblk, c(0)), loop, done)

    b.position_at_end(loop)
    blk = b.phi(I64)
    subs = 32 // sb                                                  # sub-blocks per block
    rv = ROWS // 8                                                   # 8-row vectors per tile
    accs = [[b.phi(V8F32) for _ in range(rv)] for _ in range(nt)]
    sub = [b.add(b.mul(blk, c(subs)), c(k)) for k in range(subs)]   # sub-block indices
    Dv = [[b.load(at(pD, b.add(b.mul(sub[k], c(4 * ROWS)), c(32 * v)), V8F32), align=4) for v in range(rv)]
          for k in range(subs)]
    Mv = None if offset else [[b.load(at(pM, b.add(b.mul(sub[k], c(4 * ROWS)), c(32 * v)), V8F32), align=4)
                               for v in range(rv)] for k in range(subs)]
    # independent vpdpbusd chains per token and row vector, PER_SUB per sub-block: a block's 8
    # dependent vpdpbusd (latency 5) would bound the loop more than their throughput does
    per_sub = CHAINS // subs if rv == 1 else 1
    chains = per_sub * subs
    ints = [[[ir.Constant(V8I32, [0] * 8)] * chains for _ in range(rv)] for _ in range(nt)]
    for g in range(8):                                               # groups of 4 columns
        col = b.add(b.mul(blk, c(32)), c(4 * g))
        wv = [b.load(at(qt, b.add(b.mul(col, c(ROWS)), c(32 * v)), V32I8), align=1) for v in range(rv)]
        k = (g // (sb // 4)) * per_sub + g % per_sub                 # sub-block's chains, in turn
        for t, (px, _, _) in enumerate(toks):
            xb = _splat(b, b.load(at(px, col, I32), align=1), V8I32)
            for v in range(rv):
                if avx2.VNNI:
                    ints[t][v][k] = b.call(dpbusd, [ints[t][v][k], b.bitcast(wv[v], V8I32), xb])
                else:
                    p = b.call(madd, [b.call(maddubs, [wv[v], b.bitcast(xb, V32I8)]), ones])
                    ints[t][v][k] = b.add(ints[t][v][k], p)
    new = []
    for t, (_, pdx, pxs) in enumerate(toks):
        dxv = _splat(b, b.load(at(pdx, b.mul(blk, c(4)), F32), align=4), V8F32)
        row = []
        for v in range(rv):
            if offset:
                f = None
                for k in range(subs):
                    i32 = _sum(b, ints[t][v][k * per_sub:(k + 1) * per_sub])
                    o = _splat(b, b.load(at(pxs, b.mul(sub[k], c(4)), I32), align=4), V8I32)
                    cv = b.sitofp(b.sub(i32, o), V8F32)
                    f = b.fmul(cv, Dv[k][v]) if f is None else b.call(fma, [cv, Dv[k][v], f])
                row.append(b.call(fma, [f, dxv, accs[t][v]]))
            else:
                a = accs[t][v]
                for k in range(subs):
                    mx = _splat(b, b.load(at(pxs, b.mul(sub[k], c(4)), F32), align=4), V8F32)
                    i32 = _sum(b, ints[t][v][k * per_sub:(k + 1) * per_sub])
                    a = b.call(fma, [b.sitofp(i32, V8F32), b.fmul(Dv[k][v], dxv), a])
                    a = b.call(fma, [b.fneg(Mv[k][v]), mx, a])
                row.append(a)
        new.append(row)
    b1 = b.add(blk, c(1))
    end = b.block
    blk.add_incoming(c(0), entry)
    blk.add_incoming(b1, end)
    for t in range(nt):
        for v in range(rv):
            accs[t][v].add_incoming(zero, entry)
            accs[t][v].add_incoming(new[t][v], end)
    b.cbranch(b.icmp_signed("<", b1, nblk), loop, done)

    b.position_at_end(done)
    finals = []
    for t in range(nt):
        for v in range(rv):
            f = b.phi(V8F32)
            f.add_incoming(zero, entry)
            f.add_incoming(new[t][v], end)
            finals.append((t, v, f))
    for t, v, f in finals:
        b.store(f, at(out, c(4 * (ROWS * t + 8 * v)), V8F32), align=4)
    b.ret_void()
    return fn


def _make_tile(sb: int, offset: bool):
    @intrinsic
    def tile(typingctx, qt, D, M, xq, xd, dxs, t0, nt, res):
        """res[i, :] = the 8 tile rows . token t0 + i, i < nt (1..4)."""
        sig = types.void(qt, D, M, xq, xd, dxs, t0, nt, res)

        def codegen(context, builder, signature, args):
            def arr(i):
                a = context.make_array(signature.args[i])(context, builder, args[i])
                return (builder.bitcast(a.data, I8P), cgutils.unpack_tuple(builder, a.strides, signature.args[i].ndim),
                        cgutils.unpack_tuple(builder, a.shape, signature.args[i].ndim))

            (pq, _, _), (pD, _, _), (pM, _, _) = arr(0), arr(1), arr(2)
            (pxq, sxq, _), (pxd, sxd, _), (pds, sds, _), (pres, _, _) = arr(3), arr(4), arr(5), arr(8)
            nblk = cgutils.unpack_tuple(builder, context.make_array(signature.args[3])(context, builder, args[3]).shape, 2)[1]
            nblk = builder.sdiv(nblk, ir.Constant(I64, 32))
            t0_ = context.cast(builder, args[6], signature.args[6], types.int64)
            nt_ = context.cast(builder, args[7], signature.args[7], types.int64)
            xq0 = builder.gep(pxq, [builder.mul(t0_, sxq[0])])
            xd0 = builder.gep(pxd, [builder.mul(t0_, sxd[0])])
            ds0 = builder.gep(pds, [builder.mul(t0_, sds[0])])
            for k in range(1, TOKENS + 1):
                with builder.if_then(builder.icmp_signed("==", nt_, ir.Constant(I64, k))):
                    builder.call(_tile_kernel(builder.module, sb, k, offset),
                                 [pq, pD, pM, nblk, xq0, sxq[0], xd0, sxd[0], ds0, sds[0], pres])
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile32, _tile32o, _tile16, _tile16o = _make_tile(32, False), _make_tile(32, True), _make_tile(16, False), _make_tile(16, True)


# Formats whose M is a constant times D (w = D * (q - c)): the c * sum(xq) of a sub-block is taken
# off the integer sum instead (an int32 per token and sub-block, from `sub_sums`).
OFFSET = {Q4_0: 8, Q8_0: 128, Q6_K: 32, Q3_K: 4, Q5_0: 16}


def sums_dtype(code):
    """The dtype of `sub_sums`' output for format `code`."""
    return np.int32 if code in OFFSET else np.float32


def sub_sums(code, xq, xd, dxs):
    """dxs (T, K/SB), per sub-block of the format: c * sum(xq) (int32) for the OFFSET formats,
    else dx * sum(xq) (float32): the activation side of M's term."""
    if code in OFFSET:
        _sub_offsets(sub_block(code), OFFSET[code], xq, dxs)
    else:
        _sub_sums(sub_block(code), xq, xd, dxs)


@njit(parallel=True, cache=True)
def _sub_offsets(sb, c, xq, xo):
    T, K = xq.shape
    for t in prange(T):
        for s in range(K // sb):
            acc = 0
            for j in range(s * sb, s * sb + sb):
                acc += np.int32(xq[t, j])
            xo[t, s] = c * acc


@njit(parallel=True, cache=True)
def _sub_sums(sb, xq, xd, dxs):
    T, K = xq.shape
    for t in prange(T):
        for s in range(K // sb):
            acc = 0
            for j in range(s * sb, s * sb + sb):
                acc += np.int64(xq[t, j])
            dxs[t, s] = xd[t, s * sb // 32] * np.float32(acc)


@njit(parallel=True, cache=True)
def gemm(code, w, xq, xd, dxs, out, f16):
    """out (T, N) = dequant(xq, xd) @ dequant(w).T for w (N, bytes per row) of format `code`;
    dxs from `sub_sums` (of dtype sums_dtype(code))."""
    N = w.shape[0]
    T, K = xq.shape
    sb = 16 if code == Q6_K or code == Q3_K or code == Q2_K else 32
    nsub = K // sb
    for tile in prange((N + ROWS - 1) // ROWS):
        r0 = tile * ROWS
        nr = min(ROWS, N - r0)
        qt = np.empty(K * ROWS, np.uint8)         # every word written by the unpack, but in a last,
        D = np.empty((nsub, ROWS), np.float32)    # partial tile the rows past nr: zeros there
        M = np.empty((nsub, ROWS), np.float32)
        if nr < ROWS:
            qt[:] = 0
            D[:] = 0.0
            M[:] = 0.0
        q32 = qt.view(np.uint32)
        for c0 in range(0, K, UNPACK_COLS):   # column slices, so the rows' strided writes stay in L1
            for r in range(nr):
                _unpack(code, w, r0 + r, r, q32, D, M, f16, c0, min(K, c0 + UNPACK_COLS))
        res = np.empty((TOKENS, ROWS), np.float32)
        for t0 in range(0, T, TOKENS):
            nt = min(TOKENS, T - t0)
            if code == Q6_K or code == Q3_K:
                _tile16o(qt, D, M, xq, xd, dxs, t0, nt, res)
            elif code == Q2_K:
                _tile16(qt, D, M, xq, xd, dxs, t0, nt, res)
            elif code == Q4_0 or code == Q8_0 or code == Q5_0:
                _tile32o(qt, D, M, xq, xd, dxs, t0, nt, res)
            else:
                _tile32(qt, D, M, xq, xd, dxs, t0, nt, res)
            for i in range(nt):
                for r in range(nr):
                    out[t0 + i, r0 + r] = res[i, r]
