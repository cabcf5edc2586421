#!/usr/bin/env bash
# chromium.sh - a loopback-only ChromeDriver driving headless Chromium (Debian's chromium and
# chromium-driver), for Switchboard's browser tests of its status page.
#
#   scripts/chromium.sh start DIR PORT   installs the packages if needed, starts ChromeDriver
#                                        on 127.0.0.1:PORT and prints DIR/state.json
#   scripts/chromium.sh stop  DIR [--wipe]
#
# Needs root to install (apt). Env: SWITCHBOARD_CACHE (~/.cache/switchboard).
set -euo pipefail

CACHE=${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}
PKGS="chromium chromium-driver"

log() { echo "chromium.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,9{s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }
alive() { [ -r "/proc/$1/stat" ] && ! awk '{exit !($3=="Z")}' "/proc/$1/stat"; }

ensure_packages() {
  mkdir -p "$CACHE"
  (
    flock -w 900 9 || die "timed out waiting for $CACHE/chromium-install.lock"
    local missing=0 p
    for p in $PKGS; do installed "$p" || missing=1; done
    [ "$missing" = 0 ] && exit 0
    [ "$(id -u)" = 0 ] || die "installing Chromium needs root (apt-get install $PKGS)"
    log "installing $PKGS (~1 min on a bare system) ..."
    export DEBIAN_FRONTEND=noninteractive
    # Another install (RT's or Redmine's, started beside this one) is waited for.
    apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends $PKGS >&2 || {
      apt-get -o DPkg::Lock::Timeout=900 update -qq >&2
      apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends $PKGS >&2
    } || die "apt-get install failed"
  ) 9>"$CACHE/chromium-install.lock"
}

start() {
  [ $# -eq 2 ] || usage
  local dir=$1 port=$2
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ -f "$dir/pid" ] && alive "$(cat "$dir/pid")"; then
    cat "$dir/state.json"
    return
  fi
  ensure_packages
  # ChromeDriver takes connections from this host only, by default.
  setsid chromedriver --port="$port" >"$dir/chromedriver.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
  local i
  for i in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/status" >/dev/null 2>&1 && break
    alive "$(cat "$dir/pid")" || die "chromedriver stopped: $(tail -n 5 "$dir/chromedriver.log")"
    sleep 0.2
  done
  curl -fs "http://127.0.0.1:$port/status" >/dev/null || die "chromedriver does not answer on $port"
  printf '{"webdriver": "http://127.0.0.1:%s", "chromium": "%s"}\n' "$port" "$(command -v chromium)" \
    >"$dir/state.json.tmp"
  mv "$dir/state.json.tmp" "$dir/state.json"
  cat "$dir/state.json"
}

stop() {
  [ $# -ge 1 ] || usage
  local dir=$1
  if [ -f "$dir/pid" ]; then
    local pid
    pid=$(cat "$dir/pid")
    if alive "$pid"; then
      kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/pid" "$dir/state.json"
  fi
  [ "${2:-}" != "--wipe" ] || rm -rf "$dir"
}

cmd=${1:-}
shift || true
case "$cmd" in
  start) start "$@" ;;
  stop) stop "$@" ;;
  *) usage ;;
esac
