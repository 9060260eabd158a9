#!/usr/bin/env bash
# Stop the buildbroker test bed's private dockerd (started by setup.sh).
# Leaves images, build cache, data root and the unpacked trixie tree alone.
set -euo pipefail

RUN_DIR=/run/buildbroker-testbed
PIDFILE=$RUN_DIR/docker.pid
SOCK=$RUN_DIR/docker.sock
DOCKERD=/var/cache/buildbroker-testbed/trixie/usr/sbin/dockerd

# alive PID: running and not a zombie (PID 1 here may reap late).
alive() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ -n "$st" ] && [ "$st" != Z ]; }
log() { printf '[testbed] %s\n' "$*" >&2; }
die() { printf '[testbed] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

pid=$(cat "$PIDFILE" 2>/dev/null || true)
exe=$(readlink "/proc/${pid:-none}/exe" 2>/dev/null || true)
if [ -z "$pid" ] || { [ "$exe" != "$DOCKERD" ] && [ "$exe" != "$DOCKERD (deleted)" ]; }; then
  log "test bed dockerd is not running${pid:+ (stale pidfile pid $pid)}"
  rm -f "$PIDFILE" "$RUN_DIR/env"
  exit 0
fi

log "stopping dockerd (pid $pid)"
kill -TERM "$pid"
# dockerd stops its containers and its managed containerd; give it time.
for _ in $(seq 1 300); do
  alive "$pid" || break
  sleep 0.1
done
if alive "$pid"; then
  log "dockerd did not exit within 30 s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.5
fi
! alive "$pid" || die "dockerd pid $pid is still alive"
# dockerd's managed containerd normally exits with it; reap it if dockerd was killed.
cpid=$(cat "$RUN_DIR/exec/containerd/containerd.pid" 2>/dev/null || true)
if [ -n "$cpid" ] && [ "$(readlink "/proc/$cpid/exe" 2>/dev/null)" = /usr/bin/containerd ]; then
  log "stopping leftover containerd (pid $cpid)"
  kill -TERM "$cpid" 2>/dev/null || true
  for _ in $(seq 1 50); do alive "$cpid" || break; sleep 0.1; done
  kill -KILL "$cpid" 2>/dev/null || true
fi
rm -f "$PIDFILE" "$SOCK" "$RUN_DIR/env"
log "stopped"
