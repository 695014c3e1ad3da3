#!/usr/bin/env bash
# Build the Kubernetes node + control plane used by the `k8s` tests: kube-apiserver,
# kube-controller-manager (it runs the real Job controller), kube-scheduler and the kubelet,
# version 1.20.2, from Debian bookworm's `kubernetes` source package, whose tarball vendors every
# Go dependency (no Go module proxy needed), plus `pause`, the pod sandbox's process, compiled
# from the same tree's build/pause/linux/pause.c (no registry here to pull a pause image from).
# No Debian binary package ships these programs.
#
# Why cache: a cold build takes minutes on 2 cores. Binaries land in
# $LFADS_K8S_CACHE (default ~/.cache/lfads-k8s/1.20.2)/bin and a second run returns at once.
# Only the missing binaries are built, all Go ones in one `make` (they share most packages, so
# one make compiles those once). The 2.7 GB source tree is deleted after the build.
set -euo pipefail

VERSION=1.20.2
CACHE=${LFADS_K8S_CACHE:-$HOME/.cache/lfads-k8s/$VERSION}
BIN=$CACHE/bin
GO_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
NEED=("${GO_BINS[@]}" pause)
say() { echo "[k8s-build] $*"; }

missing() { for b in "$@"; do [ -x "$BIN/$b" ] || echo "$b"; done; }
have_bins() { [ -z "$(missing "${NEED[@]}")" ]; }
have_tools() { command -v etcd >/dev/null && command -v openssl >/dev/null && command -v curl >/dev/null; }

APT=(apt-get -o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends)
export DEBIAN_FRONTEND=noninteractive

if have_bins && have_tools; then
  say "cached binaries in $BIN"; exit 0
fi

if ! have_tools; then
  say "installing etcd-server, openssl, curl"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  "${APT[@]}" install etcd-server openssl curl >/dev/null
fi
if have_bins; then say "cached binaries in $BIN"; exit 0; fi

t0=$SECONDS
# Source packages: a deb-src entry for the same Debian archive apt already uses.
# deb822 format with the archive key, so it agrees with the "deb" entry for the same URI.
SRC=/etc/apt/sources.list.d/lfads-k8s-src.sources
if ! grep -rqs '^deb-src .*bookworm\|^Types:.*deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  printf '%s\n' 'Types: deb-src' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm' \
    'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' > "$SRC"
fi
apt-get -o DPkg::Lock::Timeout=600 update -qq
# golang-go is Go 1.19 in bookworm; make + rsync are what the upstream Makefile calls;
# gcc + libc6-dev (libc.a) link the static pause binary.
"${APT[@]}" install golang-go make rsync dpkg-dev gcc libc6-dev >/dev/null

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lfads-k8s-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
say "fetching the kubernetes $VERSION source package into $WORK"
# bookworm's package is versioned 1.20.5+really1.20.2: the source is upstream 1.20.2.
apt-get source --download-only kubernetes >/dev/null 2>&1
tar xzf kubernetes_*.orig.tar.gz
SRCDIR=$(find "$WORK" -maxdepth 1 -type d -name "kubernetes-*" | head -n 1)
# The Makefile builds in GOPATH mode: the tree must sit at $GOPATH/src/k8s.io/kubernetes.
mkdir -p gopath/src/k8s.io
mv "$SRCDIR" gopath/src/k8s.io/kubernetes
cd gopath/src/k8s.io/kubernetes
mapfile -t GO_TODO < <(missing "${GO_BINS[@]}")
if [ "${#GO_TODO[@]}" -gt 0 ]; then
  say "building ${GO_TODO[*]} (minutes on 2 cores)"
  # `make` generates the OpenAPI definitions the API server needs; a plain `go build` does not.
  # CGO_ENABLED=0 links them statically; the kubelet needs no cgo for what it does here
  # (cgroupfs driver, remote CRI runtime).
  GOPATH="$WORK/gopath" GOCACHE="$WORK/gocache" HOME="$WORK" GOPROXY=off \
    CGO_ENABLED=0 GOTOOLCHAIN=local \
    make WHAT="${GO_TODO[*]/#/cmd/}" GOLDFLAGS='-s -w' \
    >"$WORK/make.log" 2>&1 || { tail -n 40 "$WORK/make.log"; exit 1; }
fi
mkdir -p "$BIN.tmp"
for b in "${GO_TODO[@]}"; do cp "_output/local/bin/linux/amd64/$b" "$BIN.tmp/"; done
if [ -n "$(missing pause)" ]; then
  # What upstream's build/pause/Makefile does, without its build container: a static binary.
  gcc -Os -Wall -Werror -static -DVERSION="v$VERSION-lfads" -o "$BIN.tmp/pause" build/pause/linux/pause.c
fi
mkdir -p "$BIN"
for f in "$BIN.tmp"/*; do mv "$f" "$BIN/"; done  # each file lands whole (rename)
rm -rf "$BIN.tmp"
say "built in $((SECONDS - t0)) s: $("$BIN/kubelet" --version)"
