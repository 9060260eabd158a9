#!/usr/bin/env bash
# Resolve latency per source kind, with a real GNOME Keyring on a private session bus so the
# Secret Service is measured too. Needs dbus, gnome-keyring, libsecret-tools and keyutils
# (tests/testbed/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
export XDG_DATA_HOME=$home/data XDG_RUNTIME_DIR=$home/run
mkdir -p "$XDG_DATA_HOME" "$XDG_RUNTIME_DIR"
dbus-run-session -- bash -c '
  printf pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null
  printf secret-service-token-value | secret-tool store --label bench service buildbroker-bench username token
  cargo bench --bench sources
'
