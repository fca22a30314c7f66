#!/usr/bin/env bash
# The SIMD instructions of the matmul kernels' block dots for both targets: x86-64 (this
# machine) and aarch64 for the Raspberry Pi 5's core (NUMBA_CPU_NAME=cortex-a76: NEON + dotprod),
# compiled by the emulated aarch64 numba (setup.sh; on the NEON path: simd/neon.py's kernels, sdot
# required for every type), and those kernels' IR compiled for the same core by the host's
# llvmlite (instructions per block and token; exactly 2 sdot per 32-block and token required).
# Pass --require to fail on a regression.
set -euo pipefail
cd "$(dirname "$0")/../.."
ARM=${EDGEQWEN_ARM_CACHE:-$HOME/.cache/edgeqwen-arm}
PY=${PYTHON:-python}
bash .ci/arm/setup.sh
echo "== x86-64"
"$PY" benchmarks/asm_check.py "$@"
echo "== aarch64 (${ARM_CPU:=cortex-a76})"
env PYTHONPATH="$ARM/site:$PWD" NUMBA_CPU_NAME="$ARM_CPU" \
    qemu-aarch64-static -L "$ARM/root" "$ARM/root/usr/bin/python3.11" benchmarks/asm_check.py "$@"
echo "== aarch64 NEON kernels' IR (host llvmlite, $ARM_CPU)"
"$PY" benchmarks/asm_check.py --arm-ir --cpu "$ARM_CPU" "$@"
