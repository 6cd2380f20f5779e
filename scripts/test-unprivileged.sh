#!/usr/bin/env bash
# Runs the workspace's unit tests (`cargo test --lib`) as a normal user
# (nobody): the manager's recovery and rollback tables and every other unit
# test must need no root. Built as the caller, run as nobody from copies in
# a folder nobody can read, so the checkout's own permissions do not matter.
set -euo pipefail
cd "$(dirname "$0")/.."
user=${BERTH_UNPRIVILEGED_USER:-nobody}
uid=$(id -u "$user") gid=$(id -g "$user")
bins=$(cargo test --workspace --lib --locked --no-run --message-format=json 2>/dev/null | /usr/bin/python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])
')
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
chmod 755 "$dir"
status=0
for b in $bins; do
  cp "$b" "$dir/"
  name=$(basename "$b")
  echo "unprivileged: $name"
  (cd "$dir" && setpriv --reuid="$uid" --regid="$gid" --clear-groups env HOME="$dir" TMPDIR=/tmp "./$name" -q) || status=1
done
exit $status
