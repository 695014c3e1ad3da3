#!/usr/bin/env bash
# Pack a directory into a one-layer OCI image archive that `ctr images import` accepts:
#
#   tools/k8s/oci_archive.sh ROOTFS_DIR IMAGE_NAME OUT.tar [ENTRYPOINT...]
#
# Why by hand: the CRI plugin needs a sandbox ("pause") image and no registry is reachable here
# to pull one, and no image builder is required by the cluster. An OCI image is a few JSON
# documents plus a layer tarball, all addressed by sha256: this writes exactly those (oci-layout,
# index.json, the manifest, the config and one gzip layer). The files are owned by 0:0 and dated
# at the epoch, so the same directory always gives the same image digest.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 ROOTFS_DIR IMAGE_NAME OUT.tar [ENTRYPOINT...]" >&2; exit 2; }
ROOTFS=$1 NAME=$2 OUT=$3
shift 3
ENTRY=$(printf '"%s",' "$@")
ENTRY="[${ENTRY%,}]"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lfads-oci.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/blobs/sha256"
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
blob() { local d; d=$(sha "$1"); mv "$1" "$WORK/blobs/sha256/$d"; echo "$d"; }

tar -C "$ROOTFS" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$WORK/layer.tar" .
diff_id=$(sha "$WORK/layer.tar")
gzip -n -9 "$WORK/layer.tar"
layer_size=$(size "$WORK/layer.tar.gz")
layer=$(blob "$WORK/layer.tar.gz")

printf '%s' '{"architecture":"amd64","os":"linux","config":{"Entrypoint":'"$ENTRY"',"WorkingDir":"/"},' \
  '"rootfs":{"type":"layers","diff_ids":["sha256:'"$diff_id"'"]}}' >"$WORK/config.json"
config_size=$(size "$WORK/config.json")
config=$(blob "$WORK/config.json")

printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",' \
  '"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config"'","size":'"$config_size"'},' \
  '"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'"$layer"'","size":'"$layer_size"'}]}' \
  >"$WORK/manifest.json"
manifest_size=$(size "$WORK/manifest.json")
manifest=$(blob "$WORK/manifest.json")

# io.containerd.image.name: the name `ctr images import` gives the image.
printf '%s' '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",' \
  '"digest":"sha256:'"$manifest"'","size":'"$manifest_size"',' \
  '"platform":{"architecture":"amd64","os":"linux"},' \
  '"annotations":{"io.containerd.image.name":"'"$NAME"'","org.opencontainers.image.ref.name":"'"${NAME##*:}"'"}}]}' \
  >"$WORK/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$WORK/oci-layout"
tar -C "$WORK" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
  -cf "$OUT.tmp" oci-layout index.json blobs
mv "$OUT.tmp" "$OUT"
