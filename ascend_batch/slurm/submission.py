"""Submitting a job: the held array, its dependent finalize job, then the release (never an array
without its finalize job), recorded in ``OUT/_slurm/submissions.jsonl``; and which array tasks still
have work (``--only-missing``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .commands import parse_job_id, run_slurm, slurm_tool
from .options import SUBMISSIONS_FILE, JobFiles, SlurmOptions, task_ids
from .scripts import write_scripts


@dataclass(frozen=True)
class Submission:
    """What :func:`submit` submitted: the array job, its finalize job, the array task ids."""

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
    sbatch = slurm_tool("sbatch")
    scontrol = slurm_tool("scontrol")
    write_scripts(files, opts)
    hold, _, _ = sbatch_commands(files)
    array_job = parse_job_id(run_slurm([sbatch, *hold[1:]], cwd=files.dir))
    try:
        _, dep, release = sbatch_commands(files, array_job)
        finalize_job = parse_job_id(run_slurm([sbatch, *dep[1:]], cwd=files.dir))
        run_slurm([scontrol, *release[1:]])
    except BaseException:
        subprocess.run([slurm_tool("scancel"), array_job], capture_output=True, timeout=60)
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
    from ..runner.jobdir import read_job
    from ..runner.outdir import committed_units

    meta = read_job(out) if out.exists() else None
    if meta is None:
        return tuple(range(shards))
    done = committed_units(out)
    todo = {u % shards for u in range(int(meta["n_units"])) if u not in done}
    return tuple(sorted(todo))
