#!/usr/bin/env bash
# Runs the benchmark (benches/pipeline.rs) against a throwaway Synapse and the local
# PostgreSQL, in a release build. Prints ratios against baselines measured in the same run.
# Knobs (environment): BENCH_INTAKE_REQUESTS, BENCH_INTAKE_CONCURRENCY, BENCH_MESSAGES,
# BENCH_ROOMS, BENCH_CONCURRENCY, BENCH_SINGLE_MESSAGES, BENCH_RELAYS, BENCH_OPEN_REQUESTS,
# SWITCHBOARD_TEST_POSTGRES.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchboard/target}
cargo build --release --bench pipeline >&2
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d -t switchboard-bench.XXXXXX)
trap 'scripts/synapse.sh stop --data-dir "$work/synapse" --wipe >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
scripts/synapse.sh start --fresh --port "$port" --data-dir "$work/synapse" >/dev/null
export SWITCHBOARD_TEST_SYNAPSE_DIR=$work/synapse
cargo bench --bench pipeline
