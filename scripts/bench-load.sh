#!/usr/bin/env bash
# Concurrent real builds through one broker (issue 10, item 4): N `docker buildx build`s at
# once, each with its own `--secret`, its own `client-env:` policy secret and an ssh mount from
# a broker-held key, through one release-built `buildbroker serve` to the test bed's dockerd.
# Runs tests/e2e/load.rs (the same test CI runs with 12 builds) once per N and prints its
# summary line: wall time, failures, broker peak RSS (VmHWM), broker fds before / at peak /
# after, the 1-minute load average's peak, each failure's error text. Needs the test bed
# (bash tests/testbed/setup.sh).
#   scripts/bench-load.sh [COUNTS=100]        e.g. scripts/bench-load.sh 32,64,100
# Environment:
#   BUILDBROKER_LOAD_TIMEOUT_SECS=600   how long one build may take before it counts as failed
#   BIN=PATH                            the broker binary to measure (default: a release build)
# A run of 100 takes a few minutes on 2 cores; run one at a time (the builds share the engine).
set -euo pipefail
cd "$(dirname "$0")/.."
counts=${1:-100}
. /run/buildbroker-testbed/env
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin buildbroker
  BIN=${CARGO_TARGET_DIR:-target}/release/buildbroker
fi
BIN=$(realpath "$BIN")
# The test harness itself is the debug build (quick to compile); only the daemon is measured.
cargo test --quiet --test e2e --no-run 2>/dev/null
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load now $(cut -d' ' -f1-3 /proc/loadavg); broker $BIN"
status=0
for n in ${counts//,/ }; do
  log=$(mktemp)
  if BUILDBROKER_E2E_BIN=$BIN BUILDBROKER_LOAD_BUILDS=$n \
      cargo test --quiet --test e2e load::many_concurrent_builds -- --nocapture >"$log" 2>&1; then
    verdict=pass
  else
    verdict=FAIL
    status=1
  fi
  if grep -q '^load: builds=' "$log"; then
    grep '^load: builds=' "$log" | sed "s/\$/ result=$verdict/"
    grep -A3 '^load: build [0-9]* failed' "$log" | head -40 || true
  else
    echo "load: builds=$n result=$verdict (no summary; test output follows)"
    tail -40 "$log"
  fi
  rm -f "$log"
  # vfs copies every layer: drop what the builds left before the next count.
  DOCKER_HOST=$TESTBED_DOCKER_HOST docker buildx prune -af >/dev/null 2>&1 || true
done
exit $status
