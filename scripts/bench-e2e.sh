#!/usr/bin/env bash
# End-to-end comparison, A/B interleaved on the test bed (design.md §10, §11):
#   1. the seed's pypi_token build: direct with --secret vs through buildbroker with no flag;
#   2. large build contexts relayed through the session, interleaved in one run: direct, through
#      a plain byte splice (examples/splice_proxy.rs: no HTTP/2 termination, the floor of any
#      proxy on this machine) and through buildbroker.
# Prints medians, spread and ratios, and with 5+ rounds a 95 % bootstrap interval for each
# ratio to direct (rounds resampled). Needs the test bed (bash tests/testbed/setup.sh).
#   scripts/bench-e2e.sh [RUNS=15] [CONTEXT_MIB=1024[,256,...]] [DRIVER=docker]
# Environment:
#   BIG_RUNS=5          runs per side for each context size (cache pruned before every run)
#   SEED_RUNS=RUNS      runs per side of the seed build (0 skips it)
#   PERF=1              also count, with `perf stat -p`, the syscalls, context switches and CPU
#                       time of the splice proxy and of the broker during each big build
#                       (perf: Debian's linux-perf)
#   PROFILE=release     which build to measure (debug: indicative only, for counts)
#   BIN_DIR=DIR         take buildbroker and examples/splice_proxy from DIR, built beforehand
#   BROKER_B=PATH       a second buildbroker binary, run as one more interleaved side
#                       ("broker_b"), to A/B a change in one run
#   BROKER_B_SERVER=TOML  lines added to broker_b's [server] table (e.g. "worker_threads = 1"),
#                       to A/B a policy setting; BROKER_B then defaults to the same binary
# DRIVER=docker-container runs every side on buildx's docker-container driver with the test
# bed's stand-in BuildKit image: one builder created directly on the engine, one created and
# used through each proxy (the Control API then rides an exec stream through it).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-15}
ctx_sizes=${2:-1024}
driver=${3:-docker}
big_runs=${BIG_RUNS:-5}
seed_runs=${SEED_RUNS:-$runs}
. /run/buildbroker-testbed/env
engine=$TESTBED_DOCKER_HOST
engine_sock=${engine#unix://}

profile=${PROFILE:-release}
bin_dir=${BIN_DIR:-target/$profile}
if [ -n "${BIN_DIR:-}" ]; then
  : # built beforehand
elif [ "$profile" = release ]; then
  cargo build --release --quiet --bin buildbroker --example splice_proxy
else
  cargo build --quiet --bin buildbroker --example splice_proxy
fi
work=$(mktemp -d)
pids=()
sides=(direct splice broker)
if [ -n "${BROKER_B_SERVER:-}" ] && [ -z "${BROKER_B:-}" ]; then BROKER_B=$bin_dir/buildbroker; fi
if [ -n "${BROKER_B:-}" ]; then sides+=(broker_b); fi
host_of() { case $1 in direct) echo "$engine" ;; *) echo "unix://$work/$1.sock" ;; esac; }
builder_of() { if [ "$driver" = docker-container ]; then echo "--builder bbbench_${1}_$$"; fi; }
cleanup() {
  if [ "$driver" = docker-container ]; then
    for side in "${sides[@]}"; do
      DOCKER_HOST=$(host_of "$side") docker buildx rm "bbbench_${side}_$$" >/dev/null 2>&1 || true
      DOCKER_HOST=$engine docker rm -f "buildx_buildkit_bbbench_${side}_$$0" >/dev/null 2>&1 || true
    done
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  DOCKER_HOST=$engine docker buildx prune -af >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

policy() { # SOCKET
  cat <<TOML
[server]
listen = ["unix://$1"]
upstream = "$engine"
[secrets.pypi_token]
sources = ["env:PYPI_TOKEN"]
required = true
# Mount rules, so every build's Dockerfile is read and its mounts checked (issue 9).
mode = 0o400
uid = 1000
mount_required = true
TOML
}
export PYPI_TOKEN=pypi-bench-token-value
declare -A pid_of
wait_ready() { # LOG LINE
  for _ in $(seq 1 200); do grep -qs "$2" "$1" && return 0; sleep 0.05; done
  echo "not ready: $1" >&2; cat "$1" >&2; exit 1
}
start_broker() { # BINARY SIDE
  policy "$work/$2.sock" > "$work/$2.toml"
  if [ "$2" = broker_b ] && [ -n "${BROKER_B_SERVER:-}" ]; then
    printf '[server]\n%s\n' "$BROKER_B_SERVER" | cat - <(sed '1d' "$work/$2.toml") > "$work/$2.toml.new"
    mv "$work/$2.toml.new" "$work/$2.toml"
  fi
  "$1" serve --config "$work/$2.toml" 2> "$work/$2.log" &
  pids+=($!); pid_of[$2]=$!
  wait_ready "$work/$2.log" "buildbroker ready"
}
start_broker "$bin_dir/buildbroker" broker
if [ -n "${BROKER_B:-}" ]; then start_broker "$BROKER_B" broker_b; fi
"$bin_dir/examples/splice_proxy" "$work/splice.sock" "$engine_sock" 2> "$work/splice.log" &
pids+=($!); pid_of[splice]=$!
wait_ready "$work/splice.log" "splice_proxy ready"

if [ "$driver" = docker-container ]; then
  opts=(--driver docker-container --bootstrap "--driver-opt=image=${TESTBED_BUILDKIT_IMAGE:-buildbroker-test/buildkit:latest},network=host")
  for side in "${sides[@]}"; do
    DOCKER_HOST=$(host_of "$side") docker buildx create --name "bbbench_${side}_$$" "${opts[@]}" >/dev/null 2>&1
  done
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

now() { date +%s%N; }
seed() { # SIDE [flags]
  local side=$1; shift
  # shellcheck disable=SC2046
  DOCKER_HOST=$(host_of "$side") docker buildx build $(builder_of "$side") --network=none --no-cache -q -o type=cacheonly "$@" "$work/seed" >/dev/null 2>>"$work/stderr-$side.txt" \
    || { cat "$work/stderr-$side.txt" >&2; exit 1; }
}
perf_events=raw_syscalls:sys_enter,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,context-switches,task-clock
big() { # SIDE MIB RUN
  local side=$1 perf_pid=""
  DOCKER_HOST=$engine docker buildx prune -af >/dev/null  # drop the cached context: full transfer
  if [ "${PERF:-0}" = 1 ] && [ "$side" != direct ]; then
    perf stat -x, -e "$perf_events" -o "$work/perf-$side-$2-$3.csv" -p "${pid_of[$side]}" &
    perf_pid=$!; sleep 0.3
  fi
  local t0; t0=$(now)
  # shellcheck disable=SC2046
  DOCKER_HOST=$(host_of "$side") docker buildx build $(builder_of "$side") --network=none --no-cache -q -o type=cacheonly "$work/big" >/dev/null 2>>"$work/stderr-$side.txt" \
    || { cat "$work/stderr-$side.txt" >&2; exit 1; }
  echo "$2 $side $(( $(now) - t0 ))" >> "$work/big.tsv"
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
}

echo "driver: $driver   build: $profile   load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
# Warm up every path once.
seed direct --secret id=pypi_token,env=PYPI_TOKEN
for side in "${sides[@]}"; do if [ "$side" != direct ]; then seed "$side" --secret id=pypi_token,env=PYPI_TOKEN; fi; done

: > "$work/seed.tsv"; : > "$work/big.tsv"; : > "$work/perf.txt"
for i in $(seq 1 "$seed_runs"); do
  # Alternate which side goes first so drift on a noisy machine hits both equally.
  for side in $( [ $((i % 2)) = 0 ] && echo "direct broker" || echo "broker direct"); do
    t0=$(now)
    if [ "$side" = direct ]; then seed direct --secret id=pypi_token,env=PYPI_TOKEN; else seed broker; fi
    echo "$side $(( $(now) - t0 ))" >> "$work/seed.tsv"
  done
done
loads=()
for mib in ${ctx_sizes//,/ }; do
  head -c "$((mib * 1024 * 1024))" /dev/urandom > "$work/big/blob"
  for i in $(seq 1 "$big_runs"); do
    # Rotate the order each round so no side always follows the same one.
    n=${#sides[@]}; k=$((i % n))
    for side in "${sides[@]:$k}" "${sides[@]:0:$k}"; do big "$side" "$mib" "$i"; done
    loads+=("$(cut -d' ' -f1 /proc/loadavg)")
  done
done
echo "load average (1 min) after each round: ${loads[*]}"
# What buildx printed on stderr for builds that succeeded (a session error it logged and
# survived, say), per side, timestamps cut, counted.
for f in "$work"/stderr-*.txt; do
  [ -s "$f" ] || continue
  echo "buildx stderr, $(basename "$f" .txt | cut -d- -f2-) side:"
  sed -E 's/^[0-9/]+ [0-9:]+ //' "$f" | sort | uniq -c | sed 's/^/ /'
done
for f in "$work"/perf-*.csv; do
  [ -e "$f" ] || continue
  echo "# $(basename "$f" .csv)"; grep -v '^#' "$f" | grep -v '^$' | cut -d, -f1,3
done > "$work/perf.txt"
if [ -n "${KEEP_RESULTS:-}" ]; then cp "$work"/*.tsv "$work/perf.txt" "$KEEP_RESULTS"/; fi

python3 - "$work/seed.tsv" "$work/big.tsv" "$work/perf.txt" <<'PY'
import random, statistics, sys
from collections import defaultdict
seed = {"direct": [], "broker": []}
for line in open(sys.argv[1]):
    side, ns = line.split(); seed[side].append(int(ns) / 1e9)
if seed["direct"]:
    sd, sb = statistics.median(seed["direct"]), statistics.median(seed["broker"])
    print(f"seed pypi_token build, {len(seed['direct'])} runs each, interleaved:")
    print(f"  direct --secret  median {sd*1000:8.1f} ms")
    print(f"  buildbroker      median {sb*1000:8.1f} ms")
    print(f"  ratio broker/direct     {sb/sd:8.3f}   (target <= 1.03)")
    pairs = [b / d for d, b in zip(seed["direct"], seed["broker"])]
    print(f"  median of pair ratios   {statistics.median(pairs):8.3f}")
big = defaultdict(lambda: defaultdict(list))
for line in open(sys.argv[2]):
    mib, side, ns = line.split(); big[int(mib)][side].append(int(ns) / 1e9)
for mib, by_side in big.items():
    print(f"{mib} MiB context (bind-mounted, cache pruned, transferred in full each run), {len(by_side['direct'])} runs each:")
    d = statistics.median(by_side["direct"])
    for side, ts in by_side.items():
        m = statistics.median(ts)
        print(f"  {side:<9} median {m:7.2f} s  min {min(ts):6.2f}  max {max(ts):6.2f}  "
              f"{mib/m:7.1f} MiB/s  throughput vs direct {d/m:6.3f}")
    for side in by_side:
        if side.startswith("broker") and "splice" in by_side:
            s = statistics.median(by_side["splice"]) / statistics.median(by_side[side])
            print(f"  {side} throughput vs splice {s:6.3f}")
    # Every round ran each side once, so the runs pair up by round. The spread of the ratio
    # itself: a 95 % bootstrap interval over the rounds (fixed seed: the same data give the
    # same interval), for the ratio of medians above and for the median of per-round ratios.
    rounds = min(len(ts) for ts in by_side.values())
    if rounds >= 5:
        rng = random.Random(14)
        print(f"  95 % bootstrap intervals over the {rounds} rounds (throughput vs direct; share of rounds >= 0.95):")
        for side in by_side:
            if side == "direct":
                continue
            dt, st = by_side["direct"][:rounds], by_side[side][:rounds]
            pairs = [a / b for a, b in zip(dt, st)]
            of_medians, median_pairs = [], []
            for _ in range(4000):
                pick = [rng.randrange(rounds) for _ in range(rounds)]
                of_medians.append(statistics.median(dt[i] for i in pick) / statistics.median(st[i] for i in pick))
                median_pairs.append(statistics.median(pairs[i] for i in pick))
            def interval(xs):
                xs = sorted(xs)
                return f"{xs[int(0.025 * len(xs))]:.3f}-{xs[int(0.975 * len(xs)) - 1]:.3f}"
            share = sum(r >= 0.95 for r in pairs) / rounds
            print(f"  {side:<9} ratio of medians {statistics.median(dt) / statistics.median(st):.3f} [{interval(of_medians)}]  "
                  f"median pair ratio {statistics.median(pairs):.3f} [{interval(median_pairs)}]  >= 0.95 in {share:.0%}")
# perf stat counters per MiB of context, median over the runs of each side and size.
acc = defaultdict(lambda: defaultdict(list)); key = None
for line in open(sys.argv[3]):
    line = line.strip()
    if line.startswith("# perf-"):
        _, side, mib, _run = line[2:].rsplit("-", 3); key = (side, int(mib)); continue
    val, ev = line.split(",", 1)
    ev = ev.replace("raw_syscalls:sys_enter", "syscalls").replace("syscalls:sys_enter_", "")
    try: acc[key][ev].append(float(val) / key[1])
    except ValueError: pass
if acc:
    print("per MiB of context (perf stat -p on the proxy's process; task-clock in ms):")
    for (side, mib), evs in sorted(acc.items()):
        print(f"  {side:<9} {mib:5} MiB  " + "  ".join(f"{ev} {statistics.median(v):.1f}" for ev, v in evs.items()))
PY
