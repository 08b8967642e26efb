#!/usr/bin/env bash
# slurm-down.sh - stop the single-node CI cluster started by slurm-up.sh.
# Stops only daemons slurm-up.sh started (their pids are copied to
# /run/slurm-ci), by pid, never by name. Safe to run when nothing is running.
#   --keep-munge  leave munged running
#   --purge       also delete slurm state/spool/logs and the generated configs
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
KEEP_MUNGE=0; PURGE=0
for a in "$@"; do
  case "$a" in --keep-munge) KEEP_MUNGE=1;; --purge) PURGE=1;; *) echo "unknown arg $a" >&2; exit 2;; esac
done
RUN_DIR=/run/slurm-ci
ACTIVE=PENDING,RUNNING,SUSPENDED,CONFIGURING,COMPLETING,REQUEUED,REQUEUE_HOLD,REQUEUE_FED
log() { echo "[slurm-down $(date +%T)] $*" >&2; }

# stop_pid MARKERFILE COMM: TERM, wait up to 20 s, then KILL - only if the pid
# still belongs to a process named COMM (guards against pid reuse)
stop_pid() {
  local f=$1 comm=$2 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if [ -d "/proc/$pid" ] && [ "$(cat /proc/$pid/comm 2>/dev/null)" = "$comm" ]; then
    log "stopping $comm (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    if [ -d "/proc/$pid" ]; then log "$comm did not exit, SIGKILL"; kill -KILL "$pid" 2>/dev/null; fi
  fi
  rm -f "$f"
}

# 1. cancel remaining jobs so their slurmstepd + job processes go away
#    (slurmstepd outlives slurmd otherwise)
if [ -s $RUN_DIR/slurmctld.pid ] && scontrol ping 2>/dev/null | grep -q 'is UP'; then
  jobs=$(squeue -h -t $ACTIVE -o '%A' 2>/dev/null | sort -u)
  if [ -n "$jobs" ]; then
    log "cancelling jobs: $(echo $jobs)"
    scancel $jobs 2>/dev/null
    for _ in $(seq 100); do
      [ -z "$(squeue -h -t $ACTIVE -o '%A' 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
fi

# 2. daemons, in reverse start order
stop_pid $RUN_DIR/slurmd.pid slurmd
stop_pid $RUN_DIR/slurmctld.pid slurmctld
[ "$KEEP_MUNGE" = 1 ] || stop_pid $RUN_DIR/munged.pid munged

if [ "$PURGE" = 1 ]; then
  log "purging state, logs and generated config"
  rm -rf /var/spool/slurmctld /var/spool/slurmd /var/log/slurm/slurmctld.log* \
         /var/log/slurm/slurmd.log* /etc/slurm/slurm.conf /etc/slurm/cgroup.conf
fi
log "done"
exit 0
