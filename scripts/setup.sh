#!/usr/bin/env bash
# Installs what Berth needs on a fresh Debian machine: runc (the OCI
# runtime), busybox-static (the test and demo image), the CNI plugins and
# iptables (pod networking), a C compiler (the shim's pod init), and the
# tools the scripts use; writes a default CNI configuration when
# /etc/cni/net.d has none. Idempotent: installs only what is missing and
# never overwrites a configuration.
set -euo pipefail

need=()
command -v runc >/dev/null 2>&1 || need+=(runc)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v gzip >/dev/null 2>&1 || need+=(gzip)
command -v sha256sum >/dev/null 2>&1 || need+=(coreutils)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
[ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# The build: the shim carries a pod init written in C (shim/pod-init/), built
# with the C compiler against the kernel's system call headers.
command -v cc >/dev/null 2>&1 || need+=(gcc)
dpkg -s linux-libc-dev >/dev/null 2>&1 || need+=(linux-libc-dev)
# --test adds what only the tests use: a registry to pull from (Debian's
# docker-registry, started by the tests on loopback, never as a service),
# htpasswd for its basic auth, openssl for its certificates and tokens, and
# Go with spdystream for a real SPDY client.
test=false bench=false
for arg in "$@"; do
  case "$arg" in
    --test) test=true ;;
    --bench) bench=true ;;
    *) echo "setup: unknown option $arg (--test, --bench)" >&2; exit 2 ;;
  esac
done
if $test; then
  command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
  command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  # A real SPDY peer for the streaming tests: Go's spdystream (what
  # kubelet and crictl use), built by the tests from tests/peers/.
  command -v go >/dev/null 2>&1 || need+=(golang-go)
  [ -d /usr/share/gocode/src/github.com/docker/spdystream ] || need+=(golang-github-docker-spdystream-dev)
  # gRPC-Go 1.33 (what kubelet 1.28 links) for a CRI client that sends the
  # socket path as its :authority.
  [ -d /usr/share/gocode/src/google.golang.org/grpc ] || need+=(golang-google-grpc-dev)
  # The Prometheus project's own text-format parser, to scrape /metrics.
  # Debian's python3 (the package installs for it), not one earlier on PATH.
  /usr/bin/python3 -c 'import prometheus_client.parser' 2>/dev/null || need+=(python3-prometheus-client)
fi
# --bench adds containerd (run side by side by scripts/bench.sh in folders of
# its own, never as a service) and gcc for the pause image it needs.
if $bench; then
  command -v containerd >/dev/null 2>&1 || need+=(containerd)
  command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d 101: packages that ship a service (docker-registry,
  # containerd) must not start it; the tests and the bench run their own.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# A default pod network: bridge cni0, 10.88.0.0/16, outbound NAT, host ports.
if ! ls /etc/cni/net.d/*.conf /etc/cni/net.d/*.conflist >/dev/null 2>&1; then
  mkdir -p /etc/cni/net.d
  cat > /etc/cni/net.d/10-berth.conflist <<'JSON'
{
  "cniVersion": "1.0.0",
  "name": "berth",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  echo "setup: wrote the default CNI configuration /etc/cni/net.d/10-berth.conflist"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo (Rust) is required" >&2; exit 1; }
echo "setup: runc $(runc --version | head -1 | awk '{print $3}'), busybox-static $(dpkg-query -W -f='${Version}' busybox-static), $(cargo --version)"
