#!/usr/bin/env bash
# A Ray head on loopback for the `ray` tests, with its own ports and temp dir, so it never
# touches another Ray cluster on this machine (`ray stop` would stop every one of them: this
# script stops only the processes that run from its own temp dir).
#
#   tools/ray_cluster.sh start    start the head unless it is up; wait for the Jobs API
#   tools/ray_cluster.sh stop     stop only this head's processes
#   tools/ray_cluster.sh status   exit 0 when the Jobs API answers
#
# PYTHON (default python3) must have ray[default] (nox -s tests_ray installs it into .venv).
# The dashboard (Jobs API) address is written to $LFADS_RAY_RUN/address for the tests.
set -euo pipefail
PYTHON=${PYTHON:-python3}
RAY="$(dirname "$PYTHON")/ray"
TEMP=${LFADS_RAY_TEMP:-/tmp/lfads-ray}   # short: Ray's unix sockets live under it
RUN=${LFADS_RAY_RUN:-$HOME/.cache/lfads-ray/run}
GCS_PORT=${LFADS_RAY_PORT:-26380}
DASH_PORT=${LFADS_RAY_DASHBOARD_PORT:-28265}
ADDRESS="http://127.0.0.1:$DASH_PORT"
say() { echo "[ray-cluster] $*"; }
up() { curl -sf --max-time 3 "$ADDRESS/api/jobs/" >/dev/null 2>&1; }
pids() { pgrep -f -- "$TEMP" || true; }

start() {
  mkdir -p "$RUN" "$TEMP"
  echo "$ADDRESS" >"$RUN/address"
  if up; then say "already up at $ADDRESS"; return 0; fi
  local t0=$SECONDS
  say "starting a head: gcs :$GCS_PORT, dashboard $ADDRESS, temp $TEMP"
  "$RAY" start --head --num-cpus=2 --num-gpus=0 --port="$GCS_PORT" \
    --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" \
    --include-dashboard=true --temp-dir="$TEMP" --disable-usage-stats \
    --node-manager-port=26381 --object-manager-port=26382 --ray-client-server-port=26383 \
    --dashboard-agent-listen-port=26384 --dashboard-agent-grpc-port=26385 \
    --metrics-export-port=26386 --runtime-env-agent-port=26387 \
    --min-worker-port=26400 --max-worker-port=26499 >"$RUN/start.log" 2>&1 || {
      say "ray start failed:"; tail -n 20 "$RUN/start.log"; return 1; }
  for _ in $(seq 1 120); do
    if up; then say "ready in $((SECONDS - t0)) s at $ADDRESS"; return 0; fi
    sleep 1
  done
  say "the Jobs API did not answer within 120 s"; tail -n 20 "$RUN/start.log"; return 1
}

stop() {
  local p; p=$(pids)
  if [ -z "$p" ]; then say "not running"; return 0; fi
  say "stopping $(echo "$p" | wc -w) process(es) of the head in $TEMP"
  kill $p 2>/dev/null || true
  for _ in $(seq 1 20); do [ -z "$(pids)" ] && return 0; sleep 0.5; done
  kill -9 $(pids) 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) up ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
