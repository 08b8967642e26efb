"""Running Slurm's command-line tools: found on PATH, bounded in time, failures as :class:`SlurmError`."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from .options import SlurmError


def slurm_tool(name: str) -> str:
    """The path of ``name`` (sbatch, squeue ...), or :class:`SlurmError` saying where to run this."""
    found = shutil.which(name)
    if found is None:
        raise SlurmError(f"{name} not found on PATH: run this on a Slurm login node (or load the slurm module)")
    return found


def run_slurm(cmd: list[str], cwd: Path | None = None) -> str:
    """``cmd``'s standard output; :class:`SlurmError` with its message when it fails or hangs (120 s)."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(map(shlex.quote, cmd))} did not answer within 120 s") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise SlurmError(f"{' '.join(map(shlex.quote, cmd))} failed (exit {proc.returncode}): {detail}")
    return proc.stdout


def parse_job_id(parsable: str) -> str:
    """``sbatch --parsable`` prints ``jobid`` or ``jobid;cluster``."""
    text = parsable.strip().splitlines()[-1] if parsable.strip() else ""
    job = text.split(";", 1)[0].strip()
    if not job.isdigit():
        raise SlurmError(f"could not read a job id from sbatch's answer {parsable!r}")
    return job
