#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the SLURM tests and for trying the launcher.
#
#   tools/slurm_cluster.sh [start]   install Debian's slurm-wlm parts if missing, then start
#                                    munge, MariaDB, slurmdbd, slurmctld and slurmd (idempotent:
#                                    running daemons are left alone)
#   tools/slurm_cluster.sh stop      stop what `start` started, newest first
#   tools/slurm_cluster.sh status    daemons and sinfo
#
# Root, no systemd, no cgroups (proctrack/linuxproc, task/none: CPU counts are not enforced, so
# jobs must set their own thread counts). Accounting (slurmdbd on MariaDB) is not optional:
# submitit reads job states with sacct, which fails without it. State lives under $STATE
# (default /var/lib/lfads-slurm); logs under $STATE/log.
set -euo pipefail

STATE=${LFADS_SLURM_STATE:-/var/lib/lfads-slurm}
RUN=/run/lfads-slurm
ETC=/etc/slurm
HOST=$(hostname -s) # slurmd registers under the short host name
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
PACKAGES=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)

say() { printf 'slurm_cluster: %s\n' "$*"; }
die() { say "error: $*" >&2; exit 1; }
# munged and mariadbd run as their own users: their pid files live in directories they own.
pidfile() {
  case $1 in
  munged) echo "$RUN/munge/munged.pid" ;;
  mariadbd) echo "$RUN/mysql/mariadbd.pid" ;;
  *) echo "$RUN/$1.pid" ;;
  esac
}
running() { local f; f=$(pidfile "$1"); [[ -s $f ]] && kill -0 "$(<"$f")" 2>/dev/null; }

# until SECONDS CMD...: retry CMD every 0.25 s for at most SECONDS.
until_ok() {
  local limit=$1 end
  shift
  end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 0.25
  done
}

stop_daemon() {
  local pid
  running "$1" || return 0
  pid=$(<"$(pidfile "$1")")
  say "stopping $1 ($pid)"
  kill "$pid"
  until_ok 20 bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
}

cmd_stop() {
  local i
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop_daemon "${DAEMONS[i]}"; done
}

cmd_status() {
  local name
  for name in "${DAEMONS[@]}"; do
    if running "$name"; then echo "$name: up ($(<"$(pidfile "$name")"))"; else echo "$name: down"; fi
  done
  sinfo 2>/dev/null || true
}

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
      missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) == 0 ]] || die "installing ${missing[*]} needs root"
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Lock timeout: .ci/run may be installing the image's or Kubernetes' packages at the same time.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge "$RUN/munge"
  if ! running munged; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file="$(pidfile munged)"
  fi
  until_ok 10 bash -c 'munge -n | unmunge' || die "munge does not work"
}

start_mariadb() {
  local sock=$RUN/mysql/mysqld.sock
  install -d -o mysql -g mysql -m 0755 "$STATE/mysql" "$RUN/mysql"
  if [[ ! -d $STATE/mysql/mysql ]]; then
    say "initialising the accounting database in $STATE/mysql"
    mariadb-install-db --user=mysql --datadir="$STATE/mysql" --skip-test-db >"$STATE/log/mariadb-init.log" 2>&1
  fi
  if ! running mariadbd; then
    say "starting mariadbd"
    setsid /usr/sbin/mariadbd --user=mysql --datadir="$STATE/mysql" --socket="$sock" \
      --pid-file="$(pidfile mariadbd)" --skip-networking=0 --bind-address=127.0.0.1 --port=3306 \
      --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=600 \
      >>"$STATE/log/mariadb.log" 2>&1 </dev/null &
  fi
  until_ok 60 mariadb-admin --socket="$sock" ping || die "mariadbd did not come up ($STATE/log/mariadb.log)"
  mariadb --socket="$sock" <<'SQL'
CREATE DATABASE IF NOT EXISTS lfads_slurm_acct;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'lfads-local-only';
GRANT ALL PRIVILEGES ON lfads_slurm_acct.* TO 'slurm'@'localhost';
SQL
}

start_slurmdbd() {
  if slurmdbd_conf | write_if_changed "$ETC/slurmdbd.conf" 0600; then stop_daemon slurmdbd; fi
  if ! running slurmdbd; then
    say "starting slurmdbd"
    slurmdbd
  fi
  until_ok 60 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819' ||
    die "slurmdbd is not listening ($STATE/log/slurmdbd.log)"
}

slurmdbd_conf() {
  cat <<EOF
# Written by lfads-lightning tools/slurm_cluster.sh: accounting for the local test cluster.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$(pidfile slurmdbd)
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=lfads-local-only
StorageLoc=lfads_slurm_acct
EOF
}

# write_if_changed PATH MODE < content: returns 0 when the file changed.
write_if_changed() {
  local tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then
    rm -f "$tmp"
    return 1
  fi
  install -m "$2" "$tmp" "$1"
  rm -f "$tmp"
  say "wrote $1"
}

slurm_conf() {
  local cpus mem_mb
  cpus=$(nproc)
  # A node that claims more memory than it has is drained; leave the OS some headroom.
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  cat <<EOF
# Written by lfads-lightning tools/slurm_cluster.sh: one node, root, no systemd, no cgroups.
ClusterName=lfads
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits for its credential to expire before it starts again (default 120 s).
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
DefMemPerCPU=2000
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=main Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

node_ready() { sinfo -h -N -n "$HOST" -o %t | grep -Eq '^(idle|mix|alloc|comp)'; }

start_slurm() {
  mkdir -p "$STATE/ctld" "$STATE/d"
  if slurm_conf | write_if_changed "$ETC/slurm.conf" 0644; then
    stop_daemon slurmd # a new config needs fresh daemons
    stop_daemon slurmctld
  fi
  if ! running slurmctld; then
    say "starting slurmctld"
    slurmctld
  fi
  until_ok 30 scontrol ping || die "slurmctld does not answer ($STATE/log/slurmctld.log)"
  if ! running slurmd; then
    say "starting slurmd on $HOST"
    slurmd -N "$HOST"
  fi
  if ! until_ok 30 node_ready; then
    scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true
    until_ok 15 node_ready || die "node $HOST is $(sinfo -h -N -n "$HOST" -o '%t %E')"
  fi
}

cmd_start() {
  local t0=$SECONDS
  install_packages
  install -d -m 0755 "$RUN" "$ETC" "$STATE" "$STATE/log"
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurm
  say "ready in $((SECONDS - t0)) s: $(sinfo -h -N -o '%N %t %c CPUs %m MB')"
}

case ${1:-start} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*) die "unknown command '$1'; use start, stop or status" ;;
esac
