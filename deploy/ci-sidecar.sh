#!/usr/bin/env bash
# Run buildbroker beside a CI job: secrets come from the job's environment (CI secret
# variables), and the job's own docker/buildx commands go through the broker.
#   source deploy/ci-sidecar.sh && docker buildx build .
# The policy (config/ci.toml by default) listens on /tmp/buildbroker-ci/docker.sock.
policy=${BUILDBROKER_CONFIG:-$(dirname "${BASH_SOURCE[0]}")/../config/ci.toml}
log=$(mktemp)
buildbroker serve --config "$policy" 2> "$log" &
for _ in $(seq 1 200); do
  grep -q "buildbroker ready" "$log" && break
  sleep 0.05
done
if grep -q "buildbroker ready" "$log"; then
  export DOCKER_HOST=unix:///tmp/buildbroker-ci/docker.sock
else
  cat "$log" >&2
  false
fi
