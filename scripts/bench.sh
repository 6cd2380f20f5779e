#!/usr/bin/env bash
# Benchmarks Berth against containerd (its CRI plugin, containerd-shim-runc-v2)
# on this machine, in one run: both driven through the same CRI client code,
# with the same runc, the same locally built images (no download) and the
# same CNI bridge network; lifecycle rounds alternate Berth, containerd,
# Berth, ... Prints medians, p90s and Berth/containerd ratios, with bare
# `runc` as the floor, and writes them to target/bench-results.json.
#
# Measured: RunPodSandbox; CreateContainer+StartContainer until Running;
# ExecSync `true`; StopContainer of a container that exits on SIGTERM;
# StopPodSandbox+RemovePodSandbox; the same lifecycle through a berthctl
# process per call (RunPodSandbox, CreateContainer, StartContainer,
# StopPodSandbox, RemovePodSandbox, each from spawn to exit, as a user or
# crictl sees them); 20 pods started at once (pods/s); PSS/RSS
# of the per-pod processes (Berth: the shim and the pod's pid 1; containerd:
# its shim and the pause process) at 1, 10 and 50 idle pods, the daemon's RSS and its CPU over 10 s idle; daemon
# restart with 50 pods until ListContainers lists them all; 1 GiB of
# 100-byte log lines (MB/s, CPU seconds outside the container per GiB); cold
# and cached pulls of a 50 MiB 5-layer image from a registry on loopback;
# Version latency while four clients poll ContainerStats of a container
# with BENCH_FILES (1 000 000) files in its writable layer.
#
# usage: scripts/bench.sh
#   BENCH_N lifecycle rounds (20), BENCH_PODS idle pods (50), BENCH_BURST (20),
#   BENCH_LOG_BYTES (1 GiB), BENCH_PULLS pull rounds (3), BENCH_OUT (JSON path).
# containerd (installed by setup.sh --bench) runs in its own temp root,
# state and socket; the system's containerd (if any) is not touched.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
# berth-bench deletes its bridge itself, unless it died (release builds
# abort on panic).
trap 'ip link del bbench0 2>/dev/null || true' EXIT

bash scripts/setup.sh --test --bench >/dev/null
cargo build --workspace --release --locked
bash scripts/build-test-image.sh target/test-image >/dev/null
bash scripts/build-test-image.sh --pause target/pause-image >/dev/null
BERTH_BIN_DIR=$PWD/target/release BERTH_TEST_IMAGE=$PWD/target/test-image \
  BENCH_PAUSE_IMAGE=$PWD/target/pause-image ./target/release/berth-bench
