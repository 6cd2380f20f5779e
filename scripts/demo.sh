#!/usr/bin/env bash
# Starts berthd with a demo pod and follows its container's log.
# Everything lives in its own folders (/var/lib/berth-demo, /run/berth-demo;
# DEMO_ROOT and DEMO_STATE move them); Ctrl-C (or DEMO_SECONDS elapsing)
# removes the pod and stops berthd, and says what it did.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --workspace --locked
bin=$PWD/target/debug
root=${DEMO_ROOT:-/var/lib/berth-demo}
state=${DEMO_STATE:-/run/berth-demo}
sock=$state/berth.sock
mkdir -p "$state"
bash scripts/build-test-image.sh "$state/image" >/dev/null

# berthd gets a session of its own: Ctrl-C in this terminal signals this
# script's process group, and berthd must still be there to remove the pod.
setsid "$bin/berthd" --root "$root" --state "$state" --listen "$sock" >"$state/berthd.log" 2>&1 &
berthd=$!
echo "$berthd" > "$state/berthd.pid"
ctl() { "$bin/berthctl" --endpoint "unix://$sock" "$@"; }
pod=
cleanup() {
  trap '' INT TERM
  status=0
  if [ -n "$pod" ]; then
    shim=$(ctl inspectp "$pod" 2>/dev/null | sed -n 's/^ *"pid": \([0-9]*\).*/\1/p' | head -1)
    if err=$(ctl stopp "$pod" 2>&1 && ctl rmp "$pod" 2>&1); then
      echo "demo: pod ${pod:0:13} stopped and removed"
    else
      echo "demo: removing pod ${pod:0:13} failed: $err" >&2
      status=1
    fi
    # The shim ends with its pod; wait for it (by pid) so its mounts are gone.
    for _ in $(seq 50); do [ -n "$shim" ] && kill -0 "$shim" 2>/dev/null || break; sleep 0.1; done
    if [ -n "$shim" ] && kill -0 "$shim" 2>/dev/null; then
      echo "demo: the pod's shim (pid $shim) is still running" >&2
      status=1
    fi
  fi
  kill "$berthd" 2>/dev/null || true
  wait "$berthd" 2>/dev/null || true
  left=$(awk -v s="$state/" 'index($5, s) == 1 { print $5 }' /proc/self/mountinfo)
  if [ -n "$left" ]; then
    echo "demo: mounts left under $state: $left" >&2
    status=1
  fi
  echo "demo: berthd stopped (its log: $state/berthd.log)"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 0' INT TERM
for _ in $(seq 100); do [ -S "$sock" ] && ctl version >/dev/null 2>&1 && break; sleep 0.1; done

ctl image import "$state/image"
cat > "$state/pod.json" <<JSON
{"metadata": {"name": "demo", "namespace": "default", "uid": "demo-uid", "attempt": 0},
 "hostname": "demo", "log_directory": "$state/logs/demo", "linux": {}}
JSON
cat > "$state/container.json" <<'JSON'
{"metadata": {"name": "greeter"}, "image": {"image": "berth-test"},
 "command": ["sh", "-c", "i=0; while true; do echo \"hello from $(hostname), line $i\"; i=$((i+1)); sleep 1; done"],
 "log_path": "greeter/0.log"}
JSON
# A demo pod left by an interrupted run holds the name; remove it first, and
# its old log, so the log shows this run.
for old in $(ctl pods -q); do ctl rmp "$old" >/dev/null; done
rm -rf "$state/logs"
pod=$(ctl runp "$state/pod.json")
ctr=$(ctl create "$pod" "$state/container.json" "$state/pod.json")
ctl start "$ctr" >/dev/null
ip=$(ctl inspectp "$pod" | sed -n 's/.*"ip": "\([^"]*\)".*/\1/p' | head -1)
echo "demo: pod ${pod:0:13} (IP ${ip:-none}), container ${ctr:0:13}; log file $state/logs/demo/greeter/0.log"
ctl pods
ctl ps
echo "demo: following the container's log (Ctrl-C to stop)"
if [ -n "${DEMO_SECONDS:-}" ]; then
  timeout "$DEMO_SECONDS" "$bin/berthctl" --endpoint "unix://$sock" logs -f "$ctr" || true
else
  ctl logs -f "$ctr"
fi
