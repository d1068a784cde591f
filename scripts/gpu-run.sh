#!/usr/bin/env bash
# On the GPU machine, from the checkout with .device/ staged by scripts/stage-gpu.sh: the GPU
# tests, then the benchmark beside the PyTorch baseline on the same card.
#   scripts/gpu-run.sh tests | bench | all
#   scripts/gpu-run.sh rollback [--runs N]   (what rollback and undo cost a pass, 7B shapes)
#   scripts/gpu-run.sh sparsegpt [--pattern 2:4]   (SparseGPT and Wanda on 7B shapes, beside
#                                         bench/sparsegpt_reference.py; REF_BLOCKS=N limits it)
#   scripts/gpu-run.sh quality   (scripts/quality.sh on CUDA; staged by `stage-gpu.sh quality`)
#   scripts/gpu-run.sh finetune [birdbone-finetune options]   (staged by `stage-gpu.sh finetune`)
#   scripts/gpu-run.sh soak [birdbone-serve-soak options]   (staged by `stage-gpu.sh soak`)
#   scripts/gpu-run.sh python [pytest options]   (tests/python on CUDA; `stage-gpu.sh python`)
#   scripts/gpu-run.sh exec COMMAND...   (any command in this environment, e.g. a profiler over
#                                         .device/birdbone-bench; RUST_LOG=birdbone_tch::steps=trace
#                                         times each step of a pass)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TORCH=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')
export LD_LIBRARY_PATH="$TORCH/lib:$(dirname "$TORCH")/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
export BIRDBONE_MODEL_DIR="$PWD/.device/model"
# Kernels precompiled by stage-gpu.sh (another architecture compiles and adds its own file).
export BIRDBONE_KERNEL_CACHE="${BIRDBONE_KERNEL_CACHE:-$PWD/.device/kernels}"
what="${1:-all}"
if [ "$what" = exec ]; then
  exec "${@:2}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ "$what" = finetune ]; then
  cat .device-gguf/part-a .device/gguf-part-b > /tmp/model.gguf
  .device/birdbone import-gguf --overwrite /tmp/model.gguf /tmp/smollm2-135m || exit 1
  BIRDBONE_TEXT_DIR="$PWD/.device/text" .device/birdbone-finetune --model /tmp/smollm2-135m \
    --plugins .device "${@:2}"
  exit $?
fi
if [ "$what" = soak ]; then
  # Staged by `stage-gpu.sh soak`: the serving soak on the Mistral-7B shape (docs/serving.md).
  .device/birdbone-serve-soak --builtin .device "${@:2}"
  exit $?
fi
if [ "$what" = python ]; then
  # Staged by `stage-gpu.sh python`: tests/python on this machine's Python (CUDA and CPU).
  cat .device-gguf/part-a .device/gguf-part-b > /tmp/model.gguf
  mkdir -p target/release && tar xJf .device/bundle.tar.xz -C /tmp && cp /tmp/release/* target/release/
  cp /tmp/python/*.so python/birdbone/
  mkdir -p target/fixtures/debug && cp /tmp/fixtures/*.so target/fixtures/debug/
  target/release/birdbone import-gguf --overwrite /tmp/model.gguf /tmp/smollm2-135m >/dev/null || exit 1
  BIRDBONE_MODEL_DIR=/tmp/smollm2-135m BIRDBONE_TEXT_DIR="$PWD/.device/text" \
    BIRDBONE_PLUGIN_PATH="$PWD/target/release" PYTHONPATH="$PWD/python" \
    python3 -m pytest tests/python -q -rs "${@:2}"
  exit $?
fi
if [ "$what" = quality ]; then
  # Staged by `stage-gpu.sh quality`: the GGUF in two parts, as for finetune.
  cat .device-gguf/part-a .device/gguf-part-b > /tmp/model.gguf
  .device/birdbone import-gguf --overwrite /tmp/model.gguf /tmp/smollm2-135m >/dev/null || exit 1
  BIRDBONE=.device/birdbone BIRDBONE_TEXT_DIR="$PWD/.device/text" scripts/quality.sh /tmp/smollm2-135m cuda
  exit $?
fi
if [ "$what" = sparsegpt ]; then
  # SparseGPT on 7B shapes beside the reference on the same card: ours, then the reference
  # (the first --ref-blocks blocks; every block has the same shapes), then the masks of both
  # on the reference's own layer-0 Hessian.
  blocks="${REF_BLOCKS:-32}"
  .device/birdbone-bench --plugins .device --sparsegpt "${@:2}"
  .device/birdbone-bench --plugins .device --sparsegpt --method wanda "${@:2}"
  python3 bench/sparsegpt_reference.py --blocks "$blocks" --dump /tmp/sgdump "${@:2}"
  .device/birdbone-bench --plugins .device --sparsegpt --agree /tmp/sgdump "${@:2}"
  exit $?
fi
if [ "$what" = rollback ]; then
  .device/birdbone-bench --plugins .device --rollback "${@:2}"
  exit $?
fi
if [ "$what" = tests ] || [ "$what" = all ]; then
  echo "== GPU tests"
  .device/deps/integration gpu:: gpu_reconstruct:: allocation::cuda_ --test-threads=1 2>&1
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  echo "== Birdbone benchmark"
  .device/birdbone-bench --plugins .device "${@:2}"
  echo "== peak extra memory"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 .device/birdbone-bench --plugins .device --memory "${@:2}"
  # The copy staged beside the binaries, else the checkout's own.
  baseline=.device/torch_baseline.py
  [ -f "$baseline" ] || baseline=bench/torch_baseline.py
  echo "== PyTorch baseline (same card, same run)"
  python3 "$baseline" 32
fi
