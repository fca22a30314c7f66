#!/usr/bin/env bash
# An emulated aarch64 Python 3.11 with edgeqwen's dependencies (recipe: docs ARM.md), for the
# aarch64 test job. Idempotent and cached: the first run takes a few minutes, a re-run with
# the same package list a second. Prints the variables the other scripts need.
#   EDGEQWEN_ARM_CACHE   cache root (default ~/.cache/edgeqwen-arm)
# Layout under the cache root:  root/ (Debian bookworm arm64 files: python3.11, libc, ...),
#   site/ (aarch64 wheels installed with pip --target), lists/ debs/ (apt state), stamp
set -euo pipefail
cd "$(dirname "$0")/../.."
ARM=${EDGEQWEN_ARM_CACHE:-$HOME/.cache/edgeqwen-arm}
PY=${PYTHON:-python}
mkdir -p "$ARM"

# Debian arm64 packages of the interpreter and the shared libraries it and the wheels load.
DEBS="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g libffi8 libssl3
  libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libncursesw6 libtinfo6 libreadline8 libgcc-s1 libstdc++6 libcrypt1
  libdb5.3 libgdbm6 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libcom-err2 libkrb5support0
  libkeyutils1 media-types libzstd1 libgomp1"

# edgeqwen's runtime dependencies (pyproject.toml) plus the test runner, pinned to the versions
# of the x86 environment when they are installed there (same numba/LLVM, same gguf-py reference).
PKGS="numpy numba llvmlite gguf tokenizers jinja2 click safetensors tqdm threadpoolctl pytest hypothesis"
REQS=$("$PY" - $PKGS <<'PY'
import sys
from importlib import metadata
for name in sys.argv[1:]:
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(name)
PY
)
KEY=$(printf '%s\n' "v1" "$DEBS" "$REQS" | sha256sum | cut -c1-16)

if ! command -v qemu-aarch64-static >/dev/null; then
    echo "arm setup: installing qemu-user-static (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq qemu-user-static >/dev/null
fi

if [ "$(cat "$ARM/stamp" 2>/dev/null)" != "$KEY" ]; then
    t0=$(date +%s)
    rm -rf "$ARM/root" "$ARM/site" "$ARM/debs" "$ARM/stamp"
    mkdir -p "$ARM/debs" "$ARM/root" "$ARM/lists/partial" "$ARM/site"
    o=(-qq -oAPT::Architecture=arm64 -oAPT::Architectures=arm64 -oDir::State::Lists="$ARM/lists"
       -oAPT::Sandbox::User=root)
    echo "arm setup: Debian arm64 packages"
    apt-get "${o[@]}" update
    # shellcheck disable=SC2086
    (cd "$ARM/debs" && apt-get "${o[@]}" download $DEBS)
    for f in "$ARM"/debs/*.deb; do dpkg -x "$f" "$ARM/root"; done
    echo "arm setup: aarch64 wheels:" $REQS
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-compile --target "$ARM/site" \
        --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
        --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
        --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 $REQS
    # byte-compile on the host (same bytecode): under emulation every import would compile again
    # (or be slower still with PYTHONDONTWRITEBYTECODE)
    "$PY" -m compileall -q -j0 "$ARM/site" "$ARM/root/usr/lib/python3.11" >/dev/null 2>&1 || true
    echo "$KEY" > "$ARM/stamp"
    echo "arm setup: done in $(( $(date +%s) - t0 )) s"
fi
