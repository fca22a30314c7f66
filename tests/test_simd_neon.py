"""The aarch64 NEON dotprod kernels (edgeqwen/simd/neon.py) and the choice of the aarch64 path.

Everywhere (x86 included): the path choice for aarch64 feature sets, LLVM's answer to "does this
CPU name + feature string have dotprod" (the probe simd/__init__.py asks before compiling
anything), and the kernels' IR compiled by llvmlite for cortex-a76: 2 `sdot` per 32-block per
token. On aarch64 only (the emulated ARM job, .ci/arm/run.sh): with dotprod (NUMBA_CPU_NAME=
cortex-a76) every NEON kernel against gguf-py's dequantize + numpy and against the scalar kernels
of quants/, odd row counts, T = 1..17 through the drivers, adversarial blocks; without dotprod
(generic ARMv8-A, cortex-a72) the scalar fallback, chosen before anything is compiled (an `sdot`
for such a CPU would abort the process)."""
import os
import platform
import shlex
import subprocess
import sys

import gguf
import numpy as np
import pytest

from edgeqwen import simd
from edgeqwen.quants import QuantizedActivation, Weight
from edgeqwen.simd import neon

T = gguf.GGMLQuantizationType
TYPES = [T.Q4_0, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
BLOCK = {T.Q4_0: (32, 18), T.Q8_0: (32, 34), T.Q4_K: (256, 144), T.Q5_K: (256, 176), T.Q6_K: (256, 210)}
F16_OFFSETS = {T.Q4_0: (0,), T.Q8_0: (0,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}
ARM = platform.machine().lower() in simd.ARM_ARCHS
TRIPLE = "aarch64-unknown-linux-gnu"

needs_neon = pytest.mark.skipif(
    simd.PATH != "neon",
    reason=f"the NEON kernels run on aarch64 with dotprod only (the emulated ARM job, NUMBA_CPU_NAME=cortex-a76); "
           f"this process: {platform.machine()}, {simd.describe()}")
needs_arm_without_dotprod = pytest.mark.skipif(
    not ARM or simd.PATH == "neon",
    reason=f"needs an aarch64 interpreter compiling for a CPU without dotprod (the emulated ARM job's generic "
           f"process); this process: {platform.machine()}, {simd.describe()}")


def _aarch64_target():
    import llvmlite.binding as ll
    ll.initialize_all_targets()
    ll.initialize_all_asmprinters()
    try:
        return ll.Target.from_triple(TRIPLE)
    except RuntimeError as e:
        pytest.skip(f"this llvmlite has no AArch64 target: {e}")


# ---- the path choice (pure Python: every machine) ----

FULL = {"neon", "fp-armv8", "dotprod"}


@pytest.mark.parametrize("env, arch, feats, path, says", [
    ("", "aarch64", FULL, "neon", "dotprod"),
    ("", "arm64", FULL, "neon", "dotprod"),
    ("", "aarch64", {"neon", "fp-armv8"}, "scalar", "lacks dotprod"),     # cortex-a72, Pi 4
    ("", "aarch64", set(), "scalar", "lacks dotprod"),                    # NUMBA_CPU_NAME=generic
    ("neon", "aarch64", FULL, "neon", "EDGEQWEN_KERNELS=neon"),
    ("neon", "aarch64", {"neon"}, "scalar", "neon asked"),
    ("scalar", "aarch64", FULL, "scalar", "EDGEQWEN_KERNELS=scalar"),
    ("avx2", "aarch64", FULL, "scalar", "avx2 asked"),
    ("nonsense", "aarch64", FULL, "scalar", "'nonsense'"),
    ("neon", "x86_64", {"avx2", "fma", "f16c"}, "scalar", "neon asked"),
    ("", "x86_64", {"avx2", "fma", "f16c"}, "avx2", "AVX2"),
])
def test_aarch64_path_choice(env, arch, feats, path, says):
    got, reason = simd.choose(env, arch, (feats, "test CPU"))
    assert got == path
    assert reason and "\n" not in reason and says in reason


@pytest.mark.parametrize("cpu, features, sdot", [
    ("cortex-a76", "", True),                  # Raspberry Pi 5
    ("cortex-a76", "-aes,-rand,-sha2,-sve", True),   # what numba passes under qemu (host features)
    ("cortex-a76", "-dotprod", False),
    ("cortex-a72", "", False),                 # Raspberry Pi 4
    ("cortex-a53", "", False),
    ("generic", "", False),                    # NUMBA_CPU_NAME=generic; qemu's CPU
    ("generic", "+dotprod", True),
    ("cortex-a55", "", True),
    ("neoverse-n1", "", True),
    ("apple-m1", "", True),
    ("not-a-cpu", "", False),                  # unknown to LLVM: a warning, never an abort
])
def test_llvm_sdot_probe(cpu, features, sdot):
    _aarch64_target()
    assert simd.llvm_has_sdot(cpu, features, TRIPLE) is sdot


@pytest.mark.parametrize("name, features, dotprod", [
    ("cortex-a76", "", True),
    ("cortex-a76", "+neon,-dotprod", False),
    ("cortex-a72", "+neon", False),
    ("generic", "", False),
    ("generic", "+neon,+dotprod", True),
])
def test_arm_features_follow_numba_config(monkeypatch, name, features, dotprod):
    """arm_jit_features() reads the same CPU name and feature string numba passes to LLVM."""
    import numba
    _aarch64_target()
    monkeypatch.setattr(numba.config, "CPU_NAME", name)
    monkeypatch.setattr(numba.config, "CPU_FEATURES", features)
    flags, source = simd.arm_jit_features(TRIPLE)
    assert ("dotprod" in flags) is dotprod
    assert f"NUMBA_CPU_NAME={name}" in source
    assert simd.choose("", "aarch64", (flags, source))[0] == ("neon" if dotprod else "scalar")


# ---- the kernels' code for cortex-a76, read from llvmlite's aarch64 target (every machine) ----

def neon_asm(code: int, nt: int) -> str:
    import llvmlite.binding as ll
    tm = _aarch64_target().create_target_machine(cpu="cortex-a76", features="", opt=3)
    mod = ll.parse_assembly(neon.kernel_ir(code, nt))
    mod.verify()
    return tm.emit_assembly(mod)


def mnemonics(asm: str) -> list[str]:
    out = []
    for line in asm.splitlines():
        s = line.strip()
        if s and not s.endswith(":") and not s.startswith((".", "//", "#")):
            out.append(s.split()[0])
    return out


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_neon_kernels_compile_to_two_sdot_per_block_and_token(qtype):
    blocks = 8 if BLOCK[qtype][0] == 256 else 1           # 32-blocks per loop iteration
    for nt in range(1, neon.MAX_TOKENS + 1):
        ins = mnemonics(neon_asm(int(qtype), nt))
        assert ins.count("sdot") == 2 * blocks * nt, (qtype.name, nt, ins.count("sdot"))
        for widening in ("smull", "smull2", "smlal", "sxtl", "saddlp", "sadalp"):   # no int16 detour
            assert widening not in ins, (qtype.name, nt, widening)
        assert ins.count("scvtf") >= blocks * nt           # one convert + fma per block and token
        assert ins.count("fmla") >= blocks * nt


# ---- the kernels themselves (aarch64 with dotprod) ----

def reference(raw, qtype, n, k, xq, xd):
    """gguf-py's dequantize(W) @ (xq * xd).T in float64, from the activation the kernel saw, and
    sum_k |x_k w_k| per entry: the scale of float32 summation error (the kernels' integer block
    sums are exact; their float accumulation over blocks, in 4 lanes, is not, and with
    cancellation a result can be far smaller than its terms)."""
    wd = gguf.quants.dequantize(raw, qtype).reshape(n, k).astype(np.float64)
    t = xq.shape[0]
    xf = (xq.reshape(t, k // 32, 32).astype(np.float64) * xd.astype(np.float64)[..., None]).reshape(t, k)
    return xf @ wd.T, np.abs(xf) @ np.abs(wd).T


def close(out, ref, size, tol=1e-6) -> bool:
    """|out - ref| <= tol * sum |x w| in every entry (tol ~ 16 float32 epsilons: the shapes here
    have <= 32 blocks per row, <= 8 per accumulator lane), so exact zeros stay exact."""
    return bool(np.all(np.abs(out.astype(np.float64) - ref) <= tol * size))


def near_scalar(out, scalar_out, size, tol=2e-6) -> bool:
    """The NEON and the scalar kernel's float32 results agree within both their error bounds."""
    return close(out, scalar_out.astype(np.float64), size, tol)


def random_blocks(rng, n, k, qtype, scale=0.01) -> np.ndarray:
    """Random bytes everywhere (all nibble/bit patterns, int8 scales of any sign, Q8_0's -128),
    finite float16 scales of random sign; read-only, as the file's mmap."""
    per, nbytes = BLOCK[qtype]
    raw = rng.integers(0, 256, (n, k // per, nbytes), dtype=np.uint8)
    for o in F16_OFFSETS[qtype]:
        d = (rng.uniform(0.1, 1.0, (n, k // per)) * scale * rng.choice([-1, 1], (n, k // per))).astype(np.float16)
        raw[:, :, o:o + 2] = d[..., None].view(np.uint8)
    raw = raw.reshape(n, -1)
    raw.flags.writeable = False
    return raw


def activation(rng, t, k, extreme=False):
    """(xq, xd, xs): the runtime's Q8_0 quantization of random x, or (extreme) int8 values drawn
    from {-128, -127, 127, random} directly (the quantizer never makes -128; the kernel must
    still be exact for it) with random scales."""
    if not extreme:
        x = rng.standard_normal((t, k)).astype(np.float32)
        x[0, :32] = 0.0                                    # an all-zero activation block
        if t > 2:
            x[2, -32:] *= 1e4
        xq, xd, xs = QuantizedActivation(t, k).quantize(x)
        return xq.copy(), xd.copy(), xs.copy()
    pick = rng.integers(0, 4, (t, k))
    xq = np.where(pick == 0, -128, np.where(pick == 1, -127, np.where(pick == 2, 127,
                  rng.integers(-128, 128, (t, k))))).astype(np.int8)
    xq[0, :32] = -128                                      # a whole block at the extreme
    xd = rng.uniform(1e-3, 1e-2, (t, k // 32)).astype(np.float32)
    xs = xq.reshape(t, -1, 32).astype(np.int32).sum(-1).astype(np.int32)
    return xq, xd, xs


def drive(qtype, raw, xq, xd, xs) -> np.ndarray:
    out = np.full((xq.shape[0], raw.shape[0]), np.nan, np.float32)
    neon.matmul(int(qtype), raw, xq, xd, xs, out)
    return out


def scalar(qtype, raw, n, k, xq, xd, xs) -> np.ndarray:
    w = Weight("w", qtype, (n, k), raw)
    w.simd = None
    out = np.full((xq.shape[0], n), np.nan, np.float32)
    return w.matmul(np.zeros((xq.shape[0], k), np.float32), out, (xq, xd, xs))


def rel_err(out, ref) -> float:
    return float(np.abs(out - ref).max() / (np.abs(ref).max() or 1.0))


@needs_neon
@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_neon_matmul_matches_gguf_and_scalar(qtype):
    """Through Weight.matmul (the model's path), odd row counts, 1-9 tokens (1-4 token groups
    and remainders), gguf-py-quantized (Q4_0, Q8_0) and random blocks."""
    rng = np.random.default_rng(int(qtype))
    per = BLOCK[qtype][0]
    assert simd.code_for(qtype) == int(qtype)
    for n, k in ((67, per), (5, 3 * per), (33, 512 if per == 256 else 1024)):
        kinds = ["random", "quantized"] if qtype in (T.Q4_0, T.Q8_0) else ["random"]
        for kind in kinds:
            if kind == "quantized":
                w = rng.standard_normal((n, k)).astype(np.float32)
                w[0] = 0.0                                 # an all-zero row
                w[1, :32] = 1e3                            # a huge block beside normal ones
                raw = gguf.quants.quantize(w, qtype).reshape(n, -1)
                raw.flags.writeable = False
            else:
                raw = random_blocks(rng, n, k, qtype)
            weight = Weight("w", qtype, (n, k), raw)
            assert weight.simd == int(qtype)
            for t in (1, 2, 3, 4, 5, 6, 9):
                xq, xd, xs = activation(rng, t, k)
                out = weight.matmul(np.zeros((t, k), np.float32), np.full((t, n), np.nan, np.float32), (xq, xd, xs))
                ref, size = reference(raw, qtype, n, k, xq, xd)
                assert close(out, ref, size), (n, k, t, kind, rel_err(out, ref))
                assert near_scalar(out, scalar(qtype, raw, n, k, xq, xd, xs), size), (n, k, t, kind)


@needs_neon
@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_neon_driver_tokens_1_to_17(qtype):
    """The driver with T = 1..17 (beyond the prefill threshold too: the driver itself), and a
    token's result independent of how many tokens share the weight load."""
    rng = np.random.default_rng(100 + int(qtype))
    n, k = 19, BLOCK[qtype][0] * (2 if BLOCK[qtype][0] == 256 else 8)
    raw = random_blocks(rng, n, k, qtype)
    xq, xd, xs = activation(rng, 17, k)
    single = np.stack([drive(qtype, raw, xq[i:i + 1], xd[i:i + 1], xs[i:i + 1])[0] for i in range(17)])
    assert close(single, *reference(raw, qtype, n, k, xq, xd))
    for t in range(1, 18):
        out = drive(qtype, raw, xq[:t], xd[:t], xs[:t])
        assert np.array_equal(out, single[:t]), (qtype.name, t)


def adversarial_blocks(qtype, n_blocks: int, rng) -> np.ndarray:
    """One row per pattern, each all-extreme: max/min quants, max/min integer scales and mins,
    zero scales, and one row mixing them block by block."""
    per, nbytes = BLOCK[qtype]
    rows = []

    def row(fill, d=1.0, dmin=0.5, scales=None):
        r = np.full((n_blocks, nbytes), fill, np.uint8)
        offs = F16_OFFSETS[qtype]
        r[:, offs[0]:offs[0] + 2] = np.frombuffer(np.float16(d).tobytes(), np.uint8)
        if len(offs) > 1:
            r[:, offs[1]:offs[1] + 2] = np.frombuffer(np.float16(dmin).tobytes(), np.uint8)
        if scales is not None:
            if qtype == T.Q6_K:
                r[:, 192:208] = np.uint8(scales)
            else:
                r[:, 4:16] = np.uint8(scales)
        rows.append(r.reshape(-1))

    if qtype == T.Q8_0:
        row(0x80)                                          # all -128
        row(0x7F)                                          # all 127
        row(0x80, d=0.0)                                   # zero scale
        row(0x7F, d=-2.0)
    elif qtype == T.Q4_0:
        row(0xFF)                                          # nibbles 15: +7
        row(0x00)                                          # nibbles 0: -8
        row(0xF0, d=-3.0)
        row(0xFF, d=0.0)
    elif qtype in (T.Q4_K, T.Q5_K):
        row(0xFF, scales=0xFF)                             # q = 15 (31), scale = min = 63
        row(0x00, scales=0xFF)                             # q = 0: the minima alone
        row(0xFF, d=0.0, dmin=0.0, scales=0xFF)            # zero scales
        row(0xFF, d=-1.0, dmin=-1.0, scales=0x00)          # integer scales 0
    else:                                                  # Q6_K
        row(0xFF, scales=0x7F)                             # q = 63 - 32 = 31, scale 127
        row(0x00, scales=0x80)                             # q = -32, scale -128
        row(0xFF, scales=0x80, d=-2.0)
        row(0x00, scales=0x7F, d=0.0)
    mixed = np.stack(rows).reshape(len(rows), n_blocks, nbytes)
    pick = rng.integers(0, len(rows), n_blocks)
    rows.append(mixed[pick, np.arange(n_blocks)].reshape(-1))
    raw = np.stack(rows)
    raw.flags.writeable = False
    return raw


@needs_neon
@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_neon_adversarial_blocks(qtype):
    rng = np.random.default_rng(200 + int(qtype))
    per = BLOCK[qtype][0]
    nb = 3 if per == 256 else 24
    raw = adversarial_blocks(qtype, nb, rng)
    n, k = raw.shape[0], per * nb
    for extreme in (True, False):
        for t in (1, 4, 7):
            xq, xd, xs = activation(rng, t, k, extreme)
            out = drive(qtype, raw, xq, xd, xs)
            ref, size = reference(raw, qtype, n, k, xq, xd)
            for r in range(n):                             # each row: a pattern
                assert close(out[:, r], ref[:, r], size[:, r]), (qtype.name, r, t, extreme, rel_err(out, ref))
            assert near_scalar(out, scalar(qtype, raw, n, k, xq, xd, xs), size), (qtype.name, t, extreme)


@needs_neon
def test_neon_fused_drivers_mixed_types():
    """Q/K/V of different formats in one region (matmul3) and gate/up (ffn) equal the
    single-matrix driver."""
    rng = np.random.default_rng(7)
    k = 512
    ws = [(q, random_blocks(rng, n, k, q)) for q, n in ((T.Q4_K, 37), (T.Q6_K, 21), (T.Q8_0, 48))]
    gate, up = random_blocks(rng, 45, k, T.Q4_0), random_blocks(rng, 45, k, T.Q5_K)
    for t in (1, 3, 6):
        xq, xd, xs = activation(rng, t, k)
        outs = tuple(np.full((t, raw.shape[0]), np.nan, np.float32) for _, raw in ws)
        neon.matmul3(int(ws[0][0]), ws[0][1], int(ws[1][0]), ws[1][1], int(ws[2][0]), ws[2][1], xq, xd, xs, *outs)
        for (q, raw), o in zip(ws, outs):
            assert np.array_equal(o, drive(q, raw, xq, xd, xs)), q.name
        g, u = np.empty((t, 45), np.float32), np.empty((t, 45), np.float32)
        neon.ffn(int(T.Q4_0), gate, int(T.Q5_K), up, xq, xd, xs, g, u)
        gr = drive(T.Q4_0, gate, xq, xd, xs).astype(np.float64)
        ur = drive(T.Q5_K, up, xq, xd, xs).astype(np.float64)
        assert np.allclose(g, gr / (1 + np.exp(-gr)) * ur, rtol=1e-5, atol=1e-6 * np.abs(gr * ur).max())


# ---- the fallback (aarch64 without dotprod) ----

@needs_arm_without_dotprod
def test_scalar_fallback_without_dotprod():
    """This process compiles for a CPU without dotprod: the scalar kernels, chosen before anything
    was compiled (the ARM job's other kernel tests in this process then run them)."""
    assert simd.PATH == "scalar" and simd.kernels is None
    assert "dotprod" in simd.REASON
    assert all(simd.code_for(q) is None for q in TYPES)


@pytest.mark.skipif(not ARM, reason=f"needs an aarch64 interpreter (the emulated ARM job runs it); this is {platform.machine()}")
def test_cortex_a72_child_fallback_without_abort(tmp_path):
    """A process compiling for the Pi 4's core (no dotprod) picks scalar and runs a matmul
    (an sdot compiled for it would SIGABRT the process)."""
    code = ("import numpy as np, gguf\n"
            "from edgeqwen import simd\n"
            "from edgeqwen.quants import Weight, QuantizedActivation\n"
            "Q = gguf.GGMLQuantizationType.Q8_0\n"
            "w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)\n"
            "W = Weight('w', Q, (8, 64), gguf.quants.quantize(w, Q))\n"
            "x = np.ones((1, 64), np.float32)\n"
            "W.matmul(x, np.empty((1, 8), np.float32), QuantizedActivation(1, 64).quantize(x))\n"
            "print(simd.PATH, W.simd)\n")
    env = {**os.environ, "NUMBA_CPU_NAME": "cortex-a72", "EDGEQWEN_KERNELS": "neon",
           "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR") or str(tmp_path)}
    env.pop("NUMBA_CPU_FEATURES", None)
    cmd = [*shlex.split(os.environ.get("EDGEQWEN_ARM_EXEC", "")), sys.executable, "-c", code]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.split()[-2:] == ["scalar", "None"], r.stdout
