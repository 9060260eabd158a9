#!/usr/bin/env bash
# A longer fuzz run than CI's 30 s smoke runs (docs/benchmarks.md, "Fuzzing"): every cargo-fuzz
# target, or those named, for SECONDS each, from the seeds in fuzz/corpus/<target> on a scratch
# copy (what libFuzzer adds stays out of the tree), one after the other. Prints one summary line
# per target: runs, exec/s, coverage (edges) and features at the end, and how many new inputs
# the corpus gained. A crash stops the script with libFuzzer's report and the input under
# fuzz/artifacts/<target>/.
#   scripts/fuzz-long.sh [SECONDS=600] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
cargo +nightly fuzz build
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
printf '%-20s %12s %8s %8s %8s %10s\n' target runs exec/s cov ft corpus+
for target in "${targets[@]}"; do
  corpus=$(mktemp -d)
  cp fuzz/corpus/"$target"/* "$corpus"/
  seeds=$(find "$corpus" -type f | wc -l)
  log=$(mktemp)
  if ! cargo +nightly fuzz run "$target" "$corpus" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -60 "$log"
    rm -rf "$corpus"
    exit 1
  fi
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  rate=$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}')
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  grown=$(( $(find "$corpus" -type f | wc -l) - seeds ))
  printf '%-20s %12s %8s %8s %8s %10s\n' "$target" "$runs" "$rate" "$cov" "$ft" "$grown"
  rm -rf "$corpus" "$log"
done
