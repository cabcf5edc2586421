#!/usr/bin/env bash
# Runs a benchmark in a release build; each prints ratios against baselines measured in the
# same run.
#   scripts/bench.sh           benches/pipeline.rs against a throwaway Synapse and the local
#                              PostgreSQL. Knobs (environment): BENCH_INTAKE_REQUESTS,
#                              BENCH_INTAKE_CONCURRENCY, BENCH_MESSAGES, BENCH_ROOMS,
#                              BENCH_CONCURRENCY, BENCH_SINGLE_MESSAGES, BENCH_RELAYS,
#                              BENCH_OPEN_REQUESTS, SWITCHBOARD_TEST_POSTGRES.
#   scripts/bench.sh redmine   benches/redmine_poll.rs against a throwaway Redmine: requests
#                              per poll. Knobs: BENCH_REDMINE_ISSUES, BENCH_REDMINE_CHANGED.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchboard/target}
work=$(mktemp -d -t switchboard-bench.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
if [ "${1:-}" = redmine ]; then
  cargo build --release --bench redmine_poll >&2
  trap 'scripts/redmine.sh stop "$work/redmine" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
  scripts/redmine.sh start "$work/redmine" "$(free_port)" >/dev/null
  export SWITCHBOARD_TEST_REDMINE_DIR=$work/redmine
  cargo bench --bench redmine_poll
  exit
fi
cargo build --release --bench pipeline >&2
trap 'scripts/synapse.sh stop --data-dir "$work/synapse" --wipe >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
scripts/synapse.sh start --fresh --port "$(free_port)" --data-dir "$work/synapse" >/dev/null
export SWITCHBOARD_TEST_SYNAPSE_DIR=$work/synapse
cargo bench --bench pipeline
