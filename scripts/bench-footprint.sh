#!/usr/bin/env bash
# Start-up time to the readiness line and resident memory (design.md §11: ready <= 50 ms,
# RSS <= 15 MiB idle). Uses the release binary and a policy with a few secrets; needs the test
# bed only for the "after builds" figure.
#   scripts/bench-footprint.sh [RUNS=20]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
cargo build --release --quiet
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
upstream=unix:///var/run/docker.sock
[ -r /run/buildbroker-testbed/env ] && . /run/buildbroker-testbed/env && upstream=$TESTBED_DOCKER_HOST
cat > "$work/policy.toml" <<TOML
[server]
listen = ["unix://$work/b.sock"]
upstream = "$upstream"
[secrets.tok]
sources = ["env:TOK"]
TOML
ready_ms=()
for i in $(seq 1 "$runs"); do
  start=$(date +%s%N)
  TOK=x target/release/buildbroker serve --config "$work/policy.toml" 2> "$work/log" &
  pid=$!
  until grep -q "buildbroker ready" "$work/log"; do sleep 0.001; done
  ready_ms+=($(( ($(date +%s%N) - start) / 1000 )))
  if [ "$i" -lt "$runs" ]; then kill "$pid"; wait "$pid" 2>/dev/null || true; fi
done
sleep 1
rss_idle=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
echo "readiness (exec to 'buildbroker ready' line, includes process start), $runs runs:"
printf '%s\n' "${ready_ms[@]}" | sort -n | awk '{a[NR]=$1} END {printf "  median %.1f ms, max %.1f ms\n", a[int((NR+1)/2)]/1000, a[NR]/1000}'
echo "resident memory idle: $((rss_idle / 1024)) MiB ($rss_idle KiB)"
if [ -n "${TESTBED_DOCKER_HOST:-}" ]; then
  mkdir -p "$work/ctx"
  printf 'FROM buildbroker-test/busybox\nRUN --mount=type=secret,id=tok,required=true cat /run/secrets/tok\n' > "$work/ctx/Dockerfile"
  for i in $(seq 1 10); do
    DOCKER_HOST=unix://$work/b.sock docker buildx build -q --network=none --no-cache -o type=cacheonly "$work/ctx" >/dev/null &
  done
  wait_builds() { for j in $(jobs -p); do [ "$j" = "$pid" ] || wait "$j"; done; }
  sleep 1.5
  rss_busy=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  wait_builds || true
  rss_after=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  echo "resident memory during 10 concurrent builds: $((rss_busy / 1024)) MiB; after: $((rss_after / 1024)) MiB"
fi
