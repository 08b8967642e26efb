"""Job state read from the output directory alone: used by ``status``, the end-of-run summary
(``_summary.json``) and the Slurm finalize step. Works during a run, from any shell, at any moment:
in its first moments (no ``_job.json`` yet) the job is "starting", a part committed or moved while it
is read is counted next time.

:func:`live_status` adds what only the moment knows: whether a run holds the job's lock (and which
pid, host and start), and the current run's rate and ETA. A rate is measured only on the parts
committed by the run(s) holding a lock now, by the time their rows were made (``processed_at``, which
a copy keeps), over at least :data:`MIN_RATE_SPAN` seconds: never from file times, never from an
earlier run's commits.
"""

from __future__ import annotations

import collections
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import IncompatibleOutputError
from ..plan import make_units
from .jobdir import read_job
from .lock import LockHolder, held_locks
from .outdir import LOCK_PREFIX, PART_RE, SUCCESS_FILE, foreign_entries, part_files
from .writer import part_stats, sum_into

MIN_RATE_SPAN = 2.0  # seconds: no rate is shown from commits closer together than this
RATE_WINDOW = 20  # commits: the rate is over the latest ones (or all of the run's, to span MIN_RATE_SPAN)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def iso_time(epoch: float) -> str:
    return time.strftime(TIME_FORMAT, time.localtime(epoch))


@dataclass(frozen=True)
class Commit:
    """A committed part as ``status`` sees it: unit, rows, and when its rows were made."""

    unit: int
    images: int
    at: float  # the latest processed_at of its rows (seconds since the epoch)


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
    per_run: dict[str, int] = field(default_factory=dict)  # run_id -> its rows still in committed parts
    seconds: dict[str, float] = field(default_factory=dict)
    decoded: dict[str, int] = field(default_factory=dict)  # images decoded on the "device" and the "cpu"
    commits: list[Commit] = field(default_factory=list)  # in commit order
    unit_size: int | None = None
    max_error_fraction: float | None = None

    @property
    def complete(self) -> bool:
        return self.units_done >= self.n_units

    @property
    def missing_units(self) -> int:
        return self.n_units - self.units_done

    @property
    def first_commit(self) -> float | None:
        return self.commits[0].at if self.commits else None

    @property
    def last_commit(self) -> float | None:
        return self.commits[-1].at if self.commits else None

    @property
    def error_fraction(self) -> float:
        return self.errors / self.images if self.images else 0.0

    def top_errors(self, n: int = 5) -> list[tuple[str, int]]:
        return collections.Counter(self.error_kinds).most_common(n)


def error_kind(message: str | None) -> str:
    return (message or "unknown").split(":", 1)[0].strip() or "unknown"


def _commit_time(table: pa.Table, path: Path) -> float:
    latest = pc.max(table["processed_at"].cast(pa.int64())).as_py() if table.num_rows else None
    return latest / 1000 if latest is not None else path.stat().st_mtime


def job_status(out: Path, *, stages: bool = True) -> JobStatus:
    meta = read_job(out)
    if meta is None:
        raise IncompatibleOutputError(f"{out} is not an ascend-batch output directory (no _job.json)")
    st = JobStatus(out, meta.get("name", ""), int(meta["n_items"]), int(meta["n_units"]))
    st.unit_size = meta.get("unit_size") if isinstance(meta.get("unit_size"), int) else None
    st.max_error_fraction = meta.get("max_error_fraction")
    kinds: collections.Counter[str] = collections.Counter()
    devices: collections.Counter[str] = collections.Counter()
    runs: collections.Counter[str] = collections.Counter()
    for path in part_files(out):
        m = PART_RE.match(path.name)
        if m is None:  # pragma: no cover - part_files lists only matching names
            continue
        try:
            table = pq.read_table(path, columns=["status", "error", "device", "run_id", "processed_at"])
            at = _commit_time(table, path)
        except (OSError, ValueError, pa.ArrowException):
            continue  # vanished, moved aside or being replaced: counted next time
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
        for run_id, count in collections.Counter(table["run_id"].to_pylist()).items():
            runs[run_id or ""] += count
        st.commits.append(Commit(int(m.group(1)), n, at))
        if stages:
            stats = part_stats(table)
            sum_into(st.seconds, stats.get("seconds", {}))
            sum_into(st.decoded, stats.get("decoded", {}))
    st.error_kinds = dict(kinds)
    st.per_device = dict(devices)
    st.per_run = dict(runs)
    st.commits.sort(key=lambda c: c.at)
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
        "written_at": time.strftime(TIME_FORMAT),
    }
    if run is not None:
        data["run"] = run
    return data


# -- the moment: who runs it, how fast ------------------------------------------------------------


STATES = ("not_started", "starting", "running", "stopped", "complete", "unverified", "too_many_errors")


@dataclass
class LiveStatus:
    """What ``status`` says: the job's files (``job``; None before ``_job.json`` exists) plus the
    moment's state, the runs holding its locks, and their rate and ETA."""

    out: Path
    state: str  # one of STATES
    text: str  # the state in words, e.g. "stopped: rerun to resume"
    job: JobStatus | None = None
    holders: list[LockHolder] = field(default_factory=list)
    success_file: bool = False
    run_images: int = 0  # images committed since the running run(s) started
    run_commits: int = 0
    rate: float | None = None  # img/s of the running run(s); None when stopped or not measurable yet
    remaining: int | None = None  # images left to the running run(s)

    @property
    def eta_seconds(self) -> float | None:
        if self.state != "running" or not self.rate or self.remaining is None:
            return None
        return self.remaining / self.rate

    def as_dict(self) -> dict:
        data: dict = summary_dict(self.job) if self.job is not None else {"name": None}
        data.pop("written_at", None)
        data.update(
            {
                "state": self.state,
                "state_text": self.text,
                "success_file": self.success_file,
                "holders": [h.as_dict() for h in self.holders],
                "current_run": {
                    "images_committed": self.run_images,
                    "units_committed": self.run_commits,
                    "images_per_second": round(self.rate, 2) if self.rate else None,
                    "images_remaining": self.remaining,
                    "eta_seconds": round(eta, 1) if (eta := self.eta_seconds) is not None else None,
                },
                "images_per_second_recent": round(self.rate, 2) if self.rate else None,
                "eta_seconds": round(eta, 1) if (eta := self.eta_seconds) is not None else None,
            }
        )
        return data


def measure_rate(commits: list[Commit], started: float | None) -> float | None:
    """img/s over ``commits`` (one run's, in time order): over the latest :data:`RATE_WINDOW` of them,
    widened to all of them, then to the run's start, until the span is at least MIN_RATE_SPAN."""
    if not commits:
        return None
    for window in (commits[-(RATE_WINDOW + 1) :], commits):
        span = window[-1].at - window[0].at
        if len(window) >= 2 and span >= MIN_RATE_SPAN:
            return sum(c.images for c in window[1:]) / span
    if started is not None and commits[-1].at - started >= MIN_RATE_SPAN:
        return sum(c.images for c in commits) / (commits[-1].at - started)
    return None


def _unit_sizes(st: JobStatus) -> dict[int, int]:
    if st.unit_size:
        return {u.index: u.size for u in make_units(st.n_items, st.unit_size)}
    return {}


def _running(st: JobStatus, holders: list[LockHolder], live: LiveStatus) -> None:
    # a commit is the current run's when a held lock covers its unit and its rows are not older than
    # that lock (a second of slack for clocks read in different processes)
    mine = [
        c
        for c in st.commits
        if any(h.covers(c.unit) and (h.started_epoch is None or c.at >= h.started_epoch - 1.0) for h in holders)
    ]
    starts = [h.started_epoch for h in holders if h.started_epoch is not None]
    live.run_images = sum(c.images for c in mine)
    live.run_commits = len(mine)
    live.rate = measure_rate(mine, min(starts) if starts else None)
    sizes = _unit_sizes(st)
    if sizes:
        done = {c.unit for c in st.commits}
        live.remaining = sum(n for u, n in sizes.items() if u not in done and any(h.covers(u) for h in holders))
    elif all(h.shard is None for h in holders):
        live.remaining = st.n_items - st.images
    who = "; ".join(h.describe() for h in holders)
    if live.remaining == 0 or (live.remaining is None and st.complete):
        live.text = f"running ({who}): its units are committed, verifying"
    else:
        live.text = f"running ({who})"


def live_status(out: Path, *, stages: bool = True) -> LiveStatus:
    """The state of the job in ``out`` now. Raises :class:`IncompatibleOutputError` only for a file,
    or a directory holding something other than an ascend-batch output."""
    blocked = next((a for a in out.parents if a.exists() and not a.is_dir()), None)
    if blocked is not None:  # under a file: it can never become a job's output
        raise IncompatibleOutputError(f"{out}: {blocked} is a file, so this can never be a job's output directory")
    if not out.exists():  # perhaps a run still loading its model: it creates the directory shortly
        return LiveStatus(out, "not_started", f"not started: {out} does not exist (yet)")
    if not out.is_dir():
        raise IncompatibleOutputError(f"{out} is not a directory; give a job's output directory")
    holders = held_locks(out)
    try:
        meta = read_job(out)
    except IncompatibleOutputError:
        if not holders:
            raise
        meta = None  # being written: a run holds the lock
    if meta is None:
        if holders:
            who = "; ".join(h.describe() for h in holders)
            return LiveStatus(out, "starting", f"starting ({who}): listing the dataset", holders=holders)
        strangers = foreign_entries(out)
        if strangers:
            raise IncompatibleOutputError(
                f"{out} is not an ascend-batch output directory (no _job.json; it holds {', '.join(strangers[:3])})"
            )
        if any(n.startswith(LOCK_PREFIX) for n in _names(out)):
            return LiveStatus(out, "stopped", "stopped before the job was recorded: rerun to resume")
        return LiveStatus(out, "not_started", "not started: no run has recorded a job here yet")
    try:
        st = job_status(out, stages=stages)
    except (OSError, ValueError, pa.ArrowException, KeyError):
        if not holders:
            raise
        who = "; ".join(h.describe() for h in holders)
        return LiveStatus(out, "starting", f"starting ({who})", holders=holders)
    live = LiveStatus(out, "stopped", "", job=st, holders=holders, success_file=(out / SUCCESS_FILE).exists())
    if holders:
        live.state = "running"
        _running(st, holders, live)
    elif not st.complete:
        live.text = "stopped: rerun to resume"
    elif live.success_file:
        live.state, live.text = "complete", "complete (verified: _SUCCESS)"
    elif st.max_error_fraction is not None and st.error_fraction > st.max_error_fraction:
        live.state = "too_many_errors"
        live.text = (
            f"complete, but {st.error_fraction:.1%} of the images failed, above max_error_fraction "
            f"{st.max_error_fraction:.1%}: no _SUCCESS (exit 6)"
        )
    else:
        live.state, live.text = "unverified", "complete, not verified (run finalize)"
    return live


def _names(out: Path) -> list[str]:
    with contextlib.suppress(OSError):
        return [p.name for p in out.iterdir()]
    return []
