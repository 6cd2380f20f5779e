#!/usr/bin/env bash
# Runs every Berth test: installs what is needed, builds the workspace and
# the test image, then the unit and end-to-end tests (real runc, real
# namespaces, real processes; each test in its own temp folders).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --test
cargo build --workspace --locked
image=target/test-image
bash scripts/build-test-image.sh "$image" >/dev/null
export BERTH_TEST_IMAGE=$PWD/$image

out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast --tests -- --test-threads="${BERTH_TEST_THREADS:-4}" 2>&1 | tee "$out" || status=$?
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1); if ($i ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, s }' "$out"
exit "$status"
