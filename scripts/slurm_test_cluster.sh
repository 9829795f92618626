#!/usr/bin/env bash
# A real two-node SLURM cluster on this one machine, for tests and for trying a cluster set-up
# on a laptop (Debian/Ubuntu, as root).
#
#   bash scripts/slurm_test_cluster.sh up [DIR]     install slurm when missing, start it, wait for idle nodes
#   bash scripts/slurm_test_cluster.sh down [DIR]   cancel every job, stop the daemons by their PIDs
#   bash scripts/slurm_test_cluster.sh env [DIR]    print the export line for the cluster's client commands
#
# Everything (slurm.conf, state, spool, logs, pid files) lives under DIR (default
# ${TMPDIR:-/tmp}/pactmerge-slurm). `up` prints `export SLURM_CONF=DIR/slurm.conf`: sbatch, squeue,
# scontrol and srun of that shell then talk to this cluster. The nodes are n1 and n2, one slurmd
# each (Debian's slurmd is built with multiple-slurmd support), both on 127.0.0.1; an /etc/hosts
# line makes n1 and n2 resolve (Lightning takes the first node name as the DDP master address).
# Authentication is off (auth/none): the cluster listens on 127.0.0.1 ports only.
# Ports: PACTMERGE_SLURM_PORT (default 16817) for slurmctld, the next two for slurmd n1 and n2.
set -euo pipefail

cmd=${1:-}
DIR=$(realpath -m "${2:-${TMPDIR:-/tmp}/pactmerge-slurm}")
PORT=${PACTMERGE_SLURM_PORT:-16817}
CONF="$DIR/slurm.conf"
NODES=(n1 n2)
CPUS=${PACTMERGE_SLURM_CPUS:-4}  # per node: several one-CPU jobs at a time on a small machine

die() { echo "slurm_test_cluster: $*" >&2; exit 1; }

install_packages() {
    local missing=()
    for bin in slurmctld slurmd sbatch srun; do
        command -v "$bin" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "slurm is not installed (${missing[*]} missing) and installing it needs root"
    command -v apt-get >/dev/null || die "slurm is not installed and there is no apt-get to install it"
    echo "installing slurmctld slurmd slurm-client munge" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >&2
}

write_conf() {
    mkdir -p "$DIR/state" "$DIR/log"
    local host
    host=$(hostname -s)
    cat >"$CONF" <<EOF
# written by scripts/slurm_test_cluster.sh: two nodes on one host
ClusterName=pactmerge
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
DependencyParameters=kill_invalid_depend
SlurmdParameters=config_overrides
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
KillWait=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=n[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=[$((PORT + 1))-$((PORT + 2))] CPUs=$CPUS RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
EOF
}

hosts_line() {
    grep -qE '^127\.0\.0\.1[[:space:]].*\bn1\b.*\bn2\b' /etc/hosts 2>/dev/null && return 0
    [ -w /etc/hosts ] || die "n1 and n2 must resolve to 127.0.0.1: add '127.0.0.1 n1 n2' to /etc/hosts"
    echo "127.0.0.1 n1 n2  # pactmerge slurm test cluster" >>/etc/hosts
}

pid_of() {  # the pid in a pid file, when that process is alive
    local f=$1 pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

wait_idle() {
    local i state
    for i in $(seq 1 150); do
        state=$(SLURM_CONF=$CONF sinfo -h -N -o '%N %T' 2>/dev/null | sort -u | tr '\n' ' ' || true)
        if [ "$state" = "n1 idle n2 idle " ]; then
            return 0
        fi
        sleep 0.2
    done
    die "nodes not idle after 30 s (sinfo: ${state:-no answer}); logs in $DIR/log"
}

up() {
    install_packages
    export PATH="$PATH:/usr/sbin"
    if pid_of "$DIR/slurmctld.pid" >/dev/null; then
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    rm -rf "$DIR/state" "$DIR/spool"  # nothing of an earlier cluster in DIR comes back
    write_conf
    hosts_line
    export SLURM_CONF=$CONF
    slurmctld -f "$CONF" -i  # -i: ignore state left by an earlier cluster in DIR
    for n in "${NODES[@]}"; do
        mkdir -p "$DIR/spool/$n"
        slurmd -f "$CONF" -N "$n"
    done
    wait_idle
    echo "export SLURM_CONF=$CONF"
}

down() {
    export PATH="$PATH:/usr/sbin"
    [ -f "$CONF" ] || { echo "no cluster in $DIR" >&2; return 0; }
    export SLURM_CONF=$CONF
    if pid_of "$DIR/slurmctld.pid" >/dev/null; then
        # stopping slurmd does not end the jobs: cancel them first and let them go (a suspended
        # job takes no signal until it is resumed)
        for job in $(squeue -h -t suspended -o %i 2>/dev/null); do scontrol resume "$job" || true; done
        local ids
        ids=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
        [ -n "${ids// /}" ] && { scancel --quiet $ids >/dev/null 2>&1 || true; }
        for _ in $(seq 1 100); do
            [ -z "$(squeue -h -t running,completing 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    local f pid
    for f in "$DIR"/slurmd-*.pid "$DIR/slurmctld.pid"; do
        pid=$(pid_of "$f") || continue
        kill -TERM "$pid"
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        rm -f "$f"
    done
    echo "stopped the cluster in $DIR" >&2
}

case "$cmd" in
    up) up ;;
    down) down ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "usage: $0 up|down|env [DIR]" ;;
esac
