#!/usr/bin/env bash
# Build the CPU container image (docker/Dockerfile.cpu) with podman, also where no container
# registry can be reached, and export it as an OCI archive other runtimes import
# (`ctr images import`, `podman load`).
#
#   tools/image.sh build    build if the content key changed; export the OCI archive
#   tools/image.sh path     print the OCI archive's path (building first if needed)
#   tools/image.sh status   what is built and cached; creates nothing
#   tools/image.sh conf     print the containers.conf path podman needs here (CONTAINERS_CONF)
#
# Base image: python:3.11.9-slim-bookworm when a registry answers (LFADS_IMAGE_BASE=registry),
# else a Debian bookworm root filesystem made with mmdebstrap from the apt mirror (python3 3.11
# from Debian), imported as localhost/lfads-base:bookworm. Default `auto`: registry if reachable.
#
# Python packages: where this machine has local package indexes (/opt/wheels, /opt/pypi), they
# are mounted read-only into the build as extra indexes (torch's CPU wheel comes from there), and
# the host venv's exact versions (`pip freeze` of $PYTHON) are the constraints: the image has the
# versions the tests ran with. PyPI stays the main index (measured: the local indexes lack some
# of the venv's versions, e.g. filelock 4.3.1). Without local indexes: PyPI + PyTorch CPU index.
#
# Cache ($LFADS_IMAGE_CACHE, default ~/.cache/lfads-image): the base rootfs tarball, a content
# key (hash of Dockerfile, pyproject, sources, constraints, base) and the OCI archive; a warm run
# whose key matches and whose image exists returns at once. podman's layer cache does the rest.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${LFADS_IMAGE_CACHE:-$HOME/.cache/lfads-image}
IMAGE=${LFADS_IMAGE:-localhost/lfads-lightning:cpu}
BASE_IMAGE=localhost/lfads-base:bookworm
REGISTRY_BASE=python:3.11.9-slim-bookworm
ROOTFS=$CACHE/bookworm-rootfs.tar
ARCHIVE=$CACHE/lfads-cpu.oci.tar
KEYFILE=$CACHE/content.key
ARCHIVE_ID=$CACHE/lfads-cpu.oci.id
CONF=$CACHE/containers.conf
MIRROR=${LFADS_IMAGE_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${LFADS_IMAGE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# The venv whose versions the image gets (pip freeze): the repository's .venv if there is one.
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x "$ROOT/.venv/bin/python" ] && PYTHON=$ROOT/.venv/bin/python
fi
APT=(apt-get -o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends)
export DEBIAN_FRONTEND=noninteractive
say() { echo "[image] $*" >&2; }
die() { echo "[image] error: $*" >&2; exit 1; }

have_tools() { command -v podman >/dev/null && command -v mmdebstrap >/dev/null && command -v runc >/dev/null && [ -x /usr/libexec/podman/catatonit ]; }

install_tools() {
  have_tools && return 0
  [ "$(id -u)" = 0 ] || die "podman, mmdebstrap and runc are missing; install them: sudo apt-get install podman buildah mmdebstrap runc"
  say "installing podman buildah mmdebstrap runc (apt)"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  "${APT[@]}" install podman buildah mmdebstrap runc uidmap catatonit >/dev/null
}

# crun (podman's default runtime) cannot start containers on hosts that refuse it
# RLIMIT_NOFILE/NPROC ("cgroups in hybrid mode not supported" here); runc with ulimits no higher
# than the host's hard limits works. Written under the cache, the host's own config is untouched.
write_conf() {
  mkdir -p "$CACHE"
  local nofile nproc
  nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
  [ "$nofile" = unlimited ] && nofile=1048576
  [ "$nproc" = unlimited ] && nproc=1048576
  [ "$nofile" -gt 20000 ] && nofile=20000
  [ "$nproc" -gt 32768 ] && nproc=32768
  printf '%s\n' '[containers]' "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]" \
    '[engine]' 'runtime = "runc"' > "$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
}

registry_reachable() {
  timeout 20 podman pull -q "$REGISTRY_BASE" >/dev/null 2>&1
}

image_exists() { podman image exists "$1" 2>/dev/null; }

# The base: a registry's python image, or Debian packages via mmdebstrap (no registry needed).
ensure_base() {
  local mode=${LFADS_IMAGE_BASE:-auto}
  if [ "$mode" = registry ] || { [ "$mode" = auto ] && registry_reachable; }; then
    echo "$REGISTRY_BASE"; return
  fi
  if ! image_exists "$BASE_IMAGE"; then
    if [ ! -s "$ROOTFS" ]; then
      say "no registry: building a Debian bookworm root filesystem with mmdebstrap (~3 min)"
      mmdebstrap --variant=minbase --include=python3,python3-venv,passwd \
        bookworm "$ROOTFS.part.tar" "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
        "deb $SECURITY_MIRROR bookworm-security main" >&2
      mv "$ROOTFS.part.tar" "$ROOTFS"
    fi
    say "importing $ROOTFS as $BASE_IMAGE"
    podman import -q "$ROOTFS" "$BASE_IMAGE" >/dev/null
  fi
  echo "$BASE_IMAGE"
}

local_indexes() { [ -d /opt/pypi/simple ] && [ -d /opt/wheels ]; }

# pip inside the build sees only the mounted local indexes, pinned to the host venv's versions.
write_pip_files() {
  "$PYTHON" -m pip freeze --exclude-editable 2>/dev/null | grep -v '^-e \|@ file:' \
    > "$CACHE/constraints.txt.tmp" || true
  mv "$CACHE/constraints.txt.tmp" "$CACHE/constraints.txt"
  local extra="file:///opt/pypi/simple"
  [ -d /opt/pypi-more/simple ] && extra="$extra file:///opt/pypi-more/simple"
  # PyPI stays the main index: the local indexes do not hold every version the venv has.
  printf '%s\n' '[global]' "extra-index-url = $extra" 'find-links = /opt/wheels' \
    'constraint = /etc/lfads-constraints.txt' 'cert = /etc/ssl/certs/ca-certificates.crt' \
    > "$CACHE/pip.conf"
}

content_key() {
  local base=$1
  {
    echo "base=$base image=$IMAGE"
    cd "$ROOT"
    find docker/Dockerfile.cpu pyproject.toml README.md lfads_lightning launchers -type f \
      -not -name '*.pyc' -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum
    [ -f "$CACHE/constraints.txt" ] && local_indexes && sha256sum "$CACHE/constraints.txt"
  } | sha256sum | cut -d' ' -f1
}

build() {
  install_tools
  write_conf
  export CONTAINERS_CONF=$CONF
  local start=$SECONDS base key
  base=$(ensure_base)
  local_indexes && write_pip_files
  key=$(content_key "$base")
  if [ -s "$ARCHIVE" ] && image_exists "$IMAGE" && [ "$(cat "$KEYFILE" 2>/dev/null)" = "$key" ]; then
    say "$IMAGE is up to date (key ${key:0:12}); archive $ARCHIVE"
    return 0
  fi
  local args=(--build-arg "BASE=$base" -f docker/Dockerfile.cpu -t "$IMAGE")
  [ "$base" = "$BASE_IMAGE" ] && args+=(--pull=never)
  if local_indexes; then
    args+=(--build-arg TORCH_INDEX= -v "$CACHE/pip.conf:/etc/pip.conf:ro"
      -v "$CACHE/constraints.txt:/etc/lfads-constraints.txt:ro" -v /opt/wheels:/opt/wheels:ro
      -v /opt/pypi:/opt/pypi:ro)
    [ -d /opt/pypi-more ] && args+=(-v /opt/pypi-more:/opt/pypi-more:ro)
  fi
  [ -f /etc/ssl/certs/ca-certificates.crt ] &&
    args+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  say "podman build $IMAGE from $base"
  (cd "$ROOT" && podman build --layers "${args[@]}" . >&2)
  local id
  id=$(podman image inspect -f '{{.Id}}' "$IMAGE")
  # Every layer from cache gives the same image id: the archive already holds it.
  if [ -s "$ARCHIVE" ] && [ "$(cat "$ARCHIVE_ID" 2>/dev/null)" = "$id" ]; then
    say "archive $ARCHIVE already holds image ${id:0:12}"
  else
    say "exporting $ARCHIVE (oci-archive)"
    rm -f "$ARCHIVE.tmp"
    podman save -q --format oci-archive -o "$ARCHIVE.tmp" "$IMAGE"
    mv "$ARCHIVE.tmp" "$ARCHIVE"
    echo "$id" > "$ARCHIVE_ID.tmp" && mv "$ARCHIVE_ID.tmp" "$ARCHIVE_ID"
  fi
  echo "$key" > "$KEYFILE.tmp" && mv "$KEYFILE.tmp" "$KEYFILE"
  say "built in $((SECONDS - start)) s; image $(podman image inspect -f '{{.Size}}' "$IMAGE" | numfmt --to=iec) ($IMAGE), archive $(du -h "$ARCHIVE" | cut -f1)"
}

status() {
  echo "cache:   $CACHE"
  echo "rootfs:  $([ -s "$ROOTFS" ] && du -h "$ROOTFS" | cut -f1 || echo absent)"
  echo "archive: $([ -s "$ARCHIVE" ] && echo "$ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))" || echo absent)"
  if command -v podman >/dev/null && [ -f "$CONF" ]; then
    echo "image:   $(CONTAINERS_CONF=$CONF podman image inspect -f '{{.Id}} {{.Size}} bytes' "$IMAGE" 2>/dev/null || echo "$IMAGE absent")"
  else
    echo "image:   podman not installed or never configured by this script"
  fi
}

case "${1:-}" in
  build) build ;;
  path) build; echo "$ARCHIVE" ;;
  status) status ;;
  conf) [ -f "$CONF" ] || write_conf; echo "$CONF" ;;
  *) echo "usage: $0 build|path|status|conf" >&2; exit 2 ;;
esac
