#!/usr/bin/env bash
# Builds the `birdbone` Python package (python/: pyo3 + maturin) in release mode and installs it
# into the checkout's .venv, with pytest for tests/python. Idempotent: a second run is a no-op
# cargo build and a reinstall of the same files (seconds). scripts/test.sh runs it.
#
# The native module is built against the .venv's torch (LIBTORCH_USE_PYTORCH=1 from
# scripts/env.sh) into target/python, apart from the workspace's target/: it is the only
# library that links libtorch_python, and a build of it never invalidates the workspace's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh

# maturin builds and installs the module; pytest runs tests/python; accelerate is what
# transformers' Trainer requires (the callback's tests and example; the GPU machine's image has
# 1.15 too). Pinned, like the rest of the .venv.
MATURIN=1.16.0
PYTEST=8.4.2
ACCELERATE=1.15.0
have() { .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }
have maturin "$MATURIN" || .venv/bin/pip install --quiet --disable-pip-version-check "maturin==$MATURIN"
have pytest "$PYTEST" || .venv/bin/pip install --quiet --disable-pip-version-check "pytest==$PYTEST"
have accelerate "$ACCELERATE" || .venv/bin/pip install --quiet --disable-pip-version-check "accelerate==$ACCELERATE"

export VIRTUAL_ENV="$BIRDBONE_ROOT/.venv"
export CARGO_TARGET_DIR="$BIRDBONE_ROOT/target/python"
export PYO3_PYTHON="$BIRDBONE_ROOT/.venv/bin/python"
# An editable install: the .venv finds python/birdbone, and the native module beside it. Its
# one dependency, torch, is already in the .venv, so nothing is fetched.
# Its output (pip's, cargo's) is shown only when it fails.
log="$CARGO_TARGET_DIR/maturin-develop.log"
mkdir -p "$CARGO_TARGET_DIR"
if ! (cd python && "$BIRDBONE_ROOT/.venv/bin/maturin" develop --release) >"$log" 2>&1; then
  cat "$log" >&2
  echo "python/install.sh: building the birdbone Python package failed (log above: $log)" >&2
  exit 1
fi
.venv/bin/python -c 'import birdbone, torch; print("== birdbone Python package installed (torch", torch.__version__ + ")")'
