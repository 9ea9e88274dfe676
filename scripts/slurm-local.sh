#!/usr/bin/env bash
# A real single-node Slurm on localhost (slurmctld + slurmd + slurmdbd on MariaDB, munge auth),
# started as root without systemd. Used by the tests and by `.ci/run`; also handy on a workstation
# to try a sweep with `hydra/launcher=slurm` before moving it to a cluster.
#
#   bash scripts/slurm-local.sh up      install if needed, start what is not running, wait until usable
#   bash scripts/slurm-local.sh status  show daemons, node and queue; exit 1 when not usable
#   bash scripts/slurm-local.sh down    stop the daemons this script started (by their pid files)
#
# `up` is idempotent: call it twice, or after a reboot / in a new session where the daemons are gone.
# slurmdbd + MariaDB are there so that sacct reports failed and cancelled jobs (submitit polls sacct).
set -euo pipefail

CLUSTER=ablate-local
CONF_DIR=/etc/slurm
RUN_DIR=/run/slurm-local
SPOOL_DIR=/var/spool/slurm-local
LOG_DIR=/var/log/slurm-local
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=ablate-local-slurmdbd
MYSQL_RUN=/run/mysqld
WAIT_S=${SLURM_LOCAL_WAIT_S:-90}
# Every command that talks to a daemon or the network runs under a limit, so `up` always ends.
PROBE_S=10     # one poll of a daemon (scontrol ping, sacct, ...)
CMD_S=60       # one client command or daemon start
APT_S=${SLURM_LOCAL_APT_S:-600}

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "'$1' must run as root (it installs packages and starts system daemons)"
}

# True when the process in pid file $2 exists and is the program $1 (guards against stale pid files
# whose pid was reused after a reboot).
alive() {
  local name=$1 pidfile=$2 pid
  [ -s "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]
}

wait_for() {  # wait_for DESCRIPTION COMMAND...: poll until COMMAND (itself bounded) succeeds or WAIT_S passes
  local what=$1; shift
  local deadline=$((SECONDS + WAIT_S))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out after ${WAIT_S}s waiting for $what (logs: $LOG_DIR)"
    sleep 0.5
  done
}

install_packages() {
  local missing=0 prog
  for prog in slurmctld slurmd slurmdbd sbatch sacct munged mariadbd; do
    command -v "$prog" >/dev/null 2>&1 || missing=1
  done
  [ $missing = 1 ] || return 0
  command -v apt-get >/dev/null || die "slurm or mariadb is missing and there is no apt-get to install them (Debian/Ubuntu only)"
  say "installing slurm-wlm munge slurmdbd mariadb-server (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  timeout "$APT_S" apt-get update -qq >/dev/null || die "apt-get update failed or took over ${APT_S}s"
  timeout "$APT_S" apt-get install -y -qq --no-install-recommends slurm-wlm munge slurmdbd mariadb-server \
    >"/tmp/slurm-local-apt.log" 2>&1 || die "apt-get install failed or took over ${APT_S}s, see /tmp/slurm-local-apt.log"
}

# Writes $1 from stdin only when the content changed, so an `up` on a running cluster changes
# nothing; a change is noted in CHANGED so that running daemons reread their configuration.
CHANGED=""
write_if_changed() {
  local path=$1 mode=$2 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [ -f "$path" ] && cmp -s "$tmp" "$path"; then rm -f "$tmp"; return 0; fi
  install -m "$mode" "$tmp" "$path"
  rm -f "$tmp"
  CHANGED="$CHANGED $(basename "$path")"
}

write_configs() {
  local cpus mem_mb
  cpus=$(nproc)
  # A bit under the real memory: slurmd drains a node whose RealMemory exceeds what it finds.
  mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  mkdir -p "$CONF_DIR" "$RUN_DIR" "$SPOOL_DIR/slurmctld" "$SPOOL_DIR/slurmd" "$LOG_DIR"
  write_if_changed "$CONF_DIR/slurm.conf" 644 <<EOF
# Written by scripts/slurm-local.sh: single-node test cluster on localhost.
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SPOOL_DIR/slurmctld
SlurmdSpoolDir=$SPOOL_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=256
SchedulerType=sched/backfill
# Schedule every few seconds (default 60): a requeued job comes back without a minute's wait.
SchedulerParameters=sched_interval=2,bf_interval=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=300
InactiveLimit=0
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  write_if_changed "$CONF_DIR/slurmdbd.conf" 600 <<EOF
# Written by scripts/slurm-local.sh.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
}

munge_ok() { timeout "$PROBE_S" munge -n | timeout "$PROBE_S" unmunge; }

start_munge() {
  munge_ok >/dev/null 2>&1 && return 0
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge
  timeout "$CMD_S" runuser -u munge -- munged
  wait_for "munged" munge_ok
}

mysql_ok() { timeout "$PROBE_S" mariadb-admin --socket="$MYSQL_RUN/mysqld.sock" ping; }

start_mariadb() {
  if ! mysql_ok >/dev/null 2>&1; then
    mkdir -p "$MYSQL_RUN" && chown mysql:mysql "$MYSQL_RUN"
    [ -d /var/lib/mysql/mysql ] || timeout "$CMD_S" mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    setsid -f mariadbd --user=mysql --datadir=/var/lib/mysql --socket="$MYSQL_RUN/mysqld.sock" \
      --pid-file="$MYSQL_RUN/mysqld.pid" --bind-address=127.0.0.1 \
      >>"$LOG_DIR/mariadb.log" 2>&1 </dev/null
    wait_for "mariadbd" mysql_ok
  fi
  timeout "$CMD_S" mariadb --socket="$MYSQL_RUN/mysqld.sock" -e "
    CREATE DATABASE IF NOT EXISTS $DB_NAME;
    CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';"
}

dbd_ok() { timeout "$PROBE_S" sacctmgr -n list cluster; }

start_slurmdbd() {
  if alive slurmdbd "$RUN_DIR/slurmdbd.pid" && [[ "$CHANGED" == *slurmdbd.conf* ]]; then
    stop_pidfile slurmdbd "$RUN_DIR/slurmdbd.pid"
  fi
  alive slurmdbd "$RUN_DIR/slurmdbd.pid" || timeout "$CMD_S" slurmdbd
  wait_for "slurmdbd" dbd_ok
  # Register the cluster before slurmctld first connects, so accounting starts with its first job.
  timeout "$CMD_S" sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" \
    || timeout "$CMD_S" sacctmgr -i add cluster "$CLUSTER" >/dev/null
}

node_state() { timeout "$PROBE_S" sinfo -h -N -n localhost -o %T 2>/dev/null | head -n 1; }

node_usable() {
  case "$(node_state)" in
    idle | mixed | allocated | completing) return 0 ;;
    *) return 1 ;;
  esac
}

start_slurm() {
  if alive slurmctld "$RUN_DIR/slurmctld.pid"; then
    if [[ "$CHANGED" == *slurm.conf* ]]; then timeout "$CMD_S" scontrol reconfigure; fi
  else
    timeout "$CMD_S" slurmctld
  fi
  wait_for "slurmctld" timeout "$PROBE_S" scontrol ping
  alive slurmd "$RUN_DIR/slurmd.pid" || timeout "$CMD_S" slurmd -N localhost
  local deadline=$((SECONDS + WAIT_S)) state
  until node_usable; do
    state=$(node_state)
    # A node left down or drained by an earlier session (daemons killed, reboot) is resumed.
    case "$state" in
      down* | drain* | fail*) timeout "$PROBE_S" scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
    esac
    [ $SECONDS -lt $deadline ] || die "node localhost is '$state', not idle, after ${WAIT_S}s (logs: $LOG_DIR)"
    sleep 0.5
  done
  wait_for "sacct" timeout "$PROBE_S" sacct -n -X
}

cmd_up() {
  need_root up
  local t0=$SECONDS
  install_packages
  write_configs
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurm
  say "up in $((SECONDS - t0))s: node localhost $(node_state), $(nproc) CPUs, partition 'local'"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE: SIGTERM the daemon recorded there and wait for it
  local name=$1 pidfile=$2 pid
  alive "$name" "$pidfile" || return 0
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 40); do
    [ -d "/proc/$pid" ] || return 0
    sleep 0.25
  done
  die "$name (pid $pid) did not stop"
}

cmd_down() {
  need_root down
  stop_pidfile slurmd "$RUN_DIR/slurmd.pid"
  stop_pidfile slurmctld "$RUN_DIR/slurmctld.pid"
  stop_pidfile slurmdbd "$RUN_DIR/slurmdbd.pid"
  if mysql_ok >/dev/null 2>&1; then timeout "$CMD_S" mariadb-admin --socket="$MYSQL_RUN/mysqld.sock" shutdown; fi
  stop_pidfile munged /run/munge/munged.pid
  say "down"
}

cmd_status() {
  local name pidfile ok=0
  for name in slurmctld slurmd slurmdbd; do
    pidfile="$RUN_DIR/$name.pid"
    if alive "$name" "$pidfile"; then say "$name running (pid $(cat "$pidfile"))"; else say "$name not running"; ok=1; fi
  done
  if command -v munge >/dev/null && munge_ok >/dev/null 2>&1; then say "munged ok"; else say "munged not running"; ok=1; fi
  if command -v mariadb-admin >/dev/null && mysql_ok >/dev/null 2>&1; then say "mariadb ok"; else say "mariadb not running"; ok=1; fi
  if [ $ok = 0 ]; then
    timeout "$PROBE_S" sinfo -N -l
    timeout "$PROBE_S" squeue
  fi
  return $ok
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) die "usage: $0 up|down|status (got '${1:-}')" ;;
esac
