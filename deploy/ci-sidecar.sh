#!/usr/bin/env bash
# Run buildbroker beside a CI job: secrets come from the job's environment (CI secret
# variables), and the job's own docker/buildx commands go through the broker.
#   source deploy/ci-sidecar.sh && docker buildx build .
# The socket lives in a directory private to this job (never a fixed path under /tmp, where
# another job or user could plant it first): mktemp -d under $RUNNER_TEMP when the CI sets it,
# else mktemp -d, else under $XDG_RUNTIME_DIR. The policy (config/ci.toml by default, or
# $BUILDBROKER_CONFIG) must not set [server] listen: this script gives it the socket path.
# The real engine is the job's DOCKER_HOST (default unix:///var/run/docker.sock).
# Afterwards: kill "$BUILDBROKER_PID" (the socket and its directory are removed with it).
bb_policy=${BUILDBROKER_CONFIG:-$(dirname "${BASH_SOURCE[0]}")/../config/ci.toml}
if [ -n "${RUNNER_TEMP:-}" ]; then
  bb_dir=$(mktemp -d "$RUNNER_TEMP/buildbroker.XXXXXX")
else
  bb_dir=$(mktemp -d 2>/dev/null) ||
    { bb_dir=${XDG_RUNTIME_DIR:?no RUNNER_TEMP, mktemp -d failed and no XDG_RUNTIME_DIR}/buildbroker-ci.$$ &&
      mkdir -m 700 "$bb_dir"; }
fi
if grep -Eq '^[[:space:]]*listen[[:space:]]*=' "$bb_policy"; then
  echo "ci-sidecar.sh: $bb_policy sets listen; remove it, this script gives each job its own socket" >&2
  false
else
  # The job's policy: the shared one with this job's socket added to its [server] table.
  bb_listen="listen = [\"unix://$bb_dir/docker.sock\"]"
  if grep -Eq '^\[server\][[:space:]]*$' "$bb_policy"; then
    awk -v l="$bb_listen" '{ print } /^\[server\][[:space:]]*$/ && !done { print l; done = 1 }' \
      "$bb_policy" > "$bb_dir/policy.toml"
  else
    { printf '[server]\n%s\n\n' "$bb_listen"; cat "$bb_policy"; } > "$bb_dir/policy.toml"
  fi
  buildbroker serve --config "$bb_dir/policy.toml" 2> "$bb_dir/broker.log" &
  BUILDBROKER_PID=$!
  export BUILDBROKER_PID
  for _ in $(seq 1 200); do
    grep -q "buildbroker ready" "$bb_dir/broker.log" && break
    sleep 0.05
  done
  if grep -q "buildbroker ready" "$bb_dir/broker.log"; then
    export DOCKER_HOST="unix://$bb_dir/docker.sock"
  else
    cat "$bb_dir/broker.log" >&2
    false
  fi
fi
