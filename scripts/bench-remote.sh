#!/usr/bin/env bash
# buildx's remote driver: the seed's pypi_token build through buildbroker's BuildKit endpoint
# (policy answers the secret, no flag) vs the same driver pointed at a plain bridge to the
# engine's /grpc (examples/grpc_bridge.rs) with --secret. Interleaved pairs, medians, load.
#   scripts/bench-remote.sh [PAIRS=5] [PROFILE=release]
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-5}
profile=${2:-release}
. /run/buildbroker-testbed/env
engine=$TESTBED_DOCKER_HOST
if [ "$profile" = release ]; then
  cargo build --release --quiet --bin buildbroker --example grpc_bridge
else
  cargo build --quiet --bin buildbroker --example grpc_bridge
fi
bin=${CARGO_TARGET_DIR:-target}/$profile
work=$(mktemp -d)
b_broker="bbbench_rbroker_$$"; b_bridge="bbbench_rbridge_$$"
cleanup() {
  DOCKER_HOST=$engine docker buildx rm "$b_broker" >/dev/null 2>&1 || true
  DOCKER_HOST=$engine docker buildx rm "$b_bridge" >/dev/null 2>&1 || true
  kill "$broker_pid" "$bridge_pid" 2>/dev/null || true; wait 2>/dev/null || true
  DOCKER_HOST=$engine docker buildx prune -af >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/policy.toml" <<TOML
[server]
listen = ["unix://$work/docker.sock"]
upstream = "$engine"
buildkit_listen = ["unix://$work/buildkitd.sock"]
[secrets.pypi_token]
sources = ["env:PYPI_TOKEN"]
required = true
mode = 0o400
uid = 1000
mount_required = true
TOML
export PYPI_TOKEN=pypi-bench-token-value
"$bin/buildbroker" serve --config "$work/policy.toml" 2> "$work/broker.log" &
broker_pid=$!
"$bin/examples/grpc_bridge" "$work/bridge.sock" "$engine" 2> "$work/bridge.log" &
bridge_pid=$!
for _ in $(seq 1 200); do
  grep -q "buildbroker ready" "$work/broker.log" && grep -q "grpc_bridge ready" "$work/bridge.log" && break
  sleep 0.05
done
export DOCKER_HOST=$engine
docker buildx create --name "$b_broker" --driver remote "unix://$work/buildkitd.sock" >/dev/null
docker buildx create --name "$b_bridge" --driver remote "unix://$work/bridge.sock" >/dev/null

mkdir -p "$work/seed"
cat > "$work/seed/Dockerfile" <<'DF'
FROM buildbroker-test/busybox
RUN --mount=type=secret,id=pypi_token,required=true,mode=0400,uid=1000 \
    test "$(stat -c '%a %u' /run/secrets/pypi_token)" = "400 1000" && wc -c /run/secrets/pypi_token
DF
now() { date +%s%N; }
seed() { # BUILDER [flags]
  local b=$1; shift
  docker buildx build --builder "$b" --network=none --no-cache -q -o type=cacheonly "$@" "$work/seed" >/dev/null
}
seed "$b_bridge" --secret id=pypi_token,env=PYPI_TOKEN; seed "$b_broker"   # warm up

: > "$work/seed.tsv"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for i in $(seq 1 "$pairs"); do
  for side in $( [ $((i % 2)) = 0 ] && echo "bridge broker" || echo "broker bridge"); do
    t0=$(now)
    if [ "$side" = bridge ]; then seed "$b_bridge" --secret id=pypi_token,env=PYPI_TOKEN; else seed "$b_broker"; fi
    echo "$side $(( $(now) - t0 ))" >> "$work/seed.tsv"
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
echo "remote driver, $profile build; load average before: $load_before, after: $load_after"
python3 - "$work/seed.tsv" <<'PY'
import statistics, sys
d = {"bridge": [], "broker": []}
for line in open(sys.argv[1]):
    side, ns = line.split(); d[side].append(int(ns) / 1e9)
sd, sb = statistics.median(d["bridge"]), statistics.median(d["broker"])
print(f"seed pypi_token build, {len(d['bridge'])} interleaved pairs:")
print(f"  plain /grpc bridge, --secret  median {sd*1000:8.1f} ms   {' '.join(f'{x*1000:.0f}' for x in d['bridge'])}")
print(f"  buildbroker, no flag          median {sb*1000:8.1f} ms   {' '.join(f'{x*1000:.0f}' for x in d['broker'])}")
print(f"  ratio of medians broker/bridge       {sb/sd:8.3f}")
pairs = [b / a for a, b in zip(d["bridge"], d["broker"])]
print(f"  median of pair ratios                {statistics.median(pairs):8.3f}")
PY
