#!/usr/bin/env bash
# Builds the native module for another CPython minor of the same torch 2.11 than the .venv's,
# for a machine that has that Python and torch but no Rust toolchain (the GPU machine: 3.12).
#
#   python/build-for.sh 3.12 target/python312    -> target/python312/release/lib_birdbone.so
#
# Install it there as birdbone/_birdbone.cpython-312-x86_64-linux-gnu.so. pyo3 is configured
# for the target version by a config file (it links no libpython); torch-sys's small C++ shim
# over libtorch_python is compiled with the .venv's CPython headers, which is sound only because
# its inline parts touch nothing of Python but the object header (PyObject_HEAD), whose layout
# is the same from 3.11 to 3.13; the rest are calls into the running libtorch_python.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh
version="${1:?python/build-for.sh VERSION TARGET_DIR}"
target="${2:?python/build-for.sh VERSION TARGET_DIR}"
mkdir -p "$target"
cat > "$target/pyo3-$version.cfg" <<CFG
implementation=CPython
version=$version
shared=true
abi3=false
lib_name=python$version
pointer_width=64
suppress_build_script_link_lines=false
CFG
export CARGO_TARGET_DIR="$PWD/$target" PYO3_CONFIG_FILE="$PWD/$target/pyo3-$version.cfg"
(cd python && cargo build --release --quiet)
echo "built $target/release/lib_birdbone.so for CPython $version"
