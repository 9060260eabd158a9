#!/usr/bin/env bash
# TLS costs of the Docker endpoint, A/B interleaved on the test bed (design.md §10):
#   1. a fresh connection per request (`curl /_ping`): tcp + mutual TLS vs the unix socket,
#      the median difference being the handshake (client and server, with process start
#      equal on both sides);
#   2. a build context relayed through the session: over tcp+mTLS vs over the unix socket.
# One broker serves both listeners, upstream the test bed's unix engine socket, so only the
# client's transport differs. Prints medians and the load average.
#   scripts/bench-tls.sh [PINGS=200] [RUNS=4] [CONTEXT_MIB=256] [BINARY=target/debug/buildbroker]
set -euo pipefail
cd "$(dirname "$0")/.."
pings=${1:-200}
runs=${2:-4}
ctx_mib=${3:-256}
bin=${4:-target/debug/buildbroker}
. /run/buildbroker-testbed/env
work=$(mktemp -d)
cleanup() {
  kill "$broker_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  DOCKER_HOST=$TESTBED_DOCKER_HOST docker buildx prune -af >/dev/null 2>&1 || true
  rm -rf "$work"
}
broker_pid=
trap cleanup EXIT

bash tests/support/mkcerts.sh "$work/certs" bench >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/policy.toml" <<TOML
[server]
listen = ["unix://$work/broker.sock", "tcp://127.0.0.1:$port"]
upstream = "$TESTBED_DOCKER_HOST"
[server.tls]
cert = "$work/certs/server.pem"
key = "$work/certs/server-key.pem"
client_ca = "$work/certs/ca.pem"
TOML
RUST_LOG=warn "$bin" serve --config "$work/policy.toml" 2>"$work/broker.log" &
broker_pid=$!
for _ in $(seq 100); do grep -q "buildbroker ready" "$work/broker.log" && break; sleep 0.1; done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
c=$work/certs/bench
ping_tls() { curl -s -o /dev/null -w '%{time_total}\n' --cacert "$c/ca.pem" --cert "$c/cert.pem" --key "$c/key.pem" "https://127.0.0.1:$port/_ping"; }
ping_unix() { curl -s -o /dev/null -w '%{time_total}\n' --unix-socket "$work/broker.sock" http://localhost/_ping; }
for _ in $(seq "$pings"); do
  ping_tls >>"$work/ping-tls"
  ping_unix >>"$work/ping-unix"
done
t=$(median <"$work/ping-tls")
u=$(median <"$work/ping-unix")
echo "per-connection /_ping, $pings each: tls median ${t}s, unix median ${u}s, handshake ≈ $(awk -v t="$t" -v u="$u" 'BEGIN{printf "%.2f ms", (t-u)*1000}')"

mkdir -p "$work/ctx"
head -c "$((ctx_mib * 1024 * 1024))" /dev/urandom >"$work/ctx/big"
printf 'FROM %s\nARG N\nRUN --mount=type=bind,target=/ctx wc -c /ctx/big > /n\nFROM scratch\nCOPY --from=0 /n /\n' \
  "$TESTBED_BUSYBOX_IMAGE" >"$work/ctx/Dockerfile"
build() {
  local host=$1
  shift
  DOCKER_HOST=$TESTBED_DOCKER_HOST docker buildx prune -af >/dev/null 2>&1 || true
  local start end
  start=$(date +%s.%N)
  env DOCKER_HOST="$host" "$@" docker buildx build --no-cache --network=none --progress=quiet \
    --build-arg "N=$RANDOM" -o "type=local,dest=$work/out" "$work/ctx" >/dev/null
  end=$(date +%s.%N)
  awk -v s="$start" -v e="$end" 'BEGIN{print e-s}'
}
for _ in $(seq "$runs"); do
  build "tcp://127.0.0.1:$port" DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH="$c" >>"$work/build-tls"
  build "unix://$work/broker.sock" >>"$work/build-unix"
done
t=$(median <"$work/build-tls")
u=$(median <"$work/build-unix")
echo "${ctx_mib} MiB context, $runs interleaved pairs: tls median ${t}s ($(awk -v m="$ctx_mib" -v t="$t" 'BEGIN{printf "%.0f", m/t}') MiB/s), unix median ${u}s ($(awk -v m="$ctx_mib" -v u="$u" 'BEGIN{printf "%.0f", m/u}') MiB/s), ratio tls/unix $(awk -v t="$t" -v u="$u" 'BEGIN{printf "%.3f", t/u}')"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); binary $bin"
