#!/usr/bin/env bash
# Test-only certificates for buildbroker's mutual TLS, made with the openssl CLI (the same
# commands as README "TCP with mutual TLS"). Usage: mkcerts.sh DIR [CLIENT_NAME ...]
#
# DIR gets: ca.pem/ca-key.pem (the client and server CA); server.pem/server-key.pem (SAN
# IP:127.0.0.1, DNS:localhost); for each CLIENT_NAME, NAME.pem/NAME-key.pem (SAN DNS:NAME,
# clientAuth) and a DOCKER_CERT_PATH-shaped directory NAME/ (ca.pem, cert.pem, key.pem);
# cn-only.pem (subject CN only, no SAN); expired.pem (a 2020 validity window); other-ca.pem and
# stranger.pem (a client certificate from another CA). Nothing here is a real credential.
set -euo pipefail
dir=$1
shift
mkdir -p "$dir"
cd "$dir"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# ca NAME: a self-signed CA certificate NAME.pem with key NAME-key.pem
ca() {
  key "$1-key.pem"
  openssl req -x509 -new -key "$1-key.pem" -out "$1.pem" -days 30 -subj "/CN=buildbroker test $1" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# leaf CA OUT SUBJECT EXTENSIONS [ca-args...]: a certificate signed by CA
leaf() {
  local ca=$1 out=$2 subj=$3 ext=$4
  shift 4
  key "$out-key.pem"
  openssl req -new -key "$out-key.pem" -out "$out.csr" -subj "$subj" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" "$ext" >"$out.ext"
  if [ $# -eq 0 ]; then
    openssl x509 -req -in "$out.csr" -CA "$ca.pem" -CAkey "$ca-key.pem" -CAcreateserial \
      -out "$out.pem" -days 30 -extfile "$out.ext" 2>/dev/null
  else
    # `openssl ca` is the one CLI path that sets arbitrary validity dates (for expired.pem).
    : >index.txt
    printf '1000\n' >serial
    cat >ca.cnf <<CNF
[ca]
default_ca = test
[test]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any
[any]
commonName = supplied
CNF
    openssl ca -batch -config ca.cnf -cert "$ca.pem" -keyfile "$ca-key.pem" -in "$out.csr" \
      -out "$out.pem" -extfile "$out.ext" -notext "$@" 2>/dev/null
  fi
  rm -f "$out.csr" "$out.ext"
}

ca ca
ca other-ca
leaf ca server "/CN=localhost" "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
for name in "$@"; do
  leaf ca "$name" "/CN=$name" "subjectAltName=DNS:$name
extendedKeyUsage=clientAuth"
  mkdir -p "$name"
  cp ca.pem "$name/ca.pem"
  cp "$name.pem" "$name/cert.pem"
  cp "$name-key.pem" "$name/key.pem"
done
leaf ca cn-only "/O=buildbroker tests/CN=cn-only-client" "extendedKeyUsage=clientAuth"
leaf ca expired "/CN=expired-client" "subjectAltName=DNS:expired-client
extendedKeyUsage=clientAuth" -startdate 20200101000000Z -enddate 20200102000000Z
leaf other-ca stranger "/CN=stranger" "subjectAltName=DNS:stranger
extendedKeyUsage=clientAuth"
for name in cn-only expired stranger; do
  mkdir -p "$name"
  cp ca.pem "$name/ca.pem"
  cp "$name.pem" "$name/cert.pem"
  cp "$name-key.pem" "$name/key.pem"
done
