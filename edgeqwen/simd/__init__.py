"""The explicit-SIMD kernel layer: which path the quantized matmuls take on this machine.

    avx2     x86-64 with AVX2 + FMA + F16C: vector code emitted as LLVM IR (simd/avx2.py) for
             Q4_0, Q8_0, Q4_K, Q5_K, Q6_K
    scalar   the portable numba kernels of quants/ (every other CPU, every other type; also the
             reference the SIMD kernels are tested against)

The path is chosen once, at import, from the CPU *numba compiles for* (NUMBA_CPU_NAME /
NUMBA_CPU_FEATURES when set, else the host's features as LLVM sees them), never by trying:
LLVM aborts the whole process when it is asked to compile an intrinsic the target lacks.
`EDGEQWEN_KERNELS=scalar|avx2` overrides the choice; asking for a path this CPU cannot run
falls back to scalar and says why (`PATH`, `REASON`, shown by `edgeqwen info` and `bench`).
"""
from __future__ import annotations

import os
import platform

ENV = "EDGEQWEN_KERNELS"
PATHS = ("avx2", "scalar")
AVX2_NEEDS = ("avx2", "fma", "f16c")


def jit_features() -> tuple[set[str], str]:
    """The CPU features numba's LLVM targets (without '+'), and where they came from."""
    import numba

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


def choose(env: str | None = None, arch: str | None = None, features: tuple[set[str], str] | None = None) -> tuple[str, str]:
    """(path, reason) for this process."""
    arch = (arch or platform.machine()).lower()
    want = (env if env is not None else os.environ.get(ENV, "")).strip().lower()
    if want and want not in PATHS:
        return "scalar", f"{ENV}={want!r} is not one of {', '.join(PATHS)}; using scalar"
    if want == "scalar":
        return "scalar", f"{ENV}=scalar"
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

if PATH == "avx2":
    from . import avx2 as kernels
    kernels.VNNI = has_vnni(_FEATURES[0])
    if kernels.VNNI:
        REASON += "; VNNI (vpdpbusd)"
    CODES = frozenset(kernels.CODES)
else:
    kernels = None
    CODES = frozenset()


def code_for(qtype) -> int | None:
    """The SIMD kernel code of a GGML type on this path, or None (scalar kernel)."""
    q = int(qtype)
    return q if q in CODES else None


def describe() -> str:
    return f"{PATH} ({REASON})"
