#!/usr/bin/env bash
# Fuzzes every parser that reads outside input (fuzz/fuzz_targets/) for RUNS executions each
# (default 1,000,000), one after another, then minimises each corpus. Needs the nightly
# toolchain and cargo-fuzz (`cargo install cargo-fuzz`). A crash stops the run and leaves its
# input in fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/ (the replay test then
# runs it on stable), fix, and run again. Each target's result is added to fuzz/last-run.txt.
#
#   scripts/fuzz.sh [RUNS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
runs=${1:-1000000}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(gguf gguf_structured safetensors index config masks recipe tokenizer)
# Built once, then the binaries run directly, so editing the sources meanwhile changes nothing.
cargo +nightly fuzz build -O
bin=target/x86_64-unknown-linux-gnu/release
for t in "${targets[@]}"; do
  start=$(date +%s)
  log=$(mktemp)
  mkdir -p "artifacts/$t"
  "$bin/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" -runs="$runs" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 \
    || { tail -40 "$log"; echo "$t: CRASH (see fuzz/artifacts/$t)" | tee -a last-run.txt; exit 1; }
  execs=$(grep -oP 'stat::number_of_executed_units:\s*\K[0-9]+' "$log" | tail -1)
  cov=$(grep -oP 'cov: \K[0-9]+' "$log" | tail -1)
  secs=$(( $(date +%s) - start ))
  # Keep the smallest set of inputs that covers what the run reached.
  rm -rf "corpus/$t.min" && mkdir "corpus/$t.min"
  "$bin/$t" -merge=1 "corpus/$t.min" "corpus/$t" >/dev/null 2>&1 && rm -rf "corpus/$t" && mv "corpus/$t.min" "corpus/$t"
  files=$(ls "corpus/$t" | wc -l)
  echo "$(date -u +%F) $t: $execs executions in ${secs} s, 0 crashes, coverage $cov edges, corpus $files files" | tee -a last-run.txt
  rm -f "$log"
done
