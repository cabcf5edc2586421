#!/usr/bin/env bash
# Runs every test: unit tests, and the end-to-end suite against a real Synapse and a real
# pretix (both installed from PyPI into ~/.cache/switchboard on first use), a real Request
# Tracker and a real Redmine (Debian's request-tracker5 and redmine, installed with apt on
# first use), the local PostgreSQL, and headless Chromium (Debian's, the same way) for the
# status page.
#   SWITCHBOARD_TEST_POSTGRES  server URL without a database (postgres://postgres@127.0.0.1:5432)
#   SWITCHBOARD_TEST_THREADS   tests run at once (default 4)
#   extra arguments go to `cargo test` (e.g. a test name filter)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchboard/target}
export SWITCHBOARD_TEST_POSTGRES=${SWITCHBOARD_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432}

log() { echo "test.sh: $*" >&2; }

command -v cargo >/dev/null || { log "cargo is needed (https://rustup.rs)"; exit 1; }
command -v python3 >/dev/null || { log "python3 is needed for the test homeserver"; exit 1; }

# PostgreSQL: start the local cluster if it is installed but down.
pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
if ! pg_up && command -v pg_ctlcluster >/dev/null; then
  log "starting the local PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
fi
pg_up || { log "PostgreSQL is not reachable at 127.0.0.1:5432"; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
work=$(mktemp -d -t switchboard-test.XXXXXX)
peers=()  # started by start_peer
starts=() # their starts, running in the background
cleanup() {
  scripts/synapse.sh stop --data-dir "$work/synapse" --wipe >/dev/null 2>&1 || true
  local p
  # A peer is stopped once its start is over (it may still be installing).
  for p in ${starts[@]+"${starts[@]}"}; do wait "$p" 2>/dev/null || true; done
  for p in ${peers[@]+"${peers[@]}"}; do "scripts/$p.sh" stop "$work/$p" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# A throwaway Synapse for this run. The shared-secret login module is configured with the
# secret tests/integration/harness.rs uses.
scripts/synapse.sh start --fresh --port "$(free_port)" --data-dir "$work/synapse" \
  --shared-secret-auth switchboard-test-login-secret >/dev/null
export SWITCHBOARD_TEST_SYNAPSE_DIR=$work/synapse

# start_peer NAME: a throwaway instance of scripts/NAME.sh in $work/NAME on a free port,
# started in the background while the tests compile (a first start installs for minutes);
# the tests that need it wait for it, or read why it failed (start.log).
start_peer() {
  mkdir -p "$work/$1"
  ( "scripts/$1.sh" start "$work/$1" "$(free_port)" >"$work/$1/started.json" 2>"$work/$1/start.log" ||
      touch "$work/$1/failed" ) &
  starts+=($!)
  peers+=("$1")
}
start_peer pretix   # PyPI's, installed and migrated on first use
export SWITCHBOARD_TEST_PRETIX_DIR=$work/pretix
start_peer rt       # Debian's request-tracker5, installed on first use
export SWITCHBOARD_TEST_RT_DIR=$work/rt
start_peer redmine  # Debian's redmine, installed on first use
export SWITCHBOARD_TEST_REDMINE_DIR=$work/redmine
start_peer chromium # Debian's chromium and chromium-driver, for the status page's browser test
export SWITCHBOARD_TEST_CHROMIUM_DIR=$work/chromium

# Benchmarks are not tests: scripts/bench.sh runs them.
cargo test --workspace --lib --bins --tests "$@" -- --test-threads "${SWITCHBOARD_TEST_THREADS:-4}"
