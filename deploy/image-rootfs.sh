#!/bin/sh
# Lays out the runtime filesystem of deploy/Dockerfile from a built binary:
#   deploy/image-rootfs.sh BINARY OUT_DIR   → OUT_DIR/rootfs/…
# The binary (debug info stripped), every library ldd names plus the loader, the CA bundle
# (aws-sm: talks TLS to AWS), /etc/passwd and /etc/group with root and nonroot (65532), and
# an empty /tmp and /run/buildbroker. POSIX sh: it also runs in the Dockerfile's build stage.
set -eu
[ $# -eq 2 ] || { echo "usage: $0 BINARY OUT_DIR" >&2; exit 2; }
bin=$1
root=$2/rootfs
[ -x "$bin" ] || { echo "$0: $bin is not an executable" >&2; exit 2; }
rm -rf "$root"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp" "$root/run/buildbroker" \
  "$root/etc/buildbroker" "$root/home/nonroot"
chmod 1777 "$root/tmp"
if command -v strip >/dev/null 2>&1; then
  strip --strip-debug -o "$root/usr/local/bin/buildbroker" "$bin"
else
  cp "$bin" "$root/usr/local/bin/buildbroker"
fi
chmod 0755 "$root/usr/local/bin/buildbroker"
for lib in $(ldd "$bin" | awk '/=>/ { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// { print $1 }'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
ca=/etc/ssl/certs/ca-certificates.crt
if [ -r "$ca" ]; then
  cp -L "$ca" "$root$ca"
else
  echo "$0: warning: no $ca; aws-sm: sources will not verify TLS" >&2
fi
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
chown 65532:65532 "$root/home/nonroot" "$root/run/buildbroker" 2>/dev/null || true
chmod 0750 "$root/run/buildbroker"
