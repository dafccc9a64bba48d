#!/usr/bin/env bash
# Installs the lock services `jetlock bench` compares jetlock with, from
# Debian's packages: Redis, PostgreSQL and etcd. Optional: the bench skips
# a peer that is not installed, and no test needs one. The bench starts each
# peer itself (free loopback port, temp dir) and stops it after; the
# packages' own services are not used, so they are stopped and disabled
# where the package started them.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
$SUDO apt-get update -qq
for pkg in redis-server postgresql etcd-server; do
  if apt-cache show "$pkg" >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$pkg"
  else
    echo "peers.sh: $pkg is not in this system's package lists; the bench will skip it" >&2
  fi
done
# The bench runs its own instances; the distribution's services are not needed.
for svc in redis-server postgresql etcd; do
  if command -v systemctl >/dev/null 2>&1 && systemctl list-unit-files "$svc.service" >/dev/null 2>&1; then
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done
