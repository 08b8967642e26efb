#!/usr/bin/env bash
# ascend-batch-cron.sh - run an ascend-batch command from cron: never two at once, a dated log
# file per run, the command's exit code passed through.
#
# Usage: ascend-batch-cron.sh [--name NAME] [--log-dir DIR] [--lock FILE] [--date YYYY-MM-DD] -- COMMAND [ARG...]
#
#   --name NAME     names the lock and the log files (default: ascend-batch)
#   --log-dir DIR   where NAME-YYYY-MM-DD_HHMMSS.log files go; NAME-latest.log links to the newest
#                   (default: $HOME/ascend-batch/logs)
#   --lock FILE     the lock (default: LOG_DIR/NAME.lock); runs sharing a lock never overlap
#   --date DATE     the date that replaces {date} in COMMAND's arguments (default: today, date +%F);
#                   use it to re-run a past night. {date} exists because cron treats % specially.
#
# Exit codes: COMMAND's own (ascend-batch: 0 done, 2 bad manifest, 3 startup, 4 incompatible output,
#   5 locked, 6 too many errors, 7 incomplete, 130 interrupted: see the README), and
#   75  another run with the same lock is still going: this one did not start (EX_TEMPFAIL)
#   64  bad usage of this wrapper
#
# Example crontab line (see crontab.example):
#   30 1 * * * /opt/ascend-batch/jobs/ascend-batch-cron.sh --name nightly --log-dir /var/log/ascend-batch -- \
#     /opt/ascend-batch/venv/bin/ascend-batch run /etc/ascend-batch/nightly.toml --output /data/results/date={date}
set -uo pipefail

EXIT_LOCKED=75
EXIT_USAGE=64
NAME=ascend-batch
LOG_DIR="${HOME:-/tmp}/ascend-batch/logs"
LOCK=""
DAY=""

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "$1"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME=${2:?--name needs a value}; shift 2 ;;
    --log-dir) LOG_DIR=${2:?--log-dir needs a value}; shift 2 ;;
    --lock) LOCK=${2:?--lock needs a value}; shift 2 ;;
    --date) DAY=${2:?--date needs a value}; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage 0 ;;
    *) echo "ascend-batch-cron: unknown option '$1' (the command goes after --)" >&2; exit "$EXIT_USAGE" ;;
  esac
done
[ $# -gt 0 ] || { echo "ascend-batch-cron: no command given (put it after --)" >&2; exit "$EXIT_USAGE"; }
case "$NAME" in */*|"") echo "ascend-batch-cron: --name must not contain '/'" >&2; exit "$EXIT_USAGE" ;; esac
DAY=${DAY:-$(date +%F)}
mkdir -p "$LOG_DIR" || exit "$EXIT_USAGE"
LOCK=${LOCK:-$LOG_DIR/$NAME.lock}
STAMP=$(date +%F_%H%M%S)
LOG="$LOG_DIR/$NAME-$STAMP.log"
now() { date '+%Y-%m-%d %H:%M:%S'; }

# The lock is an flock on an open file: the kernel drops it when its holder exits, however it
# exits, so a crashed run never blocks the next night. The command inherits the descriptor, so the
# lock is held for as long as the command runs, even if this wrapper is killed.
exec 9>>"$LOCK" || { echo "ascend-batch-cron: cannot open lock file $LOCK" >&2; exit "$EXIT_USAGE"; }
if ! flock -n 9; then
  holder=$(head -c 200 "$LOCK" 2>/dev/null | tr -d '\n')
  msg="ascend-batch-cron: '$NAME' is still running (lock $LOCK held by ${holder:-an unknown process}); this run did not start (exit $EXIT_LOCKED)"
  echo "$(now) $msg" >>"$LOG"
  echo "$msg" >&2
  exit "$EXIT_LOCKED"
fi
printf 'pid %s on %s since %s\n' "$$" "$(hostname)" "$(now)" >"$LOCK"

cmd=()
for arg in "$@"; do cmd+=("${arg//\{date\}/$DAY}"); done
ln -sfn "$(basename "$LOG")" "$LOG_DIR/$NAME-latest.log" 2>/dev/null || true
{
  echo "$(now) ascend-batch-cron: start '$NAME' (date $DAY, pid $$ on $(hostname))"
  printf '%s command:' "$(now)"; printf ' %q' "${cmd[@]}"; echo
} >>"$LOG"

start=$(date +%s)
"${cmd[@]}" </dev/null >>"$LOG" 2>&1 &
child=$!
# cron or an operator stopping the wrapper stops the run the same way (the runner exits 130, resumable)
trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP
while :; do
  wait "$child"; rc=$?
  [ "$rc" -le 128 ] && break
  kill -0 "$child" 2>/dev/null && continue
  wait "$child" 2>/dev/null; again=$?
  [ "$again" -ne 127 ] && rc=$again
  break
done
echo "$(now) ascend-batch-cron: '$NAME' exited with code $rc after $(( $(date +%s) - start )) s" >>"$LOG"
[ "$rc" -eq 0 ] || echo "ascend-batch-cron: '$NAME' failed with exit code $rc; log: $LOG" >&2
exit "$rc"
