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

# A throwaway Synapse for this run.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d -t switchboard-test.XXXXXX)
pretix_start=
rt_start=
redmine_start=
chromium_start=
# pretix, RT and Redmine are stopped once their starts are over (they may still be installing).
trap 'scripts/synapse.sh stop --data-dir "$work/synapse" --wipe >/dev/null 2>&1 || true
      [ -z "$pretix_start" ] || wait "$pretix_start" 2>/dev/null || true
      scripts/pretix.sh stop "$work/pretix" >/dev/null 2>&1 || true
      [ -z "$rt_start" ] || wait "$rt_start" 2>/dev/null || true
      scripts/rt.sh stop "$work/rt" >/dev/null 2>&1 || true
      [ -z "$redmine_start" ] || wait "$redmine_start" 2>/dev/null || true
      scripts/redmine.sh stop "$work/redmine" >/dev/null 2>&1 || true
      [ -z "$chromium_start" ] || wait "$chromium_start" 2>/dev/null || true
      scripts/chromium.sh stop "$work/chromium" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
# The shared-secret login module is configured with the secret tests/integration/harness.rs uses.
scripts/synapse.sh start --fresh --port "$port" --data-dir "$work/synapse" \
  --shared-secret-auth switchboard-test-login-secret >/dev/null
export SWITCHBOARD_TEST_SYNAPSE_DIR=$work/synapse

# A throwaway pretix, started while the tests compile (its first start installs and migrates
# for minutes); the tests that need it wait for it, or read why it failed.
pport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/pretix"
( scripts/pretix.sh start "$work/pretix" "$pport" >"$work/pretix/started.json" 2>"$work/pretix/start.log" ||
    touch "$work/pretix/failed" ) &
pretix_start=$!
export SWITCHBOARD_TEST_PRETIX_DIR=$work/pretix

# A throwaway Request Tracker, the same way (its first start installs packages).
rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/rt"
( scripts/rt.sh start "$work/rt" "$rport" >/dev/null 2>"$work/rt/start.log" ||
    touch "$work/rt/failed" ) &
rt_start=$!
export SWITCHBOARD_TEST_RT_DIR=$work/rt

# A throwaway Redmine (Debian's redmine, installed on first use), the same way.
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/redmine"
( scripts/redmine.sh start "$work/redmine" "$mport" >/dev/null 2>"$work/redmine/start.log" ||
    touch "$work/redmine/failed" ) &
redmine_start=$!
export SWITCHBOARD_TEST_REDMINE_DIR=$work/redmine

# A headless Chromium behind ChromeDriver for the status page's browser test (Debian's
# chromium and chromium-driver, installed on first use), the same way.
cport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/chromium"
( scripts/chromium.sh start "$work/chromium" "$cport" >/dev/null 2>"$work/chromium/start.log" ||
    touch "$work/chromium/failed" ) &
chromium_start=$!
export SWITCHBOARD_TEST_CHROMIUM_DIR=$work/chromium

# Benchmarks are not tests: scripts/bench.sh runs them.
cargo test --workspace --lib --bins --tests "$@" -- --test-threads "${SWITCHBOARD_TEST_THREADS:-4}"
