"""CPU feature reporting (edgeqwen/cpu.py) on recorded /proc/cpuinfo texts and aarch64 auxv
vectors, on this machine, and the default thread count (physical cores). Runs in the aarch64
job as well, where the features come from the emulated CPU's AT_HWCAP."""
from __future__ import annotations

import platform
import struct

import numba
import pytest

from edgeqwen import cpu
from edgeqwen.api import set_threads

# Raspberry Pi 5 (Cortex-A76: dotprod, no i8mm), as its kernel prints it (first core, then the board)
PI5 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

processor\t: 1
Features\t: fp asimd

Revision\t: d04170
Serial\t\t: 0000000000000000
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""
# Raspberry Pi 4 (Cortex-A72: NEON only)
PI4 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n"
X86 = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU\n"
       "flags\t\t: fpu sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512_vnni\n")


def test_raspberry_pi_5_cpuinfo():
    f = cpu.parse_cpuinfo(PI5)
    feats = cpu.simd_features("aarch64", set(f["Features"].split()))
    assert feats == {"NEON": True, "dotprod": True, "i8mm": False, "fp16": True, "SVE": False}
    assert cpu.cpu_name("aarch64", f) == "Raspberry Pi 5 Model B Rev 1.0, Cortex-A76"


def test_raspberry_pi_4_and_x86_cpuinfo():
    f = cpu.parse_cpuinfo(PI4)
    assert cpu.simd_features("aarch64", set(f["Features"].split()))["dotprod"] is False
    assert cpu.cpu_name("aarch64", f) == "Cortex-A72"
    f = cpu.parse_cpuinfo(X86)
    feats = cpu.simd_features("x86_64", set(f["flags"].split()))
    assert feats["AVX2"] and feats["FMA"] and feats["AVX512-VNNI"] and not feats["AVX-VNNI"]
    assert cpu.cpu_name("x86_64", f) == "Intel(R) Xeon(R) CPU"
    assert cpu.simd_features("riscv64", {"v"}) == {}


def test_aarch64_hwcaps_from_auxv():
    hwcap = 1 << 0 | 1 << 1 | 1 << 20            # fp, asimd, asimddp
    hwcap2 = 1 << 13                             # i8mm
    raw = struct.pack("=8Q", 6, 4096, cpu.AT_HWCAP, hwcap, cpu.AT_HWCAP2, hwcap2, 0, 0)
    aux = cpu.parse_auxv(raw)
    assert aux == {6: 4096, cpu.AT_HWCAP: hwcap, cpu.AT_HWCAP2: hwcap2}
    flags = cpu.hwcap_flags(aux[cpu.AT_HWCAP], aux[cpu.AT_HWCAP2])
    assert flags == {"asimd", "asimddp", "i8mm"}
    assert cpu.simd_features("aarch64", flags) == {"NEON": True, "dotprod": True, "i8mm": True, "fp16": False,
                                                   "SVE": False}


def test_this_machine():
    """The features reported for this machine against independent sources: on x86 LLVM's CPUID
    reading (llvmlite), on aarch64 the C library's getauxval(AT_HWCAP) decoded here from the
    kernel's hwcap.h (right under qemu-user too, which emulates the auxiliary vector)."""
    info = cpu.cpu_info()
    assert info.arch == platform.machine()
    assert 1 <= info.physical_cores <= info.logical_cpus
    if cpu.is_x86(info.arch):
        import llvmlite.binding as llvm
        host = llvm.get_host_cpu_features()
        assert info.features == {"AVX2": host["avx2"], "FMA": host["fma"], "F16C": host["f16c"],
                                 "AVX-512": host["avx512f"], "AVX512-VNNI": host["avx512vnni"],
                                 "AVX-VNNI": host.get("avxvnni", False)}, (info.features, dict(host))
    if cpu.is_arm64(info.arch):
        import ctypes
        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype = ctypes.c_ulong
        hwcap, hwcap2 = getauxval(16), getauxval(26)          # AT_HWCAP, AT_HWCAP2
        assert info.features == {"NEON": bool(hwcap >> 1 & 1), "dotprod": bool(hwcap >> 20 & 1),
                                 "i8mm": bool(hwcap2 >> 13 & 1), "fp16": bool(hwcap >> 10 & 1),
                                 "SVE": bool(hwcap >> 22 & 1)}, (info.features, hex(hwcap), hex(hwcap2))
        assert info.features["NEON"] is True, info              # part of ARMv8-A
    assert info.jit_target and info.features_text() in info.summary()


def test_default_threads_are_physical_cores():
    before = numba.get_num_threads()
    try:
        assert set_threads(None) == min(cpu.physical_cores(), numba.config.NUMBA_NUM_THREADS)
    finally:
        numba.set_num_threads(before)


def test_big_endian_hosts_are_refused(tmp_path, monkeypatch):
    from edgeqwen.errors import EdgeQwenError
    from edgeqwen.gguf_reader import GGUFFile

    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setattr("sys.byteorder", "big")
    with pytest.raises(EdgeQwenError, match="big-endian"):
        GGUFFile(path)
