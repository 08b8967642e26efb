"""The end of a job: verify every committed part in full, write ``_summary.json``, and write
``_SUCCESS`` exactly when the job is complete, verified and within ``max_error_fraction`` (removing a
stale one otherwise). ``run`` calls it at the end of a whole job; ``ascend-batch finalize`` (the Slurm
finalize job) calls it on its own."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from ..atomic import write_text
from ..errors import IncompatibleOutputError, IncompleteError, TooManyErrors
from ..plan import read_snapshot
from .jobdir import read_job
from .outdir import LISTING_FILE, SUCCESS_FILE, SUMMARY_FILE, set_aside_damaged
from .summary import JobStatus, job_status, summary_dict


@dataclass
class Finalized:
    status: JobStatus
    damaged: dict[int, str] = field(default_factory=dict)  # unit -> what was wrong (moved to _damaged/)
    max_error_fraction: float | None = None

    @property
    def error_fraction(self) -> float:
        st = self.status
        return st.errors / st.images if st.images else 0.0

    @property
    def too_many_errors(self) -> bool:
        return self.max_error_fraction is not None and self.error_fraction > self.max_error_fraction

    @property
    def success(self) -> bool:
        return self.status.complete and not self.damaged and not self.too_many_errors

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


def finalize(out: Path, run: dict | None = None, *, max_error_fraction: float | None = None) -> Finalized:
    """Verify ``out`` in full and write its summary, and ``_SUCCESS`` on success. ``max_error_fraction``
    defaults to the one recorded in ``_job.json`` (the manifest's ``job.max_error_fraction``)."""
    meta = read_job(out)
    if meta is None:
        raise IncompatibleOutputError(f"{out} is not an ascend-batch output directory (no _job.json)")
    if max_error_fraction is None:
        max_error_fraction = meta.get("max_error_fraction")
    units = read_snapshot(out / LISTING_FILE).units
    damaged = set_aside_damaged(out, units, pq.ParquetFile(out / LISTING_FILE))
    result = Finalized(job_status(out), damaged, max_error_fraction)
    summary = summary_dict(result.status, run)
    summary["verified"] = {"damaged_units": {str(u): why for u, why in damaged.items()}, "success": result.success}
    write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2))
    if result.success:
        write_text(out / SUCCESS_FILE, "")
    else:
        with contextlib.suppress(FileNotFoundError):
            (out / SUCCESS_FILE).unlink()
    return result
