#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the `k8s` tests: etcd, kube-apiserver,
# kube-controller-manager (Job, garbage-collector, TTL-after-finished controllers) and
# kube-scheduler, plus tools/k8s/fake_kubelet.py -- the only stand-in, because this machine has
# no container runtime: it runs each scheduled pod's command as a local process.
#
#   tools/k8s/cluster.sh start    build-or-reuse the binaries, start what is not running, wait
#   tools/k8s/cluster.sh stop     stop everything this script started (by pid file)
#   tools/k8s/cluster.sh status   exit 0 when the API server answers and the node is Ready
#
# State in $LFADS_K8S_RUN (default ~/.cache/lfads-k8s/run); kubeconfig at $LFADS_K8S_RUN/kubeconfig.
# PYTHON (default python3) must have the `kubernetes` package (the project's venv has it).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VERSION=1.20.2
BIN=${LFADS_K8S_CACHE:-$HOME/.cache/lfads-k8s/$VERSION}/bin
RUN=${LFADS_K8S_RUN:-$HOME/.cache/lfads-k8s/run}
PORT=${LFADS_K8S_PORT:-16443}
ETCD_PORT=${LFADS_K8S_ETCD_PORT:-23790}
NODE=lfads-test-node
PYTHON=${PYTHON:-python3}
PARTS=(fake-kubelet kube-scheduler kube-controller-manager kube-apiserver etcd)
say() { echo "[k8s-cluster] $*"; }
alive() { [ -s "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }
token() { cat "$RUN/token"; }
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

stop() {
  for p in "${PARTS[@]}"; do
    if alive "$p"; then
      say "stopping $p ($(cat "$RUN/$p.pid"))"
      kill -TERM -- "-$(cat "$RUN/$p.pid")" 2>/dev/null || kill -TERM "$(cat "$RUN/$p.pid")" || true
    fi
    rm -f "$RUN/$p.pid"
  done
  sleep 0.5
  rm -rf "$RUN/etcd"  # the next start begins with an empty cluster
  # pods still running as local processes belong to the fake kubelet's sessions: gone with it
}

start() {
  local t0=$SECONDS
  "$HERE/build_bins.sh"
  mkdir -p "$RUN"
  [ -s "$RUN/token" ] || openssl rand -hex 24 >"$RUN/token"
  [ -s "$RUN/sa.key" ] || openssl genrsa -out "$RUN/sa.key" 2048 2>/dev/null
  echo "$(token),lfads-admin,lfads-admin,system:masters" >"$RUN/tokens.csv"
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
    --feature-gates=TTLAfterFinished=true
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
    --controllers=job,garbagecollector,ttl-after-finished,namespace \
    --feature-gates=TTLAfterFinished=true
  launch kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$RUN/kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=0 --port=0
  launch fake-kubelet "$PYTHON" "$HERE/fake_kubelet.py" --kubeconfig "$RUN/kubeconfig" \
    --node "$NODE" --log-dir "$RUN/pods"
  for _ in $(seq 150); do node_ready && break; sleep 0.2; done
  node_ready || { tail -n 20 "$RUN/fake-kubelet.log"; say "node not ready"; exit 1; }
  say "cluster up in $((SECONDS - t0)) s; KUBECONFIG=$RUN/kubeconfig"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) [ "$(api /readyz 2>/dev/null)" = ok ] && node_ready && say "up" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
