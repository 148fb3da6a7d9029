#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the tests (SLURM 22.05 from Debian's
# slurm-wlm, slurmdbd, munge and mariadb-server), run as root with no systemd.
#
#   tests/slurm/cluster.sh start    # configure and start what is not running yet (idempotent)
#   tests/slurm/cluster.sh stop     # stop only the daemons this script started
#   tests/slurm/cluster.sh status   # print the state; exit 0 when the cluster answers
#   tests/slurm/cluster.sh env      # print the cluster's settings as KEY=VALUE lines
#
# What it starts: munged (unless one already answers), a private MariaDB with its own datadir
# on 127.0.0.1:$SE3T_SLURM_DB_PORT, slurmdbd (so sacct works: submitit and Snakemake query it),
# slurmctld and slurmd (one node). The node uses ProctrackType=proctrack/linuxproc and
# TaskPlugin=task/none (no cgroups needed). Three partitions: "debug" (default, never
# preempted), "low" (preemptable: PreemptMode=REQUEUE with a GraceTime, the job's signal -- USR2
# for submitit -- sent first through SlurmctldParameters=preempt_send_user_signal) and "urgent"
# (higher PriorityTier: preempts "low"). The account "se3t" holds root.
#
# The config goes to /etc/slurm/slurm.conf (Snakemake's in-job srun drops SLURM_CONF, so the
# default path is the only one every client finds); everything else lives under
# $SE3T_SLURM_DIR (default /tmp/se3t-slurm): pid files, logs, spool, state, the MariaDB datadir.
#
# Environment: SE3T_SLURM_DIR, SE3T_SLURM_DB_PORT (default 3307), SE3T_SLURM_CPUS (CPUs the node
# advertises, default max(nproc, 8): jobs share the real cores, so a DDP test and a workflow can
# run side by side), SE3T_SLURM_GRACE (seconds between USR2 and SIGKILL on preemption, 60).
set -euo pipefail

STATE=${SE3T_SLURM_DIR:-/tmp/se3t-slurm}
DB_PORT=${SE3T_SLURM_DB_PORT:-3307}
GRACE=${SE3T_SLURM_GRACE:-60}
NPROC=$(nproc)
CPUS=${SE3T_SLURM_CPUS:-$((NPROC > 8 ? NPROC : 8))}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
DBD_CONF=$CONF_DIR/slurmdbd.conf
NODE=$(hostname -s)
CLUSTER=se3t
ACCOUNT=se3t
PARTITION=debug
URGENT=urgent
LOW=low
CONF_CHANGED=0
DB_SOCK=$STATE/mysql/mysqld.sock
DB_PASS=se3t-slurm
MARKER="# written by se3t tests/slurm/cluster.sh"

log() { echo "cluster.sh: $*" >&2; }
die() { log "$*"; exit 1; }

alive() {  # alive NAME: the daemon recorded in $STATE/NAME.pid runs
  local f=$STATE/$1.pid
  [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $end ] && return 1
    sleep 0.3
  done
}

need() {
  for bin in sbatch slurmctld slurmd slurmdbd munged mariadbd mariadb-install-db sacctmgr; do
    command -v "$bin" >/dev/null 2>&1 || die "$bin not found: install slurm-wlm slurmdbd munge mariadb-server (scripts/setup.sh --system)"
  done
  [ "$(id -u)" = 0 ] || die "must run as root (the daemons run as root, no systemd)"
}

lock() {  # one start/stop at a time (tests and workflows may call start together)
  mkdir -p "$STATE"
  exec 9>"$STATE/cluster.lock"
  flock -w 300 9 || die "another cluster.sh holds $STATE/cluster.lock"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_ok; then return; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 0755 /run/munge
  [ -s /etc/munge/munge.key ] || {
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  }
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid 9>&-
  wait_for 10 munge munge_ok || die "munged did not answer"
  cp /run/munge/munged.pid "$STATE/munged.pid"
}

write_configs() {
  mkdir -p "$STATE"/{ctld,spool,log} "$CONF_DIR"
  if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    [ -f "$STATE/slurm.conf.orig" ] || cp "$CONF" "$STATE/slurm.conf.orig"
  fi
  local tmp
  tmp=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
  cat >"$tmp" <<EOF
$MARKER (state in $STATE)
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
KillWait=10
MinJobAge=600
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=60
# Preemption: "urgent" preempts "debug"; the victim gets USR2 (submitit checkpoints and
# requeues on it), then GraceTime seconds, then is requeued.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
JobRequeue=1
NodeName=$NODE CPUs=$CPUS RealMemory=16000 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF
PartitionName=$LOW Nodes=$NODE Default=NO MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=$GRACE
PartitionName=$URGENT Nodes=$NODE Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
  chmod 0644 "$tmp"
  if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then
    rm -f "$tmp"
  else
    mv -f "$tmp" "$CONF"
    CONF_CHANGED=1
  fi
  tmp=$(mktemp "$CONF_DIR/.slurmdbd.conf.XXXXXX")
  cat >"$tmp" <<EOF
$MARKER (state in $STATE)
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chmod 0600 "$tmp"  # slurmdbd refuses a config others can read
  mv -f "$tmp" "$DBD_CONF"
}

db() { mariadb --no-defaults --socket="$DB_SOCK" -uroot "$@"; }

start_mariadb() {
  if alive mariadb; then return; fi
  mkdir -p "$STATE/mysql"
  if [ ! -d "$STATE/mysql/data/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$STATE/mysql/data" --user=root \
      --auth-root-authentication-method=socket --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed: see $STATE/log/mariadb-install.log"
  fi
  setsid /usr/sbin/mariadbd --no-defaults --datadir="$STATE/mysql/data" --user=root \
    --socket="$DB_SOCK" --port="$DB_PORT" --bind-address=127.0.0.1 \
    --pid-file="$STATE/mysql/mariadbd.pid" --log-error="$STATE/log/mariadb.log" \
    --innodb-buffer-pool-size=64M --skip-name-resolve </dev/null >/dev/null 2>&1 9>&- &
  echo $! >"$STATE/mariadb.pid"
  wait_for 30 mariadb db -e "select 1" || die "MariaDB did not start: see $STATE/log/mariadb.log"
  db <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

sacctmgr_ok() { sacctmgr -n -P list cluster format=cluster; }

start_slurmdbd() {
  if alive slurmdbd; then return; fi
  SLURM_CONF=$CONF /usr/sbin/slurmdbd 9>&-
  wait_for 30 slurmdbd sacctmgr_ok || die "slurmdbd did not answer: see $STATE/log/slurmdbd.log"
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
  if ! sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT"; then
    sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="se3t tests" organization=se3t >/dev/null
  fi
  if ! sacctmgr -n -P list assoc user=root account="$ACCOUNT" format=user | grep -qx root; then
    sacctmgr -i add user root account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
  fi
}

node_ok() { sinfo -h -n "$NODE" -o %T | grep -qE '^(idle|mixed|allocated|completing)'; }

start_slurm() {
  if ! alive slurmctld; then
    /usr/sbin/slurmctld 9>&-
    wait_for 30 slurmctld scontrol ping || die "slurmctld did not answer: see $STATE/log/slurmctld.log"
  elif [ "$CONF_CHANGED" = 1 ]; then
    scontrol reconfigure || die "scontrol reconfigure failed after a config change"
  fi
  if ! alive slurmd; then
    /usr/sbin/slurmd 9>&-
  fi
  if ! wait_for 30 node node_ok; then
    scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
    wait_for 15 node node_ok || die "node $NODE not up: $(sinfo -h -N -o '%N %T %E'); see $STATE/log/slurmd.log"
  fi
}

cmd_start() {
  need
  mkdir -p "$STATE/log"
  lock
  start_munge
  write_configs
  start_mariadb
  start_slurmdbd
  start_slurm
  log "up: cluster $CLUSTER, node $NODE ($CPUS CPUs), partitions $PARTITION (default), $LOW (preemptable) and $URGENT, account $ACCOUNT; state in $STATE"
}

stop_pid() {  # stop_pid NAME: SIGTERM the recorded daemon, wait, then SIGKILL
  local f=$STATE/$1.pid pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

cmd_stop() {
  [ -d "$STATE" ] || { log "nothing to stop ($STATE absent)"; return 0; }
  lock
  # jobs first, so no step outlives the cluster
  if alive slurmctld; then scancel --full --quiet -u root 2>/dev/null || true; sleep 1; fi
  stop_pid slurmd
  stop_pid slurmctld
  stop_pid slurmdbd
  stop_pid mariadb
  stop_pid munged
  if [ -f "$STATE/slurm.conf.orig" ]; then
    cp "$STATE/slurm.conf.orig" "$CONF"
  fi
  log "stopped"
}

cmd_status() {
  local ok=0 name
  for name in munged mariadb slurmdbd slurmctld slurmd; do
    if alive "$name"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"
    elif [ "$name" = munged ] && munge_ok; then echo "munged: running (not started here)"
    else echo "$name: stopped"; ok=1; fi
  done
  if scontrol ping >/dev/null 2>&1 && node_ok; then
    sinfo -h -o "partition %P: %a, nodes %D %T" || true
  else
    ok=1
  fi
  return $ok
}

cmd_env() {
  echo "SE3T_SLURM_DIR=$STATE"
  echo "SLURM_CONF=$CONF"
  echo "CLUSTER=$CLUSTER"
  echo "PARTITION=$PARTITION"
  echo "URGENT_PARTITION=$URGENT"
  echo "PREEMPTABLE_PARTITION=$LOW"
  echo "ACCOUNT=$ACCOUNT"
  echo "NODE=$NODE"
  echo "CPUS=$CPUS"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) sed -n '2,22p' "$0"; exit 2 ;;
esac
