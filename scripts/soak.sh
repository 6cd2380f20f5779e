#!/usr/bin/env bash
# Churn soak: `scripts/soak.sh [minutes]` (default 10) starts a berthd of its
# own (folders under /tmp, the node's CNI network) and runs berth-soak
# against it: SOAK_PODS (50) pod slots, each looping run pod, create and
# start a log-flooding container, exec, attach now and then, stop, remove.
# Every 10 s it prints berthd's fds, threads and RSS, the shims, mounts, pod
# cgroups and state folders; it fails if anything is not back at its
# baseline afterwards, or if any call failed. SOAK_PROFILE=release measures
# the release build (scripts/test.sh runs two minutes of the debug one).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
profile=${SOAK_PROFILE:-debug}
pods=${SOAK_PODS:-50}

bash scripts/setup.sh >/dev/null
if [ "$profile" = release ]; then
  cargo build --release --workspace --locked
else
  cargo build --workspace --locked
fi
bin=$PWD/target/$profile
dir=$(mktemp -d /tmp/berth-soak.XXXXXX)
root=$dir/r state=$dir/s sock=$dir/s/berth.sock
mkdir -p "$state"
bash scripts/build-test-image.sh "$dir/image" >/dev/null

"$bin/berthd" --root "$root" --state "$state" --listen "$sock" --log-level warn >"$dir/berthd.log" 2>&1 &
berthd=$!
ctl() { "$bin/berthctl" --endpoint "unix://$sock" "$@"; }
cleanup() {
  status=$?
  # Whatever a failed run left: pods through berthd, then berthd by pid,
  # then mounts under the soak's own folder.
  if kill -0 "$berthd" 2>/dev/null; then
    for p in $(ctl pods -q 2>/dev/null); do ctl rmp "$p" >/dev/null 2>&1 || true; done
    kill "$berthd" 2>/dev/null || true
    wait "$berthd" 2>/dev/null || true
  fi
  awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ]; then
    echo "soak: berthd's log (last lines):" >&2
    tail -20 "$dir/berthd.log" >&2 || true
  fi
  rm -rf "$dir"
  exit "$status"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$sock" ] && ctl version >/dev/null 2>&1 && break; sleep 0.1; done
ctl image import "$dir/image" >/dev/null

echo "soak: $pods pods for $minutes min against berthd pid $berthd ($profile build)"
"$bin/berth-soak" --socket "$sock" --berthd-pid "$berthd" --root "$root" --state "$state" \
  --logs "$dir/logs" --minutes "$minutes" --pods "$pods"
