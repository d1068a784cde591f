#!/usr/bin/env bash
# The quality table's SparseGPT and RIA rows, each beside the reference algorithm written out in
# PyTorch (tests/reference/sparsegpt_ria.py) on the same model, text and device: one JSON line
# per run (`side` birdbone or reference) on stdout.
#
#   scripts/quality.sh MODEL_DIR [DEVICE]        (DEVICE: cpu or cuda; default cpu)
#
# BIRDBONE (the birdbone binary, default target/release/birdbone), PYTHON (default python3) and
# BIRDBONE_TEXT_DIR (the folder of wiki.utf8 and c4.utf8) may be set. The protocol is
# docs/quality.md's: calibration on the first 32 windows of 512 tokens of c4.utf8, block by
# block (sequential), perplexity on the first 64 windows of 512 tokens of wiki.utf8.
set -uo pipefail
model="$1"
device="${2:-cpu}"
birdbone="${BIRDBONE:-target/release/birdbone}"
python="${PYTHON:-python3}"
text="${BIRDBONE_TEXT_DIR:-.cache/wheels/exllamav2/conversion/standard_cal_data}"
ref="$(dirname "${BASH_SOURCE[0]}")/../tests/reference/sparsegpt_ria.py"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# name | birdbone prune flags | reference flags
runs=(
  "sparsegpt-50|--strategy sparsegpt --sparsity 0.5|--method sparsegpt --sparsity 0.5"
  "sparsegpt-60|--strategy sparsegpt --sparsity 0.6|--method sparsegpt --sparsity 0.6"
  "sparsegpt-70|--strategy sparsegpt --sparsity 0.7|--method sparsegpt --sparsity 0.7"
  "sparsegpt-2of4|--strategy sparsegpt --pattern 2:4|--method sparsegpt --pattern 2:4"
  "ria-50|--scorer ria --strategy layerwise --param strategy.scope=row --calibration-mode sequential --sparsity 0.5|--method ria --sparsity 0.5"
  "ria-2of4|--scorer ria --strategy nm --pattern 2:4 --calibration-mode sequential|--method ria --pattern 2:4"
)
for r in "${runs[@]}"; do
  IFS='|' read -r name ours theirs <<<"$r"
  # shellcheck disable=SC2086
  if "$birdbone" prune --quiet --model "$model" --device "$device" --out "$out/$name" $ours >/dev/null; then
    ppl=$("$birdbone" eval --quiet --json --model "$out/$name" --device "$device" \
      | "$python" -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])')
    echo "{\"side\": \"birdbone\", \"run\": \"$name\", \"ppl\": $ppl}"
  else
    echo "{\"side\": \"birdbone\", \"run\": \"$name\", \"error\": true}"
  fi
  rm -rf "${out:?}/$name"
  # The reference: the published rounding, and (SparseGPT) Birdbone's exact count per block.
  for exact in "" "--exact-count"; do
    [ -n "$exact" ] && [[ "$name" != sparsegpt* ]] && continue
    # shellcheck disable=SC2086
    line=$("$python" "$ref" --model "$model" --device "$device" --text-dir "$text" $theirs $exact)
    echo "{\"side\": \"reference\", \"run\": \"$name\", \"exact_count\": $([ -n "$exact" ] && echo true || echo false), \"result\": $line}"
  done
done
