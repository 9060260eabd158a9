#!/usr/bin/env bash
# Start-to-ready and idle resident memory with the metrics endpoint off and on, interleaved
# (design.md §11: ready <= 50 ms, RSS <= 15 MiB idle). With metrics on it also measures
# exec → first 200 from /readyz, and RSS after 200 scrapes of /metrics.
#   scripts/bench-ops.sh [RUNS=20]          (BIN=path: measure that binary instead)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=target/release/buildbroker
fi
work=$(mktemp -d)
pid=
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
upstream=unix:///var/run/docker.sock
[ -r /run/buildbroker-testbed/env ] && . /run/buildbroker-testbed/env && upstream=$TESTBED_DOCKER_HOST
port=19464
for mode in off on; do
  {
    printf '[server]\nlisten = ["unix://%s/%s.sock"]\nupstream = "%s"\n' "$work" "$mode" "$upstream"
    [ "$mode" = on ] && printf 'metrics_listen = "127.0.0.1:%s"\n' "$port"
    printf '[secrets.tok]\nsources = ["env:TOK"]\n'
  } > "$work/$mode.toml"
done
# One HTTP/1.0 GET with bash's /dev/tcp; prints the status code.
http_status() {
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET %s HTTP/1.0\r\n\r\n' "$1" >&3
  head -n1 <&3 | awk '{print $2}'
  exec 3<&- 3>&-
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
declare -A ready rss_idle
readyz=()
for i in $(seq 1 "$runs"); do
  for mode in off on; do
    start=$(date +%s%N)
    TOK=x "$BIN" serve --config "$work/$mode.toml" 2> "$work/log" &
    pid=$!
    until grep -q "buildbroker ready" "$work/log"; do sleep 0.0005; done
    ready[$mode]+="$(( ($(date +%s%N) - start) / 1000 )) "
    if [ "$mode" = on ]; then
      until [ "$(http_status /readyz 2>/dev/null)" = 200 ]; do sleep 0.0005; done
      readyz+=($(( ($(date +%s%N) - start) / 1000 )))
    fi
    sleep 1
    rss_idle[$mode]+="$(rss "$pid") "
    if [ "$mode" = on ] && [ "$i" -eq "$runs" ]; then
      for _ in $(seq 1 200); do http_status /metrics >/dev/null; done
      rss_scraped=$(rss "$pid")
    fi
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  done
done
stats() { tr ' ' '\n' | grep . | sort -n | awk -v div="$1" '{a[NR]=$1} END {printf "median %.1f, max %.1f", a[int((NR+1)/2)]/div, a[NR]/div}'; }
echo "$runs interleaved starts each, $BIN"
for mode in off on; do
  echo "metrics $mode: exec → ready line: $(echo "${ready[$mode]}" | stats 1000) ms; idle RSS: $(echo "${rss_idle[$mode]}" | stats 1024) MiB"
done
echo "metrics on: exec → first /readyz 200 (includes the upstream _ping): $(echo "${readyz[*]}" | stats 1000) ms"
echo "metrics on: RSS after 200 scrapes of /metrics: $((rss_scraped / 1024)) MiB ($rss_scraped KiB)"
