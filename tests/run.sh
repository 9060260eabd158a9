#!/usr/bin/env bash
# The project's one test command (README): start the real test bed (design.md §10), then run
# every test — unit, CLI and end-to-end through real buildx and dockerd. Runs as root.
# End-to-end tests fail, never skip, when the test bed is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/testbed/setup.sh
# shellcheck disable=SC1091
. /run/buildbroker-testbed/env
export TESTBED_DOCKER_HOST

# vfs copies every layer in full: leave the test bed's disk as small as we found it.
cleanup() {
  DOCKER_HOST=$TESTBED_DOCKER_HOST docker buildx prune -af >/dev/null 2>&1 || true
}
trap cleanup EXIT

cargo test --locked -- --test-threads="${BUILDBROKER_TEST_THREADS:-3}"

# Fuzz each target for a bounded time (cargo-fuzz, nightly): no input may panic a parser that
# reads untrusted input (fuzz/Cargo.toml lists them). Seeds are fuzz/corpus/<target>; libFuzzer
# works on a scratch copy so what it adds stays out of the tree. BUILDBROKER_FUZZ_SECONDS (per
# target, default 30) = 0 skips.
fuzz_seconds=${BUILDBROKER_FUZZ_SECONDS:-30}
if [ "$fuzz_seconds" -gt 0 ]; then
  cargo +nightly fuzz build
  for target in $(cargo +nightly fuzz list); do
    corpus=$(mktemp -d)
    cp fuzz/corpus/"$target"/* "$corpus"/
    cargo +nightly fuzz run "$target" "$corpus" -- -max_total_time="$fuzz_seconds" -rss_limit_mb=2048
    rm -rf "$corpus"
  done
fi
