#!/usr/bin/env bash
# footprint.sh - the release binary's size (and its largest sections) and Switchboard's idle
# memory: one webhook source, no end-to-end encryption, SQLite, a throwaway local Synapse,
# resident memory read 30, 40 and 50 s after the start.
#   scripts/footprint.sh [BINARY]   (default: builds target/release/switchboard)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchboard/target}
bin=${1:-}
if [ -z "$bin" ]; then
  cargo build --release >&2
  bin=$CARGO_TARGET_DIR/release/switchboard
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
work=$(mktemp -d -t switchboard-footprint.XXXXXX)
hs_port=$(free_port); sb_port=$(free_port)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  scripts/synapse.sh stop --data-dir "$work/synapse" --wipe >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
echo "binary: $(stat -c %s "$bin") bytes ($bin)"
size -A "$bin" | sort -k2 -n | tail -4 | awk '{printf "  %-20s %10d bytes\n", $1, $2}'
scripts/synapse.sh start --fresh --port "$hs_port" --data-dir "$work/synapse" \
  --register bot:footprint-bot-pw >/dev/null
cat >"$work/switchboard.toml" <<TOML
data_dir = "$work/data"
[http]
listen = "127.0.0.1:$sb_port"
[matrix]
homeserver = "http://127.0.0.1:$hs_port"
user = "@bot:localhost"
password = "footprint-bot-pw"
encryption = false
[sources.tickets]
kind = "webhook"
TOML
"$bin" run --config "$work/switchboard.toml" 2>"$work/switchboard.log" &
pid=$!
for _ in $(seq 1 150); do curl -sf "http://127.0.0.1:$sb_port/health" >/dev/null && break; sleep 0.2; done
sleep 30
for t in 30 40 50; do
  echo "idle resident memory after ${t} s: $(awk '/VmRSS/ {print $2, $3}' "/proc/$pid/status")"
  [ "$t" = 50 ] || sleep 10
done
echo "log lines at WARN or ERROR: $(grep -cE 'WARN|ERROR' "$work/switchboard.log" || true)"
