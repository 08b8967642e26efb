"""Run (or resume) one job: lock, snapshot, units, supervisor, summary. The CLI and the Python API
both call :func:`run_job`."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import (
    EXIT_ENVIRONMENT,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    DeviceFailure,
    EnvironmentFailure,
    IncompleteError,
    InterruptedRun,
    LockedError,
)
from ..manifest import Manifest
from ..models.resolve import resolve_model
from ..plan import shard_units
from ..sources import source_roots
from .finalize import Finalized, finalize, record_run, run_id_epoch, run_record, set_outcome
from .jobdir import prepare, refuse_foreign
from .lock import JobLock, held_locks
from .messages import WorkerConfig
from .outdir import (
    LISTING_FILE,
    SUCCESS_FILE,
    clean_temps,
    clear_pieces,
    committed_units,
    lock_name,
    restart,
    set_aside_damaged,
)
from .progress import Progress
from .summary import JobStatus, job_status
from .supervisor import Outcome, Supervisor

_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EEXIST: "a file is in the way (job.output must be a directory)",
    errno.ENOTDIR: "a file is in the way (job.output must be a directory)",
}


@dataclass
class RunReport:
    out: Path
    status: JobStatus
    outcome: Outcome
    run_id: str
    shard: tuple[int, int] | None
    summary: dict = field(default_factory=dict)
    finalized: Finalized | None = None

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


def environment_error(exc: OSError, out: Path) -> EnvironmentFailure:
    """An OSError of the job's own files as a message naming the path and the cause (exit 8)."""
    cause = _CAUSES.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    path = exc.filename or out
    return EnvironmentFailure(f"cannot write the job's output: {path}: {cause} (job.output = {out})")


def run_job(
    manifest: Manifest,
    *,
    restart_job: bool = False,
    shard: tuple[int, int] | None = None,
    progress_bar: bool = True,
    log_interval: float = 30.0,
    drain_timeout: float = 45.0,
    max_error_fraction: float | None = None,
) -> RunReport:
    """Run or resume ``manifest``'s job. Raises the typed errors of :mod:`ascend_batch.errors`; an
    error raised once the run has a report (exit 6, 7, 130, a verdict) carries it as ``.report``."""
    out = manifest.job.output
    model = resolve_model(manifest.model, manifest.runtime.backend)
    try:
        if out.exists() and not out.is_dir():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(out))
        if out.is_dir():
            refuse_foreign(out)  # before the lock file is created: a foreign folder stays untouched
        out.mkdir(parents=True, exist_ok=True)
        with JobLock(out, shard):
            _refuse_overlap(out, shard)
            return _run_locked(
                manifest, model, out, restart_job, shard, progress_bar, log_interval, drain_timeout, max_error_fraction
            )
    except OSError as exc:
        raise environment_error(exc, out) from exc


def _shares_units(a: tuple[int, int] | None, b: tuple[int, int] | None) -> bool:
    """Whether two runs' unit sets meet: a whole-job run meets every run; shard ``k/K`` (units ``u`` with
    ``u % K == k``) meets ``j/J`` exactly when ``k`` and ``j`` agree modulo ``gcd(K, J)``."""
    if a is None or b is None:
        return True
    return (a[0] - b[0]) % math.gcd(a[1], b[1]) == 0


def _refuse_overlap(out: Path, shard: tuple[int, int] | None) -> None:
    """No two runs of one job may work on the same units at once (they would clear each other's pieces):
    a whole-job run and any shard run, or shard runs of different counts that share units (an array
    resubmitted with another size while the first still runs)."""
    mine = lock_name(shard)
    others = [h for h in held_locks(out) if h.path.name != mine and _shares_units(h.shard, shard)]
    if others:
        h = others[0]
        what = f"shard {h.shard[0]}/{h.shard[1]}" if h.shard else "a whole-job run"
        this = "a whole-job run" if shard is None else f"shard {shard[0]}/{shard[1]}"
        raise LockedError(
            f"{what} of this job is running in {out} (pid {h.pid} on host {h.host}); "
            f"{this} would work on the same units: wait for it to finish"
        )


def _run_locked(
    manifest: Manifest,
    model: Any,
    out: Path,
    restart_job: bool,
    shard: tuple[int, int] | None,
    progress_bar: bool,
    log_interval: float,
    drain_timeout: float,
    max_error_fraction: float | None,
) -> RunReport:
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    if restart_job:
        if shard is not None:
            raise IncompleteError("--restart cannot be combined with a shard; restart the whole job once")
        restart(out)
    clean_temps(out)
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
        source_roots=source_roots(manifest.dataset.resolved),
        backend_options=rt.backend_options(),
        streams=streams,
        device_decode=rt.device_decode,
        stall_timeout=rt.stall_timeout,
    )
    supervisor = Supervisor(
        template,
        rt.devices,
        [],
        max_retries=rt.max_retries,
        progress=None,
        drain_timeout=drain_timeout,
        stall_timeout=rt.stall_timeout,
    )
    if not (out / SUCCESS_FILE).exists():
        supervisor.start_workers()  # they load their models while we list the dataset
    try:
        info = prepare(manifest, model, out)
        units = info.snapshot.units
        mine = shard_units(units, *shard) if shard else units
        damaged = set_aside_damaged(out, mine)  # cheap: size and sha256 against each commit record
        done = committed_units(out)
        todo = [u for u in mine if u.index not in done]
        if todo:
            with contextlib.suppress(FileNotFoundError):
                (out / SUCCESS_FILE).unlink()  # the job is not complete: a stale _SUCCESS must not say so
        clear_pieces(out, todo)
    except BaseException:
        supervisor.stop_workers()
        raise
    total = sum(u.size for u in mine)
    already = total - sum(u.size for u in todo)
    progress = Progress(total, already, len(mine), len(mine) - len(todo), bar=progress_bar, interval=log_interval)
    for unit, why in sorted(damaged.items()):
        progress.log(f"unit {unit}: its committed part is damaged ({why}); moved to _damaged/, redoing it")
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
    ended = time.time()
    run = run_record(
        run_id,
        run_id_epoch(run_id) or ended - outcome.wall,
        ended,
        shard=list(shard) if shard else None,
        units_todo=len(todo),
        wall_seconds=round(outcome.wall, 3),
        images=outcome.images,
        ok=outcome.ok,
        errors=outcome.errors,
        images_per_second=round(outcome.images / outcome.wall, 2) if outcome.wall > 0 else None,
        per_device_images=outcome.per_device,
        stage_seconds={k: round(v, 3) for k, v in outcome.seconds.items()},
        decoded_on=outcome.decoded,
        worker_deaths=outcome.worker_deaths,
        threads_per_inference=threads,
        inference_streams_per_worker=streams,
        decode_threads_per_worker=decode,
        batch_size=rt.batch_size,
        backend=rt.backend,
        devices=[str(d) for d in rt.devices],
        damaged_parts_redone=sorted(damaged),
    )
    threshold = max_error_fraction if max_error_fraction is not None else manifest.job.max_error_fraction
    fin: Finalized | None = None
    verdict = outcome.verdict
    if verdict is not None:
        set_outcome(run, verdict.exit_code, verdict.message)
    elif outcome.interrupted:
        set_outcome(run, EXIT_INTERRUPTED, f"interrupted by {outcome.interrupted}")
    missing = False
    unwritten: OSError | None = None
    try:
        if shard is None:
            fin = finalize(out, run, max_error_fraction=threshold)  # records this run, gathers every run's
        else:
            missing = any(u.index not in committed_units(out) for u in mine)
            if "exit_code" not in run:
                set_outcome(run, EXIT_INCOMPLETE if missing else EXIT_OK)
            record_run(out, run)  # the finalize job gathers the shards' records
    except OSError as exc:  # the same full disk that stopped the job may refuse the summary: the verdict says why
        if verdict is None or verdict.exit_code != EXIT_ENVIRONMENT:
            unwritten = exc  # no verdict yet: this is the run's outcome (exit 8), reported with its counts
    st = fin.status if fin is not None else job_status(out)
    if fin is not None and st.complete and manifest.job.report:
        night_report(manifest, out, progress)
    report = RunReport(out, st, outcome, run_id, shard, summary=run, finalized=fin)
    error: Exception | None = None
    if unwritten is not None:
        error = environment_error(unwritten, out)
    elif verdict is not None:
        cls = EnvironmentFailure if verdict.exit_code == EXIT_ENVIRONMENT else DeviceFailure
        error = cls(
            f"{verdict.message}. The job stopped with {st.units_done}/{st.n_units} units committed; no image was "
            "blamed; fix the cause and rerun to resume"
        )
    elif outcome.interrupted:
        error = InterruptedRun(
            f"interrupted by {outcome.interrupted}: {st.units_done}/{st.n_units} units committed; "
            "rerun the same command to resume"
        )
    elif fin is not None and not fin.success:
        try:
            fin.raise_for_status()
        except Exception as exc:
            error = exc
    elif fin is None and missing:
        error = IncompleteError(f"shard {shard}: units are missing after the run; rerun it")
    if error is not None:
        error.report = report  # type: ignore[attr-defined]
        raise error
    return report


def night_report(manifest: Manifest, out: Path, progress: Progress) -> None:
    """``job.report``: the night's page, against the earlier nights of an incremental series
    (``dataset.skip_existing``). A report that cannot be written is a warning: the results stand."""
    try:
        from ..incremental import earlier_dirs
        from ..report.build import build_report, write_report
        from .outdir import REPORT_HTML, REPORT_JSON

        baselines = earlier_dirs(manifest.dataset.skip_existing, own=out)
        write_report(build_report(out, baselines), out / REPORT_HTML, out / REPORT_JSON)
        progress.log(f"report: {out / REPORT_HTML} ({len(baselines)} earlier night(s) compared)")
    except Exception as exc:  # the job's results and exit code do not depend on its page
        progress.log(f"warning: job.report: the report was not written: {type(exc).__name__}: {exc}")
