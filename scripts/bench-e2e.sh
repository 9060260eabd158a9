#!/usr/bin/env bash
# End-to-end comparison, A/B interleaved on the test bed (design.md §10, §11):
#   1. the seed's pypi_token build: direct with --secret vs through buildbroker with no flag;
#   2. a large build context relayed through the session: direct vs through buildbroker.
# Prints medians and ratios (broker/direct). Needs the test bed (bash tests/testbed/setup.sh).
#   scripts/bench-e2e.sh [RUNS=15] [CONTEXT_MIB=1024] [DRIVER=docker]
# DRIVER=docker-container runs both sides on buildx's docker-container driver with the test
# bed's stand-in BuildKit image: one builder created directly on the engine, one created and
# used through buildbroker (the Control API then rides an exec stream through the broker).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-15}
ctx_mib=${2:-1024}
driver=${3:-docker}
. /run/buildbroker-testbed/env
engine=$TESTBED_DOCKER_HOST
direct_builder=(); broker_builder=()

cargo build --release --quiet
work=$(mktemp -d)
cleanup() {
  if [ "$driver" = docker-container ]; then
    DOCKER_HOST=unix://$work/broker.sock docker buildx rm "bbbench_broker_$$" >/dev/null 2>&1 || true
    DOCKER_HOST=$engine docker buildx rm "bbbench_direct_$$" >/dev/null 2>&1 || true
    DOCKER_HOST=$engine docker rm -f "buildx_buildkit_bbbench_broker_$$0" >/dev/null 2>&1 || true
  fi
  kill $broker_pid 2>/dev/null || true; wait 2>/dev/null || true
  DOCKER_HOST=$engine docker buildx prune -af >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/policy.toml" <<TOML
[server]
listen = ["unix://$work/broker.sock"]
upstream = "$engine"
[secrets.pypi_token]
sources = ["env:PYPI_TOKEN"]
required = true
# Mount rules, so every build's Dockerfile is read and its mounts checked (issue 9).
mode = 0o400
uid = 1000
mount_required = true
TOML
export PYPI_TOKEN=pypi-bench-token-value
target/release/buildbroker serve --config "$work/policy.toml" 2> "$work/broker.log" &
broker_pid=$!
for _ in $(seq 1 200); do grep -q "buildbroker ready" "$work/broker.log" && break; sleep 0.05; done
broker=unix://$work/broker.sock
if [ "$driver" = docker-container ]; then
  opts=(--driver docker-container --bootstrap "--driver-opt=image=${TESTBED_BUILDKIT_IMAGE:-buildbroker-test/buildkit:latest},network=host")
  DOCKER_HOST=$engine docker buildx create --name "bbbench_direct_$$" "${opts[@]}" >/dev/null 2>&1
  DOCKER_HOST=$broker docker buildx create --name "bbbench_broker_$$" "${opts[@]}" >/dev/null 2>&1
  direct_builder=(--builder "bbbench_direct_$$"); broker_builder=(--builder "bbbench_broker_$$")
fi

mkdir -p "$work/seed" "$work/big"
cat > "$work/seed/Dockerfile" <<'DF'
FROM buildbroker-test/busybox
RUN --mount=type=secret,id=pypi_token,required=true,mode=0400,uid=1000 \
    test "$(stat -c '%a %u' /run/secrets/pypi_token)" = "400 1000" && wc -c /run/secrets/pypi_token
DF
cat > "$work/big/Dockerfile" <<'DF'
FROM buildbroker-test/busybox
RUN --mount=type=bind,target=/ctx du -sm /ctx
DF
head -c "$((ctx_mib * 1024 * 1024))" /dev/urandom > "$work/big/blob"

now() { date +%s%N; }
builder_of() { if [ "$1" = "$broker" ]; then echo "${broker_builder[@]}"; else echo "${direct_builder[@]}"; fi; }
seed() { # HOST [flags]
  local host=$1; shift
  # shellcheck disable=SC2046
  DOCKER_HOST=$host docker buildx build $(builder_of "$host") --network=none --no-cache -q -o type=cacheonly "$@" "$work/seed" >/dev/null
}
big() { # HOST
  DOCKER_HOST=$engine docker buildx prune -af >/dev/null  # drop the cached context: full transfer
  # shellcheck disable=SC2046
  DOCKER_HOST=$1 docker buildx build $(builder_of "$1") --network=none --no-cache -q -o type=cacheonly "$work/big" >/dev/null
}

# Warm up both paths once.
seed "$engine" --secret id=pypi_token,env=PYPI_TOKEN; seed "$broker"

: > "$work/seed.tsv"; : > "$work/big.tsv"
for i in $(seq 1 "$runs"); do
  # Alternate which side goes first so drift on a noisy machine hits both equally.
  for side in $( [ $((i % 2)) = 0 ] && echo "direct broker" || echo "broker direct"); do
    t0=$(now)
    if [ "$side" = direct ]; then seed "$engine" --secret id=pypi_token,env=PYPI_TOKEN; else seed "$broker"; fi
    echo "$side $(( $(now) - t0 ))" >> "$work/seed.tsv"
  done
done
big_runs=$(( runs < 5 ? runs : 5 ))
for i in $(seq 1 "$big_runs"); do
  for side in $( [ $((i % 2)) = 0 ] && echo "direct broker" || echo "broker direct"); do
    host=$engine; [ "$side" = broker ] && host=$broker
    t0=$(now); big "$host"; echo "$side $(( $(now) - t0 ))" >> "$work/big.tsv"
  done
done

echo "driver: $driver"
python3 - "$work/seed.tsv" "$work/big.tsv" "$ctx_mib" <<'PY'
import statistics, sys
def load(p):
    d = {"direct": [], "broker": []}
    for line in open(p):
        side, ns = line.split(); d[side].append(int(ns) / 1e9)
    return d
seed, big, mib = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
sd, sb = statistics.median(seed["direct"]), statistics.median(seed["broker"])
print(f"seed pypi_token build, {len(seed['direct'])} runs each, interleaved:")
print(f"  direct --secret  median {sd*1000:8.1f} ms")
print(f"  buildbroker      median {sb*1000:8.1f} ms")
print(f"  ratio broker/direct     {sb/sd:8.3f}   (target <= 1.03)")
pairs = [b / d for d, b in zip(seed["direct"], seed["broker"])]
print(f"  median of pair ratios   {statistics.median(pairs):8.3f}")
bd, bb = statistics.median(big["direct"]), statistics.median(big["broker"])
print(f"{mib} MiB context (bind-mounted, transferred in full each run), {len(big['direct'])} runs each:")
print(f"  direct           median {bd:8.2f} s  {mib/bd:8.1f} MiB/s (whole build)")
print(f"  buildbroker      median {bb:8.2f} s  {mib/bb:8.1f} MiB/s (whole build)")
print(f"  throughput broker/direct {bd/bb:7.3f}   (target >= 0.95)")
bpairs = [d / b for d, b in zip(big["direct"], big["broker"])]
print(f"  median of pair ratios    {statistics.median(bpairs):7.3f}")
PY
