#!/usr/bin/env bash
# slurm-up.sh - install (if needed) and start a single-node Slurm cluster on
# localhost for ascend-batch's Slurm tests (tests/test_slurm.py): munged +
# slurmctld + slurmd from Debian packages, no cgroups, no accounting (the tests
# use squeue -t all / scontrol, never sacct).
# Idempotent and quick: re-running while the cluster is up only re-checks it;
# a clean machine takes ~10 s including the apt install.
# Needs root and Debian 12 (bookworm) apt sources. .ci/run calls it before the
# tests and tests/slurm/slurm-down.sh after them.
# CI ONLY: it overwrites /etc/slurm/{slurm,cgroup}.conf.
# Tested with slurm 22.05.8-4+deb12u3, munge 0.5.15-2+deb12u1 on Debian 12,
# root, 2 cores, no systemd as PID 1.
#
# Environment knobs (all optional):
#   SLURM_CI_CPUS=N        advertise N CPUs (default: max(nproc, 4), so a
#                          3-task array runs all at once on a 2-core machine;
#                          N > nproc turns on SlurmdParameters=config_overrides)
#   SLURM_CI_EXTRA_CONF    extra lines appended to slurm.conf
#   SLURM_CI_KEEP_STATE=1  keep slurmctld state (job ids, queue) across restarts
#   SLURM_CI_TIMEOUT=60    seconds to wait for each daemon / the node
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

NODE=$(hostname -s)
HW_CPUS=$(nproc)
DEFAULT_CPUS=$(( HW_CPUS > 4 ? HW_CPUS : 4 ))
CPUS=${SLURM_CI_CPUS:-$DEFAULT_CPUS}
KEEP=${SLURM_CI_KEEP_STATE:-0}
TIMEOUT=${SLURM_CI_TIMEOUT:-60}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
CTLD_STATE=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm-ci            # copies of pids of the daemons *we* started
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
HERE=$(cd "$(dirname "$0")" && pwd)

log() { echo "[slurm-up $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"

# pid_alive PIDFILE COMM -> true if the pid in PIDFILE is alive and is COMM
pid_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(cat /proc/$pid/comm 2>/dev/null)" = "$2" ]
}
# wait_for SECONDS CMD... -> poll CMD every 0.2 s
wait_for() {
  local n=$(($1 * 5)); shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

# ---------------------------------------------------------------- 1. packages
PKGS="munge slurmctld slurmd slurm-client"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  # --no-install-recommends: 8 packages (3.4 MB) instead of ~42 (no postfix...)
  for try in 1 2 3; do
    apt-get -o Acquire::Retries=3 update -qq \
      && apt-get -o Acquire::Retries=3 install -y -qq --no-install-recommends $missing >/dev/null \
      && break
    [ "$try" = 3 ] && die "apt-get failed 3 times"
    log "apt-get failed (try $try), retrying in 10 s"; sleep 10
  done
fi
log "slurm $(slurmd -V | awk '{print $2}'), munge $(dpkg-query -W -f='${Version}' munge)"
# Where systemd is PID 1 the packages enable their units: keep them from racing
# with the daemons managed here (munge, if already running, is reused).
if [ -d /run/systemd/system ]; then
  systemctl disable --now slurmctld.service slurmd.service >/dev/null 2>&1 || true
fi
mkdir -p "$RUN_DIR" "$CONF_DIR" "$CTLD_STATE" "$SLURMD_SPOOL" "$LOG_DIR"

# ---------------------------------------------------------------- 2. munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating munge key"
  install -d -o munge -g munge -m 0700 /etc/munge
  if command -v mungekey >/dev/null; then
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
  else
    create-munge-key -f
  fi
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
# /run/munge is normally created by systemd (RuntimeDirectory=); not in a container
install -d -o munge -g munge -m 0755 /run/munge /var/lib/munge /var/log/munge
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
if munge_ok; then
  log "munged already running (reusing it)"
else
  log "starting munged"
  # munged refuses to start on 'insecure' dir permissions; --force downgrades
  # those checks to warnings (only used if the plain start failed)
  runuser -u munge -- /usr/sbin/munged 2>/dev/null \
    || runuser -u munge -- /usr/sbin/munged --force \
    || die "munged failed to start; see /var/log/munge/munged.log"
  wait_for 10 munge_ok || die "munge credential round-trip failed"
  cp "$MUNGE_PID" "$RUN_DIR/munged.pid"   # slurm-down.sh stops only what we started
fi

# ---------------------------------------------------------------- 3. config
# Hardware line as slurmd itself detects it (avoids node DRAIN on mismatch)
HWLINE=$(slurmd -C | head -1)    # NodeName=<hostname -s> CPUs=.. Boards=.. RealMemory=N
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$HWLINE")
OVERRIDE="#"
if [ "$CPUS" -gt "$HW_CPUS" ]; then
  NODELINE="NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN"
  OVERRIDE="SlurmdParameters=config_overrides"
elif [ "$CPUS" -lt "$HW_CPUS" ]; then
  NODELINE="NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN"
else
  NODELINE="$HWLINE NodeAddr=127.0.0.1 State=UNKNOWN"
fi
NEWCONF=$(mktemp)
cat >"$NEWCONF" <<EOF
# generated by ascend-batch tests/slurm/slurm-up.sh - single-node CI cluster
ClusterName=ci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# no cgroups: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# default batch_sched_delay=3 makes every scheduling round wait ~3 s
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
# batch jobs may be requeued (the default, stated for the preemption test)
JobRequeue=1
# keep finished jobs visible to squeue/scontrol for 2 h
MinJobAge=7200
KillWait=5
MailProg=/bin/true
$OVERRIDE
StateSaveLocation=$CTLD_STATE
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$NODELINE
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
${SLURM_CI_EXTRA_CONF:-}
EOF
# slurmd 22.05 ALWAYS initialises a cgroup plugin (even with proctrack/linuxproc
# + task/none) and refuses to start if that fails. "autodetect" picks cgroup/v2
# on unified hosts, whose init wants systemd/dbus + a writable, delegated
# /sys/fs/cgroup, and dies on odd container mounts. cgroup/v1's init() touches
# nothing, and nothing else in this config uses cgroups -> force it.
NEWCG=$(mktemp)
printf '# generated by slurm-up.sh\nCgroupPlugin=cgroup/v1\n' >"$NEWCG"

changed=0
cmp -s "$NEWCONF" "$CONF" || changed=1
cmp -s "$NEWCG" "$CONF_DIR/cgroup.conf" || changed=1
if [ "$changed" = 1 ]; then
  log "writing $CONF"
  install -m 0644 "$NEWCONF" "$CONF"
  install -m 0644 "$NEWCG" "$CONF_DIR/cgroup.conf"
fi
rm -f "$NEWCONF" "$NEWCG"

if [ "$changed" = 1 ] && { pid_alive $CTLD_PID slurmctld || pid_alive $SLURMD_PID slurmd; }; then
  log "config changed -> restarting slurm daemons"
  "$HERE/slurm-down.sh" --keep-munge
fi

# ---------------------------------------------------------------- 4. slurmctld, slurmd
if pid_alive $CTLD_PID slurmctld; then
  log "slurmctld already running (pid $(cat $CTLD_PID))"
else
  if [ "$KEEP" = 1 ]; then CLR=""; else CLR="-c"; rm -rf "${CTLD_STATE:?}"/*; fi
  log "starting slurmctld"
  slurmctld $CLR || die "slurmctld failed; see $LOG_DIR/slurmctld.log"
  wait_for 10 pid_alive $CTLD_PID slurmctld || true
  cp $CTLD_PID "$RUN_DIR/slurmctld.pid"
fi
ctld_up() {
  pid_alive $CTLD_PID slurmctld || { tail -20 $LOG_DIR/slurmctld.log >&2; die "slurmctld died"; }
  scontrol ping 2>/dev/null | grep -q 'is UP'
}
for _ in $(seq $((TIMEOUT * 5))); do ctld_up && break; sleep 0.2; done
ctld_up || { tail -20 $LOG_DIR/slurmctld.log >&2; die "slurmctld not responding"; }

if pid_alive $SLURMD_PID slurmd; then
  log "slurmd already running (pid $(cat $SLURMD_PID))"
else
  log "starting slurmd"
  slurmd -N "$NODE" || { tail -20 $LOG_DIR/slurmd.log >&2; die "slurmd failed"; }
  wait_for 10 pid_alive $SLURMD_PID slurmd || true
  cp $SLURMD_PID "$RUN_DIR/slurmd.pid"
fi

# ---------------------------------------------------------------- 5. wait idle
state=""
for _ in $(seq $((TIMEOUT * 5))); do
  state=$(sinfo -h -n "$NODE" -o '%T' 2>/dev/null || true)
  case "$state" in idle|mixed|allocated) break;; esac
  sleep 0.2
done
case "$state" in
  idle|mixed|allocated) ;;
  *) scontrol show node "$NODE" >&2 || true
     tail -20 $LOG_DIR/slurmd.log >&2 || true
     die "node $NODE is '$state' after ${TIMEOUT}s" ;;
esac
log "cluster up: node $NODE state=$state cpus=$CPUS"
