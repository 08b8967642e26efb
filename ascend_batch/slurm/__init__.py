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

Modules: :mod:`.options` (what was asked, the job's files), :mod:`.quoting` (values in script lines),
:mod:`.scripts` (rendering), :mod:`.commands` (running Slurm's tools), :mod:`.submission` (submitting,
``--only-missing``), :mod:`.waiting` (waiting for the jobs).
"""

from .commands import parse_job_id, run_slurm, slurm_tool
from .options import (
    ARRAY_SCRIPT,
    DEFAULT_FINALIZE_TIME,
    DEFAULT_SIGNAL_TIME,
    FINALIZE_SCRIPT,
    LOGS_DIR,
    SLURM_DIR,
    SUBMISSIONS_FILE,
    JobFiles,
    SlurmError,
    SlurmOptions,
    SlurmUsageError,
    array_spec,
    check_options,
    task_ids,
)
from .quoting import comment_safe, option_lines, sbatch_quote, slurm_filename
from .scripts import render_array_script, render_finalize_script, write_scripts
from .submission import Submission, missing_tasks, sbatch_commands, submit
from .waiting import TERMINAL_STATES, job_states, wait_for

__all__ = [
    "ARRAY_SCRIPT",
    "DEFAULT_FINALIZE_TIME",
    "DEFAULT_SIGNAL_TIME",
    "FINALIZE_SCRIPT",
    "LOGS_DIR",
    "SLURM_DIR",
    "SUBMISSIONS_FILE",
    "TERMINAL_STATES",
    "JobFiles",
    "SlurmError",
    "SlurmOptions",
    "SlurmUsageError",
    "Submission",
    "array_spec",
    "check_options",
    "comment_safe",
    "job_states",
    "missing_tasks",
    "option_lines",
    "parse_job_id",
    "render_array_script",
    "render_finalize_script",
    "run_slurm",
    "sbatch_commands",
    "sbatch_quote",
    "slurm_filename",
    "slurm_tool",
    "submit",
    "task_ids",
    "wait_for",
    "write_scripts",
]
