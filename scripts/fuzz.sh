#!/usr/bin/env bash
# Runs every fuzz target (fuzz/src/lib.rs) for SECONDS each (default 60)
# on a release build, corpus first, and prints executions per second. A
# failing input is saved as fuzz/corpus/<target>/crash-N and the script
# exits non-zero. `scripts/test.sh` runs the same targets briefly.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
cargo build --release --locked -p berth-fuzz
exec ./target/release/berth-fuzz --seconds "$seconds" "$@"
