"""Run (or resume) one job: lock, snapshot, units, supervisor, summary. The CLI and the Python API
both call :func:`run_job`."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IncompleteError, InterruptedRun
from ..manifest import Manifest
from ..models.resolve import resolve_model
from ..plan import LISTING_FILE, shard_units
from .lock import JobLock
from .outdir import SUCCESS_FILE, SUMMARY_FILE, prepare, restart, write_replace
from .progress import Progress
from .summary import JobStatus, job_status, summary_dict
from .supervisor import Outcome, Supervisor, clear_pieces
from .worker import WorkerConfig
from .writer import committed_units


@dataclass
class RunReport:
    out: Path
    status: JobStatus
    outcome: Outcome
    run_id: str
    shard: tuple[int, int] | None
    summary: dict = field(default_factory=dict)

    @property
    def error_fraction(self) -> float:
        return self.status.errors / self.status.images if self.status.images else 0.0


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def plan_threads(manifest: Manifest) -> tuple[int, int, int]:
    """(intra-op threads per inference call, concurrent inference calls, decode threads), per worker,
    without oversubscribing the cores: threads x streams x workers <= cores.

    On CPU, several single-threaded inference calls side by side beat one call spread over all
    cores when decoding competes for the same cores (measured: README, Performance), so the
    default is one thread per call and one call per core of the worker's share."""
    rt = manifest.runtime
    cores = available_cores()
    n = len(rt.devices)
    per_worker = max(1, cores // n)
    on_cpu = all(d.kind == "cpu" for d in rt.devices)
    if rt.threads:
        threads = rt.threads
        streams = (rt.streams or max(1, per_worker // threads)) if on_cpu else 1
    elif on_cpu:
        streams = rt.streams or per_worker
        threads = max(1, per_worker // streams)
    else:
        threads, streams = per_worker, rt.streams or 1
    decode = rt.decode_workers or per_worker
    return threads, streams, decode


def finalize(out: Path, run: dict | None = None) -> JobStatus:
    """Write ``_summary.json`` (always) and ``_SUCCESS`` (when every unit is committed)."""
    st = job_status(out)
    summary = summary_dict(st, run)
    write_replace(out / SUMMARY_FILE, json.dumps(summary, indent=2))
    if st.complete:
        write_replace(out / SUCCESS_FILE, "")
    return st


def run_job(
    manifest: Manifest,
    *,
    restart_job: bool = False,
    shard: tuple[int, int] | None = None,
    progress_bar: bool = True,
    log_interval: float = 30.0,
    drain_timeout: float = 45.0,
) -> RunReport:
    out = manifest.job.output
    out.mkdir(parents=True, exist_ok=True)
    model = resolve_model(manifest.model, manifest.runtime.backend)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    with JobLock(out, shard):
        if restart_job:
            if shard is not None:
                raise IncompleteError("--restart cannot be combined with a shard; restart the whole job once")
            restart(out)
        rt = manifest.runtime
        threads, streams, decode = plan_threads(manifest)
        template = WorkerConfig(
            out=out,
            listing=out / LISTING_FILE,
            model=model,
            backend=rt.backend,
            device=rt.devices[0],
            batch_size=rt.batch_size,
            threads=threads,
            decode_workers=decode,
            prefetch=rt.prefetch,
            run_id=run_id,
            max_pixels=manifest.dataset.max_pixels,
            max_member_bytes=manifest.dataset.max_member_bytes,
            decode_timeout=manifest.dataset.decode_timeout,
            backend_options=rt.backend_options(),
            streams=streams,
            gpu_decode=rt.gpu_decode,
        )
        supervisor = Supervisor(
            template, rt.devices, [], max_retries=rt.max_retries, progress=None, drain_timeout=drain_timeout
        )
        if not (out / SUCCESS_FILE).exists():
            supervisor.start_workers()  # they load their models while we list the dataset
        try:
            info = prepare(manifest, model, out)
        except BaseException:
            supervisor.stop_workers()
            raise
        units = info.snapshot.units
        mine = shard_units(units, *shard) if shard else units
        done = committed_units(out)
        todo = [u for u in mine if u.index not in done]
        clear_pieces(out, todo)
        total = sum(u.size for u in mine)
        already = total - sum(u.size for u in todo)
        progress = Progress(total, already, len(mine), len(mine) - len(todo), bar=progress_bar, interval=log_interval)
        supervisor.progress = progress
        supervisor.set_units(todo)
        if todo:
            progress.log(
                f"job {manifest.job.name!r}: {len(todo)} of {len(mine)} units to do ({total - already} images) "
                f"on {', '.join(str(d) for d in rt.devices)} [{rt.backend}, batch {rt.batch_size}, "
                f"{streams}x{threads} infer + {decode} decode threads per worker]"
            )
        try:
            outcome = supervisor.run() if todo else Outcome()
        finally:
            if not todo:
                supervisor.stop_workers()
            progress.close()
        run = {
            "run_id": run_id,
            "shard": list(shard) if shard else None,
            "wall_seconds": round(outcome.wall, 3),
            "images": outcome.images,
            "images_per_second": round(outcome.images / outcome.wall, 2) if outcome.wall > 0 else None,
            "per_device_images": outcome.per_device,
            "stage_seconds": {k: round(v, 3) for k, v in outcome.seconds.items()},
            "worker_deaths": outcome.worker_deaths,
            "threads_per_inference": threads,
            "inference_streams_per_worker": streams,
            "decode_threads_per_worker": decode,
            "batch_size": rt.batch_size,
            "backend": rt.backend,
            "devices": [str(d) for d in rt.devices],
        }
        st = finalize(out, run) if shard is None else job_status(out)
        report = RunReport(out, st, outcome, run_id, shard, summary=run)
        if outcome.interrupted:
            raise InterruptedRun(
                f"interrupted by {outcome.interrupted}: {st.units_done}/{st.n_units} units committed; "
                "rerun the same command to resume"
            )
        if outcome.units_failed:
            failed = ", ".join(f"{u} ({m})" for u, m in sorted(outcome.units_failed.items())[:5])
            raise IncompleteError(
                f"{len(outcome.units_failed)} unit(s) could not be completed: {failed}; rerun to retry them"
            )
        return report
