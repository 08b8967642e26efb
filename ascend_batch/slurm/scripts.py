"""The two sbatch scripts of a job, rendered from :class:`~.options.SlurmOptions` and written to
``OUT/_slurm``: the array job (task k runs shard k/K; on USR1 it drains and requeues itself) and the
finalize job (checks every unit is committed, writes ``_summary.json`` and ``_SUCCESS``)."""

from __future__ import annotations

import os
import shlex
import time

from .. import __version__
from ..errors import EXIT_INTERRUPTED
from .options import ARRAY_SCRIPT, FINALIZE_SCRIPT, JobFiles, SlurmOptions, array_spec, check_options
from .quoting import comment_safe, option_lines, sbatch_quote, slurm_filename


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
    check_options(opts)
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
    lines += option_lines(opts.extra, "--extra")
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
    lines += option_lines(opts.finalize_extra, "--finalize-extra")
    lines += [
        "",
        "set -u",
        f"PYTHON={q(files.python)}",
        f"OUT={q(str(files.out))}",
        'cd "$OUT" || exit 1',
        "echo \"ascend-batch: finalize $OUT on $(hostname), $(date '+%Y-%m-%d %H:%M:%S')\"",
    ]
    if opts.report_baselines is None:
        lines += ['exec "$PYTHON" -m ascend_batch finalize "$OUT"', ""]
        return "\n".join(lines)
    baselines = "".join(f" --baseline {q(b)}" for b in opts.report_baselines)
    lines += [
        '"$PYTHON" -m ascend_batch finalize "$OUT"',
        "rc=$?",
        "# job.report: the night's page (a report that cannot be written does not change the exit code)",
        'if [ "$rc" -eq 0 ] || [ "$rc" -eq 6 ]; then',
        f'    "$PYTHON" -m ascend_batch report "$OUT"{baselines} || echo "ascend-batch: warning: no report" >&2',
        "fi",
        'exit "$rc"',
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
