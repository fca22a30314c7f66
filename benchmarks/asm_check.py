"""What the int8 block dot products of the matmul kernels compile to, read from numba's own
assembly (`inspect_asm`), so that a change in code shape, numba or LLVM that loses the SIMD
dot-product instructions is visible.

    python benchmarks/asm_check.py [--require]                # this machine's target (x86-64: AVX2)
    bash .ci/arm/asm_check.sh                                  # x86-64 and aarch64 (cortex-a76, qemu)
    python benchmarks/asm_check.py --arm-ir [--cpu cortex-a76] # simd/neon.py's kernels compiled for
                                                               # an aarch64 CPU by llvmlite, on any host

Kernels: on x86-64 with AVX2 (simd.PATH == "avx2") the explicit-SIMD kernels of simd/avx2.py,
one LLVM function per weight type (Q4_0, Q8_0, Q4_K, Q5_K, Q6_K; read from the driver's assembly
by their labels), and the prompt GEMM of simd/avx2_gemm.py (its 32- and 16-value sub-block tiles); on aarch64 with dotprod (simd.PATH == "neon") those of simd/neon.py; otherwise the scalar decode drivers of Q8_0 (quants/q8_0.py), Q4_0 (q4_0.py),
Q4_K and Q6_K (kquants.py via unpacked.py), compiled for one token. Counted, per kernel:
  x86-64   vpmaddwd (int16 pairs -> int32: the AVX2 form of the block dots), vpmaddubsw (u8 x s8),
           vpdpbusd / vpdpwssd (AVX512-VNNI / AVX-VNNI), vpmovsxbw (int8 -> int16 widening),
           vpmulld (a 32-bit multiply per lane: the dot product was not matched)
  aarch64  sdot / udot (ARMv8.2 dot product, 4 int8 products per int32 lane), smmla (i8mm),
           smull(2) / smlal(2) (widening int8/int16 multiplies), saddlp / sadalp / saddw(2) /
           saddl(2) / saddlv (widening adds of the products), sxtl / sshll (widening), mul on
           vector registers
--require exits 1 when the expected instruction is missing: on the AVX2 path vpmaddubsw or vpdpbusd
for every type; on the NEON path sdot for every type (with --arm-ir: exactly 2 per 32-block and
token, 1-4 tokens); on the scalar path, for the kernels whose operands are int8 (Q8_0, Q4_0),
vpmaddwd (or VNNI) on x86-64, sdot on aarch64 (so: for a target with dotprod, e.g.
NUMBA_CPU_NAME=cortex-a76).
"""
from __future__ import annotations

import argparse
import atexit
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path

# Code loaded from numba's on-disk cache cannot be inspected: compile into a fresh cache.
os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="edgeqwen-asm-")
atexit.register(shutil.rmtree, os.environ["NUMBA_CACHE_DIR"], True)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gguf            # noqa: E402
import numba           # noqa: E402
import numpy as np     # noqa: E402

from edgeqwen import simd   # noqa: E402
from edgeqwen.quants import QuantizedActivation, Weight, kquants, q4_0, q8_0   # noqa: E402

T = gguf.GGMLQuantizationType
X86 = ("vpmaddwd", "vpmaddubsw", "vpdpbusd", "vpdpwssd", "vpmovsxbw", "vpmulld")
ARM = ("sdot", "udot", "smmla", "smull", "smull2", "smlal", "smlal2", "saddlp", "sadalp", "saddw", "saddw2",
       "saddl", "saddl2", "saddlv", "sxtl", "sshll", "mul.v")
# kernel name -> (weight type, dispatcher, operands int8 on both sides)
KERNELS = {"Q8_0": (T.Q8_0, q8_0.matmul_q8_0, True), "Q4_0": (T.Q4_0, q4_0.matmul_q4_0, True),
           "Q4_K": (T.Q4_K, kquants.matmul_q4_k, False), "Q6_K": (T.Q6_K, kquants.matmul_q6_k, False)}


def compile_kernel(qtype: T) -> None:
    """Run the decode path once (one token, K = 512) on random blocks: numba compiles it."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n, k = 32, 512
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (n, k // block * size), dtype=np.uint8)
    raw[:, 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)   # some finite scale
    raw.flags.writeable = False                                          # as the file's mmap
    w = Weight("w", qtype, (n, k), raw)
    x = rng.standard_normal((1, k)).astype(np.float32)
    w.matmul(x, np.empty((1, n), np.float32), QuantizedActivation(1, k).quantize(x))


def mnemonics(asm: str) -> list[tuple[str, str]]:
    """(mnemonic, the whole line) of every instruction line; vector `mul` on aarch64 as 'mul.v'."""
    out = []
    for line in asm.splitlines():
        s = line.strip()
        if not s or s.endswith(":") or s.startswith((".", "#", "//", ";")):
            continue
        parts = s.split()
        if parts[0].startswith("{") and len(parts) > 1:     # an encoding prefix: {vex} vpdpbusd ...
            parts = parts[1:]
        op = parts[0].lower()
        if op == "mul" and re.search(r"\bv\d+\.", s):
            op = "mul.v"
        out.append((op, s))
    return out


def target() -> str:
    import llvmlite.binding as ll

    name = numba.config.CPU_NAME or ll.get_host_cpu_name()
    feats = numba.config.CPU_FEATURES or ""
    return f"{ll.get_process_triple()} cpu={name}" + (f" features={feats}" if feats else "")


def simd_kernel_asm(qtype: T) -> str:
    """The assembly of one type's SIMD kernel (one row, one token), compiled alone: in the drivers
    the kernels are inlined into one function with all the others."""
    from numba import njit

    dot = getattr(simd.kernels, f"dot_{qtype.name.lower()}")

    @njit
    def one_row(w, xq, xd, xs, out):
        dot(w, 0, xq, xd, xs, 0, 1, out)

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    k = 512
    one_row(np.zeros((1, k // block * size), np.uint8), np.zeros((1, k), np.int8), np.zeros((1, k // 32), np.float32),
            np.zeros((1, k // 32), np.int32), np.zeros((1, 1), np.float32))
    return "\n".join(one_row.inspect_asm().values())


def report(label: str, ins: list[tuple[str, str]], names, examples: int) -> dict[str, int]:
    """Print the counts of `names` among the instructions `ins` (and a few example lines)."""
    counts = {n: sum(1 for op, _ in ins if op == n) for n in names}
    shown = ", ".join(f"{n} {c}" for n, c in counts.items() if c) or "none of them"
    print(f"{label}, {len(ins)} instructions): {shown}")
    for n, c in counts.items():
        for _, line in [x for x in ins if x[0] == n][:examples if c else 0]:
            print(f"        {line}")
    return counts


def check_simd(a) -> list[str]:
    """The SIMD paths: every type's kernel needs vpmaddubsw (or VNNI's vpdpbusd) on AVX2, sdot on
    NEON."""
    neon = simd.PATH == "neon"
    missing = []
    for qtype in (T.Q4_0, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K):
        counts = report(f"{qtype.name:5s} (simd/{simd.PATH}.py dot_{qtype.name.lower()}",
                        mnemonics(simd_kernel_asm(qtype)), ARM if neon else X86, a.examples)
        if neon:
            if not counts["sdot"]:
                missing.append(f"{qtype.name}: no sdot")
        elif not (counts["vpmaddubsw"] or counts["vpdpbusd"]):
            missing.append(f"{qtype.name}: neither vpmaddubsw nor vpdpbusd")
    if simd.gemm_kernels is not None:                # the prompt GEMM's tile kernels (SB 32 and 16)
        for qtype in (T.Q4_0, T.Q6_K):
            counts = report(f"{qtype.name:5s} (simd/avx2_gemm.py gemm, prompt tile", mnemonics(gemm_asm(qtype)),
                            X86, a.examples)
            if not (counts["vpmaddubsw"] or counts["vpdpbusd"]):
                missing.append(f"prompt GEMM {qtype.name}: neither vpmaddubsw nor vpdpbusd")
    return missing


def gemm_asm(qtype: T) -> str:
    """The assembly of the prompt GEMM's driver for one type (its tile kernels are inlined)."""
    from edgeqwen.quants.common import F16_TABLE

    g, code = simd.gemm_kernels, int(qtype)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    k, t = 256, 5
    g.gemm(code, np.zeros((8, k // block * size), np.uint8), np.zeros((t, k), np.int8),
           np.zeros((t, k // 32), np.float32), np.zeros((t, k // g.sub_block(code)), g.sums_dtype(code)),
           np.zeros((t, 8), np.float32), np.zeros(65536, np.float32))
    return "\n".join(g.gemm.inspect_asm().values())


def loop_body(asm: str) -> list[tuple[str, str]]:
    """The instructions of the innermost loop (a label to the branch back to it) of one function."""
    lines = [s.strip() for s in asm.splitlines()]
    labels = {s[:-1]: i for i, s in enumerate(lines) if s.endswith(":")}
    best = None
    for i, s in enumerate(lines):
        parts = s.split()
        if len(parts) >= 2 and parts[0].startswith("b") and parts[-1] in labels and labels[parts[-1]] < i:
            start = labels[parts[-1]]
            if best is None or i - start < best[1] - best[0]:
                best = (start, i)
    return mnemonics("\n".join(lines[best[0]:best[1] + 1])) if best else []


def check_arm_ir(a) -> list[str]:
    """simd/neon.py's kernels (the IR numba would get) optimized and compiled for an aarch64 CPU
    by llvmlite's own AArch64 target, on any host: nothing runs, so no aarch64 machine or qemu
    is needed. Per type and token count: sdot in the block loop, and its instructions per
    32-block and token."""
    import llvmlite.binding as ll

    from edgeqwen.simd import neon
    ll.initialize_all_targets()
    ll.initialize_all_asmprinters()
    triple = "aarch64-unknown-linux-gnu"
    if not simd.llvm_has_sdot(a.cpu, "", triple):
        print(f"{a.cpu}: LLVM forms no sdot for this CPU; its kernels would abort the process. Not compiled.")
        return [f"{a.cpu} has no dotprod"]
    tm = ll.Target.from_triple(triple).create_target_machine(cpu=a.cpu, features="", opt=3)
    print(f"target: {triple} cpu={a.cpu} (llvmlite {ll.llvm_version_info}, O3 pipeline, nothing executed)")
    missing = []
    for code in neon.CODES:
        per_iter = 8 if neon.SUPER[code] else 1            # 32-blocks per loop iteration
        row = []
        for nt in range(1, neon.MAX_TOKENS + 1):
            mod = ll.parse_assembly(neon.kernel_ir(code, nt))
            mod.verify()
            pb = ll.create_pass_builder(tm, ll.create_pipeline_tuning_options(speed_level=3))
            pb.getModulePassManager().run(mod, pb)
            body = loop_body(tm.emit_assembly(mod))
            n_sdot = sum(1 for op, _ in body if op == "sdot")
            row.append(f"T={nt}: {len(body)} ins/iter, sdot {n_sdot}, {len(body) / (per_iter * nt):.1f} ins per block-token")
            if n_sdot != 2 * per_iter * nt:
                missing.append(f"{neon.NAMES[code]} x{nt}: {n_sdot} sdot in the loop, want {2 * per_iter * nt}")
        print(f"{neon.NAMES[code].upper():5s} ({per_iter} 32-block{'s' if per_iter > 1 else ''}/iter): " + "; ".join(row))
    return missing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--require", action="store_true", help="fail when the expected dot instruction is missing")
    ap.add_argument("--examples", type=int, default=2, help="example lines per instruction")
    ap.add_argument("--arm-ir", action="store_true",
                    help="compile simd/neon.py's kernels for an aarch64 CPU with llvmlite (any host, nothing runs)")
    ap.add_argument("--cpu", default="cortex-a76", help="the aarch64 CPU for --arm-ir")
    a = ap.parse_args(argv)
    if a.arm_ir:
        missing = check_arm_ir(a)
        if missing:
            print("MISSING: " + "; ".join(missing))
        return 1 if (missing and a.require) else 0
    arm = platform.machine().lower() in ("aarch64", "arm64")
    names = ARM if arm else X86
    print(f"target: {target()}; kernels: {simd.describe()}")
    if simd.PATH in ("avx2", "neon"):
        missing = check_simd(a)
        if missing:
            print("MISSING: " + "; ".join(missing))
        return 1 if (missing and a.require) else 0
    missing = []
    for kname, (qtype, disp, int8_both) in KERNELS.items():
        compile_kernel(qtype)
        asm = "\n".join(disp.inspect_asm().values())
        counts = report(f"{kname:5s} ({disp.py_func.__module__.split('.')[-1]}.{disp.__name__}",
                        mnemonics(asm), names, a.examples)
        if int8_both:
            want = ("sdot",) if arm else ("vpmaddwd", "vpmaddubsw", "vpdpbusd", "vpdpwssd")
            if not any(counts.get(n) for n in want):
                missing.append(f"{kname}: none of {', '.join(want)}")
    if missing:
        print("MISSING: " + "; ".join(missing))
    return 1 if (missing and a.require) else 0


if __name__ == "__main__":
    sys.exit(main())
