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
# libtorch's OpenMP workers spin after every operation by default; a pass that interleaves many
# small operations with work of its own (SparseGPT's CPU sweep) then competes with them for the
# cores: on a busy 2-core machine a SmolLM2 2:4 pass took 296 s spinning and 22 s passive.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
