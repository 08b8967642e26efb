"""Slurm: sbatch scripts for a job array plus a dependent finalize job, and their submission.

Slurm is the engine; the runner cooperates with it. ``ascend-batch slurm submit M --array K``:

1. writes two readable scripts into ``OUT/_slurm/`` (``array.sbatch``, ``finalize.sbatch``; the ``_``
   prefix keeps them out of ``pandas.read_parquet(OUT)``), logs go to ``OUT/_slurm/logs/``;
2. submits the array *held*, then the finalize job with ``--dependency=afterok:<array>`` and
   ``--kill-on-invalid-dep=yes`` (a failed task cancels it instead of leaving it pending forever),
   then releases the array, so there is never an array without its finalize job;
3. appends what it submitted to ``OUT/_slurm/submissions.jsonl``.

Array task ``k`` runs ``python -m ascend_batch run M --output OUT --shard k/K`` (the shard is explicit,
so resubmitting only some task ids, ``--only-missing``, still means the same shares). The script asks
for ``--signal=B:USR1@<s>`` and ``--requeue``: on USR1 (time limit near, or a preemption notice) it
forwards the signal to the runner, which stops taking units, lets in-flight units commit and exits
130; the script then requeues its own task, which resumes where it stopped.

Every value from the command line or the manifest reaches the scripts quoted: ``shlex.quote`` in
shell lines, Slurm's double-quote syntax in ``#SBATCH`` lines; values Slurm cannot express there
(new lines, backslashes in log paths) are refused with a message.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import EXIT_INTERRUPTED, EXIT_STARTUP, EXIT_USAGE, AscendBatchError

SLURM_DIR = "_slurm"
LOGS_DIR = "logs"
ARRAY_SCRIPT = "array.sbatch"
FINALIZE_SCRIPT = "finalize.sbatch"
SUBMISSIONS_FILE = "submissions.jsonl"
DEFAULT_SIGNAL_TIME = 60
DEFAULT_FINALIZE_TIME = "00:30:00"

_TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "SPECIAL_EXIT",
        "REVOKED",
    }
)


class SlurmError(AscendBatchError):
    """sbatch/scontrol missing or refusing a submission."""

    exit_code = EXIT_STARTUP


class SlurmUsageError(AscendBatchError):
    """An option value the generated script cannot carry safely."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class SlurmOptions:
    """What ``slurm submit`` was asked for. ``tasks``: the array task ids to submit (default: all
    ``0..shards-1``); ``extra``: raw sbatch options for the array job, ``finalize_extra`` for the
    finalize job."""

    shards: int
    job_name: str
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    gres: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    max_parallel: int | None = None
    signal_time: int = DEFAULT_SIGNAL_TIME
    requeue: bool = True
    finalize_time: str = DEFAULT_FINALIZE_TIME
    extra: tuple[str, ...] = ()
    finalize_extra: tuple[str, ...] = ()
    tasks: tuple[int, ...] | None = None


@dataclass(frozen=True)
class JobFiles:
    """The job's Slurm files: scripts and logs under ``OUT/_slurm``."""

    out: Path
    manifest: Path
    python: str = field(default_factory=lambda: os.path.abspath(sys.executable))

    @property
    def dir(self) -> Path:
        return self.out / SLURM_DIR

    @property
    def logs(self) -> Path:
        return self.dir / LOGS_DIR

    @property
    def array_script(self) -> Path:
        return self.dir / ARRAY_SCRIPT

    @property
    def finalize_script(self) -> Path:
        return self.dir / FINALIZE_SCRIPT


@dataclass(frozen=True)
class Submission:
    array_job: str
    finalize_job: str
    tasks: tuple[int, ...]
    files: JobFiles

    def as_dict(self) -> dict:
        return {
            "array_job": self.array_job,
            "finalize_job": self.finalize_job,
            "tasks": list(self.tasks),
            "array_script": str(self.files.array_script),
            "finalize_script": str(self.files.finalize_script),
            "logs": str(self.files.logs),
            "output": str(self.files.out),
        }


# -- quoting -----------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLAIN = re.compile(r"[A-Za-z0-9_.,:=+/@%-]+")  # needs no quotes in an #SBATCH line


def sbatch_quote(value: str, what: str) -> str:
    """``value`` as one argument of an ``#SBATCH`` line: sbatch splits those lines on blanks, honours
    double quotes and backslash escapes inside them, and treats an unquoted ``#`` as a comment.
    Control characters cannot be expressed: refused."""
    if _CONTROL.search(value):
        raise SlurmUsageError(f"{what} {value!r} contains a control character (a new line?); Slurm cannot take it")
    if _PLAIN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def slurm_filename(path: Path, pattern: str, what: str) -> str:
    """A ``--output`` file name: ``%`` in the directory doubled (Slurm expands ``%j``, ``%A`` ...), then
    ``pattern`` (which uses those expansions) appended. A backslash anywhere turns Slurm's expansion
    off and is dropped by it: refused."""
    text = str(path)
    if "\\" in text:
        raise SlurmUsageError(
            f"{what} {text!r} contains a backslash, which Slurm's --output file names cannot hold; "
            "choose another job.output"
        )
    return text.replace("%", "%%") + "/" + pattern


def comment_safe(text: str) -> str:
    """``text`` for a ``#`` comment line: control characters (new lines) shown as ``?``."""
    return _CONTROL.sub("?", text)


def _option_lines(options: Sequence[str], what: str) -> list[str]:
    """``--extra 'SBATCH-OPTION'`` values as ``#SBATCH`` lines (each split like a shell would)."""
    lines = []
    for raw in options:
        if _CONTROL.search(raw):
            raise SlurmUsageError(f"{what} {raw!r} contains a control character")
        try:
            words = shlex.split(raw)
        except ValueError as exc:
            raise SlurmUsageError(f"{what} {raw!r}: {exc}") from None
        if not words or not words[0].startswith("-"):
            raise SlurmUsageError(f"{what} {raw!r}: expected an sbatch option such as '--qos=high'")
        lines.append("#SBATCH " + " ".join(sbatch_quote(w, what) for w in words))
    return lines


def array_spec(opts: SlurmOptions) -> str:
    """``--array`` value: ``0-K-1`` or the listed task ids, with ``%N`` if throttled."""
    tasks = task_ids(opts)
    spec = f"0-{opts.shards - 1}" if tasks == tuple(range(opts.shards)) else ",".join(map(str, tasks))
    return spec + (f"%{opts.max_parallel}" if opts.max_parallel else "")


def task_ids(opts: SlurmOptions) -> tuple[int, ...]:
    return opts.tasks if opts.tasks is not None else tuple(range(opts.shards))


def _check(opts: SlurmOptions) -> None:
    if opts.shards < 1:
        raise SlurmUsageError(f"--array must be at least 1, got {opts.shards}")
    bad = [t for t in task_ids(opts) if not 0 <= t < opts.shards]
    if bad or not task_ids(opts):
        raise SlurmUsageError(f"array task ids must be in 0..{opts.shards - 1}, got {list(task_ids(opts))}")
    if opts.signal_time < 1:
        raise SlurmUsageError(f"--signal-time must be a positive number of seconds, got {opts.signal_time}")
    if opts.max_parallel is not None and opts.max_parallel < 1:
        raise SlurmUsageError(f"--max-parallel must be at least 1, got {opts.max_parallel}")
    if opts.cpus_per_task is not None and opts.cpus_per_task < 1:
        raise SlurmUsageError(f"--cpus-per-task must be at least 1, got {opts.cpus_per_task}")


def _common_lines(opts: SlurmOptions, name: str) -> list[str]:
    lines = [f"#SBATCH --job-name={sbatch_quote(comment_safe(name), 'job name')}"]
    if opts.partition:
        lines.append(f"#SBATCH --partition={sbatch_quote(opts.partition, '--partition')}")
    if opts.account:
        lines.append(f"#SBATCH --account={sbatch_quote(opts.account, '--account')}")
    return lines


def _header(files: JobFiles, what: str, submit_hint: str) -> list[str]:
    return [
        "#!/bin/bash",
        f"# ascend-batch {__version__}: {what}",
        f"# generated {time.strftime('%Y-%m-%d %H:%M:%S %z')} by `ascend-batch slurm submit`",
        f"# manifest: {comment_safe(str(files.manifest))}",
        f"# output:   {comment_safe(str(files.out))}",
        f"# re-use:   {submit_hint}",
    ]


def render_array_script(files: JobFiles, opts: SlurmOptions) -> str:
    """The array job: task k classifies units with ``unit % K == k``; drains and requeues on USR1."""
    _check(opts)
    q = shlex.quote
    lines = _header(
        files,
        f"array job, {opts.shards} shard(s): task k classifies the units with unit % {opts.shards} == k",
        f"sbatch --hold {ARRAY_SCRIPT}; sbatch --dependency=afterok:<array job id> {FINALIZE_SCRIPT}; "
        "scontrol release <array job id>",
    )
    lines += _common_lines(opts, opts.job_name)
    lines += [
        f"#SBATCH --array={array_spec(opts)}",
        f"#SBATCH --output={sbatch_quote(slurm_filename(files.logs, 'array-%A_%a.out', 'output directory'), 'log')}",
        "#SBATCH --open-mode=append",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
    ]
    if opts.requeue:
        lines += [f"#SBATCH --signal=B:USR1@{opts.signal_time}", "#SBATCH --requeue"]
    if opts.time:
        lines.append(f"#SBATCH --time={sbatch_quote(opts.time, '--time')}")
    if opts.gres:
        lines.append(f"#SBATCH --gres={sbatch_quote(opts.gres, '--gres')}")
    if opts.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={opts.cpus_per_task}")
    if opts.mem:
        lines.append(f"#SBATCH --mem={sbatch_quote(opts.mem, '--mem')}")
    lines += _option_lines(opts.extra, "--extra")
    lines += [
        "",
        "set -u",
        f"PYTHON={q(files.python)}",
        f"MANIFEST={q(str(files.manifest))}",
        f"OUT={q(str(files.out))}",
        f"SHARDS={opts.shards}",
        f"REQUEUE={1 if opts.requeue else 0}",
        'TASK="${SLURM_ARRAY_TASK_ID:?not running as a Slurm array task}"',
        'ID="${SLURM_ARRAY_JOB_ID}_${TASK}"',
        f'cd {q(str(files.dir))} 2>/dev/null || cd "$OUT" || exit 1',
        "",
        'echo "ascend-batch: task $ID (shard $TASK/$SHARDS) on $(hostname), restart ${SLURM_RESTART_COUNT:-0},'
        " $(date '+%Y-%m-%d %H:%M:%S')\"",
        "",
        "# Time limit near, or a preemption notice (--signal=B:USR1@s, scancel --signal=USR1 --batch):",
        "# forward it to the runner, which stops taking units, lets in-flight units commit and exits 130.",
        "signalled=0",
        "on_usr1() {",
        "  signalled=1",
        '  echo "ascend-batch: USR1 received: draining shard $TASK (in-flight units commit, then exit)"',
        '  [ -n "${runner:-}" ] && kill -USR1 "$runner" 2>/dev/null',
        "}",
        "trap on_usr1 USR1",
        "",
        '"$PYTHON" -m ascend_batch run "$MANIFEST" --output "$OUT" --shard "$TASK/$SHARDS" --no-progress &',
        "runner=$!",
        '[ "$signalled" = 1 ] && kill -USR1 "$runner" 2>/dev/null  # a signal that came before the runner',
        "# wait returns early (status > 128) when a trapped signal arrives: wait again until the runner exits",
        "while :; do",
        '  wait "$runner"; rc=$?',
        '  [ "$rc" -le 128 ] && break',
        '  kill -0 "$runner" 2>/dev/null && continue',
        '  wait "$runner" 2>/dev/null; again=$?',
        '  [ "$again" -ne 127 ] && rc=$again  # 127: already collected, $rc is its status',
        "  break",
        "done",
        'echo "ascend-batch: runner exited with code $rc"',
        "# 130: drained after the signal; 138: the signal arrived before the runner set up its handler",
        f'if [ "$signalled" = 1 ] && [ "$REQUEUE" = 1 ] && '
        f'{{ [ "$rc" -eq {EXIT_INTERRUPTED} ] || [ "$rc" -eq 138 ]; }}; then',
        '  echo "ascend-batch: requeueing $ID; it resumes from its committed units"',
        '  scontrol requeue "$ID" && exit 0',
        '  echo "ascend-batch: scontrol requeue $ID failed; resubmit to finish (only missing units run)"',
        "fi",
        'exit "$rc"',
        "",
    ]
    return "\n".join(lines)


def render_finalize_script(files: JobFiles, opts: SlurmOptions) -> str:
    """The finalize job: verifies every unit is committed, writes ``_summary.json`` and ``_SUCCESS``."""
    q = shlex.quote
    lines = _header(
        files,
        "finalize job: runs after every array task succeeded; writes _summary.json and _SUCCESS",
        f"sbatch --dependency=afterok:<array job id> {FINALIZE_SCRIPT}",
    )
    lines += _common_lines(opts, f"{opts.job_name}-finalize")
    lines += [
        f"#SBATCH --output={sbatch_quote(slurm_filename(files.logs, 'finalize-%j.out', 'output directory'), 'log')}",
        "#SBATCH --open-mode=append",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=1",
        f"#SBATCH --time={sbatch_quote(opts.finalize_time, '--finalize-time')}",
        "# a failed array task makes afterok impossible: cancel this job rather than leave it pending",
        "#SBATCH --kill-on-invalid-dep=yes",
    ]
    lines += _option_lines(opts.finalize_extra, "--finalize-extra")
    lines += [
        "",
        "set -u",
        f"PYTHON={q(files.python)}",
        f"OUT={q(str(files.out))}",
        'cd "$OUT" || exit 1',
        "echo \"ascend-batch: finalize $OUT on $(hostname), $(date '+%Y-%m-%d %H:%M:%S')\"",
        'exec "$PYTHON" -m ascend_batch finalize "$OUT"',
        "",
    ]
    return "\n".join(lines)


def write_scripts(files: JobFiles, opts: SlurmOptions) -> tuple[str, str]:
    """Render both scripts and write them (atomically) to ``OUT/_slurm``; returns their texts."""
    array = render_array_script(files, opts)
    final = render_finalize_script(files, opts)
    files.logs.mkdir(parents=True, exist_ok=True)
    for path, text in ((files.array_script, array), (files.finalize_script, final)):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, "utf-8")
        tmp.chmod(0o755)
        os.replace(tmp, path)
    return array, final


# -- submission --------------------------------------------------------------------------------
def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SlurmError(f"{name} not found on PATH: run this on a Slurm login node (or load the slurm module)")
    return found


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(map(shlex.quote, cmd))} did not answer within 120 s") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise SlurmError(f"{' '.join(map(shlex.quote, cmd))} failed (exit {proc.returncode}): {detail}")
    return proc.stdout


def _job_id(parsable: str) -> str:
    """``sbatch --parsable`` prints ``jobid`` or ``jobid;cluster``."""
    text = parsable.strip().splitlines()[-1] if parsable.strip() else ""
    job = text.split(";", 1)[0].strip()
    if not job.isdigit():
        raise SlurmError(f"could not read a job id from sbatch's answer {parsable!r}")
    return job


def sbatch_commands(files: JobFiles, array_job: str = "<array job id>") -> tuple[list[str], list[str], list[str]]:
    """The three commands ``submit`` runs: held array, dependent finalize, release."""
    return (
        ["sbatch", "--parsable", "--hold", str(files.array_script)],
        ["sbatch", "--parsable", f"--dependency=afterok:{array_job}", str(files.finalize_script)],
        ["scontrol", "release", array_job],
    )


def submit(files: JobFiles, opts: SlurmOptions) -> Submission:
    """Write the scripts, submit the array held, its finalize job, then release the array.
    If anything after the array's submission fails, the array is cancelled (nothing half-submitted)."""
    sbatch = _tool("sbatch")
    scontrol = _tool("scontrol")
    write_scripts(files, opts)
    hold, _, _ = sbatch_commands(files)
    array_job = _job_id(_run([sbatch, *hold[1:]], cwd=files.dir))
    try:
        _, dep, release = sbatch_commands(files, array_job)
        finalize_job = _job_id(_run([sbatch, *dep[1:]], cwd=files.dir))
        _run([scontrol, *release[1:]])
    except BaseException:
        subprocess.run([_tool("scancel"), array_job], capture_output=True, timeout=60)
        raise
    sub = Submission(array_job, finalize_job, task_ids(opts), files)
    record = {
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "user": os.environ.get("USER"),
        "shards": opts.shards,
        **sub.as_dict(),
        "argv": sys.argv,
    }
    with open(files.dir / SUBMISSIONS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return sub


def missing_tasks(out: Path, shards: int) -> tuple[int, ...]:
    """The array task ids whose share still has uncommitted units (all of them for a new job)."""
    from .runner.outdir import read_job
    from .runner.writer import committed_units

    meta = read_job(out) if out.exists() else None
    if meta is None:
        return tuple(range(shards))
    done = committed_units(out)
    todo = {u % shards for u in range(int(meta["n_units"])) if u not in done}
    return tuple(sorted(todo))


# -- waiting -----------------------------------------------------------------------------------
def job_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """``{job or array task id: STATE}`` from squeue, finished jobs included while slurmctld keeps
    them (MinJobAge); ``{}`` when Slurm no longer knows the jobs, None when squeue did not answer."""
    squeue = _tool("squeue")
    try:
        proc = subprocess.run(
            [squeue, "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i %T"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return {} if "Invalid job id" in proc.stderr else None
    states: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def wait_for(
    sub: Submission, poll: float = 1.0, max_poll: float = 15.0, timeout: float | None = None
) -> dict[str, str]:
    """Block until the finalize job and the array tasks reached a final state (or Slurm forgot
    them); returns the last states seen. Polls squeue every ``poll`` seconds, slowing to ``max_poll``;
    ten unanswered polls in a row raise :class:`SlurmError`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    ids = [sub.array_job, sub.finalize_job]
    states: dict[str, str] = {}
    unanswered = 0
    while True:
        now = job_states(ids)
        if now is None:
            unanswered += 1
            if unanswered >= 10:
                raise SlurmError(f"squeue did not answer {unanswered} times in a row; jobs {', '.join(ids)}")
        else:
            unanswered = 0
            if not now:
                return states  # purged: the output directory tells the outcome
            states = now
            final = states.get(sub.finalize_job)
            tasks = [s for j, s in states.items() if j != sub.finalize_job]
            if final in _TERMINAL_STATES and all(s in _TERMINAL_STATES for s in tasks):
                return states
        if deadline is not None and time.monotonic() > deadline:
            raise SlurmError(f"jobs {', '.join(ids)} still not finished after {timeout:.0f} s")
        time.sleep(poll)
        poll = min(max_poll, poll * 1.5)
