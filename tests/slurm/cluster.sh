#!/usr/bin/env bash
# A multi-node SLURM cluster on this machine, for the tests (SLURM 22.05 from Debian's slurm-wlm,
# slurmdbd, munge, mariadb-server and iproute2), run as root with no systemd.
#
#   tests/slurm/cluster.sh start    # configure and start what is not running yet (idempotent)
#   tests/slurm/cluster.sh stop     # stop what this script started, remove its network
#   tests/slurm/cluster.sh status   # print the state; exit 0 when every node is up
#   tests/slurm/cluster.sh env      # print the cluster's settings as KEY=VALUE lines
#   tests/slurm/cluster.sh node-kill NODE   # NODE dies: kill its slurmd and every process on it
#   tests/slurm/cluster.sh node-start NODE  # start NODE's slurmd again and RESUME the node
#
# The nodes: $SE3T_SLURM_NODES (default 3) nodes se3t-n1, se3t-n2, ..., each in its own network
# namespace (`ip netns`, named like the node) and UTS namespace (`unshare --uts`: its own
# hostname), with its own address 10.213.0.(10+i) on a veth pair whose other end is enslaved to
# the bridge se3t-br0 (10.213.0.1) in the root namespace. Every node runs its own slurmd; jobs
# run inside their node's namespaces, so a job step sees its node's hostname and address, and
# DDP's rendezvous really crosses the test network. Each slurmd has a private mount namespace in
# which /etc/netns/NODE/hosts is bind-mounted over /etc/hosts (as `ip netns exec NODE` does): it
# names the controller and every node. Every other mount is the machine's: munge's socket and
# every folder (the "shared filesystem").
# Nothing outside 10.213.0.0/24 and loopback is ever contacted.
#
# Beside the nodes, in the root namespace: munged (unless one already answers), a private
# MariaDB with its own datadir on 127.0.0.1:$SE3T_SLURM_DB_PORT, slurmdbd (so sacct works:
# submitit and Snakemake query it), slurmctld. Both listen on the bridge address too, so clients
# inside a job (an srun, an sacct) reach them. The nodes use ProctrackType=proctrack/linuxproc and
# TaskPlugin=task/none (no cgroups needed). Three partitions over all nodes: "debug" (default,
# never preempted, LLN: jobs go to the least loaded node, so independent jobs spread), "low"
# (preemptable: PreemptMode=REQUEUE with a GraceTime, the job's signal -- USR2 for submitit --
# sent first through SlurmctldParameters=preempt_send_user_signal) and "urgent" (higher
# PriorityTier: preempts "low"). The account "se3t" holds root. A batch job is requeued when a
# node of it fails (JobRequeue=1).
#
# The config goes to /etc/slurm/slurm.conf (Snakemake's in-job srun drops SLURM_CONF, so the
# default path is the only one every client finds); everything else lives under
# $SE3T_SLURM_DIR (default /tmp/se3t-slurm): pid files, logs, spool, state, the MariaDB datadir,
# the list of network objects created (net.list: stop removes those, even after a failed start).
#
# Environment: SE3T_SLURM_DIR, SE3T_SLURM_DB_PORT (default 3307), SE3T_SLURM_NODES (default 3,
# at least 2), SE3T_SLURM_CPUS (CPUs each node advertises, default max(nproc, 4): jobs share the
# real cores), SE3T_SLURM_GRACE (seconds between USR2 and SIGKILL on preemption, 60).
set -euo pipefail

STATE=${SE3T_SLURM_DIR:-/tmp/se3t-slurm}
DB_PORT=${SE3T_SLURM_DB_PORT:-3307}
GRACE=${SE3T_SLURM_GRACE:-60}
NPROC=$(nproc)
CPUS=${SE3T_SLURM_CPUS:-$((NPROC > 4 ? NPROC : 4))}
NNODES=${SE3T_SLURM_NODES:-3}
NET=10.213.0
BRIDGE=se3t-br0
CTL_ADDR=$NET.1
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
DBD_CONF=$CONF_DIR/slurmdbd.conf
CTL=$(hostname -s)
NODES=()
for i in $(seq 1 "$NNODES"); do NODES+=("se3t-n$i"); done
NODE_RANGE="se3t-n[1-$NNODES]"
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

daemon() {  # daemon CMD...: exec CMD with no inherited descriptor above 2. A lock our caller
  # holds (flock(1) around the tests) must not live on in a daemon that outlives it.
  local fd
  for fd in $(ls "/proc/$BASHPID/fd"); do
    [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
  done
  exec "$@"
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
  (daemon runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid)
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
SlurmctldHost=$CTL($CTL_ADDR)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/spool/%n/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$CTL_ADDR
AccountingStoragePort=6819
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
# a node DOWN for not answering returns when it registers again; one set DOWN by an admin (the
# node-failure test) stays DOWN until `scontrol update State=RESUME` (cluster.sh node-start)
ReturnToService=1
MpiDefault=none
KillWait=10
MinJobAge=600
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
# a node that stops answering is DOWN after this long (its batch jobs are then requeued)
SlurmdTimeout=20
# Preemption: "urgent" preempts "debug"; the victim gets USR2 (submitit checkpoints and
# requeues on it), then GraceTime seconds, then is requeued.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
JobRequeue=1
# RealMemory is not enforced (no cgroups) but bounds a job's --mem: the workflow's profile_memory
# rule asks for 16 GB
$(for i in "${!NODES[@]}"; do echo "NodeName=${NODES[$i]} NodeAddr=$(node_addr "$i") CPUs=$CPUS RealMemory=16000 State=UNKNOWN"; done)
PartitionName=$PARTITION Nodes=$NODE_RANGE Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF LLN=YES
PartitionName=$LOW Nodes=$NODE_RANGE Default=NO MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=$GRACE LLN=YES
PartitionName=$URGENT Nodes=$NODE_RANGE Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
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
  (daemon setsid /usr/sbin/mariadbd --no-defaults --datadir="$STATE/mysql/data" --user=root \
    --socket="$DB_SOCK" --port="$DB_PORT" --bind-address=127.0.0.1 \
    --pid-file="$STATE/mysql/mariadbd.pid" --log-error="$STATE/log/mariadb.log" \
    --innodb-buffer-pool-size=64M --skip-name-resolve) </dev/null >/dev/null 2>&1 &
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
  (SLURM_CONF=$CONF daemon /usr/sbin/slurmdbd)
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

node_addr() { echo "$NET.$((11 + $1))"; }  # node_addr INDEX (0-based): its address

node_index() {  # node_index NAME: its 0-based index, or fail
  local i
  for i in "${!NODES[@]}"; do [ "${NODES[$i]}" = "$1" ] && { echo "$i"; return 0; }; done
  die "no node $1 in this cluster (${NODES[*]})"
}

note_net() { echo "$1" >>"$STATE/net.list"; }  # note_net "netns NAME" | "link NAME" | "etc NAME"

start_network() {
  # the bridge in the root namespace, then one namespace per node on a veth pair
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    note_net "link $BRIDGE"
    ip link add "$BRIDGE" type bridge
    ip addr add "$CTL_ADDR/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  local i node hosts
  hosts=$(printf '127.0.0.1 localhost\n%s %s\n' "$CTL_ADDR" "$CTL"
    for i in "${!NODES[@]}"; do printf '%s %s\n' "$(node_addr "$i")" "${NODES[$i]}"; done)
  for i in "${!NODES[@]}"; do
    node=${NODES[$i]}
    mkdir -p "/etc/netns/$node" "$STATE/spool/$node"
    grep -qx "etc $node" "$STATE/net.list" 2>/dev/null || note_net "etc $node"
    printf '%s\n' "$hosts" >"/etc/netns/$node/hosts"
    if ! ip netns list | grep -qw "^$node"; then
      note_net "netns $node"
      ip netns add "$node"
    fi
    if ! ip link show "se3t-v$((i + 1))" >/dev/null 2>&1; then
      note_net "link se3t-v$((i + 1))"
      ip link add "se3t-v$((i + 1))" type veth peer name eth0 netns "$node"
      ip link set "se3t-v$((i + 1))" master "$BRIDGE"
      ip netns exec "$node" ip addr add "$(node_addr "$i")/24" dev eth0
    fi
    ip link set "se3t-v$((i + 1))" up
    ip netns exec "$node" ip link set lo up
    ip netns exec "$node" ip link set eth0 up
  done
}

stop_network() {  # remove exactly what net.list says start_network created (newest first)
  local f=$STATE/net.list kind name
  [ -f "$f" ] || return 0
  tac "$f" | while read -r kind name; do
    case "$kind" in
      netns)
        # a namespace's processes are the jobs of its slurmd: none may outlive the node
        for pid in $(ip netns pids "$name" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$name" 2>/dev/null || true ;;
      link) ip link del "$name" 2>/dev/null || true ;;
      etc) rm -rf "/etc/netns/$name"; rmdir /etc/netns 2>/dev/null || true ;;
    esac
  done
  rm -f "$f"
}

node_ok() {  # node_ok NAME: the controller sees the node up
  sinfo -h -n "$1" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'
}

all_nodes_ok() {
  local node
  for node in "${NODES[@]}"; do node_ok "$node" || return 1; done
}

start_slurmd() {  # start_slurmd NAME: slurmd in the node's network + UTS namespaces
  local node=$1
  alive "slurmd-$node" && return 0
  # nsenter + unshare rather than `ip netns exec`, which remounts /sys and so hides the cgroup
  # mounts slurmd checks; the node's own /etc/hosts is bind-mounted in its private mount
  # namespace. -D: slurmd stays in the foreground of the process we started, so $! is slurmd
  # itself (nsenter and unshare exec, sh execs slurmd).
  (daemon setsid nsenter --net="/run/netns/$node" unshare --uts --mount sh -c \
    "hostname $node && mount --bind /etc/netns/$node/hosts /etc/hosts && exec /usr/sbin/slurmd -D") \
    </dev/null >>"$STATE/log/slurmd-$node.out" 2>&1 &
  echo $! >"$STATE/slurmd-$node.pid"
}

start_slurm() {
  if ! alive slurmctld; then
    (daemon /usr/sbin/slurmctld)
    wait_for 30 slurmctld scontrol ping || die "slurmctld did not answer: see $STATE/log/slurmctld.log"
  elif [ "$CONF_CHANGED" = 1 ]; then
    scontrol reconfigure || die "scontrol reconfigure failed after a config change"
  fi
  local node
  for node in "${NODES[@]}"; do start_slurmd "$node"; done
  if ! wait_for 30 nodes all_nodes_ok; then
    for node in "${NODES[@]}"; do
      node_ok "$node" || scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
    done
    wait_for 15 nodes all_nodes_ok || die "nodes not up: $(sinfo -h -N -o '%N %T %E' | tr '\n' ';'); see $STATE/log/slurmd-*.log"
  fi
}

cmd_start() {
  need
  mkdir -p "$STATE/log"
  lock
  stop_legacy
  start_munge
  start_network
  write_configs
  start_mariadb
  start_slurmdbd
  start_slurm
  log "up: cluster $CLUSTER, nodes ${NODES[*]} ($CPUS CPUs each, bridge $BRIDGE $CTL_ADDR), partitions $PARTITION (default), $LOW (preemptable) and $URGENT, account $ACCOUNT; state in $STATE"
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
  local node
  for node in "${NODES[@]}"; do stop_pid "slurmd-$node"; done
  stop_pid slurmctld
  stop_pid slurmdbd
  stop_pid mariadb
  stop_pid munged
  stop_network
  if [ -f "$STATE/slurm.conf.orig" ]; then
    cp "$STATE/slurm.conf.orig" "$CONF"
  fi
  log "stopped"
}

stop_legacy() {
  # the single-node cluster of earlier versions ran one slurmd in the root namespace
  if alive slurmd; then log "stopping the single-node cluster's slurmd"; stop_pid slurmd; fi
}

cmd_node_kill() {  # the node dies: SIGKILL its slurmd and every process in its namespaces
  local node=$1 f pid
  node_index "$node" >/dev/null
  f=$STATE/slurmd-$node.pid
  [ -s "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
  rm -f "$f"
  # its slurmstepds and job tasks: all started by that slurmd
  for pid in $(ip netns pids "$node" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  log "killed slurmd and every process of $node"
}

cmd_node_start() {
  local node=$1
  node_index "$node" >/dev/null
  lock
  start_slurmd "$node"
  wait_for 30 "$node" scontrol ping
  scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
  wait_for 60 "$node" node_ok "$node" || die "node $node not up: $(sinfo -h -n "$node" -o '%T %E')"
  log "$node up"
}

cmd_status() {
  local ok=0 name
  local nodes=("${NODES[@]/#/slurmd-}")
  for name in munged mariadb slurmdbd slurmctld "${nodes[@]}"; do
    if alive "$name"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"
    elif [ "$name" = munged ] && munge_ok; then echo "munged: running (not started here)"
    else echo "$name: stopped"; ok=1; fi
  done
  if scontrol ping >/dev/null 2>&1 && all_nodes_ok; then
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
  echo "NODES=${NODES[*]}"
  echo "CONTROLLER=$CTL"
  echo "CPUS=$CPUS"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  node-kill) cmd_node_kill "${2:?node-kill NODE}" ;;
  node-start) cmd_node_start "${2:?node-start NODE}" ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
