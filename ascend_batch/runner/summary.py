"""Job state read from the output directory alone: used by ``status``, the end-of-run summary
(``_summary.json``) and the Slurm finalize step. Works during a run, from any shell."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import IncompatibleOutputError
from .jobdir import read_job
from .outdir import part_files
from .writer import part_stats, sum_into


@dataclass
class JobStatus:
    out: Path
    name: str
    n_items: int
    n_units: int
    units_done: int = 0
    images: int = 0
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    per_device: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    decoded: dict[str, int] = field(default_factory=dict)  # images decoded on the "device" and the "cpu"
    first_commit: float | None = None
    last_commit: float | None = None
    recent_rate: float | None = None  # img/s over the latest commits

    @property
    def complete(self) -> bool:
        return self.units_done >= self.n_units

    @property
    def missing_units(self) -> int:
        return self.n_units - self.units_done

    @property
    def eta_seconds(self) -> float | None:
        if self.recent_rate and self.recent_rate > 0:
            return (self.n_items - self.images) / self.recent_rate
        return None

    def top_errors(self, n: int = 5) -> list[tuple[str, int]]:
        return collections.Counter(self.error_kinds).most_common(n)


def error_kind(message: str | None) -> str:
    return (message or "unknown").split(":", 1)[0].strip() or "unknown"


def job_status(out: Path, *, stages: bool = True) -> JobStatus:
    meta = read_job(out)
    if meta is None:
        raise IncompatibleOutputError(f"{out} is not an ascend-batch output directory (no _job.json)")
    st = JobStatus(out, meta.get("name", ""), int(meta["n_items"]), int(meta["n_units"]))
    commits: list[tuple[float, int]] = []
    kinds: collections.Counter[str] = collections.Counter()
    devices: collections.Counter[str] = collections.Counter()
    for path in part_files(out):
        try:
            table = pq.read_table(path, columns=["status", "error", "device"])
            mtime = path.stat().st_mtime
        except (OSError, ValueError):
            continue  # vanished or being replaced: counted next time
        st.units_done += 1
        n = table.num_rows
        n_err = pc.sum(pc.equal(table["status"], "error")).as_py() or 0
        st.images += n
        st.errors += n_err
        st.ok += n - n_err
        if n_err:
            for msg in table.filter(pc.equal(table["status"], "error"))["error"].to_pylist():
                kinds[error_kind(msg)] += 1
        for dev, count in collections.Counter(table["device"].to_pylist()).items():
            devices[dev] += count
        commits.append((mtime, n))
        if stages:
            stats = part_stats(table)
            sum_into(st.seconds, stats.get("seconds", {}))
            sum_into(st.decoded, stats.get("decoded", {}))
    st.error_kinds = dict(kinds)
    st.per_device = dict(devices)
    if commits:
        commits.sort()
        st.first_commit, st.last_commit = commits[0][0], commits[-1][0]
        window = commits[-21:]
        if len(window) >= 2 and window[-1][0] > window[0][0]:
            st.recent_rate = sum(n for _, n in window[1:]) / (window[-1][0] - window[0][0])
    return st


def summary_dict(st: JobStatus, run: dict | None = None) -> dict:
    data = {
        "name": st.name,
        "complete": st.complete,
        "units": {"done": st.units_done, "total": st.n_units},
        "images": {"total": st.n_items, "processed": st.images, "ok": st.ok, "error": st.errors},
        "errors_by_kind": dict(sorted(st.error_kinds.items(), key=lambda kv: -kv[1])),
        "per_device_images": st.per_device,
        "stage_seconds": {k: round(v, 3) for k, v in st.seconds.items()},
        "decoded_on": st.decoded,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if run is not None:
        data["run"] = run
    return data
