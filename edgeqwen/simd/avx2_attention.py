"""Prompt attention on AVX2: flash-attention style, tiled over query tokens and key positions.

For a prompt (T >= PREFILL_MIN_TOKENS tokens) at positions p0.., every query row reads every key
it may see. Work units are (KV head, tile of query tokens): the tile's x G query rows of the heads
sharing that KV head (GQA) are scaled into a small float32 buffer, then the keys are read in
blocks of KB positions, straight from the cache (float32, or float16 bit patterns converted in
registers by vcvtph2ps):

    scores  4 query rows x 2 keys per pass over the head dimension: 8 FMA accumulators, 6 loads
            per 8 FMAs, one horizontal-add tree per 4 dot products
    softmax online (running max m and sum l per row, the output rescaled when m grows), with a
            vector exp (ggml's ggml_v_expf polynomial), masked and not-yet-visible keys at -inf
    values  4 query rows x 16 output dimensions in registers per pass over the block's keys: one
            broadcast probability per row and two value vectors per key, 8 FMAs

Nothing of (T x context) size exists; the key loop of a tile stops at its last token's position
(causal) and rows that see none of a key block skip it, so the masked half of the score matrix is
never computed, unlike the BLAS path. The
result equals softmax(q K^T * scale) V up to float summation order and the exp polynomial
(relative error ~1e-7, as ggml's).
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import avx2

I32, I64, F32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
V8F32, V8I32, V4F32 = ir.VectorType(F32, 8), ir.VectorType(I32, 8), ir.VectorType(F32, 4)
TQ = 16          # query tokens per work unit, at least
KB = 32          # key positions per block (a multiple of 8)
ROWS = 4         # query rows per register tile


def _i64(context, builder, val, ty):
    return context.cast(builder, val, ty, types.int64)


def _ptr(context, builder, ty, val, off):
    return avx2._f32_ptr(context, builder, ty, val, off)


def _store8(builder, p, off, v):
    builder.store(v, builder.bitcast(builder.gep(p, [off]), V8F32.as_pointer()), align=4)


def _sum4(b, hadd, a):
    """[sum a[0], sum a[1], sum a[2], sum a[3]] of four <8 x float>."""
    h = b.call(hadd, [b.call(hadd, [a[0], a[1]]), b.call(hadd, [a[2], a[3]])])
    und = ir.Constant(V8F32, ir.Undefined)
    lo = b.shuffle_vector(h, und, ir.Constant(ir.VectorType(I32, 4), [0, 1, 2, 3]))
    hi = b.shuffle_vector(h, und, ir.Constant(ir.VectorType(I32, 4), [4, 5, 6, 7]))
    return b.fadd(lo, hi)


@intrinsic
def _scores4(typingctx, qs, qo, kc, ko, kstride, nk, d, sc, so, sstride):
    """sc.flat[so + i * sstride + j] = dot(qs.flat[qo + i * d:][:d], kc.flat[ko + j * kstride:][:d])
    for the 4 query rows i and the nk keys j; d % 8 == 0."""
    sig = types.void(qs, qo, kc, ko, kstride, nk, d, sc, so, sstride)

    def codegen(context, builder, signature, args):
        sq, sqo, skc, sko, sks, snk, sd, ssc, sso, sss = signature.args
        b = builder
        e = avx2._Emitter(b)
        hadd = cgutils.get_or_insert_function(b.module, ir.FunctionType(V8F32, [V8F32, V8F32]),
                                              "llvm.x86.avx.hadd.ps.256")
        pq = _ptr(context, b, sq, args[0], _i64(context, b, args[1], sqo))
        pk = _ptr(context, b, skc, args[2], _i64(context, b, args[3], sko))
        kst, nk_, d_ = (_i64(context, b, args[i], signature.args[i]) for i in (4, 5, 6))
        ps = _ptr(context, b, ssc, args[7], _i64(context, b, args[8], sso))
        sst = _i64(context, b, args[9], sss)
        zero = avx2._const_vec(V8F32, 0.0)
        nv = b.sdiv(d_, ir.Constant(I64, 8))

        def keys(j0, nkeys):
            """Scores of keys j0 .. j0 + nkeys - 1 (1 or 2) for the 4 rows."""
            accs = [[cgutils.alloca_once_value(b, zero) for _ in range(4)] for _ in range(nkeys)]
            kbase = [b.mul(b.add(j0, ir.Constant(I64, c)), kst) for c in range(nkeys)]
            with cgutils.for_range(b, nv) as loop:
                off = b.mul(loop.index, ir.Constant(I64, 8))
                kv = [avx2._load8(b, skc, pk, b.add(kb, off)) for kb in kbase]
                for i in range(4):
                    qv = avx2._load8(b, sq, pq, b.add(b.mul(ir.Constant(I64, i), d_), off))
                    for c in range(nkeys):
                        b.store(b.call(e._fma, [qv, kv[c], b.load(accs[c][i])]), accs[c][i])
            for c in range(nkeys):
                s = _sum4(b, hadd, [b.load(a) for a in accs[c]])
                col = b.add(j0, ir.Constant(I64, c))
                for i in range(4):
                    dst = b.gep(ps, [b.add(b.mul(ir.Constant(I64, i), sst), col)])
                    b.store(b.extract_element(s, ir.Constant(I32, i)), dst)

        pairs = b.sdiv(nk_, ir.Constant(I64, 2))
        with cgutils.for_range(b, pairs) as loop:
            keys(b.mul(loop.index, ir.Constant(I64, 2)), 2)
        odd = b.icmp_signed("!=", b.mul(pairs, ir.Constant(I64, 2)), nk_)
        with b.if_then(odd):
            keys(b.sub(nk_, ir.Constant(I64, 1)), 1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _values4(typingctx, acc, ao, d, sc, so, sstride, vc, vo, vstride, nk):
    """acc.flat[ao + i * d:][:d] += sum_j sc.flat[so + i * sstride + j] * vc.flat[vo + j * vstride:][:d]
    for the 4 rows i and the nk keys j; d % 16 == 0."""
    sig = types.void(acc, ao, d, sc, so, sstride, vc, vo, vstride, nk)

    def codegen(context, builder, signature, args):
        sa, sao, sd, ssc, sso, sss, svc, svo, svs, snk = signature.args
        b = builder
        e = avx2._Emitter(b)
        pa = _ptr(context, b, sa, args[0], _i64(context, b, args[1], sao))
        d_ = _i64(context, b, args[2], sd)
        ps = _ptr(context, b, ssc, args[3], _i64(context, b, args[4], sso))
        sst = _i64(context, b, args[5], sss)
        pv = _ptr(context, b, svc, args[6], _i64(context, b, args[7], svo))
        vst, nk_ = _i64(context, b, args[8], svs), _i64(context, b, args[9], snk)
        with cgutils.for_range(b, b.sdiv(d_, ir.Constant(I64, 16))) as dl:
            d0 = b.mul(dl.index, ir.Constant(I64, 16))
            slots = [(i, h, b.add(b.mul(ir.Constant(I64, i), d_), b.add(d0, ir.Constant(I64, 8 * h))))
                     for i in range(4) for h in range(2)]
            accs = {(i, h): cgutils.alloca_once_value(b, avx2._load8(b, sa, pa, off)) for i, h, off in slots}
            with cgutils.for_range(b, nk_) as jl:
                j = jl.index
                vb = b.mul(j, vst)
                vv = [avx2._load8(b, svc, pv, b.add(vb, b.add(d0, ir.Constant(I64, 8 * h)))) for h in range(2)]
                for i in range(4):
                    p = b.load(b.gep(ps, [b.add(b.mul(ir.Constant(I64, i), sst), j)]))
                    pw = e.splat(p, V8F32)
                    for h in range(2):
                        a = accs[(i, h)]
                        b.store(b.call(e._fma, [pw, vv[h], b.load(a)]), a)
            for i, h, off in slots:
                _store8(b, pa, off, b.load(accs[(i, h)]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _max_exp_sum(typingctx, sc, so, n, m):
    """For row sc.flat[so:so+n] (n % 8 == 0): mx = max(m, max of the row); the row becomes
    exp(row - mx) (0 where the row is -inf); returns (mx, sum of the new row)."""
    sig = types.UniTuple(types.float32, 2)(sc, so, n, m)

    def codegen(context, builder, signature, args):
        ssc, sso, sn, sm = signature.args
        b = builder
        e = avx2._Emitter(b)
        p = _ptr(context, b, ssc, args[0], _i64(context, b, args[1], sso))
        nv = b.sdiv(_i64(context, b, args[2], sn), ir.Constant(I64, 8))
        mv = cgutils.alloca_once_value(b, e.splat(args[3], V8F32))
        vptr = lambda k: b.bitcast(b.gep(p, [b.mul(k, ir.Constant(I64, 8))]), V8F32.as_pointer())
        with cgutils.for_range(b, nv) as loop:
            v = b.load(vptr(loop.index), align=4)
            b.store(e.vmax(v, b.load(mv)), mv)
        mx = e.reduce(b.load(mv), e.vmax)
        mxv = e.splat(mx, V8F32)
        tot = cgutils.alloca_once_value(b, avx2._const_vec(V8F32, 0.0))
        with cgutils.for_range(b, nv) as loop:
            q = vptr(loop.index)
            ex = avx2.vector_exp(e, b.fsub(b.load(q, align=4), mxv))
            b.store(ex, q, align=4)
            b.store(b.fadd(b.load(tot), ex), tot)
        return context.make_tuple(b, signature.return_type, [mx, e.hsum(b.load(tot))])

    return sig, codegen


@intrinsic
def _gather(typingctx, dst, src, so, sstride, n, d):
    """dst.flat[j * d:][:d] = src.flat[so + j * sstride:][:d] as float32 (src float32 or float16
    bits) for j < n; d % 8 == 0. A block of cache rows (positions apart by Hkv x D) made
    contiguous: rows 2-4 KiB apart share a few L1 sets, and the block is read once per 4 rows."""
    sig = types.void(dst, src, so, sstride, n, d)

    def codegen(context, builder, signature, args):
        sd, ss, sso, sss, sn, sdd = signature.args
        b = builder
        pd = _ptr(context, b, sd, args[0], ir.Constant(I64, 0))
        ps = _ptr(context, b, ss, args[1], _i64(context, b, args[2], sso))
        sst, n_, d_ = (_i64(context, b, args[i], signature.args[i]) for i in (3, 4, 5))
        nv = b.sdiv(d_, ir.Constant(I64, 8))
        with cgutils.for_range(b, n_) as jl:
            src0, dst0 = b.mul(jl.index, sst), b.mul(jl.index, d_)
            with cgutils.for_range(b, nv) as vl:
                off = b.mul(vl.index, ir.Constant(I64, 8))
                _store8(b, pd, b.add(dst0, off), avx2._load8(b, ss, ps, b.add(src0, off)))
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _tile(q, kc, vc, p0, scale, out, kh, t0, qs, sc, acc, m, lsum, kb, vb, TQ, KB):
    T, H, D = q.shape
    Hkv = kc.shape[1]
    G = H // Hkv
    R = qs.shape[0]
    tq = min(TQ, T - t0)
    for r in range(R):
        t = r // G
        for dd in range(D):
            qs[r, dd] = q[t0 + t, kh * G + r % G, dd] * scale if t < tq else np.float32(0.0)
            acc[r, dd] = 0.0
        m[r] = -np.inf
        lsum[r] = 0.0
    n = p0 + t0 + tq                                  # keys the tile's last token sees
    kstride = Hkv * D
    for j0 in range(0, n, KB):
        nk = min(KB, n - j0)
        _gather(kb, kc, (j0 * Hkv + kh) * D, kstride, nk, D)
        _gather(vb, vc, (j0 * Hkv + kh) * D, kstride, nk, D)
        r0 = max(0, j0 - p0 - t0) * G // ROWS * ROWS     # rows before r0 see none of the block
        for r4 in range(r0, R, ROWS):
            _scores4(qs, r4 * D, kb, 0, D, nk, D, sc, r4 * KB, KB)
        for r in range(r0, R):
            vis = min(p0 + t0 + r // G + 1, n) - j0   # keys of the block row r sees
            if vis <= 0:
                for j in range(KB):
                    sc[r, j] = 0.0
                continue
            for j in range(vis, KB):
                sc[r, j] = -np.inf
            mx, tot = _max_exp_sum(sc, r * KB, KB, m[r])
            if mx > m[r]:
                alpha = np.exp(m[r] - mx)
                lsum[r] *= alpha
                for dd in range(D):
                    acc[r, dd] *= alpha
                m[r] = mx
            lsum[r] += tot
        for r4 in range(r0, R, ROWS):
            _values4(acc, r4 * D, D, sc, r4 * KB, KB, vb, 0, D, nk)
    for r in range(tq * G):
        inv = np.float32(1.0) / lsum[r]
        for dd in range(D):
            out[t0 + r // G, kh * G + r % G, dd] = acc[r, dd] * inv


def attention_prompt(q, kc, vc, p0, scale, out):
    """Causal GQA attention of a prompt: q, out (T, H, D) float32 at positions p0..p0+T-1; kc, vc
    (ctx, Hkv, D) float32 or float16 bit patterns (uint16), already holding positions
    0..p0+T-1. C-contiguous, D % 16 == 0. Work units (KV head, tile of query tokens) over the
    threads: the tiles are as long as 2 units per thread allow, since every tile reads (and
    converts) all the keys its tokens see: at depth 4096, one tile of 128 tokens per head took
    0.87x the time of 16-token tiles (1 thread). Tiles shorter than TQ are not used."""
    T, Hkv = q.shape[0], kc.shape[1]
    tiles = -(-2 * numba.get_num_threads() // Hkv)
    _attention(q, kc, vc, p0, scale, out, max(TQ, -(-T // tiles)), KB)


@njit(parallel=True, cache=True)
def _attention(q, kc, vc, p0, scale, out, TQ, KB):
    T, H, D = q.shape
    Hkv = kc.shape[1]
    G = H // Hkv
    R = (TQ * G + ROWS - 1) // ROWS * ROWS
    tiles = (T + TQ - 1) // TQ
    for i in prange(Hkv * tiles):
        kh, t0 = i // tiles, (i % tiles) * TQ
        qs = np.empty((R, D), np.float32)
        acc = np.empty((R, D), np.float32)
        sc = np.empty((R, KB), np.float32)
        m = np.empty(R, np.float32)
        lsum = np.empty(R, np.float32)
        kb = np.empty((KB, D), np.float32)
        vb = np.empty((KB, D), np.float32)
        _tile(q, kc, vc, p0, np.float32(scale), out, kh, t0, qs, sc, acc, m, lsum, kb, vb, TQ, KB)
