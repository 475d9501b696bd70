#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (Debian's slurm-wlm + munge), for the launcher
# tests (tests/test_launchers.py) and for trying launcher=slurm without a cluster.
#
#   scripts/slurm_local.sh start    install (apt, as root) if missing, configure, start; idempotent
#   scripts/slurm_local.sh stop     stop the daemons this script started
#   scripts/slurm_local.sh status   sinfo
#   scripts/slurm_local.sh --quick  start (idempotent) and sinfo: what tests/test_scripts.py runs
#
# One partition, `debug` (ACSL_SLURM_PARTITION), with this machine's CPUs and memory as
# `slurmd -C` reports them. Memory is not a consumable resource (CR_Core), so jobs that ask
# for mem_gb run side by side. No accounting database: job states come from squeue.
# State, logs and pid files live in ACSL_SLURM_DIR (default /var/lib/acsl-slurm). The
# config is written to /etc/slurm/slurm.conf only when there is none or it is ours.
set -euo pipefail

DIR="${ACSL_SLURM_DIR:-/var/lib/acsl-slurm}"
PARTITION="${ACSL_SLURM_PARTITION:-debug}"
CONF=/etc/slurm/slurm.conf
MARK="# written by acsl scripts/slurm_local.sh"

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "slurm_local.sh: must run as root (it installs packages and starts daemons)" >&2
        exit 2
    fi
}

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return
    fi
    echo "slurm_local.sh: installing slurm-wlm and munge with apt" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        echo "slurm_local.sh: $CONF exists and is not ours; using it as it is" >&2
        return
    fi
    local node host
    host="$(hostname -s)"
    # this machine's CPUs, sockets, cores and memory, as slurmd sees them
    node="$(slurmd -C | head -n 1) NodeAddr=127.0.0.1 State=UNKNOWN"
    mkdir -p /etc/slurm "$DIR/state" "$DIR/spool"
    cat >"$CONF" <<EOF
$MARK
ClusterName=acsl
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job (preemption, time limit) may start again after 10 s, not the default 120
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobRequeue=1
ReturnToService=2
MpiDefault=none
KillWait=10
$node
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

running() {  # pid file names a live process
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

start() {
    need_root
    install
    write_conf
    mkdir -p "$DIR" /run/munge /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --force 2>/dev/null || dd if=/dev/urandom bs=1 count=1024 \
            of=/etc/munge/munge.key 2>/dev/null
    fi
    chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
    chmod 0400 /etc/munge/munge.key
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged --force
        cp /run/munge/munged.pid "$DIR/munged.pid"
    fi
    running "$DIR/slurmctld.pid" || slurmctld
    running "$DIR/slurmd.pid" || slurmd
    for _ in $(seq 1 60); do  # until the node takes jobs
        if sinfo -h -p "$PARTITION" -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            sinfo -p "$PARTITION"
            return
        fi
        sleep 0.5
    done
    echo "slurm_local.sh: the node did not come up; see $DIR/slurmctld.log, $DIR/slurmd.log" >&2
    exit 1
}

stop() {
    need_root
    local f
    for f in slurmd slurmctld munged; do
        if running "$DIR/$f.pid"; then
            kill "$(cat "$DIR/$f.pid")"
        fi
        rm -f "$DIR/$f.pid"
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    --quick) start && sinfo ;;  # CI's script check: (re)start idempotently, show the partition
    *) echo "usage: $0 start|stop|status|--quick" >&2; exit 2 ;;
esac
