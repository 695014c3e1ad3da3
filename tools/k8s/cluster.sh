#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine for the `k8s` tests: etcd, kube-apiserver,
# kube-controller-manager (Job, garbage-collector, TTL-after-finished and node-lifecycle controllers:
# the last lifts the not-ready taint the kubelet registers its node with),
# kube-scheduler and a real kubelet on containerd + runc (Debian's containerd 1.6 serves the CRI
# v1alpha2 API kubelet 1.20 speaks), with CNI bridge networking. Pods run our image.
#
#   tools/k8s/cluster.sh start    build-or-reuse the binaries, start what is not running, import
#                                 the image (again when its archive changed), wait for the node
#   tools/k8s/cluster.sh stop     stop everything: pods' containers, kubelet, containerd (and its
#                                 shims), control plane; unmount, remove the bridge (idempotent)
#   tools/k8s/cluster.sh status   exit 0 when the API server answers and the node is Ready
#
# State in $LFADS_K8S_RUN (default ~/.cache/lfads-k8s/run); kubeconfig at $LFADS_K8S_RUN/kubeconfig;
# the pods' gateway to this host (where they reach e.g. an MLflow server bound to it) in
# $LFADS_K8S_RUN/host-ip. The image: the OCI archive $LFADS_IMAGE_ARCHIVE (default
# ~/.cache/lfads-image/lfads-cpu.oci.tar, as `podman save --format oci-archive` writes it),
# named $LFADS_IMAGE (default localhost/lfads-lightning:cpu) in containerd's k8s.io namespace.
# Images stay in containerd's store across stop/start; containers, pods and etcd do not.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VERSION=1.20.2
BIN=${LFADS_K8S_CACHE:-$HOME/.cache/lfads-k8s/$VERSION}/bin
RUN=${LFADS_K8S_RUN:-$HOME/.cache/lfads-k8s/run}
PORT=${LFADS_K8S_PORT:-16443}
ETCD_PORT=${LFADS_K8S_ETCD_PORT:-23790}
KUBELET_PORT=${LFADS_K8S_KUBELET_PORT:-10350}
IMAGE_ARCHIVE=${LFADS_IMAGE_ARCHIVE:-$HOME/.cache/lfads-image/lfads-cpu.oci.tar}
NODE=lfads-test-node
PYTHON=${PYTHON:-python3}
# containerd's state (task bundles, rootfs mounts, netns bind mounts, shim sockets): runtime only.
STATE=/run/lfads-k8s/containerd
SOCK=/run/lfads-k8s/containerd.sock
PAUSE_IMAGE=localhost/lfads-pause:$VERSION
# CNI bridge: its own name and subnet (not podman's cni-podman0 / 10.88.0.0/16).
BRIDGE=lfads0
SUBNET_PREFIX=10.244.77
HOST_IP=$SUBNET_PREFIX.1
# The kubelet sets these host sysctls at start (vm.overcommit_memory=1, kernel.panic=10, ...):
# saved before, restored by `stop`.
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
say() { echo "[k8s-cluster] $*"; }
alive() { [ -s "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }
token() { cat "$RUN/token"; }
ctr_() { ctr --address "$SOCK" --namespace k8s.io "$@"; }
# Not as "curl": the API server pretty-prints for curl's user agent, and that encoder (vendored
# json-iterator + reflect2 1.0.1) crashes the 1.20 server when built with Go >= 1.18 (bookworm
# has 1.19). Clients asking for compact JSON (kubernetes Python client, this) are not affected.
api() { curl -sk --max-time 5 -A lfads-cluster-sh -H "Authorization: Bearer $(token)" "https://127.0.0.1:$PORT$1"; }
launch() {  # name, command...: in its own session, output to RUN/name.log, pid to RUN/name.pid
  local name=$1; shift
  if alive "$name"; then return 0; fi
  say "starting $name"
  setsid "$@" >"$RUN/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}
node_ready() { api "/api/v1/nodes/$NODE" | grep -q '"reason":"KubeletReady"'; }
need_pkgs() {  # containerd + runc + CNI plugins from Debian
  command -v containerd >/dev/null && command -v runc >/dev/null && [ -x /usr/lib/cni/bridge ] \
    && command -v ip >/dev/null && return 0
  say "installing containerd, runc, containernetworking-plugins"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends \
    install containerd runc containernetworking-plugins iproute2 >/dev/null
}

stop_part() {
  local p=$1
  if alive "$p"; then
    say "stopping $p ($(cat "$RUN/$p.pid"))"
    kill -TERM -- "-$(cat "$RUN/$p.pid")" 2>/dev/null || kill -TERM "$(cat "$RUN/$p.pid")" || true
    for _ in $(seq 50); do alive "$p" || break; sleep 0.1; done
    if alive "$p"; then kill -KILL -- "-$(cat "$RUN/$p.pid")" 2>/dev/null || true; fi
  fi
  rm -f "$RUN/$p.pid"
}

remove_containers() {  # every CRI container and sandbox: kill the task, delete it and its snapshot
  alive containerd || return 0
  local ids id
  ids=$(ctr_ containers list -q 2>/dev/null) || return 0
  for id in $ids; do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
  for id in $ids; do
    for _ in $(seq 20); do ctr_ tasks delete -f "$id" >/dev/null 2>&1 && break
      ctr_ tasks list -q 2>/dev/null | grep -qx "$id" || break; sleep 0.2; done
    ctr_ containers delete "$id" >/dev/null 2>&1 || true
  done
}

stop() {
  stop_part kubelet  # first: it would restart the containers removed next
  remove_containers
  stop_part containerd
  # shims outlive containerd; ours are the ones started with our socket address
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $SOCK" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  # mounts left by pods (emptyDirs, rootfs overlays, netns bind mounts), deepest first
  awk -v a="$RUN/" -v b="$STATE/" 'index($2, a) == 1 || index($2, b) == 1 { print $2 }' /proc/mounts \
    | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$STATE" "$RUN/kubelet" "$RUN/cni/ipam" "$SOCK" "$SOCK.ttrpc"
  ip link del "$BRIDGE" 2>/dev/null || true
  # the kubelet's pod cgroups (empty now), deepest first
  find /sys/fs/cgroup/*/kubepods -depth -type d -exec rmdir {} + 2>/dev/null || true
  for p in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_part "$p"; done
  if [ -s "$RUN/sysctl.saved" ]; then sysctl -q -p "$RUN/sysctl.saved" >/dev/null 2>&1 || true; rm -f "$RUN/sysctl.saved"; fi
  rm -rf "$RUN/etcd"  # the next start begins with an empty cluster
}

write_containerd_config() {
  mkdir -p "$RUN/cni/net.d" "$RUN/containerd" "$STATE"
  # The conflist: one bridge on its own subnet; the host is the gateway (pods reach servers bound
  # to $HOST_IP). No masquerading: pods need nothing beyond this host. CRI adds loopback itself.
  cat >"$RUN/cni/net.d/10-lfads.conflist" <<CNI
{"cniVersion": "0.4.0", "name": "lfads-k8s", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$RUN/cni/ipam",
            "ranges": [[{"subnet": "$SUBNET_PREFIX.0/24", "gateway": "$HOST_IP"}]]}}]}
CNI
  # restrict_oom_score_adj: the kubelet asks for oom_score_adj -998/-997 for sandboxes and
  # Guaranteed pods; lowering it needs CAP_SYS_RESOURCE, which this machine's root lacks (its
  # CapEff has no bit 24; the kubelet logs "write /proc/self/oom_score_adj: permission denied"
  # for itself): clamp to containerd's own value instead.
  # netns_mounts_under_state_dir: netns bind mounts under $STATE, not /var/run/netns, so `stop`
  # finds them. No apparmor/selinux here. cgroupfs (no systemd), like the kubelet.
  cat >"$RUN/containerd/config.toml" <<TOML
version = 2
root = "$RUN/containerd/root"
state = "$STATE"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$RUN/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN/cni/net.d"
    max_conf_num = 1
TOML
}

import_archive() {  # archive, image name: import into k8s.io unless already there from this file
  local archive=$1 name=$2 stamp_file="$RUN/images/$(echo "$2" | tr '/:' '__').stamp" stamp
  mkdir -p "$RUN/images"
  stamp=$(stat -c '%s %Y %i' "$archive")
  if [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ] && ctr_ images list -q | grep -qx "$name"; then
    return 0
  fi
  say "importing $archive as $name"
  local t0=$SECONDS out
  out=$(ctr_ images import --no-unpack=false "$archive" 2>&1) || { echo "$out"; say "import failed"; exit 1; }
  if ! ctr_ images list -q | grep -qx "$name"; then  # e.g. the archive names only a tag
    local got
    got=$(echo "$out" | sed -n 's/^unpacking \([^ ]*\) .*/\1/p' | head -n 1)
    [ -n "$got" ] || { echo "$out"; say "$archive: no image imported"; exit 1; }
    ctr_ images tag --force "$got" "$name" >/dev/null
  fi
  echo "$stamp" >"$stamp_file"
  say "imported $name in $((SECONDS - t0)) s"
}

images() {
  # The pod sandbox image: the static pause binary alone (tools/k8s/build_bins.sh made it).
  if [ ! -s "$RUN/images/pause.oci.tar" ] || [ "$BIN/pause" -nt "$RUN/images/pause.oci.tar" ]; then
    local root; root=$(mktemp -d); cp "$BIN/pause" "$root/pause"
    mkdir -p "$RUN/images"
    "$HERE/oci_archive.sh" "$root" "$PAUSE_IMAGE" "$RUN/images/pause.oci.tar" /pause
    rm -rf "$root"
  fi
  import_archive "$RUN/images/pause.oci.tar" "$PAUSE_IMAGE"
  if [ -s "$IMAGE_ARCHIVE" ]; then
    import_archive "$IMAGE_ARCHIVE" "${LFADS_IMAGE:-localhost/lfads-lightning:cpu}"
  else
    say "no image archive at $IMAGE_ARCHIVE (LFADS_IMAGE_ARCHIVE): pods of that image cannot start"
  fi
  ctr_ images list -q >"$RUN/images/present"  # what pods can run (the tests check theirs is)
}

start_containerd() {
  write_containerd_config
  # the bridge exists before the first pod, so servers for the pods can bind to $HOST_IP now
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$HOST_IP/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  echo "$HOST_IP" >"$RUN/host-ip"
  launch containerd containerd --config "$RUN/containerd/config.toml"
  for _ in $(seq 100); do ctr --address "$SOCK" version >/dev/null 2>&1 && break; sleep 0.1; done
  ctr --address "$SOCK" version >/dev/null 2>&1 || { tail -n 20 "$RUN/containerd.log"; say "containerd not up"; exit 1; }
}

kubelet_client_cert() {  # a CA the kubelet trusts and the API server's client cert from it
  [ -s "$RUN/apiserver-kubelet.crt" ] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=lfads-kubelet-ca \
    -keyout "$RUN/kubelet-ca.key" -out "$RUN/kubelet-ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=lfads-apiserver -keyout "$RUN/apiserver-kubelet.key" \
    -out "$RUN/apiserver-kubelet.csr" 2>/dev/null
  openssl x509 -req -in "$RUN/apiserver-kubelet.csr" -CA "$RUN/kubelet-ca.crt" -CAkey "$RUN/kubelet-ca.key" \
    -CAcreateserial -days 3650 -out "$RUN/apiserver-kubelet.crt" 2>/dev/null
  chmod 600 "$RUN/kubelet-ca.key" "$RUN/apiserver-kubelet.key"
}

write_kubelet_config() {
  # Why each setting:
  #  cgroupDriver cgroupfs      no systemd here (containerd's runc uses cgroupfs too)
  #  failSwapOn false           no swap here today, but a dev box with swap must not break it
  #  cgroupsPerQOS + pods       real QoS cgroups and node allocatable: limits enforced as in prod
  #  imageGC 100%               images cannot be pulled again here: never garbage-collect them
  #  evictionHard (small)       the defaults (10%/15% free disk) would evict on a full dev disk
  #  makeIPTablesUtilChains     no kube-proxy, no Services: no iptables chains to make
  #  address $HOST_IP           the node's address must not be loopback ("nodeIP can't be
  #                             loopback address"); the API server reaches the kubelet there
  #                             (pod logs). Pods can reach it too, so:
  #  x509 only, no anonymous    only the API server's client cert (our CA) gets in
  cat >"$RUN/kubelet-config.yaml" <<KCFG
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $HOST_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $((KUBELET_PORT + 8))
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $RUN/kubelet-ca.crt}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}
makeIPTablesUtilChains: false
serializeImagePulls: false
maxPods: 50
podPidsLimit: 4096
resolvConf: /etc/resolv.conf
KCFG
}

start_kubelet() {
  write_kubelet_config
  [ -s "$RUN/sysctl.saved" ] || for k in "${SYSCTLS[@]}"; do echo "$k = $(sysctl -n "$k")"; done >"$RUN/sysctl.saved"
  # --container-runtime=remote: the CRI socket of our containerd (v1alpha2, served by 1.6).
  # The kubelet authenticates with the admin token (single-user test cluster). Harmless in its
  # log here: "Failed to set rlimit on max file handles: operation not permitted" (no
  # CAP_SYS_RESOURCE) and "cpu and memory cgroup hierarchy not unified" (cgroup v1, separate
  # cpu and cpuacct mounts): only the kubelet's own metrics and limits, not the pods'.
  launch kubelet "$BIN/kubelet" --config="$RUN/kubelet-config.yaml" --kubeconfig="$RUN/kubeconfig" \
    --container-runtime=remote --container-runtime-endpoint="unix://$SOCK" \
    --image-service-endpoint="unix://$SOCK" --runtime-request-timeout=5m \
    --root-dir="$RUN/kubelet" --cert-dir="$RUN/kubelet-pki" \
    --hostname-override="$NODE" --node-ip="$HOST_IP" --v=1
}

start() {
  local t0=$SECONDS
  "$HERE/build_bins.sh"
  need_pkgs
  mkdir -p "$RUN"
  start_containerd
  images
  [ -s "$RUN/token" ] || openssl rand -hex 24 >"$RUN/token"
  [ -s "$RUN/sa.key" ] || openssl genrsa -out "$RUN/sa.key" 2048 2>/dev/null
  echo "$(token),lfads-admin,lfads-admin,system:masters" >"$RUN/tokens.csv"
  kubelet_client_cert
  chmod 600 "$RUN/tokens.csv" "$RUN/token"
  launch etcd etcd --name lfads-test --data-dir "$RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 10))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 10))" \
    --initial-cluster "lfads-test=http://127.0.0.1:$((ETCD_PORT + 10))"
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$ETCD_PORT/health" >/dev/null && break; sleep 0.1; done
  launch kube-apiserver "$BIN/kube-apiserver" --bind-address=127.0.0.1 --secure-port="$PORT" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" --cert-dir="$RUN/certs" \
    --token-auth-file="$RUN/tokens.csv" --authorization-mode=Node,RBAC \
    --service-account-key-file="$RUN/sa.key" --service-account-signing-key-file="$RUN/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=10.152.0.0/16 --disable-admission-plugins=ServiceAccount \
    --feature-gates=TTLAfterFinished=true \
    --kubelet-client-certificate="$RUN/apiserver-kubelet.crt" --kubelet-client-key="$RUN/apiserver-kubelet.key" \
    --kubelet-preferred-address-types=InternalIP
  for _ in $(seq 300); do [ "$(api /readyz)" = ok ] && break; sleep 0.2; done
  [ "$(api /readyz)" = ok ] || { tail -n 20 "$RUN/kube-apiserver.log"; say "API server not ready"; exit 1; }
  say "API server ready after $((SECONDS - t0)) s"
  # The API server made itself a self-signed serving cert (SAN 127.0.0.1) + CA: trust that.
  cat >"$RUN/kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: lfads-test
  cluster:
    server: https://127.0.0.1:$PORT
    certificate-authority: $RUN/certs/apiserver.crt
users:
- name: lfads-admin
  user:
    token: $(token)
contexts:
- name: lfads-test
  context:
    cluster: lfads-test
    user: lfads-admin
    namespace: default
current-context: lfads-test
KCFG
  chmod 600 "$RUN/kubeconfig"
  launch kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$RUN/kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --port=0 \
    --controllers=job,garbagecollector,ttl-after-finished,namespace,nodelifecycle \
    --feature-gates=TTLAfterFinished=true
  launch kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$RUN/kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=0 --port=0
  start_kubelet
  for _ in $(seq 300); do node_ready && break; sleep 0.2; done
  node_ready || { tail -n 30 "$RUN/kubelet.log"; say "node not ready"; exit 1; }
  say "cluster up in $((SECONDS - t0)) s; KUBECONFIG=$RUN/kubeconfig"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) [ "$(api /readyz 2>/dev/null)" = ok ] && node_ready && alive containerd && say "up" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
