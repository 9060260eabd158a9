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
