#!/usr/bin/env bash
# Benchmarks Berth's lifecycle calls on this machine: medians and p90 of
# RunPodSandbox, CreateContainer+StartContainer until Running, ExecSync
# round trip and RemovePodSandbox, the RSS/PSS of idle shims (1 and 50 pods),
# berthd restart time until every container is listed (0 and 50 pods), log
# throughput, and pulls of a ~50 MiB 5-layer image from a local registry
# (cold, and with every layer stored).
# usage: scripts/bench.sh   (BENCH_N: lifecycle rounds, default 20; BENCH_PODS: default 50;
#        BENCH_LOG_BYTES: default 1 GiB; BENCH_PULLS: pull rounds, default 5)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --test >/dev/null
cargo build --workspace --release --locked
bash scripts/build-test-image.sh target/test-image >/dev/null
BERTH_BIN_DIR=$PWD/target/release BERTH_TEST_IMAGE=$PWD/target/test-image ./target/release/berth-bench
