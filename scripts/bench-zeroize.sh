#!/usr/bin/env bash
# The zeroize-on-free allocator's cost on the session relay (docs/benchmarks.md): a 256 MiB
# build context relayed through two brokers, the current release build and a BASELINE binary
# built without the allocator, and directly against the engine; interleaved, cache pruned
# before every run. Needs the test bed (bash tests/testbed/setup.sh).
#   scripts/bench-zeroize.sh BASELINE_BINARY [RUNS=3] [CONTEXT_MIB=256]   (CURRENT_BINARY= overrides
#   the release build under test)
set -euo pipefail
cd "$(dirname "$0")/.."
baseline=$1; runs=${2:-3}; ctx_mib=${3:-256}
. /run/buildbroker-testbed/env
engine=$TESTBED_DOCKER_HOST
current=${CURRENT_BINARY:-${CARGO_TARGET_DIR:-target}/release/buildbroker}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  DOCKER_HOST=$engine docker buildx prune -af >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

start() { # NAME BINARY
  cat > "$work/$1.toml" <<TOML
[server]
listen = ["unix://$work/$1.sock"]
upstream = "$engine"
TOML
  "$2" serve --config "$work/$1.toml" 2> "$work/$1.log" &
  pids+=($!)
  for _ in $(seq 1 200); do grep -q "buildbroker ready" "$work/$1.log" && break; sleep 0.05; done
}
start base "$baseline"
start zero "$current"

mkdir -p "$work/big"
cat > "$work/big/Dockerfile" <<'DF'
FROM buildbroker-test/busybox
RUN --mount=type=bind,target=/ctx du -sm /ctx
DF
head -c "$((ctx_mib * 1024 * 1024))" /dev/urandom > "$work/big/blob"
now() { date +%s%N; }
big() { # HOST
  DOCKER_HOST=$engine docker buildx prune -af >/dev/null
  DOCKER_HOST=$1 docker buildx build --network=none --no-cache -q -o type=cacheonly "$work/big" >/dev/null
}
: > "$work/big.tsv"
for i in $(seq 1 "$runs"); do
  order="direct base zero"; [ $((i % 2)) = 0 ] && order="zero base direct"
  for side in $order; do
    host=$engine; [ "$side" != direct ] && host=unix://$work/$side.sock
    t0=$(now); big "$host"; echo "$side $(( $(now) - t0 ))" >> "$work/big.tsv"
  done
done
python3 - "$work/big.tsv" "$ctx_mib" <<'PY'
import statistics, sys
d = {}
for line in open(sys.argv[1]):
    side, ns = line.split(); d.setdefault(side, []).append(int(ns) / 1e9)
mib = int(sys.argv[2])
for side, label in [("direct", "direct"), ("base", "broker, system allocator"), ("zero", "broker, zeroize-on-free")]:
    m = statistics.median(d[side])
    print(f"  {label:<28} median {m:7.2f} s  {mib/m:7.1f} MiB/s  runs {['%.2f' % x for x in d[side]]}")
print(f"  zeroize-on-free / system allocator (time): {statistics.median(d['zero'])/statistics.median(d['base']):.3f}")
PY
