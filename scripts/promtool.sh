#!/usr/bin/env bash
# promtool.sh - prints the path of Prometheus's promtool, taken from Debian's `prometheus`
# package into the cache (the package is downloaded, not installed: no service starts).
#   scripts/promtool.sh            the path
#   scripts/promtool.sh ARGS...    runs promtool with ARGS
# Env: SWITCHBOARD_CACHE (~/.cache/switchboard).
set -euo pipefail
CACHE=${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}
dir=$CACHE/promtool
tool=$dir/usr/bin/promtool
mkdir -p "$CACHE"
(
  flock -w 300 9 || { echo "promtool.sh: timed out waiting for the lock" >&2; exit 1; }
  if [ ! -x "$tool" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # apt's sandbox user must be able to write where the package lands.
    chmod 777 "$work"
    if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
      apt-get -o DPkg::Lock::Timeout=900 update -qq >&2
      (cd "$work" && apt-get download prometheus >/dev/null) ||
        { echo "promtool.sh: apt-get download prometheus failed" >&2; exit 1; }
    fi
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    dpkg-deb -x "$work"/prometheus_*.deb "$dir.tmp"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
) 9>"$CACHE/promtool.lock"
if [ $# -eq 0 ]; then
  echo "$tool"
else
  exec "$tool" "$@"
fi
