#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the workflow's cluster tests.
#
#   .ci/slurm.sh start    install slurm-wlm + munge if missing, write the config, start munged,
#                         slurmctld and slurmd, wait until `sinfo` shows the node idle
#   .ci/slurm.sh stop     stop the daemons by the process ids in their pid files
#   .ci/slurm.sh status   the daemons' pids and `sinfo`; exit 0 only when the node is up
#   .ci/slurm.sh env      print `export SLURM_CONF=...` (eval it to use sinfo/sbatch yourself)
#
# Everything (config, munge key and socket, state, spool, logs, pid files) lives under
# $MMLWF_SLURM_DIR (default /tmp/mmlwf-slurm). The one thing outside: /etc/slurm/slurm.conf,
# the path every SLURM client reads by default, becomes a symlink to $DIR/slurm.conf, because
# the jobs' nested `srun` (snakemake's slurm-jobstep executor) runs with the SLURM_* variables,
# SLURM_CONF included, removed. `start` refuses to replace a real /etc/slurm/slurm.conf, and
# `stop` removes the link only when it points to $DIR. `start` and `stop` are idempotent:
# `start` on a running cluster only checks it, `stop` on a stopped one does nothing.
#
# Choices for a container (no systemd, cgroups maybe read-only): no accounting daemon
# (AccountingStorageType=accounting_storage/none, JobAcctGatherType=jobacct_gather/none: so
# `sacct` has no data and job status comes from `squeue`, which keeps finished jobs for
# MinJobAge=600 s), ProctrackType=proctrack/linuxproc (tracks a job's processes through the
# process tree: no cgroup needed; a process that daemonises escapes, which our jobs do not do),
# TaskPlugin=task/none (no CPU binding), SelectType=select/cons_tres with CR_Core_Memory (jobs
# share the node by cores and memory, so two 1-CPU jobs run side by side), all daemons as root
# (SlurmUser=root). A fake GPU gres (File=/dev/null, AutoDetect=off) lets `--gpus=1` jobs be
# scheduled; it is a scheduling token, not a device. SlurmdTimeout is short (20 s) so that a
# killed slurmd (a simulated node failure) is noticed quickly; ReturnToService=2 returns the
# node to service when its slurmd registers again.
set -euo pipefail

DIR=${MMLWF_SLURM_DIR:-/tmp/mmlwf-slurm}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF
MUNGE_SOCKET=$DIR/munge/munge.socket.2
HOST=$(hostname -s)
PARTITION=${MMLWF_SLURM_PARTITION:-main}
WAIT_S=${MMLWF_SLURM_WAIT_S:-60}

log() { echo "slurm.sh: $*" >&2; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sinfo >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q slurm-wlm munge >/dev/null
}

write_config() {
    mkdir -p "$DIR"/{munge,state,spool,log,run}
    chmod 700 "$DIR/munge"
    if [ ! -s "$DIR/munge/munge.key" ]; then
        (umask 077; dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none)
    fi
    local cpus mem_mb
    cpus=${MMLWF_SLURM_CPUS:-2}
    # RealMemory: MemTotal less 1 GiB for the system, in MiB
    mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 - 1024}' /proc/meminfo)
    cat >"$CONF.tmp" <<EOF
# Written by .ci/slurm.sh: a one-node cluster on $HOST for tests (see that script).
ClusterName=mmlwf
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
SlurmctldPort=${MMLWF_SLURMCTLD_PORT:-6817}
SlurmdPort=${MMLWF_SLURMD_PORT:-6818}
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
MinJobAge=600
KillWait=10
SlurmdTimeout=20
ReturnToService=2
JobRequeue=0
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    link_config
    cat >"$DIR/gres.conf" <<EOF
AutoDetect=off
NodeName=$HOST Name=gpu File=/dev/null
EOF
}

link_config() {  # /etc/slurm/slurm.conf -> $CONF, never over a real configuration
    local etc=/etc/slurm/slurm.conf
    if [ -e "$etc" ] && [ "$(readlink "$etc")" != "$CONF" ]; then
        log "$etc exists and is not this cluster's; not replacing it (jobs may not find $CONF)"
        return 1
    fi
    mkdir -p /etc/slurm
    ln -sfn "$CONF" "$etc"
}

unlink_config() {
    local etc=/etc/slurm/slurm.conf
    if [ -L "$etc" ] && [ "$(readlink "$etc")" = "$CONF" ]; then rm -f "$etc"; fi
}

pid_alive() {  # pid file -> 0 when the process it names runs
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_state() {
    sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -1
}

wait_idle() {
    local i state=""
    for ((i = 0; i < WAIT_S; i++)); do
        state=$(node_state)
        case $state in
            idle | mixed | allocated) return 0 ;;
        esac
        sleep 1
    done
    log "node $HOST is not up after ${WAIT_S}s (state: '${state:-no answer}'); see $DIR/log/"
    return 1
}

start() {
    install_packages
    if pid_alive "$DIR/run/munged.pid" && pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid"; then
        log "already running"
        wait_idle
        return
    fi
    write_config
    if ! pid_alive "$DIR/run/munged.pid"; then
        # --force: munged runs as root here and its socket lives under /tmp
        munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
            --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
            --seed-file="$DIR/munge/munged.seed"
    fi
    if ! pid_alive "$DIR/run/slurmctld.pid"; then
        slurmctld -i  # -i: ignore state saved by an earlier cluster in this directory
    fi
    if ! pid_alive "$DIR/run/slurmd.pid"; then
        slurmd
    fi
    wait_idle
    log "up: node $HOST, partition $PARTITION ($CONF)"
}

stop_one() {  # name: SIGTERM by pid, then SIGKILL after 10 s
    local pidfile=$DIR/run/$1.pid pid i
    pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for ((i = 0; i < 20; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$pidfile"
}

stop() {
    if [ -f "$CONF" ] && pid_alive "$DIR/run/slurmctld.pid"; then
        scancel --quiet --partition="$PARTITION" 2>/dev/null || true  # jobs left over by a test
    fi
    stop_one slurmd
    stop_one slurmctld
    stop_one munged
    unlink_config
    log "stopped"
}

status() {
    local name ok=0
    for name in munged slurmctld slurmd; do
        if pid_alive "$DIR/run/$name.pid"; then
            echo "$name: running (pid $(cat "$DIR/run/$name.pid"))"
        else
            echo "$name: not running"; ok=1
        fi
    done
    [ "$ok" -eq 0 ] && sinfo -N -l
    return "$ok"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
