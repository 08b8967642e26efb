"""One worker process per device: open the backend session here, then run the tasks the supervisor
sends (whole units, or pieces of a unit being bisected) until told to stop.

A task is the stages of :mod:`.stages` composed one way, then one atomically committed Parquet file
(:mod:`.outdir`). Every item ends as exactly one row. A task that raises is reported with its cause
(:class:`~.messages.Cause`): the environment (memory, the output's disk) or the runtime; image
problems never raise, they are rows.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import ctypes
import enum
import errno
import itertools
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ..backends.base import Backend, DeviceDecoder, Session, get_backend
from ..errors import AscendBatchError, DecodeOutOfMemory
from ..plan import read_unit_items
from ..pyarrow_lean import skip_pandas_check
from ..sources import ItemReader, SourceGoneError
from . import stages
from .messages import Alive, Cause, Progress, Ready, StartupFailed, Task, TaskDone, TaskFailed, TaskStats, WorkerConfig
from .outdir import commit_part, commit_piece
from .watchdog import heartbeat_interval, heartbeats
from .writer import RowBuffer

EXIT_WORKER_STARTUP = 3
EXIT_WORKER_FAILED = 4
# errors of the output's file system that no image causes
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EIO", "EMFILE", "ENFILE")
    if hasattr(errno, name)
)


class Phase(enum.Enum):
    IDLE = "idle"  # between tasks: SIGTERM ends the process at once
    WORKING = "working"  # inside a task: SIGTERM stops it at the next batch, uncommitted
    STOPPING = "stopping"


class State:
    def __init__(self) -> None:
        self.phase = Phase.IDLE
        self.stop = threading.Event()


class _Abandon(Exception):
    """Raised by the SIGTERM handler while idle."""


class _StartupFailed(Exception):
    """The backend session could not be opened."""


def _die_with_parent() -> None:
    """Never outlive the supervisor: ask the kernel to SIGKILL us when it dies, and poll as a fallback."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def worker_main(cfg: WorkerConfig, conn: Connection) -> None:
    """Entry point of a spawned worker process."""
    _die_with_parent()
    state = State()

    def on_term(signum: int, frame: Any) -> None:
        state.stop.set()
        if state.phase is Phase.IDLE:
            state.phase = Phase.STOPPING
            raise _Abandon()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor coordinates Ctrl-C
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    skip_pandas_check()  # a worker never hands pyarrow a pandas object
    opener = SessionOpener(cfg)
    code = 0
    try:
        _serve(cfg, conn, opener, state)
    except _StartupFailed as exc:
        conn.send(StartupFailed(str(exc)))
        code = EXIT_WORKER_STARTUP
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except _Abandon:
        pass
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # supervisor gone
    finally:
        opener.close()
    # Every result is committed and the session released in order: skip the interpreter's teardown
    # of the loaded libraries (about 0.15 s at the end of every run, measured), which nothing here needs.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class SessionOpener:
    """Opens the backend session, in a thread where the backend allows it (its features say so), so
    that loading the model overlaps decoding the first unit; otherwise on first use. Owns what lives
    across tasks: batch buffers, the inference thread pool, the device decoder."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.session: Session | None = None
        self.error: BaseException | None = None
        self.announced = False
        self.infer_pool: cf.ThreadPoolExecutor | None = None
        self._buffers: collections.deque[np.ndarray] | None = None
        self._decoder: DeviceDecoder | None = None
        self._decoder_asked = False
        self._thread: threading.Thread | None = None
        self.backend: Backend | None = None
        try:
            self.backend = get_backend(cfg.backend, cfg.backend_options)
        except BaseException as exc:
            self.error = exc
            return
        if self.backend.features.open_in_thread and not cfg.open_first:
            self._thread = threading.Thread(target=self._open, name="open-session", daemon=True)
            self._thread.start()

    def _open(self) -> None:
        assert self.backend is not None
        try:
            self.session = self.backend.open(
                self.cfg.device, self.cfg.model, batch_size=self.cfg.batch_size, threads=self.cfg.threads
            )
        except BaseException as exc:
            self.error = exc

    def get(self, conn: Connection | None, stats: TaskStats) -> Session:
        """The session (waiting for it if it is still loading); tells the supervisor once that it is up."""
        t0 = time.perf_counter()
        if self._thread is not None:
            self._thread.join()
        elif self.session is None and self.error is None:
            self._open()
        stats.seconds["wait_model"] += time.perf_counter() - t0
        if self.error is not None:
            exc = self.error
            if isinstance(exc, AscendBatchError):
                raise _StartupFailed(str(exc)) from exc
            raise _StartupFailed(f"device {self.cfg.device}: {type(exc).__name__}: {exc}") from exc
        assert self.session is not None
        if not self.announced and conn is not None:
            conn.send(Ready(self.session.max_batch))
            self.announced = True
        return self.session

    def cap(self, session: Session) -> int:
        return max(1, min(self.cfg.batch_size, session.max_batch))

    def device_decoder(self, session: Session) -> DeviceDecoder | None:
        """The session's device decode stage, created once; None where it offers none."""
        if not self._decoder_asked:
            self._decoder_asked = True
            if session.features.device_decode:
                self._decoder = session.device_decoder(self.cfg.max_pixels, self.cap(session))
        return self._decoder

    def infer_context(self, session: Session, conn: Connection | None, state: State | None) -> stages.InferContext:
        """Batch buffers (allocated once per worker, reused by every task) and the stream pool."""
        n = max(1, self.cfg.streams) if session.features.concurrent_infer else 1
        if n > 1 and self.infer_pool is None:
            self.infer_pool = cf.ThreadPoolExecutor(n, thread_name_prefix="infer")
        pp = session.input_preprocess(self.cfg.model.preprocess)
        shape = pp.input_shape(self.cap(session))
        if self._buffers is None or self._buffers[0].shape != shape:
            self._buffers = None  # a failed allocation must not leave half a set behind
            self._buffers = collections.deque(np.empty(shape, dtype=pp.numpy_dtype) for _ in range(n + 1))
        return stages.InferContext(
            session,
            pp,
            self._buffers,
            n,
            self.infer_pool if n > 1 else None,
            progress=(lambda k: conn.send(Progress(k))) if conn is not None else (lambda k: None),
            stopping=(lambda: state.stop.is_set()) if state is not None else (lambda: False),
        )

    def drop_buffers(self) -> None:
        self._buffers = None  # ownership is unclear after a failure: allocate afresh next time

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self.infer_pool is not None:
            self.infer_pool.shutdown(wait=True)
        session, self.session = self.session, None
        if session is not None:
            try:
                session.close()
            except Exception as exc:  # report, but never mask the original failure
                print(
                    f"ascend-batch worker {self.cfg.device}: error while releasing the session: {exc}", file=sys.stderr
                )


def failure_cause(exc: BaseException) -> tuple[Cause, str]:
    """Why a task raised, in words that name the cause (never an image's fault: those are rows)."""
    if isinstance(exc, DecodeOutOfMemory):
        return Cause.ENVIRONMENT, str(exc)
    if isinstance(exc, SourceGoneError):
        return Cause.ENVIRONMENT, f"{exc.strerror} (reading {exc.filename})"
    if isinstance(exc, MemoryError):
        return (
            Cause.ENVIRONMENT,
            f"out of memory ({type(exc).__name__}: {exc}); lower runtime.batch_size or free memory",
        )
    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
        where = f" ({exc.filename})" if exc.filename else ""
        return Cause.ENVIRONMENT, f"{os.strerror(exc.errno or 0)}{where}"
    if isinstance(exc, OSError):
        return Cause.ENVIRONMENT, f"{type(exc).__name__}: {exc}"
    if isinstance(exc, AscendBatchError):
        return Cause.RUNTIME, str(exc)
    return Cause.RUNTIME, f"{type(exc).__name__}: {exc}"


def _serve(cfg: WorkerConfig, conn: Connection, opener: SessionOpener, state: State) -> None:
    listing: pq.ParquetFile | None = None  # opened at the first task: it may not exist before
    pool = stages.DecodePool(max(1, cfg.decode_workers))
    try:
        if cfg.open_first:
            opener.get(conn, TaskStats())
        with ItemReader(cfg.max_member_bytes, roots=cfg.source_roots) as reader:
            while True:
                state.phase = Phase.IDLE
                if state.stop.is_set():
                    return
                t0 = time.perf_counter()
                task = conn.recv()
                waited = time.perf_counter() - t0
                if task is None:
                    return
                state.phase = Phase.WORKING
                try:
                    if listing is None:
                        listing = pq.ParquetFile(cfg.listing)
                    stats = run_task(cfg, opener, listing, reader, pool, task, conn, state)
                    stats.seconds["wait_task"] = waited
                except (stages.Stop, _StartupFailed):
                    raise
                except Exception as exc:
                    cause, message = failure_cause(exc)
                    conn.send(TaskFailed(task.key, cause, message))
                    sys.exit(EXIT_WORKER_FAILED)
                conn.send(TaskDone(task.key, stats))
    except stages.Stop:
        return
    finally:
        pool.shutdown()


def run_task(
    cfg: WorkerConfig,
    opener: SessionOpener,
    listing: pq.ParquetFile,
    reader: ItemReader,
    pool: stages.DecodePool,
    task: Task,
    conn: Connection | None = None,
    state: State | None = None,
) -> TaskStats:
    """Classify the task's items and commit their rows. Raises stages.Stop if asked to stop."""
    stats = TaskStats(started=time.time())
    items = read_unit_items(listing, task.unit, task.start, task.stop)
    pp = cfg.model.preprocess
    samples = stages.read(items, reader, stats)
    every = heartbeat_interval(cfg.stall_timeout)
    beat = (lambda: conn.send(Alive())) if conn is not None else (lambda: None)
    try:
        if (
            cfg.device_decode
            and task.attempt == 0
            and opener.backend is not None
            and opener.backend.features.device_decode
        ):
            session = opener.get(conn, stats)
            decoder = opener.device_decoder(session)
            if decoder is not None:
                progress = (lambda k: conn.send(Progress(k))) if conn is not None else (lambda k: None)
                stopping = (lambda: state.stop.is_set()) if state is not None else (lambda: False)
                groups = stages.batches(heartbeats(samples, beat, every), opener.cap(session))
                cpu_pp = session.input_preprocess(pp)  # what the fallback decodes to, for this model
                pairs = stages.decode_on_device(
                    groups, decoder, pool, cpu_pp, cfg.max_pixels, cfg.decode_timeout, stats
                )
                return _commit(cfg, task, list(stages.infer_device(pairs, session, stats, progress, stopping)), stats)
        window = cfg.batch_size * max(1, cfg.prefetch) + cfg.decode_workers
        decoded = heartbeats(
            stages.decode_cpu(samples, pool, window, pp, cfg.max_pixels, cfg.decode_timeout, stats), beat, every
        )
        first = next(decoded, None)  # decoding is under way; now wait for the model if it is still loading
        session = opener.get(conn, stats)
        ctx = opener.infer_context(session, conn, state)
        groups = stages.batches(itertools.chain([first] if first is not None else [], decoded), ctx.buffers[0].shape[0])
        done = list(stages.infer_cpu(groups, ctx, stats))
    except BaseException:
        opener.drop_buffers()
        raise
    return _commit(cfg, task, done, stats)


def _commit(cfg: WorkerConfig, task: Task, samples: list[stages.Sample], stats: TaskStats) -> TaskStats:
    """Rows in listing order -> one atomically committed file (the unit's part, or a piece)."""
    if len(samples) != task.size:  # a stage lost or invented a sample: a bug, never a silent gap
        raise RuntimeError(f"unit {task.unit.index}: {len(samples)} samples for {task.size} items")
    t0 = time.perf_counter()
    rows = RowBuffer(cfg.model.name, cfg.backend, str(cfg.device), cfg.run_id)
    now_ms = int(time.time() * 1000)
    labels = cfg.model.labels
    unit = task.unit.index
    for s in sorted(samples, key=lambda s: s.pos):
        item = s.item
        if s.error is not None or s.top_index is None or s.top_prob is None:
            rows.add_error(item.id, item.source, unit, now_ms, item.size, item.mtime, s.error or "internal: no result")
        else:
            rows.add_ok(
                item.id,
                item.source,
                unit,
                now_ms,
                item.size,
                item.mtime,
                s.width,
                s.height,
                s.top_index,
                s.top_prob,
                labels,
            )
            stats.ok += 1
    stats.images = len(samples)
    stats.finished = time.time()
    stats.seconds["write"] += time.perf_counter() - t0  # rows built; the commit is added below
    t0 = time.perf_counter()
    meta = {**stats.__dict__, "device": str(cfg.device)}
    if task.piece:
        commit_piece(cfg.out, unit, task.start, task.stop, rows.table(), meta)
    else:
        commit_part(cfg.out, unit, rows.table(), meta)
    stats.seconds["write"] += time.perf_counter() - t0
    return stats
