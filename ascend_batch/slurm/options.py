"""What ``slurm submit`` was asked for and where the job's Slurm files live: the options, the array
task ids they mean, and the two errors of this package."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EXIT_STARTUP, EXIT_USAGE, AscendBatchError

SLURM_DIR = "_slurm"
LOGS_DIR = "logs"
ARRAY_SCRIPT = "array.sbatch"
FINALIZE_SCRIPT = "finalize.sbatch"
SUBMISSIONS_FILE = "submissions.jsonl"
DEFAULT_SIGNAL_TIME = 60
DEFAULT_FINALIZE_TIME = "00:30:00"


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
    # job.report: the finalize job then writes the night's report, against these earlier nights
    report_baselines: tuple[str, ...] | None = None


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


def task_ids(opts: SlurmOptions) -> tuple[int, ...]:
    return opts.tasks if opts.tasks is not None else tuple(range(opts.shards))


def array_spec(opts: SlurmOptions) -> str:
    """``--array`` value: ``0-K-1`` or the listed task ids, with ``%N`` if throttled."""
    tasks = task_ids(opts)
    spec = f"0-{opts.shards - 1}" if tasks == tuple(range(opts.shards)) else ",".join(map(str, tasks))
    return spec + (f"%{opts.max_parallel}" if opts.max_parallel else "")


def check_options(opts: SlurmOptions) -> None:
    """Refuse option values no script should carry (raises :class:`SlurmUsageError`)."""
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
