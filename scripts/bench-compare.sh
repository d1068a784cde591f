#!/usr/bin/env bash
# On the GPU machine: two builds' benchmarks alternating in one call, so drift of the card and
# the host falls on both alike. Each round runs the baseline build's birdbone-bench once and
# then the candidate's, one timed run per path each (after its warm-up); the table gives each
# path's median over the rounds and the candidate's change.
#   scripts/bench-compare.sh BASELINE_DIR CANDIDATE_DIR [ROUNDS] [birdbone-bench options]
# Each DIR holds a birdbone-bench and the plugin .so files, as scripts/stage-gpu.sh stages them
# (stage the baseline from an older checkout into another folder, e.g. .device-old).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
base="$1" cand="$2" rounds="${3:-9}"
shift $(( $# < 3 ? $# : 3 ))
TORCH=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')
export LD_LIBRARY_PATH="$TORCH/lib:$(dirname "$TORCH")/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
out=$(mktemp -d)
nvidia-smi --query-gpu=name --format=csv,noheader
for ((r = 1; r <= rounds; r++)); do
  for side in base cand; do
    dir=$([ "$side" = base ] && echo "$base" || echo "$cand")
    BIRDBONE_KERNEL_CACHE="$dir/kernels" "$dir/birdbone-bench" --plugins "$dir" --runs 1 "$@" \
      > "$out/$side-$r.md"
  done
  echo "round $r of $rounds done"
done
python3 - "$out" "$rounds" <<'PY'
import statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
times = {}
for side in ("base", "cand"):
    for r in range(1, rounds + 1):
        for line in open(f"{out}/{side}-{r}.md"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 8 and cells[0] not in ("path", "---") and not cells[0].startswith("-"):
                times.setdefault((cells[0], cells[1]), {}).setdefault(side, []).append(float(cells[2]))
print(f"| path | via | baseline median ms | candidate median ms | change |\n| --- | --- | ---: | ---: | ---: |")
for (path, via), t in times.items():
    b, c = statistics.median(t["base"]), statistics.median(t["cand"])
    print(f"| {path} | {via} | {b:.2f} | {c:.2f} | {100 * (c - b) / b:+.1f}% |")
PY
