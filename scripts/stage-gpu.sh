#!/usr/bin/env bash
# Builds (release) and copies into .device/ what a GPU machine without a Rust toolchain needs to
# run the GPU tests and the benchmark: the binaries, the plugin libraries, a slice of the real
# model (3 decoder blocks in bf16), and a copy of the PyTorch baseline script when one is beside
# the checkout (../shared/baselines). Pass .device to the machine and run scripts/gpu-run.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh
cargo build --release --quiet --workspace
test_bin=$(cargo test --release -p birdbone-tests --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*integration-[^"]*"' | head -n1 | cut -d'"' -f4)
rm -rf .device && mkdir -p .device/deps .device/model
cp "$test_bin" .device/deps/integration
cp target/release/birdbone target/release/birdbone-bench .device/
cp target/release/libbirdbone_plugin_*.so .device/
strip .device/deps/integration .device/birdbone .device/birdbone-bench .device/*.so

if [ -f .cache/smollm2-135m/model.safetensors ]; then
  .venv/bin/python - <<'PY'
import torch, json
from safetensors.torch import load_file, save_file
sd = load_file(".cache/smollm2-135m/model.safetensors")
keep = {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items() if any(f"layers.{i}." in k for i in range(3)) and v.dim() == 2}
save_file(keep, ".device/model/model.safetensors", metadata={"format": "pt"})
print(f"model slice: {len(keep)} tensors, {sum(v.numel() for v in keep.values())/1e6:.1f} M parameters")
PY
fi
[ -f ../shared/baselines/torch_prune_baseline.py ] && cp ../shared/baselines/torch_prune_baseline.py .device/
du -sh .device
