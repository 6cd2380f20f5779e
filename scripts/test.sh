#!/usr/bin/env bash
# Runs every Berth test: installs what is needed, builds the workspace and
# the test image, then the unit and end-to-end tests (real runc, real
# namespaces, real processes; each test in its own temp folders).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --test
# A clean checkout gains nothing from incremental state but its size on disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo build --workspace --locked
# Workspace lints (unsafe only where a module allows it, every unsafe block
# with its SAFETY note) and clippy's defaults, as errors.
cargo clippy --workspace --all-targets --locked -- -D warnings
image=target/test-image
bash scripts/build-test-image.sh "$image" >/dev/null
export BERTH_TEST_IMAGE=$PWD/$image

out=$(mktemp)
# Tests that could not check (all or part of) what they are for say so here.
export BERTH_TEST_SKIP_LOG=$(mktemp)
trap 'rm -f "$out" "$BERTH_TEST_SKIP_LOG"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast --tests -- --test-threads="${BERTH_TEST_THREADS:-4}" 2>&1 | tee "$out" || status=$?
# The unit tests again as a normal user: none of them may need root.
unprivileged=passed
bash scripts/test-unprivileged.sh || { unprivileged=FAILED; status=1; }
# Two minutes of churn (scripts/soak.sh): 50 pods made and removed in loops;
# everything must be back at its baseline afterwards.
soak=passed
bash scripts/soak.sh "${BERTH_SOAK_MINUTES:-2}" 2>&1 | tee -a "$out" || { soak=FAILED; status=1; }
# One closing line over every test binary.
if [ -s "$BERTH_TEST_SKIP_LOG" ]; then
  echo "skipped, or checked in part, on this host:"
  sort "$BERTH_TEST_SKIP_LOG" | sed 's/^/  /'
fi
skipped=$(grep -c ': SKIP: ' "$BERTH_TEST_SKIP_LOG" || true)
partly=$(grep -c ': SKIP (part): ' "$BERTH_TEST_SKIP_LOG" || true)
awk -v skipped="$skipped" -v partly="$partly" -v soak="$soak" -v unprivileged="$unprivileged" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1); if ($i ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "summary: %d passed (%d of them skipped, %d checked in part), %d failed, %d ignored; unit tests as a normal user %s; soak %s\n", p, skipped, partly, f, s, unprivileged, soak }' "$out"
exit "$status"
