#!/usr/bin/env bash
# Runs every Berth test: installs what is needed, builds the workspace and
# the test image, then the unit and end-to-end tests (real runc, real
# namespaces, real processes; each test in its own temp folders).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --workspace --locked
image=target/test-image
bash scripts/build-test-image.sh "$image" >/dev/null
export BERTH_TEST_IMAGE=$PWD/$image
cargo test --workspace --locked --no-fail-fast -- --test-threads="${BERTH_TEST_THREADS:-4}"
