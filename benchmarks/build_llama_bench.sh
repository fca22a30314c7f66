#!/usr/bin/env bash
# Build llama.cpp's own `llama-bench`, natively, from the llama.cpp vendored in the
# llama-cpp-python sdist (the same llama.cpp the `llama_cpp` wheel runs), and print its path.
#
#   benchmarks/build_llama_bench.sh [DEST]
#
# DEST (default: ${EDGEQWEN_CACHE:-${XDG_CACHE_HOME:-~/.cache}/edgeqwen}/llama-bench) receives
#   DEST/llama_cpp_python-<version>.tar.gz                                  (pip download, sdist)
#   DEST/llama_cpp_python-<version>/vendor/llama.cpp/build/bin/llama-bench  (the binary; build-noamx/
#                                                     on an AMX CPU, see below)
# <version> is the installed llama-cpp-python's, else 0.3.36; override with LLAMA_CPP_PYTHON_VERSION.
# Build the way llama.cpp's README does for a CPU build:
#   cmake -B build -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF
#   cmake --build build --target llama-bench -j JOBS
# On a CPU that advertises Intel AMX (amx_tile in /proc/cpuinfo) the build adds
#   -DCMAKE_C_FLAGS/-DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
# into build-noamx/ instead of build/: with -march=native, ggml's AMX matmul (ggml-cpu/amx) dies
# with SIGILL at its first `tilezero` (seen with this llama.cpp on a Sapphire Rapids VM, where a
# plain C program's ldtilecfg + tilezero work; the tile configuration does not reach the worker
# threads, cf. llama.cpp pull request 26954), and so does the llama-cpp-python wheel built from
# source on such a machine. LLAMA_BENCH_AMX=1 keeps AMX (build/), LLAMA_BENCH_AMX=0 drops it anywhere.
# JOBS defaults to nproc (set JOBS=1 on a busy machine). Idempotent: an existing binary is reused
# as is; an existing download, unpacked tree or partial build is reused and the build resumed.
# Progress goes to stderr; stdout gets only the binary's absolute path.
# Then: python benchmarks/compare_llama_cpp.py -m FILE.gguf --llama-bench "$(benchmarks/build_llama_bench.sh)"
set -euo pipefail

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python
DEST=${1:-${EDGEQWEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeqwen}/llama-bench}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-$("$PYTHON" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null || echo 0.3.36)}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
SRC="$DEST/llama_cpp_python-$VERSION"
LLAMA="$SRC/vendor/llama.cpp"
AMX=${LLAMA_BENCH_AMX:-auto}
if [ "$AMX" = auto ]; then
    if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then AMX=0; else AMX=1; fi
fi
if [ "$AMX" = 0 ]; then
    BUILD="$LLAMA/build-noamx"
    XFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
else
    BUILD="$LLAMA/build"
    XFLAGS=""
fi
BIN="$BUILD/bin/llama-bench"
log() { echo "build_llama_bench: $*" >&2; }

if [ -x "$BIN" ]; then
    log "reusing $BIN"
    echo "$BIN"
    exit 0
fi

for tool in cmake cc c++; do
    command -v "$tool" >/dev/null 2>&1 || { log "needs $tool (e.g. apt-get install cmake build-essential)"; exit 1; }
done

if [ ! -f "$LLAMA/CMakeLists.txt" ]; then
    TARBALL="$DEST/llama_cpp_python-$VERSION.tar.gz"
    if [ ! -f "$TARBALL" ]; then
        log "downloading the llama-cpp-python $VERSION sdist into $DEST"
        # --no-binary for this package only: with ":all:" pip would also build the sdist's build
        # dependencies (scikit-build-core, cmake itself) from source to prepare its metadata.
        "$PYTHON" -m pip download --no-binary llama-cpp-python --no-deps -d "$DEST" "llama-cpp-python==$VERSION" >&2
    fi
    [ -f "$TARBALL" ] || { log "pip download did not produce $TARBALL"; exit 1; }
    log "unpacking $TARBALL"
    tar -xzf "$TARBALL" -C "$DEST"
    [ -f "$LLAMA/CMakeLists.txt" ] || { log "no vendor/llama.cpp in $TARBALL"; exit 1; }
fi

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    log "configuring $BUILD${XFLAGS:+ (without AMX: $XFLAGS)}"
    cmake -S "$LLAMA" -B "$BUILD" -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
        ${XFLAGS:+"-DCMAKE_C_FLAGS=$XFLAGS" "-DCMAKE_CXX_FLAGS=$XFLAGS"} >&2
fi
log "building llama-bench with $JOBS jobs (a few minutes)"
cmake --build "$BUILD" --target llama-bench -j "$JOBS" >&2
[ -x "$BIN" ] || { log "build finished but $BIN is missing"; exit 1; }
echo "$BIN"
