"""One worker process per device: open the backend session here, then run tasks sent by the
supervisor (units, or slices of a unit being bisected) until told to stop.

Inside a task the data flow is one way: items -> bytes (read, in this thread, in listing order)
-> decoded arrays (thread pool, ``prefetch`` batches ahead) -> fixed-size batches -> session.infer
-> top-k -> rows -> one atomically committed Parquet file. Every item ends as exactly one row.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import ctypes
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ..backends.base import Device, Session, get_backend
from ..errors import AscendBatchError, ImageError
from ..models.spec import ModelSpec
from ..plan import Unit, read_unit_items
from ..preprocess import Decoded, Pixels, Preprocess, decode, decode_pixels, normalise_into
from ..pyarrow_lean import skip_pandas_check
from ..sources import Item, ItemReader
from .writer import RowBuffer, commit_table, part_name, topk

EXIT_WORKER_STARTUP = 3
EXIT_WORKER_FAILED = 4
PIECES_DIR = "_pieces"


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs; plain data, pickled to the spawned process."""

    out: Path
    listing: Path
    model: ModelSpec
    backend: str
    device: Device
    batch_size: int
    threads: int
    decode_workers: int
    prefetch: int
    run_id: str
    max_pixels: int
    max_member_bytes: int
    decode_timeout: float
    backend_options: dict[str, Any] = field(default_factory=dict)
    streams: int = 1  # concurrent inference calls, for sessions that allow them (CPU onnxruntime)
    gpu_decode: bool = True  # decode JPEGs on the device when the session offers a decoder (torch + CUDA)


@dataclass(frozen=True)
class Task:
    """Work sent to a worker: a whole unit, or the slice ``[start, stop)`` of one (a piece)."""

    unit: Unit
    start: int
    stop: int
    piece: bool = False
    attempt: int = 0  # earlier failed attempts; a retry runs without GPU decode

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.unit.index, self.start, self.stop)

    @property
    def size(self) -> int:
        return self.stop - self.start


def piece_name(task: Task) -> str:
    return f"u{task.unit.index:06d}-{task.start:012d}-{task.stop:012d}.parquet"


@dataclass
class TaskStats:
    images: int = 0
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(
        default_factory=lambda: {
            "read": 0.0,  # reading bytes (files, archive members)
            "decode": 0.0,  # bytes -> resized, cropped pixels, summed over decode threads
            "preprocess": 0.0,  # pixels -> normalised into the batch buffer (inference thread)
            "infer": 0.0,  # session.infer, including copies to and from the device
            "write": 0.0,  # building rows and committing the part file
            "wait_decode": 0.0,  # inference waiting for decoded images (decode is the bottleneck)
            "wait_model": 0.0,  # waiting for the model to finish loading (first unit only)
            "wait_task": 0.0,  # idle between units, waiting for the supervisor
        }
    )
    batches: int = 0
    started: float = 0.0
    finished: float = 0.0

    def error(self, exc: ImageError) -> str:
        """Count ``exc``; returns its row's ``error`` text (``kind: message``)."""
        self.errors += 1
        self.error_kinds[exc.kind] = self.error_kinds.get(exc.kind, 0) + 1
        return str(exc)


class _Abandon(Exception):
    """Raised to drop the current task without committing (SIGTERM)."""


class _State:
    def __init__(self) -> None:
        self.stop = threading.Event()
        self.idle = True


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
    state = _State()

    def on_term(signum: int, frame: Any) -> None:
        state.stop.set()
        if state.idle:
            raise _Abandon()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor coordinates Ctrl-C
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    skip_pandas_check()  # a worker never hands pyarrow a pandas object
    opener = _SessionOpener(cfg)
    code = 0
    try:
        _serve(cfg, conn, opener, state)
    except _StartupFailed as exc:
        conn.send(("fatal", str(exc)))
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


class _StartupFailed(Exception):
    """The backend session could not be opened (reported to the supervisor as "fatal")."""


class _SessionOpener:
    """Opens the backend session, in a thread where the backend allows it, so that loading the model
    overlaps decoding the first unit. Sessions of backends whose contexts are bound to the opening
    thread (pyACL) are opened synchronously on first use instead."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.session: Session | None = None
        self.error: BaseException | None = None
        self.announced = False
        self.infer_pool: cf.ThreadPoolExecutor | None = None
        self._buffers: collections.deque[np.ndarray] | None = None
        self._gpu_decoder: Any = None
        self._thread: threading.Thread | None = None
        self._backend = None
        try:
            self._backend = get_backend(cfg.backend, cfg.backend_options)
        except BaseException as exc:
            self.error = exc
            return
        if self._backend.features.open_in_thread:
            self._thread = threading.Thread(target=self._open, name="open-session", daemon=True)
            self._thread.start()

    def _open(self) -> None:
        assert self._backend is not None
        try:
            self.session = self._backend.open(
                self.cfg.device, self.cfg.model, batch_size=self.cfg.batch_size, threads=self.cfg.threads
            )
        except BaseException as exc:
            self.error = exc
            return

    def streams(self, session: Session) -> int:
        """Concurrent inference calls: ``cfg.streams`` where the session allows it, else 1."""
        n = self.cfg.streams if session.features.concurrent_infer else 1
        if n > 1 and self.infer_pool is None:
            self.infer_pool = cf.ThreadPoolExecutor(n, thread_name_prefix="infer")
        return max(1, n)

    def buffers(self, pp: Preprocess, batch: int, streams: int) -> collections.deque[np.ndarray]:
        """Batch buffers, allocated once per worker and reused by every task."""
        shape = pp.input_shape(batch)
        if self._buffers is None or self._buffers[0].shape != shape:
            self._buffers = collections.deque(np.empty(shape, dtype=pp.numpy_dtype) for _ in range(streams + 1))
        return self._buffers

    @property
    def device_decode(self) -> bool:
        """Whether the backend may decode on the device (its sessions offer ``gpu_decoder``)."""
        return self._backend is not None and self._backend.features.device_decode

    def gpu_decoder(self, session: Session, batch: int) -> Any:
        """The session's device JPEG decoder (torch on CUDA), created once; None where there is none."""
        if self._gpu_decoder is None:
            made = session.device_decoder(self.cfg.max_pixels, batch) if session.features.device_decode else None
            self._gpu_decoder = made or False
        return self._gpu_decoder or None

    def drop_buffers(self) -> None:
        self._buffers = None

    def get(self) -> Session:
        if self._thread is not None:
            self._thread.join()
        elif self.session is None and self.error is None:
            self._open()
        if self.error is not None:
            exc = self.error
            if isinstance(exc, AscendBatchError):
                raise _StartupFailed(str(exc)) from exc
            raise _StartupFailed(f"device {self.cfg.device}: {type(exc).__name__}: {exc}") from exc
        assert self.session is not None
        return self.session

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


def _serve(cfg: WorkerConfig, conn: Connection, opener: _SessionOpener, state: _State) -> None:
    listing: pq.ParquetFile | None = None  # opened at the first task: it may not exist before
    pool = _DecodePool(max(1, cfg.decode_workers))
    try:
        with ItemReader(cfg.max_member_bytes) as reader:
            while True:
                state.idle = True
                if state.stop.is_set():
                    return
                t0 = time.perf_counter()
                task = conn.recv()
                waited = time.perf_counter() - t0
                state.idle = False
                if task is None:
                    return
                if listing is None:
                    listing = pq.ParquetFile(cfg.listing)
                try:
                    stats = run_task(cfg, opener, listing, reader, pool, task, conn, state)
                    stats.seconds["wait_task"] = waited
                except (_Abandon, _StartupFailed):
                    raise
                except AscendBatchError as exc:
                    conn.send(("failed", task.key, str(exc)))
                    sys.exit(EXIT_WORKER_FAILED)
                conn.send(("done", task.key, stats.__dict__))
    finally:
        pool.shutdown()


class _DecodePool:
    """A thread pool that can be replaced when a decode hangs past its time limit."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="decode")

    def submit(self, fn: Any, *args: Any) -> cf.Future:
        return self.pool.submit(fn, *args)

    def replace(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=False)
        self.pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="decode")

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _timed_decode(data: bytes, cfg: WorkerConfig) -> tuple[Decoded | ImageError, float]:
    """Decode to a normalised sample (the device-decode path's CPU fallback)."""
    return _timed(decode, data, cfg)


def _timed_pixels(data: bytes, cfg: WorkerConfig) -> tuple[Pixels | ImageError, float]:
    """Decode to resized, cropped uint8 pixels; the inference thread normalises them into its batch."""
    return _timed(decode_pixels, data, cfg)


def _timed(fn: Any, data: bytes, cfg: WorkerConfig) -> tuple[Any, float]:
    t0 = time.perf_counter()
    try:
        result = fn(data, cfg.model.preprocess, cfg.max_pixels)
    except ImageError as exc:
        result = exc
    except Exception as exc:  # decode promises ImageError only; never let a bug kill the unit
        result = ImageError("decode", f"{type(exc).__name__}: {exc}")
    return result, time.perf_counter() - t0


def _decoded(
    cfg: WorkerConfig, items: list[Item], reader: ItemReader, pool: _DecodePool, window: int, stats: TaskStats
) -> Iterator[tuple[int, Pixels | ImageError]]:
    """(position, decoded or error) in listing order; reads ahead ``window`` items."""
    pending: collections.deque[tuple[int, cf.Future | ImageError]] = collections.deque()
    it = iter(enumerate(items))

    def fill() -> None:
        while len(pending) < window:
            nxt = next(it, None)
            if nxt is None:
                return
            pos, item = nxt
            data = _read_timed(reader, item, stats)
            pending.append((pos, data if isinstance(data, ImageError) else pool.submit(_timed_pixels, data, cfg)))

    fill()
    while pending:
        pos, fut = pending.popleft()
        if isinstance(fut, ImageError):
            yield pos, fut
        else:
            t0 = time.perf_counter()
            try:
                result, seconds = fut.result(timeout=cfg.decode_timeout)
                stats.seconds["decode"] += seconds
            except cf.TimeoutError:
                result = ImageError("timeout", f"decoding took longer than {cfg.decode_timeout:g} s")
                pool.replace()  # the stuck thread is abandoned; the rest go on in a fresh pool
            stats.seconds["wait_decode"] += time.perf_counter() - t0
            yield pos, result
        fill()


def _read_timed(reader: ItemReader, item: Item, stats: TaskStats) -> bytes | ImageError:
    """The item's bytes, or why they could not be read; the time goes to the ``read`` stage."""
    t0 = time.perf_counter()
    try:
        return reader.read(item)
    except ImageError as exc:
        return exc
    finally:
        stats.seconds["read"] += time.perf_counter() - t0


def _timed_infer(session: Session, batch: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    logits = session.infer(batch)
    return logits, time.perf_counter() - t0


def _done(value: Any) -> cf.Future:
    fut: cf.Future = cf.Future()
    fut.set_result(value)
    return fut


def run_task(
    cfg: WorkerConfig,
    opener: _SessionOpener,
    listing: pq.ParquetFile,
    reader: ItemReader,
    pool: _DecodePool,
    task: Task,
    conn: Connection | None = None,
    state: _State | None = None,
) -> TaskStats:
    """Classify the task's items and commit their rows. Raises _Abandon if asked to stop."""
    stats = TaskStats(started=time.time())
    items = read_unit_items(listing, task.unit, task.start, task.stop)
    n = len(items)
    results: list[Any] = [None] * n  # per position: (index, prob, w, h) or an error string
    if cfg.gpu_decode and task.attempt == 0 and opener.device_decode:
        session = _ready_session(opener, conn, stats)
        decoder = opener.gpu_decoder(session, max(1, min(cfg.batch_size, session.max_batch)))
        if decoder is not None:
            _infer_gpu_decoded(cfg, session, decoder, items, reader, pool, results, stats, conn, state)
            return _commit(cfg, task, items, results, stats)
    window = cfg.batch_size * max(1, cfg.prefetch) + cfg.decode_workers
    decoded = _decoded(cfg, items, reader, pool, window, stats)
    first = next(decoded, None)  # decoding is under way; now wait for the model if it is still loading
    session = _ready_session(opener, conn, stats)
    batch_cap = max(1, min(cfg.batch_size, session.max_batch))
    streams = opener.streams(session)
    batch_pos: list[tuple[int, int, int]] = []
    pp = cfg.model.preprocess
    buffers = opener.buffers(pp, batch_cap, streams)
    buffer = buffers.popleft()
    inflight: collections.deque[tuple[cf.Future, list[tuple[int, int, int]], np.ndarray]] = collections.deque()

    def collect() -> None:
        fut, positions, buf = inflight.popleft()
        logits, seconds = fut.result()
        stats.seconds["infer"] += seconds
        idx, prob = topk(logits)
        for j, (pos, w, h) in enumerate(positions):
            results[pos] = (idx[j], prob[j], w, h)
        stats.batches += 1
        buffers.append(buf)
        if conn is not None:
            conn.send(("progress", len(positions)))

    def flush() -> None:
        nonlocal buffer, batch_pos
        if not batch_pos:
            return
        if state is not None and state.stop.is_set():
            raise _Abandon()
        if streams == 1:  # in this thread: no hand-off cost
            inflight.append((_done(_timed_infer(session, buffer[: len(batch_pos)])), batch_pos, buffer))
        else:  # up to `streams` batches run at once (single-threaded sessions side by side)
            assert opener.infer_pool is not None
            inflight.append(
                (opener.infer_pool.submit(_timed_infer, session, buffer[: len(batch_pos)]), batch_pos, buffer)
            )
        batch_pos = []
        while not buffers or len(inflight) > streams:
            collect()
        buffer = buffers.popleft()

    try:
        for pos, result in itertools.chain([first] if first is not None else [], decoded):
            if isinstance(result, ImageError):
                results[pos] = stats.error(result)
                continue
            t0 = time.perf_counter()
            normalise_into(result.hwc, pp, buffer[len(batch_pos)])
            stats.seconds["preprocess"] += time.perf_counter() - t0
            batch_pos.append((pos, result.width, result.height))
            if len(batch_pos) == batch_cap:
                flush()
        flush()
        while inflight:
            collect()
    except BaseException:
        for fut, _, _ in inflight:  # let running batches finish before anything else happens
            with contextlib.suppress(Exception):
                fut.result()
        opener.drop_buffers()  # ownership is unclear after a failure: allocate afresh next time
        raise
    buffers.append(buffer)
    return _commit(cfg, task, items, results, stats)


def _ready_session(opener: _SessionOpener, conn: Connection | None, stats: TaskStats) -> Session:
    """The session (waiting for it if it is still loading); tells the supervisor once that it is up."""
    t0 = time.perf_counter()
    session = opener.get()
    stats.seconds["wait_model"] += time.perf_counter() - t0
    if not opener.announced and conn is not None:
        conn.send(("ready", session.max_batch))
        opener.announced = True
    return session


def _infer_gpu_decoded(
    cfg: WorkerConfig,
    session: Session,
    decoder: Any,
    items: list[Item],
    reader: ItemReader,
    pool: _DecodePool,
    results: list[Any],
    stats: TaskStats,
    conn: Connection | None,
    state: _State | None,
) -> None:
    """The device-decode path (torch + CUDA): bytes of a batch -> decoder (nvJPEG, with CPU fallback
    per file) -> tensor already on the device -> inference; one batch decodes while the previous
    one infers."""
    from ..backends.gpu_decode import prefetched

    cap = max(1, min(cfg.batch_size, session.max_batch))

    def batches() -> Iterator[tuple[list[int], list[bytes]]]:
        positions: list[int] = []
        datas: list[bytes] = []
        for pos, item in enumerate(items):
            data = _read_timed(reader, item, stats)
            if isinstance(data, ImageError):
                results[pos] = stats.error(data)
            else:
                datas.append(data)
                positions.append(pos)
            if len(positions) == cap:
                yield positions, datas
                positions, datas = [], []
        if positions:
            yield positions, datas

    def cpu_decode(datas: list[bytes]) -> list[Decoded | ImageError]:
        timed = list(pool.pool.map(lambda d: _timed_decode(d, cfg), datas))
        stats.seconds["decode"] += sum(sec for _, sec in timed)
        return [r for r, _ in timed]

    t0 = time.perf_counter()
    for positions, gb in prefetched(decoder, batches(), cpu_decode):
        stats.seconds["wait_decode"] += time.perf_counter() - t0
        if state is not None and state.stop.is_set():
            raise _Abandon()
        for j, res in enumerate(gb.results):
            if isinstance(res, ImageError):
                results[positions[j]] = stats.error(res)
        if gb.rows:
            t1 = time.perf_counter()
            logits = session.infer_device(gb)
            stats.seconds["infer"] += time.perf_counter() - t1
            idx, prob = topk(logits)
            for k, j in enumerate(gb.rows):
                size = gb.results[j]
                assert not isinstance(size, ImageError)  # rows are the inputs that decoded
                results[positions[j]] = (idx[k], prob[k], size[0], size[1])
            stats.batches += 1
        if conn is not None:
            conn.send(("progress", len(gb.rows)))
        t0 = time.perf_counter()


def _commit(cfg: WorkerConfig, task: Task, items: list[Item], results: list[Any], stats: TaskStats) -> TaskStats:
    """Rows in listing order -> one atomically committed file (the unit's part, or a piece)."""
    labels = cfg.model.labels
    t0 = time.perf_counter()
    rows = RowBuffer(cfg.model.name, cfg.backend, str(cfg.device), cfg.run_id)
    now_ms = int(time.time() * 1000)
    for item, res in zip(items, results, strict=True):
        if isinstance(res, str):
            rows.add_error(item.id, item.source, task.unit.index, now_ms, item.size, item.mtime, res)
        else:
            idx, prob, w, h = res
            rows.add_ok(item.id, item.source, task.unit.index, now_ms, item.size, item.mtime, w, h, idx, prob, labels)
            stats.ok += 1
    stats.images = len(items)
    stats.finished = time.time()
    stats.seconds["write"] += time.perf_counter() - t0  # rows built; the commit is added below
    t0 = time.perf_counter()
    meta = {**stats.__dict__, "device": str(cfg.device)}
    if task.piece:
        pieces = cfg.out / PIECES_DIR
        pieces.mkdir(exist_ok=True)
        commit_table(pieces, piece_name(task), rows.table(), meta)
    else:
        commit_table(cfg.out, part_name(task.unit.index), rows.table(), meta)
    stats.seconds["write"] += time.perf_counter() - t0
    return stats
