"""Waiting for a submitted job: array task and finalize job states from ``squeue``."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence

from .commands import slurm_tool
from .options import SlurmError
from .submission import Submission

TERMINAL_STATES = frozenset(
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


def job_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """``{job or array task id: STATE}`` from squeue, finished jobs included while slurmctld keeps
    them (MinJobAge); ``{}`` when Slurm no longer knows the jobs, None when squeue did not answer."""
    squeue = slurm_tool("squeue")
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
            if final in TERMINAL_STATES and all(s in TERMINAL_STATES for s in tasks):
                return states
        if deadline is not None and time.monotonic() > deadline:
            raise SlurmError(f"jobs {', '.join(ids)} still not finished after {timeout:.0f} s")
        time.sleep(poll)
        poll = min(max_poll, poll * 1.5)
