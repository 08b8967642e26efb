"""The end of a job: verify every committed part in full, write ``_summary.json``, and write
``_SUCCESS`` exactly when the job is complete, verified and within ``max_error_fraction`` (removing a
stale one otherwise). ``run`` calls it at the end of a whole job; ``ascend-batch finalize`` (the Slurm
finalize job) calls it on its own.

Every run or resume leaves its figures and outcome in ``_runs/<run_id>.json`` (one small file per
run, written atomically by that run alone, so Slurm array tasks on several nodes never overwrite each
other's); the summary gathers them into its ``runs`` list and ``totals``. Nothing erases a record but
``--restart``; a run that was killed before writing one still appears, by the rows it committed."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from ..atomic import write_text
from ..errors import (
    EXIT_ENVIRONMENT,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STARTUP,
    EXIT_TOO_MANY_ERRORS,
    IncompatibleOutputError,
    IncompleteError,
    TooManyErrors,
)
from .jobdir import load_snapshot, read_job
from .outdir import (
    LISTING_FILE,
    RUNS_DIR,
    SUCCESS_FILE,
    SUMMARY_FILE,
    refuse_stray_data,
    set_aside_damaged,
)
from .summary import JobStatus, iso_time, job_status, summary_dict

OUTCOMES = {
    EXIT_OK: "ok",
    EXIT_STARTUP: "device_failure",
    EXIT_TOO_MANY_ERRORS: "too_many_errors",
    EXIT_INCOMPLETE: "incomplete",
    EXIT_ENVIRONMENT: "environment_failure",
    EXIT_INTERRUPTED: "interrupted",
}
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Finalized:
    status: JobStatus
    damaged: dict[int, str] = field(default_factory=dict)  # unit -> what was wrong (moved to _damaged/)
    max_error_fraction: float | None = None

    @property
    def error_fraction(self) -> float:
        return self.status.error_fraction

    @property
    def too_many_errors(self) -> bool:
        return self.max_error_fraction is not None and self.error_fraction > self.max_error_fraction

    @property
    def success(self) -> bool:
        return self.status.complete and not self.damaged and not self.too_many_errors

    @property
    def exit_code(self) -> int:
        """What :meth:`raise_for_status` exits with (0 on success)."""
        if self.damaged or not self.status.complete:
            return EXIT_INCOMPLETE
        return EXIT_TOO_MANY_ERRORS if self.too_many_errors else EXIT_OK

    def raise_for_status(self) -> None:
        """The error ``run`` and ``finalize`` exit with, when not a success."""
        st = self.status
        if self.damaged:
            shown = "; ".join(f"unit {u}: {why}" for u, why in sorted(self.damaged.items())[:5])
            raise IncompleteError(
                f"{st.out}: {len(self.damaged)} committed part(s) failed verification and were moved to _damaged/ "
                f"({shown}); rerun the job to redo them"
            )
        if not st.complete:
            raise IncompleteError(
                f"{st.out}: {st.missing_units} of {st.n_units} units are not committed; rerun the job (or the "
                "failed array tasks) to complete them"
            )
        if self.too_many_errors:
            raise TooManyErrors(
                f"{st.errors}/{st.images} images failed ({self.error_fraction:.1%}), above the allowed "
                f"{self.max_error_fraction:.1%} (max_error_fraction); no _SUCCESS written"
            )


# -- run records ----------------------------------------------------------------------------------


def set_outcome(run: dict, exit_code: int, detail: str | None = None) -> dict:
    """Record how a run ended: its exit code, that code in a word, and what caused it."""
    run["exit_code"] = exit_code
    run["outcome"] = OUTCOMES.get(exit_code, "failed")
    if detail:
        run["detail"] = detail
    return run


def run_id_epoch(run_id: str) -> float | None:
    """When a run started, from its id (``%Y%m%dT%H%M%S-xxxxxx``, local time), to the second."""
    try:
        return time.mktime(time.strptime(run_id[:15], "%Y%m%dT%H%M%S"))
    except (ValueError, OverflowError):
        return None


def run_record(run_id: str, started: float, ended: float, **figures: object) -> dict:
    """A run's record: who ran it, when, and its figures (images, img/s, stage seconds, ...)."""
    return {
        "run_id": run_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": iso_time(started),
        "ended": iso_time(ended),
        "started_epoch": round(started, 3),
        "elapsed_seconds": round(ended - started, 3),
        **figures,
    }


def record_run(out: Path, run: dict) -> Path:
    """Write (or update) ``_runs/<run_id>.json`` atomically: this run's file, no one else's."""
    run_id = str(run["run_id"])
    if not _RUN_ID.match(run_id):
        raise ValueError(f"not a run id: {run_id!r}")
    folder = out / RUNS_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"{run_id}.json"
    write_text(path, json.dumps(run, indent=2))
    return path


def read_runs(out: Path) -> dict[str, dict]:
    """Every run record of ``out`` by run id (unreadable ones are skipped)."""
    runs: dict[str, dict] = {}
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(out / RUNS_DIR):
            if entry.name.startswith(".") or not entry.name.endswith(".json"):
                continue  # temp files of a writer
            with contextlib.suppress(OSError, ValueError):
                rec = json.loads(Path(entry.path).read_text("utf-8"))
                if isinstance(rec, dict) and isinstance(rec.get("run_id"), str):
                    runs[rec["run_id"]] = rec
    return runs


def _keep_earlier_summary(out: Path, runs: dict[str, dict]) -> None:
    """Runs the previous ``_summary.json`` holds but ``_runs/`` does not (a summary written by an
    earlier version, or ``_runs/`` lost) are written back as records: a summary never loses a run."""
    try:
        old = json.loads((out / SUMMARY_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(old, dict):
        return
    entries = [r for r in old.get("runs", []) if isinstance(r, dict)] + [old.get("run")]
    for rec in entries:
        if not isinstance(rec, dict) or not isinstance(rec.get("run_id"), str) or rec["run_id"] in runs:
            continue
        if rec.get("recorded") is False or not _RUN_ID.match(rec["run_id"]):
            continue  # an entry made from rows alone: the rows will say it again
        rec = {k: v for k, v in rec.items() if k not in ("images_committed", "recorded")}
        with contextlib.suppress(OSError):
            record_run(out, rec)
            runs[rec["run_id"]] = rec


def gather_runs(out: Path, st: JobStatus) -> tuple[list[dict], dict]:
    """(runs, totals) for the summary: every recorded run, plus runs known only by their committed
    rows (killed before they could record themselves, or still running), oldest first."""
    runs = read_runs(out)
    _keep_earlier_summary(out, runs)
    entries = []
    for run_id, rec in runs.items():
        entries.append({**rec, "images_committed": st.per_run.get(run_id, 0), "recorded": True})
    for run_id, n in st.per_run.items():
        if run_id not in runs:
            entries.append({"run_id": run_id, "recorded": False, "images_committed": n, "outcome": None})
    entries.sort(key=lambda r: (float(r.get("started_epoch") or run_id_epoch(r["run_id"]) or 0), r["run_id"]))
    recorded = [r for r in entries if r["recorded"]]
    wall = sum(float(r.get("wall_seconds") or 0) for r in recorded)
    images = sum(int(r.get("images") or 0) for r in recorded)
    totals = {
        "runs": len(recorded),
        "unrecorded_runs": len(entries) - len(recorded),
        "wall_seconds": round(wall, 3),
        "elapsed_seconds": round(sum(float(r.get("elapsed_seconds") or 0) for r in recorded), 3),
        "images": images,
        "images_per_second": round(images / wall, 2) if wall > 0 else None,
        "worker_deaths": sum(int(r.get("worker_deaths") or 0) for r in recorded),
        "damaged_parts_redone": sum(len(r.get("damaged_parts_redone") or ()) for r in recorded),
        "outcomes": dict(sorted(collections.Counter(str(r.get("outcome")) for r in recorded).items())),
    }
    return entries, totals


def write_summary(out: Path, st: JobStatus, verified: dict | None = None) -> dict:
    """Write ``_summary.json``: the job's counts from its parts, every run's record, the totals, and
    ``run``: the latest run (as before ``runs`` existed)."""
    summary = summary_dict(st)
    runs, totals = gather_runs(out, st)
    summary["runs"] = runs
    summary["totals"] = totals
    recorded = [r for r in runs if r["recorded"]]
    if recorded:
        summary["run"] = recorded[-1]
    if verified is not None:
        summary["verified"] = verified
    write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2))
    return summary


def finalize(out: Path, run: dict | None = None, *, max_error_fraction: float | None = None) -> Finalized:
    """Verify ``out`` in full and write its summary, and ``_SUCCESS`` on success. ``max_error_fraction``
    defaults to the one recorded in ``_job.json`` (the manifest's ``job.max_error_fraction``).

    ``run`` is the record of the run that calls it: it is given the verification's outcome (unless it
    has one already: interrupted, a device failure) and written to ``_runs/`` before the summary
    gathers every record."""
    meta = read_job(out)
    if meta is None:
        raise IncompatibleOutputError(f"{out} is not an ascend-batch output directory (no _job.json)")
    if max_error_fraction is None:
        max_error_fraction = meta.get("max_error_fraction")
    units = load_snapshot(out / LISTING_FILE).units
    try:
        refuse_stray_data(out, len(units))
    except IncompatibleOutputError as exc:  # not complete while readers would see extra rows
        with contextlib.suppress(FileNotFoundError):
            (out / SUCCESS_FILE).unlink()
        if run is not None:  # the run's record says how it ended, as every run's does
            if "exit_code" not in run:
                set_outcome(run, exc.exit_code, str(exc))
            record_run(out, run)
        raise
    damaged = set_aside_damaged(out, units, pq.ParquetFile(out / LISTING_FILE))
    result = Finalized(job_status(out), damaged, max_error_fraction)
    if run is not None:
        if "exit_code" not in run:
            set_outcome(run, result.exit_code)
        record_run(out, run)
    verified = {
        "at": iso_time(time.time()),
        "by": f"run {run['run_id']}" if run is not None else "finalize",
        "damaged_units": {str(u): why for u, why in damaged.items()},
        "success": result.success,
    }
    write_summary(out, result.status, verified)
    if result.success:
        write_text(out / SUCCESS_FILE, "")
    else:
        with contextlib.suppress(FileNotFoundError):
            (out / SUCCESS_FILE).unlink()
    return result
