"""The explicit-SIMD kernels (edgeqwen/simd/) against gguf-py's dequantize and against the scalar
kernels of quants/ (their reference), and the choice of path.

Weights: Q4_0/Q8_0 quantized by gguf-py; K-quants quantized by the converter's port of ggml's
reference quantizers (bit-exact with llama.cpp's, tested in test_convert_kquants.py) and, as
adversarial blocks, random bytes with any scales and extreme values. Activations quantized by
gguf-py's Q8_0 (the reference) or by the runtime (compared bit for bit in test_quants.py)."""
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest

from edgeqwen import simd
from edgeqwen.quants import QuantizedActivation, Weight, ffn_gate_up, matmul3

T = gguf.GGMLQuantizationType
SIMD_TYPES = [T.Q4_0, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K] + ([T.Q3_K, T.Q2_K, T.Q5_0, T.Q4_1, T.Q5_1] if simd.PATH == "avx2" else [])
BLOCK = {T.Q4_0: (32, 18), T.Q4_1: (32, 20), T.Q5_0: (32, 22), T.Q5_1: (32, 24), T.Q8_0: (32, 34), T.Q2_K: (256, 84), T.Q3_K: (256, 110), T.Q4_K: (256, 144),
         T.Q5_K: (256, 176), T.Q6_K: (256, 210)}
F16_OFFSETS = {T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,), T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2),
               T.Q6_K: (208,)}
# (type, blocks): weights quantized by the converter's port of ggml's quantizers, or random bytes. The
# converter has no Q2_K / Q3_K quantizer: they are tested on random blocks (every bit pattern, any
# scale) and on llama.cpp's own quantization (test_kernels_on_llama_cpp_blocks).
CASES = [(q, b) for q in SIMD_TYPES for b in ("quantized", "random") if not (q in (T.Q2_K, T.Q3_K) and b == "quantized")]

needs_simd = pytest.mark.skipif(simd.PATH == "scalar", reason=f"no SIMD path on this machine: {simd.REASON}")


def quantize(w: np.ndarray, qtype) -> np.ndarray:
    if qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        return gguf.quants.quantize(w, qtype)
    from converters import kquants
    return kquants.quantize(w, qtype)


def random_blocks(rng, n, k, qtype, scale=0.01):
    """Random bytes in every position (all nibble/bit patterns, int8 scales of any sign, Q8_0's
    -128), with finite float16 scales of random sign."""
    per, nbytes = BLOCK[qtype]
    raw = rng.integers(0, 256, (n, k // per, nbytes), dtype=np.uint8)
    for o in F16_OFFSETS[qtype]:
        d = (rng.uniform(0.1, 1.0, (n, k // per)) * scale * rng.choice([-1, 1], (n, k // per))).astype(np.float16)
        raw[:, :, o:o + 2] = d[..., None].view(np.uint8)
    return raw.reshape(n, -1)


def reference(raw, qtype, n, k, x):
    """gguf-py: dequantize(W) @ dequantize(quantize_q8_0(x)).T in float64."""
    wd = gguf.quants.dequantize(raw, qtype).reshape(n, k).astype(np.float64)
    xd = gguf.quants.dequantize(gguf.quants.quantize(x, T.Q8_0), T.Q8_0).reshape(x.shape).astype(np.float64)
    return xd @ wd.T


def run(weight: Weight, x: np.ndarray) -> np.ndarray:
    act = QuantizedActivation(len(x), weight.cols).quantize(x)
    return weight.matmul(x, np.full((len(x), weight.rows), np.nan, np.float32), act)


@needs_simd
@pytest.mark.parametrize("qtype,blocks", CASES, ids=lambda v: getattr(v, "name", v))
def test_simd_matmul_matches_gguf_and_scalar(qtype, blocks):
    rng = np.random.default_rng(int(qtype) * 10 + (blocks == "random"))
    per = BLOCK[qtype][0]
    for n, k in ((67, per), (5, 3 * per), (33, 2 * per if per == 256 else 1024)):
        w = rng.standard_normal((n, k)).astype(np.float32)
        w[0] = 0.0                                   # an all-zero row
        w[1, :32] = 1e3                              # a huge block beside normal ones
        raw = quantize(w, qtype).reshape(n, -1) if blocks == "quantized" else random_blocks(rng, n, k, qtype)
        weight = Weight("w", qtype, (n, k), raw)
        assert weight.simd == int(qtype)
        scalar = Weight("w", qtype, (n, k), raw)
        scalar.simd = None
        for t in list(range(1, 10)) + [15]:          # 1-4 token groups and remainders (>= 16: prefill)
            x = rng.standard_normal((t, k)).astype(np.float32)
            x[0, :32] = 0.0                          # an all-zero activation block
            if t > 2:
                x[2, -32:] *= 1e4
            out = run(weight, x)
            ref = reference(raw, qtype, n, k, x)
            scale = np.abs(ref).max() or 1.0         # all zero: a zero block alone
            err = np.abs(out - ref).max() / scale
            assert err <= 1e-6, (n, k, t, err)        # measured <= 2e-7: float summation order only
            err_s = np.abs(out - run(scalar, x)).max() / scale
            assert err_s <= 1e-6, (n, k, t, err_s)


@needs_simd
@pytest.mark.parametrize("qtype,blocks", CASES, ids=lambda v: getattr(v, "name", v))
def test_prefill_gemm_matches_gguf(qtype, blocks):
    """The prompt-processing GEMM (T >= PREFILL_MIN_TOKENS: 8 or 16 rows per tile, unpacked on
    the fly in column slices) against gguf-py, with row counts that are not multiples of 8 and token
    counts that are not multiples of 4. Q8_0 has the GEMM only with VNNI (else BLAS is tested)."""
    vnni = getattr(simd.kernels, "VNNI", False)
    if int(qtype) not in simd.GEMM_CODES and (qtype != T.Q8_0 or vnni):
        pytest.fail(f"{qtype.name} has no prompt GEMM on the {simd.PATH} path")
    from edgeqwen.quants.prefill import PREFILL_MIN_TOKENS
    rng = np.random.default_rng(int(qtype) * 7 + (blocks == "random"))
    per = BLOCK[qtype][0]
    for n, k in ((67, per), (13, 3 * per), (40, 1024), (21, 1280)):     # 1280: two unpack slices
        w = rng.standard_normal((n, k)).astype(np.float32)
        w[0] = 0.0
        w[1, :32] = 1e3
        raw = quantize(w, qtype).reshape(n, -1) if blocks == "quantized" else random_blocks(rng, n, k, qtype)
        weight = Weight("w", qtype, (n, k), raw)
        for t in (PREFILL_MIN_TOKENS, 17, 23, 41):
            x = rng.standard_normal((t, k)).astype(np.float32)
            x[0, :32] = 0.0
            x[2, -32:] *= 1e4
            out = run(weight, x)
            ref = reference(raw, qtype, n, k, x)
            err = np.abs(out - ref).max() / (np.abs(ref).max() or 1.0)
            assert err <= 1e-6, (n, k, t, err)        # measured <= 7e-7: float summation order only


@needs_simd
def test_prompt_silu_mul_matches_float64():
    """The prompt FFN's silu(g) * u with the vector exp (widths not multiples of 8: scalar tail)
    against float64 numpy: relative error <= 1e-6, and the scalar kernel's -0 / inf / NaN where
    exp under- or overflows."""
    from edgeqwen.kernels import silu_mul
    rng = np.random.default_rng(5)
    for F in (64, 67):
        g = (rng.standard_normal((19, F)) * 20).astype(np.float32)
        u = rng.standard_normal((19, F)).astype(np.float32)
        g[0, :8] = [-100, -89, -88.5, 87, 89, 100, np.inf, -np.inf]
        g[1, 0] = np.nan
        out, scalar = np.empty_like(g), np.empty_like(g)
        simd.kernels.silu_mul(g, u, out)
        silu_mul(g, u, scalar)
        with np.errstate(over="ignore", invalid="ignore"):
            ref = g.astype(np.float64) / (1 + np.exp(-g.astype(np.float64))) * u
        ok = np.isfinite(ref) & (np.abs(ref) > 1e-30)
        assert (np.abs(out[ok] - ref[ok]) <= 1e-6 * np.abs(ref[ok])).all()
        assert np.array_equal(np.isnan(out), np.isnan(scalar)) and np.array_equal(np.isinf(out), np.isinf(scalar))
        assert (np.abs(out[~ok & np.isfinite(ref)]) < 1e-30).all()


@needs_simd
def test_simd_decode_is_independent_of_token_grouping():
    """A token's result does not depend on how many tokens share the weight load (batch
    reproducibility relies on it)."""
    rng = np.random.default_rng(3)
    for qtype in SIMD_TYPES:
        k = BLOCK[qtype][0] * 4
        raw = random_blocks(rng, 40, k, qtype)
        weight = Weight("w", qtype, (40, k), raw)
        x = rng.standard_normal((7, k)).astype(np.float32)
        together = run(weight, x)
        for t in range(7):
            assert np.array_equal(run(weight, x[t:t + 1])[0], together[t]), (qtype.name, t)


@needs_simd
def test_fused_drivers_mixed_types():
    """Q/K/V and gate/up of different formats (Q4_K_M mixes Q4_K and Q6_K) in one region equal
    the single-matrix kernel."""
    rng = np.random.default_rng(5)
    k = 512
    ws = [Weight(q.name, q, (n, k), random_blocks(rng, n, k, q)) for q, n in ((T.Q4_K, 96), (T.Q6_K, 32), (T.Q8_0, 48))]
    for t in (1, 3, 6):
        x = rng.standard_normal((t, k)).astype(np.float32)
        act = QuantizedActivation(t, k).quantize(x)
        outs = tuple(np.empty((t, w.rows), np.float32) for w in ws)
        matmul3(tuple(ws), x, act, outs)
        for w, o in zip(ws, outs):
            assert np.array_equal(o, run(w, x))
        gate, up = (Weight(q.name, q, (64, k), random_blocks(rng, 64, k, q)) for q in (T.Q4_K, T.Q5_K))
        g, u = np.empty((t, 64), np.float32), np.empty((t, 64), np.float32)
        ffn_gate_up(gate, up, x, act, g, u)
        gr, ur = run(gate, x).astype(np.float64), run(up, x).astype(np.float64)
        assert np.allclose(g, gr / (1 + np.exp(-gr)) * ur, rtol=1e-5, atol=1e-6 * np.abs(gr * ur).max())


FEATS = {"avx2", "fma", "f16c", "sse4.2"}


@pytest.mark.parametrize("env, arch, feats, path", [
    ("", "x86_64", FEATS, "avx2"),
    ("", "x86_64", FEATS - {"f16c"}, "scalar"),
    ("", "x86_64", set(), "scalar"),                 # NUMBA_CPU_NAME=generic gives no features
    ("scalar", "x86_64", FEATS, "scalar"),
    ("avx2", "x86_64", FEATS - {"avx2"}, "scalar"),
    ("nonsense", "x86_64", FEATS, "scalar"),
    ("", "aarch64", {"neon", "dotprod"}, "neon"),
])
def test_path_choice(env, arch, feats, path):
    got, reason = simd.choose(env, arch, (feats, "test CPU"))
    assert got == path
    assert "\n" not in reason and reason
    if env == "nonsense":
        assert "'nonsense'" in reason


def _child(env_extra: dict) -> subprocess.CompletedProcess:
    code = ("import numpy as np, gguf\n"
            "from edgeqwen import simd\n"
            "from edgeqwen.quants import Weight, QuantizedActivation\n"
            "w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)\n"
            "W = Weight('w', gguf.GGMLQuantizationType.Q4_0, (8, 64), gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0))\n"
            "x = np.ones((1, 64), np.float32)\n"
            "W.matmul(x, np.empty((1, 8), np.float32), QuantizedActivation(1, 64).quantize(x))\n"
            "print(simd.PATH)\n")
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)


def test_generic_cpu_target_falls_back_to_scalar_without_abort(tmp_path):
    """Compiling for a CPU without AVX2 must pick the scalar path before anything is compiled
    (an AVX2 intrinsic there would abort the process)."""
    r = _child({"NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp_path), "EDGEQWEN_KERNELS": ""})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "scalar"


def test_kernels_env_override(tmp_path):
    r = _child({"EDGEQWEN_KERNELS": "scalar", "NUMBA_CACHE_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "scalar"


HASWELL = "+avx,+avx2,+fma,+f16c,+sse4.1,+sse4.2,+ssse3,+popcnt,+bmi,+bmi2,+lzcnt,+movbe,+cx16"


SKYLAKE_X = HASWELL + ",+avx512f,+avx512vl,+avx512bw,+avx512dq,+avx512cd"
CHILD_CPUS = {
    # Zen 3 / Haswell: plain AVX2 (vpmaddubsw + vpmaddwd), 8-row GEMM tiles: all kernel tests
    "haswell": (HASWELL, "matmul_matches_gguf and random or token_grouping or mixed_types or prefill_gemm", 30, 8),
    # Skylake-X: AVX-512VL's 32 registers (16-row GEMM tiles) without VNNI: the GEMM tests
    "skylake-avx512": (SKYLAKE_X, "prefill_gemm", 18, 16),
}


@needs_simd
@pytest.mark.parametrize("cpu", sorted(CHILD_CPUS))
def test_avx2_without_vnni_in_child(tmp_path, cpu):
    """The plain AVX2 code (vpmaddubsw + vpmaddwd), as on a CPU without VNNI: the kernel tests
    again in a process compiling for that CPU."""
    if not simd.kernels.VNNI:
        pytest.skip("this process already runs the plain AVX2 code")
    features, select, n, rows = CHILD_CPUS[cpu]
    env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": features,
           "NUMBA_CACHE_DIR": str(tmp_path), "EDGEQWEN_KERNELS": ""}
    probe = subprocess.run([sys.executable, "-c", "from edgeqwen import simd; "
                            "print(simd.PATH, simd.kernels.VNNI, simd.gemm_kernels.ROWS)"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert probe.stdout.split() == ["avx2", "False", str(rows)], probe.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", select],
                       env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert f"{n} passed" in r.stdout, r.stdout[-1000:]


# ---- the one-region decoder stack (simd.kernels.layers) against the per-op path ----

FUSED_FILES = [("tiny", "q4_0"), ("untied", "q8_0"), ("k256", "q4_k_m"), ("k256", "q5_k_m"), ("k256", "q6_k")]


def _run(model, tokens_steps, fused):
    """Logits of a prompt and single-token steps, and the final cache, with or without the
    fused step."""
    saved = model.fused
    if not fused:
        model.fused = None
    try:
        cache = model.new_cache()
        outs = [model.forward(t, cache) for t in tokens_steps]
    finally:
        model.fused = saved
    return outs, cache


@needs_simd
@pytest.mark.parametrize("name,qtype", FUSED_FILES)
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_decode_step_is_bit_identical_to_per_op(gguf_file, name, qtype, threads):
    """Same kernels, same float operations in the same order: the fused step must give exactly
    the per-op path's logits and KV cache (a batch of sequences, which takes the per-op path,
    then equals each sequence decoded alone), for prompts of 1..15 tokens and decode steps."""
    import numba

    from edgeqwen.gguf_model import ModelFile
    from edgeqwen.model import Qwen3Model

    model = Qwen3Model(ModelFile(gguf_file(name, qtype)), n_ctx=64, max_batch=32)
    assert model.fused is not None, "every matrix of this file has a SIMD kernel: the fused step must be used"
    prev = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        for prompt_len in (1, 4, 15):
            steps = [list(range(100, 100 + prompt_len))] + [[7], [123], [4242], [9, 10, 11]]
            a, ca = _run(model, steps, fused=True)
            b, cb = _run(model, steps, fused=False)
            for x, y in zip(a, b):
                assert np.array_equal(x, y)
            assert ca.n == cb.n and np.array_equal(ca.k[:, :ca.n], cb.k[:, :cb.n]) and np.array_equal(ca.v[:, :ca.n], cb.v[:, :cb.n])
    finally:
        numba.set_num_threads(prev)


@pytest.mark.skipif(simd.PATH != "avx2", reason="these types have SIMD kernels on the avx2 path only")
@pytest.mark.parametrize("ftype,qtype", [("Q3_K_M", T.Q3_K), ("Q2_K", T.Q2_K), ("Q5_0", T.Q5_0), ("Q4_1", T.Q4_1),
                                         ("Q5_1", T.Q5_1)])
def test_kernels_on_llama_cpp_blocks(llama_quantized, ftype, qtype):
    """Blocks written by llama.cpp's quantizer (real scales and bit patterns): the decode kernel
    and the prompt GEMM against gguf-py's dequantize; the file's fused decode step (its other
    matrices Q3_K/Q4_K/Q5_K/Q6_K) equals the per-op path bit for bit."""
    from edgeqwen.gguf_model import ModelFile
    from edgeqwen.model import Qwen3Model

    mf = ModelFile(llama_quantized(ftype))
    ours = [t for t in mf.gguf.tensors.values() if t.qtype == qtype]
    assert len(ours) >= 3, [(t.name, t.qtype.name) for t in mf.gguf.tensors.values()]
    rng = np.random.default_rng(11)
    for t in ours[:4]:
        n, k = t.shape
        weight = Weight(t.name, qtype, (n, k), t.raw())
        assert weight.simd == int(qtype)
        for tokens in (1, 3, 5, 20):
            x = rng.standard_normal((tokens, k)).astype(np.float32)
            ref = reference(t.raw(), qtype, n, k, x)
            assert np.abs(run(weight, x) - ref).max() <= 1e-6 * np.abs(ref).max(), (t.name, tokens)
    model = Qwen3Model(mf, n_ctx=32, max_batch=8)
    assert model.fused is not None
    steps = [[5, 6, 7], [8], [9, 10]]
    a, ca = _run(model, steps, fused=True)
    b, cb = _run(model, steps, fused=False)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@needs_simd
def test_fused_step_writes_and_reads_a_float16_cache(gguf_file):
    """The fused decode step on a float16 KV cache (uint16 bit patterns): the first layer's keys
    and values are numpy's float16 rounding of what the float32 run stores (the layer's inputs
    are the same), and the logits are exactly those of the per-op path on a float32 cache whose
    stores are rounded to float16 by numpy (reads convert float16 to float32 exactly)."""
    from edgeqwen.gguf_model import ModelFile
    from edgeqwen.model import Qwen3Model

    model = Qwen3Model(ModelFile(gguf_file("tiny", "q4_0")), n_ctx=32, max_batch=8)
    assert model.fused is not None and simd.kernels.F16_CACHE
    steps = [[5, 6, 7], [8], [9]]
    ref, c32 = _run(model, steps, fused=True)
    c16 = model.new_cache()
    c16.k, c16.v = np.zeros(c16.k.shape, np.uint16), np.zeros(c16.v.shape, np.uint16)
    calls = []
    real = simd.kernels.layers
    simd.kernels.layers = lambda *a: calls.append(a[11][0, 3]) or real(*a)
    try:
        got = [model.forward(t, c16) for t in steps]
    finally:
        simd.kernels.layers = real
    assert calls == [2, 2, 2], calls                          # the fused step ran on the f16 cache
    assert np.array_equal(c16.k[0, :3], c32.k[0, :3].astype(np.float16).view(np.uint16))
    assert np.array_equal(c16.v[0, :3], c32.v[0, :3].astype(np.float16).view(np.uint16))
    rounded = model.new_cache()
    store = rounded.store
    rounded.store = lambda li, p0, k, v: store(li, p0, k.astype(np.float16).astype(np.float32),
                                               v.astype(np.float16).astype(np.float32))
    saved, model.fused = model.fused, None
    try:
        want = [model.forward(t, rounded) for t in steps]
    finally:
        model.fused = saved
    for a, b in zip(want, got):
        assert np.array_equal(a, b)


@needs_simd
def test_fused_step_barrier_gives_up_instead_of_hanging(gguf_file):
    """A threading layer that runs two of the prange's iterations on one thread would leave a
    barrier waiting forever: asked for more threads than exist, the step must return with the
    timeout flag set (the model then redoes the step op by op and stops using the fused step)."""
    import numba

    from edgeqwen.gguf_model import ModelFile
    from edgeqwen.model import Qwen3Model

    model = Qwen3Model(ModelFile(gguf_file("tiny", "q4_0")), n_ctx=32, max_batch=8)
    f, c = model.fused, model.cfg
    cache = model.new_cache()
    x = model.embed(np.array([5, 6]))
    sync, status = np.array([0, 0, 0, 1000], np.int64), np.zeros(2, np.int64)
    nth = numba.get_num_threads() + 1                   # one iteration has no thread of its own
    kv = np.array([[cache.k.ctypes.data, cache.v.ctypes.data, cache.n_ctx, cache.k.itemsize]], np.int64)
    simd.kernels.layers(x, f["codes"], f["wmat"], f["attn_norm"], f["ffn_norm"], f["q_norm"], f["k_norm"],
                        np.float32(c.rms_eps), model.cos, model.sin, np.array([[0, 2, 0]], np.int64), kv, model.scale,
                        c.n_head, c.n_head_kv, nth, sync, status)
    assert sync[2] > 0

    # and the model's own fallback: a step whose barrier timed out is redone op by op
    ref, _ = _run(model, [[5, 6], [7]], fused=False)
    real = simd.kernels.layers

    def broken(*args):
        args[-2][2] = 1                                   # as if a wait had timed out
        return real(*args)

    simd.kernels.layers = broken
    try:
        cache = model.new_cache()
        got = [model.forward(t, cache) for t in ([5, 6], [7])]
        assert model.fused is None
    finally:
        simd.kernels.layers = real
    for x, y in zip(got, ref):
        assert np.array_equal(x, y)


@needs_simd
@pytest.mark.parametrize("name,qtype", [("tiny", "q4_0"), ("k256", "q4_k_m")])
def test_fused_step_of_several_sequences_is_bit_identical(gguf_file, name, qtype):
    """forward_many (a batch step: sequences at different depths, 1-3 rows each) through the
    fused step equals the per-op path, logits and every cache."""
    from edgeqwen.gguf_model import ModelFile
    from edgeqwen.model import Qwen3Model

    model = Qwen3Model(ModelFile(gguf_file(name, qtype)), n_ctx=64, max_batch=32)
    assert model.fused is not None
    prompts = [[1, 2, 3], list(range(40, 51)), [99], [7, 8, 9, 10, 11, 12]]
    steps = [[[5], [6, 7], [8], [9, 10, 11]], [[12], [13], [14], [15]], [[1, 2], [3], [4, 5, 6], [7]]]
    results = []
    for fused in (True, False):
        saved = model.fused
        if not fused:
            model.fused = None
        try:
            caches = [model.new_cache() for _ in prompts]
            for p, c in zip(prompts, caches):
                model.forward(p, c)
            outs = [model.forward_many(list(zip(step, caches))) for step in steps]
        finally:
            model.fused = saved
        results.append((outs, caches))
    (a, ca), (b, cb) = results
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    for c1, c2 in zip(ca, cb):
        assert c1.n == c2.n and np.array_equal(c1.k[:, :c1.n], c2.k[:, :c2.n]) and np.array_equal(c1.v[:, :c1.n], c2.v[:, :c2.n])


@pytest.mark.skipif(simd.PATH != "avx2", reason="the F16C matmul is on the avx2 path")
def test_f16_decode_matmul_matches_float64():
    """F16 weights (random halves, subnormals and the largest finite ones included) against numpy
    in float64 on the float16 values: the vector kernel for 1-15 tokens, odd row counts."""
    rng = np.random.default_rng(5)
    for n, k in ((67, 1024), (5, 192), (33, 576)):
        w = (rng.standard_normal((n, k)) * 0.05).astype(np.float16)
        w[0, :8] = [6.0e-8, -6.0e-8, 6.1e-5, 65504, -65504, 0, -0.0, 1e-7]
        weight = Weight("w", T.F16, (n, k), w.view(np.uint8))
        for t in (1, 2, 4, 5, 15):
            x = rng.standard_normal((t, k)).astype(np.float32)
            out = weight.matmul(x, np.full((t, n), np.nan, np.float32))
            ref = x.astype(np.float64) @ w.astype(np.float64).T
            assert np.abs(out - ref).max() <= 1e-6 * np.abs(ref).max(), (n, k, t)
