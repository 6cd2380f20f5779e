#!/usr/bin/env bash
# Installs what Berth needs on a fresh Debian machine: runc (the OCI
# runtime), busybox-static (the test and demo image) and the tools the
# scripts use. Idempotent: installs only what is missing.
set -euo pipefail

need=()
command -v runc >/dev/null 2>&1 || need+=(runc)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v gzip >/dev/null 2>&1 || need+=(gzip)
command -v sha256sum >/dev/null 2>&1 || need+=(coreutils)
command -v ip >/dev/null 2>&1 || need+=(iproute2)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo (Rust) is required" >&2; exit 1; }
echo "setup: runc $(runc --version | head -1 | awk '{print $3}'), busybox-static $(dpkg-query -W -f='${Version}' busybox-static), $(cargo --version)"
