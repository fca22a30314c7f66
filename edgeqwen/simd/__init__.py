"""The explicit-SIMD kernel layer: which path the quantized matmuls take on this machine.

    avx2     x86-64 with AVX2 + FMA + F16C: vector code emitted as LLVM IR (simd/avx2.py) for
             Q4_0, Q8_0, Q4_K, Q5_K, Q6_K (and Q3_K on AVX2)
    neon     aarch64 with dotprod (ARMv8.2 `sdot`: Raspberry Pi 5's Cortex-A76, Neoverse, Apple M):
             the same kernels as NEON IR (simd/neon.py)
    scalar   the portable numba kernels of quants/ (every other CPU, every other type; also the
             reference the SIMD kernels are tested against)

The path is chosen once, at import, from the CPU *numba compiles for* (NUMBA_CPU_NAME /
NUMBA_CPU_FEATURES when set, else the host's features as LLVM sees them), never by trying:
LLVM aborts the whole process when it is asked to compile an intrinsic the target lacks.
`EDGEQWEN_KERNELS=scalar|avx2|neon` overrides the choice; asking for a path this CPU cannot run
falls back to scalar and says why (`PATH`, `REASON`, shown by `edgeqwen info` and `bench`).
"""
from __future__ import annotations

import os
import platform

ENV = "EDGEQWEN_KERNELS"
PATHS = ("avx2", "neon", "scalar")
AVX2_NEEDS = ("avx2", "fma", "f16c")
ARM_ARCHS = ("aarch64", "arm64")


def jit_features(arch: str | None = None) -> tuple[set[str], str]:
    """The CPU features numba's LLVM targets (without '+'), and where they came from."""
    import numba

    if (arch or platform.machine()).lower() in ARM_ARCHS:
        return arm_jit_features()

    name = numba.config.CPU_NAME
    feats = numba.config.CPU_FEATURES
    if name and name != "host":
        flags = {f[1:] for f in (feats or "").split(",") if f.startswith("+")}
        return flags, f"NUMBA_CPU_NAME={name}" + (f" NUMBA_CPU_FEATURES={feats}" if feats else "")
    try:
        import llvmlite.binding as ll
        fmap = ll.get_host_cpu_features()
        return {k for k, v in fmap.items() if v}, "host CPU"
    except Exception as e:                         # no host detection: treat as featureless
        return set(), f"host CPU features unknown ({type(e).__name__})"


def llvm_has_sdot(cpu: str, features: str, triple: str | None = None) -> bool:
    """Does LLVM compile for aarch64 CPU `cpu` with `features` (a "+a,-b" string, as numba passes
    them) with dotprod? Asked of LLVM itself, safely: portable IR (a sign-extended int8 multiply
    reduced to a sum), which lowers to `sdot` exactly when the target has dotprod and is never an
    error otherwise (an `sdot` intrinsic there would abort the process)."""
    import llvmlite.binding as ll

    native = ll.get_process_triple()
    if triple and triple.split("-")[0] != native.split("-")[0]:
        ll.initialize_all_targets()          # another architecture's target (tests on x86)
        ll.initialize_all_asmprinters()
    else:
        ll.initialize_native_target()
        ll.initialize_native_asmprinter()
    triple = triple or native
    tm = ll.Target.from_triple(triple).create_target_machine(cpu=cpu, features=features, opt=2)
    mod = ll.parse_assembly(_SDOT_PROBE)
    mod.triple = triple
    return "sdot" in tm.emit_assembly(mod)


_SDOT_PROBE = """
define i32 @probe(<16 x i8> %a, <16 x i8> %b) {
  %x = sext <16 x i8> %a to <16 x i32>
  %y = sext <16 x i8> %b to <16 x i32>
  %m = mul <16 x i32> %x, %y
  %r = call i32 @llvm.vector.reduce.add.v16i32(<16 x i32> %m)
  ret i32 %r
}
declare i32 @llvm.vector.reduce.add.v16i32(<16 x i32>)
"""


def arm_jit_features(triple: str | None = None) -> tuple[set[str], str]:
    """aarch64: the target numba compiles for is a CPU name (NUMBA_CPU_NAME, else the host's as
    LLVM names it; qemu's is 'generic') plus a feature string (NUMBA_CPU_FEATURES, else the
    host's: numba passes both, "" for NUMBA_CPU_NAME=generic). The features a CPU name implies
    (cortex-a76: dotprod) are not in that string, so LLVM is asked whether it forms `sdot` for
    exactly that pair; the explicit '+' features are reported too."""
    import numba

    try:
        import llvmlite.binding as ll
        from numba.core import codegen

        name = numba.config.CPU_NAME
        feats = numba.config.CPU_FEATURES
        cpu = ll.get_host_cpu_name() if not name or name == "host" else name
        if feats is None:
            feats = codegen.get_host_cpu_features()     # what numba itself passes to LLVM
        flags = {f[1:] for f in feats.split(",") if f.startswith("+")}
        if llvm_has_sdot(cpu, feats, triple):
            flags.add("dotprod")
        else:
            flags.discard("dotprod")
    except Exception as e:                         # no answer: treat as featureless
        return set(), f"aarch64 CPU features unknown ({type(e).__name__}: {e})"
    if name and name != "host":
        source = f"NUMBA_CPU_NAME={name}" + (f" NUMBA_CPU_FEATURES={numba.config.CPU_FEATURES}"
                                             if numba.config.CPU_FEATURES else "")
    else:
        source = f"host CPU ({cpu})"
    return flags, source


def choose(env: str | None = None, arch: str | None = None, features: tuple[set[str], str] | None = None) -> tuple[str, str]:
    """(path, reason) for this process."""
    arch = (arch or platform.machine()).lower()
    want = (env if env is not None else os.environ.get(ENV, "")).strip().lower()
    if want and want not in PATHS:
        return "scalar", f"{ENV}={want!r} is not one of {', '.join(PATHS)}; using scalar"
    if want == "scalar":
        return "scalar", f"{ENV}=scalar"
    if arch in ARM_ARCHS:
        if want == "avx2":
            return "scalar", f"{ENV}=avx2 asked, but this is {arch}; using scalar"
        flags, source = features if features is not None else jit_features(arch)
        if "dotprod" not in flags:
            why = f"{source} lacks dotprod (sdot)"
            return "scalar", (f"{ENV}=neon asked, but {why}" if want else why)
        return "neon", (f"{ENV}=neon" if want else f"{source} has NEON dotprod (sdot)")
    if want == "neon":
        return "scalar", f"{ENV}=neon asked, but this is {arch}; using scalar"
    if arch not in ("x86_64", "amd64"):
        why = f"no SIMD kernels for {arch} yet"
        return "scalar", (f"{ENV}={want} asked, but {why}" if want else why)
    flags, source = features if features is not None else jit_features()
    missing = [f for f in AVX2_NEEDS if f not in flags]
    if missing:
        why = f"{source} lacks {', '.join(missing)}"
        return "scalar", (f"{ENV}=avx2 asked, but {why}" if want else why)
    return "avx2", (f"{ENV}=avx2" if want else f"{source} has AVX2, FMA, F16C")


def has_vnni(flags: set[str]) -> bool:
    """vpdpbusd on 256-bit vectors: AVX-VNNI, or AVX512-VNNI with AVX512-VL."""
    return "avxvnni" in flags or {"avx512vnni", "avx512vl"} <= flags


_FEATURES = jit_features()
PATH, REASON = choose(features=_FEATURES)

gemm_kernels = None     # the prompt-processing GEMM (many tokens), where this path has one
prompt_attention = None  # prompt attention over float32 / float16 caches, where this path has one
if PATH == "avx2":
    from . import avx2 as kernels
    kernels.VNNI = has_vnni(_FEATURES[0])
    if kernels.VNNI:
        REASON += "; VNNI (vpdpbusd)"
    CODES = frozenset(kernels.CODES)
    from . import avx2_gemm as gemm_kernels
    if "avx512vl" in _FEATURES[0]:      # 32 vector registers: 16-row tiles (measured 1.0-1.4x per matrix)
        gemm_kernels.ROWS = 16
        REASON += "; 16-row GEMM tiles"
    from .avx2_attention import attention_prompt as prompt_attention
elif PATH == "neon":
    from . import neon as kernels
    CODES = frozenset(kernels.CODES)
else:
    kernels = None
    CODES = frozenset()
GEMM_CODES = frozenset(gemm_kernels.codes()) if gemm_kernels is not None else frozenset()


def code_for(qtype) -> int | None:
    """The SIMD kernel code of a GGML type on this path, or None (scalar kernel)."""
    q = int(qtype)
    return q if q in CODES else None


def gemm(code: int, w, act, out):
    """out (T, N) = the Q8_0 activation act = (xq, xd, xs) times weight w (N, bytes per row) of
    format `code` (in GEMM_CODES): the prompt-processing kernel, many tokens per weight tile."""
    import numpy as np
    from ..quants.common import F16_TABLE

    xq, xd, _ = act
    dxs = np.empty((xq.shape[0], xq.shape[1] // gemm_kernels.sub_block(code)), gemm_kernels.sums_dtype(code))
    gemm_kernels.sub_sums(code, xq, xd, dxs)
    gemm_kernels.gemm(code, w, xq, xd, dxs, out, F16_TABLE)
    return out


def describe() -> str:
    return f"{PATH} ({REASON})"
