#!/usr/bin/env bash
# Smoke test of the test bed (run after setup.sh): a direct secret-mount build and
# an SSH-forwarding build against the private dockerd, then prune the build cache.
# Optional: SMOKE_PROXY=1 also runs the secret build through a plain socat proxy.
set -euo pipefail

. /run/buildbroker-testbed/env
export DOCKER_HOST=$TESTBED_DOCKER_HOST
work=$(mktemp -d /tmp/buildbroker-smoke.XXXXXX)
agent_pid= socat_pid=
cleanup() {
  [ -z "$agent_pid" ] || kill "$agent_pid" 2>/dev/null || true
  [ -z "$socat_pid" ] || kill "$socat_pid" 2>/dev/null || true
  rm -rf "$work"
  docker buildx prune -af >/dev/null 2>&1 || true
}
trap cleanup EXIT
fail() { printf 'smoke: FAIL: %s\n' "$*" >&2; exit 1; }

# --- secret mount
mkdir -p "$work/secret"
printf 'tok-\001\377-%s\n' "$RANDOM" > "$work/token"
cat > "$work/secret/Dockerfile" <<'EOF'
FROM buildbroker-test/busybox
RUN --mount=type=secret,id=pypi_token,required=true,mode=0400,uid=1000 stat -c '%a %u' /run/secrets/pypi_token > /res && cat /run/secrets/pypi_token >> /res
EOF
check_secret() { # OUTDIR
  [ "$(head -n1 "$1/res")" = "400 1000" ] || fail "secret mode/uid: $(head -n1 "$1/res")"
  tail -n +2 "$1/res" | cmp -s - "$work/token" || fail "secret bytes differ"
}
docker buildx build -q --network=none --no-cache --secret "id=pypi_token,src=$work/token" \
  -o "type=local,dest=$work/out1" "$work/secret" >/dev/null
check_secret "$work/out1"
echo "smoke: secret mount ok"

# --- ssh forwarding
mkdir -p "$work/ssh"
ssh-keygen -q -t ed25519 -N '' -C buildbroker-smoke -f "$work/id"
eval "$(ssh-agent -s -a "$work/agent.sock")" >/dev/null
agent_pid=$SSH_AGENT_PID
ssh-add -q "$work/id"
cat > "$work/ssh/Dockerfile" <<'EOF'
FROM buildbroker-test/ssh
RUN --mount=type=ssh ssh-add -l > /res
EOF
docker buildx build -q --network=none --no-cache --ssh "default=$SSH_AUTH_SOCK" \
  -o "type=local,dest=$work/out2" "$work/ssh" >/dev/null
grep -q 'buildbroker-smoke (ED25519)' "$work/out2/res" || fail "ssh-add -l: $(cat "$work/out2/res")"
echo "smoke: ssh forwarding ok"

# --- optional: through a dumb byte proxy
if [ "${SMOKE_PROXY:-0}" = 1 ]; then
  command -v socat >/dev/null || fail "socat not installed"
  socat "UNIX-LISTEN:$work/proxy.sock,fork" "UNIX-CONNECT:${TESTBED_DOCKER_HOST#unix://}" 2>/dev/null &
  socat_pid=$!
  for _ in $(seq 1 50); do [ -S "$work/proxy.sock" ] && break; sleep 0.1; done
  DOCKER_HOST=unix://$work/proxy.sock docker buildx build -q --network=none --no-cache \
    --secret "id=pypi_token,src=$work/token" -o "type=local,dest=$work/out3" "$work/secret" >/dev/null
  check_secret "$work/out3"
  echo "smoke: secret mount through socat proxy ok"
fi
echo "smoke: all ok"
