#!/usr/bin/env bash
# Builds a small OCI image layout from Debian's busybox-static, with no
# download: one gzip layer holding busybox, its applet links and a minimal
# /etc (root, an unprivileged "app" user with uid 1000, groups).
#
# usage: scripts/build-test-image.sh [--pause] OUT_DIR [IMAGE_NAME]
# IMAGE_NAME defaults to docker.io/library/berth-test:latest (with --pause:
# berth.local/pause:bench, an image of one static pause binary). Idempotent:
# the same busybox gives the same digests.
set -euo pipefail

pause=false
if [ "${1:-}" = "--pause" ]; then pause=true; shift; fi
out=${1:?usage: build-test-image.sh [--pause] OUT_DIR [IMAGE_NAME]}
if $pause; then name=${2:-berth.local/pause:bench}; else name=${2:-docker.io/library/berth-test:latest}; fi
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "build-test-image: $busybox not found (apt-get install busybox-static)" >&2; exit 1; }
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
process='"Cmd":["sh"]'
if $pause; then
  # --pause: a sandbox image for runtimes that need one (containerd in
  # scripts/bench.sh): one static binary from scripts/pause.c.
  mkdir -p "$root"
  gcc -Os -static -s -o "$root/pause" "$(dirname "$0")/pause.c"
  process='"Entrypoint":["/pause"]'
else
mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root,home/app,var/log}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
mkdir -p "$root/usr" && ln -s ../bin "$root/usr/bin" && ln -s bin "$root/sbin"
cat > "$root/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat > "$root/etc/group" <<'G'
root:x:0:
app:x:1000:
extra:x:2000:app
nogroup:x:65534:
G
chown 1000:1000 "$root/home/app"
fi

# Owners as built (root, and app for /home/app); fixed order and times make
# the digests reproducible.
tar --sort=name --numeric-owner --mtime=@0 -C "$root" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -9 -c "$work/layer.tar" > "$work/layer.tar.gz"

rm -rf "$out"
mkdir -p "$out/blobs/sha256"
put() { # file -> prints "digest size"
  local d s
  d=$(sha256sum "$1" | cut -d' ' -f1)
  s=$(stat -c %s "$1")
  cp "$1" "$out/blobs/sha256/$d"
  echo "$d $s"
}
read -r layer_d layer_s < <(put "$work/layer.tar.gz")

cat > "$work/config.json" <<C
{"architecture":"$arch","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],$process,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},"history":[{"created_by":"berth scripts/build-test-image.sh"}]}
C
read -r config_d config_s < <(put "$work/config.json")

cat > "$work/manifest.json" <<M
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_d","size":$config_s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer_d","size":$layer_s}]}
M
read -r manifest_d manifest_s < <(put "$work/manifest.json")

tag=${name##*:}
cat > "$out/index.json" <<I
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_d","size":$manifest_s,"platform":{"architecture":"$arch","os":"linux"},"annotations":{"io.containerd.image.name":"$name","org.opencontainers.image.ref.name":"$tag"}}]}
I
echo '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
echo "built $name (manifest sha256:$manifest_d) in $out"
