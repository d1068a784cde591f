# Sourced by the other scripts: the project's virtualenv python first on PATH, so tch's build
# finds the libtorch of the torch==2.11.0 wheel installed there.
BIRDBONE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export BIRDBONE_ROOT
export LIBTORCH_USE_PYTORCH=1
export PATH="$BIRDBONE_ROOT/.venv/bin:$PATH"
export LIBTORCH_BYPASS_VERSION_CHECK="${LIBTORCH_BYPASS_VERSION_CHECK:-0}"
TORCH_LIB="$BIRDBONE_ROOT/.venv/lib/python3.11/site-packages/torch/lib"
if [ -d "$BIRDBONE_ROOT/.venv/lib" ]; then
  TORCH_LIB="$(ls -d "$BIRDBONE_ROOT"/.venv/lib/python3*/site-packages/torch/lib 2>/dev/null | head -n1)"
fi
# NVRTC (for the CUDA kernels, compiled at run time) comes with the wheel's nvidia packages.
NVIDIA_LIB="$(dirname "$(dirname "$TORCH_LIB")")/nvidia/cu13/lib"
export LD_LIBRARY_PATH="$TORCH_LIB:$NVIDIA_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
