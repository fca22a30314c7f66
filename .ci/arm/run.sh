#!/usr/bin/env bash
# The aarch64 test job: an emulated aarch64 Python (qemu-user, no ARM hardware needed; set up by
# setup.sh) runs the ARM subset of the suite, tests/test_arm_subset.py and tests/test_cpu.py:
#   * every supported weight type's matmul kernel against gguf-py,
#   * the tiny fixture's forward against the x86 reference values (made here on x86 by
#     tests/arm_reference.py: transformers' logits, the numpy forward), tokenizer round trips,
#     one `edgeqwen run` in a subprocess,
#   * CPU feature reporting (NEON/dotprod/i8mm from AT_HWCAP) and the default thread count.
# numba's compilation dominates under emulation (~20-40 s per kernel), so the tests run as two
# processes side by side: most weight types' kernels, and the rest with the F32/Q8_0/Q4_0
# kernels that the forward compiles anyway (and BF16's, for balance: ~4-5 min each, cold).
# The second compiles for the Raspberry Pi 5's core (NUMBA_CPU_NAME=cortex-a76; qemu's CPU has
# dotprod), so the NEON `sdot` kernels of simd/neon.py run (Q8_0/Q4_0 kernels, the forward, the
# CLI); the first for generic ARMv8-A (LLVM does not recognize qemu's CPU and reports no dotprod
# for it), the Pi 4's kind of code: the scalar fallback, chosen before compiling (its
# tests/test_simd_neon.py "fallback" tests: this process and a cortex-a72 child, no SIGABRT).
# A third process, cortex-a76 again, runs tests/test_simd_neon.py: every NEON kernel against
# gguf-py and the scalar kernels (~5.5 CPU-minutes cold under qemu). Exit status: non-zero when
# any fails or exceeds EDGEQWEN_ARM_TIMEOUT seconds (default 1500: three processes share 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
ARM=${EDGEQWEN_ARM_CACHE:-$HOME/.cache/edgeqwen-arm}
PY=${PYTHON:-python}
TIMEOUT=${EDGEQWEN_ARM_TIMEOUT:-1500}
start=$(date +%s)

bash .ci/arm/setup.sh
setup_done=$(date +%s)

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if ! HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error \
        "$PY" tests/arm_reference.py "$WORK/ref" >"$WORK/ref.log" 2>&1; then
    cat "$WORK/ref.log"; exit 1
fi
ref_done=$(date +%s)

EXEC="qemu-aarch64-static -L $ARM/root"
echo "== aarch64 tests (emulated: $EXEC)"
arm_pytest() {    # log name, NUMBA_CPU_NAME ("" = LLVM's choice), pytest arguments...
    local log="$WORK/$1.log" cpu=$2; shift 2
    # NUMBA_CACHE_DIR: the compiled kernels are shared by the tests, the CLI subprocess and later runs
    env PYTHONPATH="$ARM/site:$PWD" NUMBA_CACHE_DIR="$ARM/numba" EDGEQWEN_CACHE="$ARM/edgeqwen" \
        ${cpu:+NUMBA_CPU_NAME=$cpu} \
        EDGEQWEN_ARM_REFERENCE="$WORK/ref" EDGEQWEN_ARM_EXEC="$EXEC" \
        timeout "$TIMEOUT" $EXEC "$ARM/root/usr/bin/python3.11" \
        -m pytest -q -p no:cacheprovider --durations=5 "$@" >"$log" 2>&1
}
SHARED="F32 or Q8_0 or Q4_0 or BF16"
arm_pytest kernels "" tests/test_arm_subset.py tests/test_simd_neon.py \
    -k "(kernel and not ($SHARED) and not neon) or fallback" &
kernels=$!
arm_pytest model cortex-a76 tests/test_arm_subset.py tests/test_cpu.py -k "not kernel or $SHARED" &
model=$!
arm_pytest neon cortex-a76 tests/test_simd_neon.py -k "not fallback" &
neon=$!
status=0
wait "$kernels" || status=$?
wait "$model" || { s=$?; [ "$status" = 0 ] && status=$s; }
wait "$neon" || { s=$?; [ "$status" = 0 ] && status=$s; }
echo "-- kernels (generic ARMv8-A: scalar fallback)"; cat "$WORK/kernels.log"
echo "-- model (NUMBA_CPU_NAME=cortex-a76: NEON sdot kernels)"; cat "$WORK/model.log"
echo "-- neon kernels (NUMBA_CPU_NAME=cortex-a76)"; cat "$WORK/neon.log"
[ "$status" = 124 ] && echo "aarch64 tests: timed out after $TIMEOUT s"
end=$(date +%s)
echo "aarch64 job: setup $((setup_done - start)) s, x86 reference values $((ref_done - setup_done)) s," \
     "emulated tests $((end - ref_done)) s, total $((end - start)) s"
exit "$status"
