#!/usr/bin/env bash
# The chaos test (scripts/chaos.py; docs/reliability.md): signed webhooks while Switchboard is
# SIGKILLed every 2 s and the homeserver stops, then every room read back and checked. Not a
# CI test: run it by hand, like the benchmark. Builds the release binary if it is missing
# (or uses SWITCHBOARD_BIN). Arguments go to the driver: scripts/chaos.sh --help.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchboard/target}
command -v python3 >/dev/null || { echo "chaos.sh: python3 is needed" >&2; exit 2; }
case " $* " in *" -h "*|*" --help "*) exec python3 scripts/chaos.py "$@" ;; esac
if [ -z "${SWITCHBOARD_BIN:-}" ]; then
  export SWITCHBOARD_BIN=$CARGO_TARGET_DIR/release/switchboard
  [ -x "$SWITCHBOARD_BIN" ] || cargo build --release --bin switchboard >&2
fi
work=$(mktemp -d -t switchboard-chaos.XXXXXX)
keep=no
case " $* " in *" --keep "*) keep=yes ;; esac
cleanup() {
  # Whatever the driver left running if it died: the homeserver, Switchboard, a database.
  scripts/synapse.sh stop --data-dir "$work/synapse" >/dev/null 2>&1 || true
  pkill -KILL -f "switchboard run --config $work/" 2>/dev/null || true
  if [ -f "$work/pg_database" ] && [ "$keep" = no ]; then
    { read -r url; read -r db; } <"$work/pg_database"
    psql "$url" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
  fi
  if [ "$keep" = no ]; then rm -rf "$work"; else echo "chaos.sh: kept $work" >&2; fi
}
trap cleanup EXIT
python3 scripts/chaos.py --work-dir "$work" --owned-work-dir "$@"
