#!/usr/bin/env bash
# Creates the Python venv for the jetlock JSON-client test in a project-local,
# git-ignored folder (.nats-bin/py-venv) and installs tests/python/
# requirements.txt into it.
# Idempotent: a second run only checks the pins and prints where python is.
# Prints the absolute path of the venv's python on its last line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
prefix="$root/.nats-bin"
venv="$prefix/py-venv"
requirements="$here/requirements.txt"
python="$venv/bin/python"
# Remembers which requirements the venv was built from, so a changed pin
# reinstalls instead of silently testing an old version.
stamp="$venv/.jetlock-requirements"

up_to_date() {
  [ -x "$python" ] && [ -f "$stamp" ] && cmp -s "$requirements" "$stamp" \
    && "$python" -c 'import nats.js' 2>/dev/null
}

if ! up_to_date; then
  host=$(command -v python3 || command -v python || true)
  if [ -z "$host" ]; then
    echo "tests/python/setup.sh: python3 (3.8 or newer, with venv) is needed" >&2
    exit 1
  fi
  echo "creating $venv and installing $(grep -v '^#' "$requirements" | xargs)" >&2
  mkdir -p "$prefix"
  if [ ! -x "$python" ]; then
    rm -rf "$venv"
    if ! "$host" -m venv "$venv" >&2; then
      rm -rf "$venv"
      echo "tests/python/setup.sh: '$host -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
  "$python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
  if ! "$python" -c 'import nats.js' 2>/dev/null; then
    echo "tests/python/setup.sh: nats-py is not importable from $python after install" >&2
    exit 1
  fi
  cp "$requirements" "$stamp"
fi
echo "$python"
