"""What the CPU offers the kernels, on x86-64 and aarch64: the SIMD features that matter to the
int8 dot products, physical cores (the default thread count), and the CPU numba compiles for.

  x86-64   flags of /proc/cpuinfo. AVX2 (vpmaddwd / vpmaddubsw: the int8 block dots), FMA,
           F16C; AVX512-VNNI / AVX-VNNI (vpdpbusd) when LLVM chooses them.
  aarch64  the kernel's hardware capabilities AT_HWCAP / AT_HWCAP2 from /proc/self/auxv (also
           right under qemu-user, whose /proc/cpuinfo is the host's), else the "Features" line
           of /proc/cpuinfo. NEON (asimd), dotprod (asimddp: sdot), i8mm (smmla), fp16
           arithmetic (asimdhp), SVE.
Elsewhere (macOS, Windows) the features are unknown and reported as such.
"""
from __future__ import annotations

import functools
import os
import platform
import struct
from dataclasses import dataclass

# (name in /proc/cpuinfo, name shown), in display order
X86_FEATURES = (("avx2", "AVX2"), ("fma", "FMA"), ("f16c", "F16C"), ("avx512f", "AVX-512"),
                ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"))
ARM_FEATURES = (("asimd", "NEON"), ("asimddp", "dotprod"), ("i8mm", "i8mm"), ("asimdhp", "fp16"),
                ("sve", "SVE"))

# arch/arm64/include/uapi/asm/hwcap.h: bit -> /proc/cpuinfo name
AT_HWCAP, AT_HWCAP2 = 16, 26
HWCAP_BITS = {1: "asimd", 10: "asimdhp", 20: "asimddp", 22: "sve"}
HWCAP2_BITS = {1: "sve2", 13: "i8mm", 14: "bf16"}

# "CPU part" of ARM Ltd cores (implementer 0x41) found on small boards
ARM_PARTS = {0xd03: "Cortex-A53", 0xd04: "Cortex-A35", 0xd05: "Cortex-A55", 0xd07: "Cortex-A57",
             0xd08: "Cortex-A72", 0xd09: "Cortex-A73", 0xd0b: "Cortex-A76", 0xd0c: "Neoverse-N1",
             0xd0d: "Cortex-A77", 0xd41: "Cortex-A78", 0xd46: "Cortex-A510", 0xd47: "Cortex-A710",
             0xd40: "Neoverse-V1", 0xd49: "Neoverse-N2", 0xd4f: "Neoverse-V2"}


@dataclass(frozen=True)
class CpuInfo:
    arch: str                        # platform.machine(): x86_64, aarch64, arm64, ...
    name: str
    physical_cores: int
    logical_cpus: int
    features: dict[str, bool]        # display name -> present; empty when unknown
    jit_target: str                  # the CPU numba compiles for (NUMBA_CPU_NAME or LLVM's host CPU)

    def features_text(self) -> str:
        if not self.features:
            return "SIMD features unknown"
        have = [k for k, v in self.features.items() if v]
        lack = [k for k, v in self.features.items() if not v]
        return " ".join(have) + (f" (no {', '.join(lack)})" if lack else "")

    def summary(self) -> str:
        return (f"{self.name} ({self.arch}), {self.physical_cores} physical cores / {self.logical_cpus} logical; "
                f"{self.features_text()}; numba target {self.jit_target}")


def parse_cpuinfo(text: str) -> dict[str, str]:
    """The fields of the first processor block of /proc/cpuinfo (key -> value), plus keys that
    only appear after the blocks (e.g. a Raspberry Pi's "Model")."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key and key not in fields:
            fields[key] = value.strip()
    return fields


def parse_auxv(data: bytes) -> dict[int, int]:
    """/proc/self/auxv (pairs of native unsigned longs, 64-bit) -> {type: value}."""
    out = {}
    for key, value in struct.iter_unpack("=QQ", data[:len(data) // 16 * 16]):
        if key == 0:
            break
        out[key] = value
    return out


def hwcap_flags(hwcap: int, hwcap2: int) -> set[str]:
    """aarch64 AT_HWCAP / AT_HWCAP2 -> the /proc/cpuinfo names of the features we report."""
    return ({n for b, n in HWCAP_BITS.items() if hwcap >> b & 1}
            | {n for b, n in HWCAP2_BITS.items() if hwcap2 >> b & 1})


def simd_features(arch: str, flags: set[str]) -> dict[str, bool]:
    if is_x86(arch):
        table = X86_FEATURES
    elif is_arm64(arch):
        table = ARM_FEATURES
    else:
        return {}
    return {shown: name in flags for name, shown in table}


def is_x86(arch: str) -> bool:
    return arch.lower() in ("x86_64", "amd64")


def is_arm64(arch: str) -> bool:
    return arch.lower() in ("aarch64", "arm64")


def cpu_name(arch: str, fields: dict[str, str]) -> str:
    if "model name" in fields and is_x86(arch):
        return fields["model name"]
    if is_arm64(arch) and fields.get("CPU implementer", "").lower() == "0x41":
        try:
            core = ARM_PARTS.get(int(fields.get("CPU part", ""), 16))
        except ValueError:
            core = None
        if core:
            return f"{fields['Model']}, {core}" if "Model" in fields else core
    return fields.get("Model") or "unknown CPU"


def _read(path: str, mode: str = "r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def physical_cores() -> int:
    """Physical cores (not hyper-threads) available to this process: the distinct
    thread_siblings sets of the CPUs in its affinity mask (Linux; x86 and ARM alike), else the
    logical CPU count."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        cpus = set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        siblings = _read(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        cores.add(siblings.strip() if siblings else str(cpu))
    return max(1, len(cores))


def _jit_target() -> str:
    import numba

    if numba.config.CPU_NAME:
        return f"{numba.config.CPU_NAME} (NUMBA_CPU_NAME)"
    try:
        import llvmlite.binding as ll
        return ll.get_host_cpu_name()
    except Exception:                    # an llvmlite without host detection: not fatal for a report
        return "unknown"


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CpuInfo (read once)."""
    arch = platform.machine()
    fields = parse_cpuinfo(_read("/proc/cpuinfo") or "")
    flags: set[str] = set()
    if is_arm64(arch):
        auxv = _read("/proc/self/auxv", "rb")
        if auxv:
            aux = parse_auxv(auxv)
            flags = hwcap_flags(aux.get(AT_HWCAP, 0), aux.get(AT_HWCAP2, 0))
        flags = flags or set(fields.get("Features", "").split())
    else:
        flags = set(fields.get("flags", "").split())
    return CpuInfo(arch=arch, name=cpu_name(arch, fields), physical_cores=physical_cores(),
                   logical_cpus=os.cpu_count() or 1,
                   features=simd_features(arch, flags) if flags else {}, jit_target=_jit_target())
