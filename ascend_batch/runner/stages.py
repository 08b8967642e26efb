"""A worker's stages, forward only: items -> read -> decode -> batch -> infer -> samples with their
predictions. Each stage takes an iterator of :class:`Sample` and yields them on, in listing order; a
sample carries its item (so its ``image_id``) from the first stage to its row, and a sample that
failed carries its error through every later stage untouched. A prediction is attached to its own
sample object, never matched by position.

Two decode stages exist: :func:`decode_cpu` (a thread pool, ``window`` images ahead) and
:func:`decode_on_device` (the session's device decoder, per batch, with per-file CPU fallback), each
followed by its inference stage.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends.base import Session
from ..backends.prefetch import prefetched
from ..errors import DecodeOutOfMemory, ImageError
from ..preprocess import Decoded, Pixels, Preprocess, decode, decode_pixels, normalise_into
from ..sources import Item, ItemReader
from .messages import TaskStats
from .writer import topk


@dataclass(slots=True)
class Sample:
    pos: int  # position in its task's slice of the listing: rows are written in this order
    item: Item
    data: bytes | None = None
    pixels: Pixels | None = None
    error: str | None = None  # the row's error text, "kind: message"
    width: int = 0
    height: int = 0
    top_index: np.ndarray | None = None
    top_prob: np.ndarray | None = None

    @property
    def image_id(self) -> str:
        return self.item.id

    @property
    def live(self) -> bool:
        return self.error is None

    def fail(self, exc: ImageError, stats: TaskStats) -> None:
        self.error = str(exc)
        self.data = self.pixels = None
        stats.count_error(exc.kind)

    def predict(self, index: np.ndarray, prob: np.ndarray, width: int, height: int) -> None:
        self.top_index, self.top_prob, self.width, self.height = index, prob, width, height
        self.data = self.pixels = None


class Stop(Exception):
    """Raised between batches when the worker was asked to stop: the task is dropped uncommitted."""


@dataclass(eq=False)
class DecodeTask:
    """One decode submitted to a :class:`DecodePool`: its future, and when a thread started it."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    fut: cf.Future = field(default_factory=cf.Future)
    started: float | None = None  # time.monotonic() when a thread began it; None while queued

    def run(self) -> Any:
        self.started = time.monotonic()
        return self.fn(*self.args)


class DecodePool:
    """A thread pool whose decodes are each limited to ``timeout`` seconds of their own running
    time, not of time spent queued behind other decodes. A decode past its limit is abandoned with
    its thread: the pool is replaced, and the decodes still queued move to the fresh pool, so no
    image waits behind a stuck one or is blamed for it. One thread submits and collects."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="decode")
        self._queued: list[DecodeTask] = []  # submitted and not collected: moved on a replace

    def submit(self, fn: Callable[..., Any], *args: Any) -> DecodeTask:
        task = DecodeTask(fn, args)
        task.fut = self.pool.submit(task.run)
        self._queued.append(task)
        return task

    def result(self, task: DecodeTask, timeout: float) -> Any:
        """``task``'s result (or the exception it raised), waiting at most ``timeout`` seconds from
        the moment it started running. Raises ``concurrent.futures.TimeoutError`` past that, after
        replacing the pool."""
        try:
            while True:
                started = task.started
                wait = timeout if started is None else started + timeout - time.monotonic()
                if started is not None and wait <= 0 and not task.fut.done():
                    self.replace()
                    raise cf.TimeoutError
                try:  # queued: it starts as soon as a thread is free, and each of those is limited too
                    return task.fut.result(timeout=max(wait, 0.0))
                except cf.TimeoutError:
                    continue
        finally:
            if task in self._queued:
                self._queued.remove(task)

    def replace(self) -> None:
        """Abandon the pool's threads (a stuck decode cannot be killed) and start a fresh pool; the
        decodes that have not started move to it."""
        old, self.pool = self.pool, cf.ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        for task in self._queued:
            if task.started is None and task.fut.cancel():
                task.fut = self.pool.submit(task.run)
        old.shutdown(wait=False, cancel_futures=False)

    def shutdown(self) -> None:
        self._queued.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)


def timed(
    fn: Callable[[bytes, Preprocess, int], Any], data: bytes, pp: Preprocess, max_pixels: int
) -> tuple[Any, float]:
    """``fn(data, pp, max_pixels)`` or the ImageError it raised, and the seconds it took. Running
    out of memory is the machine's failure, not the image's: MemoryError propagates."""
    t0 = time.perf_counter()
    try:
        result = fn(data, pp, max_pixels)
    except ImageError as exc:
        result = exc
    except MemoryError:
        raise
    except Exception as exc:  # decode promises ImageError only; never let a bug kill the unit
        result = ImageError("decode", f"{type(exc).__name__}: {exc}")
    return result, time.perf_counter() - t0


def collect_decode(pool: DecodePool, task: DecodeTask, timeout: float, image_id: str, stats: TaskStats) -> Any:
    """The decode's result or its ImageError (``timeout`` past ``timeout`` seconds of running time).
    Out of memory stops the task with :class:`DecodeOutOfMemory`, naming the image."""
    try:
        result, seconds = pool.result(task, timeout)
    except cf.TimeoutError:
        return ImageError("timeout", f"decoding took longer than {timeout:g} s")
    except MemoryError as exc:
        raise DecodeOutOfMemory(
            f"out of memory decoding {image_id}: lower dataset.max_pixels (images over it become "
            "'too-large' rows without being decoded), runtime.decode_workers or runtime.batch_size, "
            "or free memory"
        ) from exc
    stats.seconds["decode"] += seconds
    return result


# -- read ----------------------------------------------------------------------------------------


def read(items: Iterable[Item], reader: ItemReader, stats: TaskStats) -> Iterator[Sample]:
    """Each item's bytes (or why they could not be read); the time goes to the ``read`` stage."""
    for pos, item in enumerate(items):
        sample = Sample(pos, item)
        t0 = time.perf_counter()
        try:
            sample.data = reader.read(item)
        except ImageError as exc:
            sample.fail(exc, stats)
        stats.seconds["read"] += time.perf_counter() - t0
        yield sample


# -- CPU decode ----------------------------------------------------------------------------------


def decode_cpu(
    samples: Iterable[Sample],
    pool: DecodePool,
    window: int,
    pp: Preprocess,
    max_pixels: int,
    timeout: float,
    stats: TaskStats,
) -> Iterator[Sample]:
    """Resized, cropped uint8 pixels for each readable sample, decoded ``window`` samples ahead."""
    pending: collections.deque[tuple[Sample, DecodeTask | None]] = collections.deque()
    source = iter(samples)

    def fill() -> None:
        while len(pending) < window:
            s = next(source, None)
            if s is None:
                return
            task = pool.submit(timed, decode_pixels, s.data, pp, max_pixels) if s.live else None
            pending.append((s, task))

    fill()
    while pending:
        sample, task = pending.popleft()
        if task is not None:
            t0 = time.perf_counter()
            result = collect_decode(pool, task, timeout, sample.image_id, stats)
            stats.seconds["wait_decode"] += time.perf_counter() - t0
            if isinstance(result, ImageError):
                sample.fail(result, stats)
            else:
                sample.pixels, sample.data = result, None
                stats.decoded["cpu"] = stats.decoded.get("cpu", 0) + 1
        yield sample
        fill()


# -- batch ---------------------------------------------------------------------------------------


def batches(samples: Iterable[Sample], cap: int) -> Iterator[list[Sample]]:
    """Groups of samples holding at most ``cap`` live ones; failed samples ride along uninferred."""
    group: list[Sample] = []
    live = 0
    for s in samples:
        group.append(s)
        if s.live:
            live += 1
            if live == cap:
                yield group
                group, live = [], 0
    if group:
        yield group


# -- infer (CPU-decoded batches) -------------------------------------------------------------------


def _timed_infer(session: Session, batch: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    logits = session.infer(batch)
    return logits, time.perf_counter() - t0


def _done(value: Any) -> cf.Future:
    fut: cf.Future = cf.Future()
    fut.set_result(value)
    return fut


@dataclass
class InferContext:
    """What the inference stage runs with: the session, up to ``streams`` batches in flight (on
    ``pool``), batch buffers reused across tasks, where progress goes and when to stop."""

    session: Session
    pp: Preprocess
    buffers: collections.deque[np.ndarray]
    streams: int
    pool: cf.ThreadPoolExecutor | None
    progress: Callable[[int], None]
    stopping: Callable[[], bool]


def infer_cpu(groups: Iterable[list[Sample]], ctx: InferContext, stats: TaskStats) -> Iterator[Sample]:
    """Normalise each group's live samples into a batch buffer, infer, attach top-5 to each sample."""
    inflight: collections.deque[tuple[cf.Future, list[Sample], np.ndarray]] = collections.deque()

    def collect() -> Iterator[Sample]:
        fut, group, buf = inflight.popleft()
        logits, seconds = fut.result()
        stats.seconds["infer"] += seconds
        idx, prob = topk(logits)
        live = [s for s in group if s.live]
        for s, i, p in zip(live, idx, prob, strict=True):
            assert s.pixels is not None
            s.predict(i, p, s.pixels.width, s.pixels.height)
        stats.batches += 1
        ctx.buffers.append(buf)
        ctx.progress(len(live))
        yield from group

    try:
        for group in groups:
            live = [s for s in group if s.live]
            if not live:
                yield from group  # nothing to infer (samples may leave out of order: rows are sorted)
                continue
            if ctx.stopping():
                raise Stop()
            buf = ctx.buffers.popleft()
            t0 = time.perf_counter()
            for j, s in enumerate(live):
                assert s.pixels is not None
                normalise_into(s.pixels.hwc, ctx.pp, buf[j])
            stats.seconds["preprocess"] += time.perf_counter() - t0
            view = buf[: len(live)]
            if ctx.pool is None:  # one stream: in this thread, no hand-off cost
                inflight.append((_done(_timed_infer(ctx.session, view)), group, buf))
            else:  # up to `streams` batches at once (single-threaded sessions side by side)
                inflight.append((ctx.pool.submit(_timed_infer, ctx.session, view), group, buf))
            while not ctx.buffers or len(inflight) > ctx.streams:
                yield from collect()
        while inflight:
            yield from collect()
    except BaseException:
        for fut, _, _ in inflight:  # let running batches finish before anything else happens
            try:
                fut.result()
            except Exception:
                continue
        raise


# -- device decode and its inference -------------------------------------------------------------


def decode_on_device(
    groups: Iterable[list[Sample]],
    decoder: Any,
    pool: DecodePool,
    pp: Preprocess,
    max_pixels: int,
    timeout: float,
    stats: TaskStats,
) -> Iterator[tuple[list[Sample], Any]]:
    """Each group with its device batch (the decoder's result for the group's readable samples), one
    group decoding ahead while the previous one infers. Files the device cannot take are decoded by
    the CPU pool; a file neither can decode becomes that sample's error."""

    def cpu_decode(datas: list[bytes]) -> list[Decoded | ImageError]:
        tasks = [pool.submit(timed, decode, d, pp, max_pixels) for d in datas]
        return [collect_decode(pool, task, timeout, "an image the device could not take", stats) for task in tasks]

    def keyed() -> Iterator[tuple[list[Sample], list[bytes]]]:
        for group in groups:
            yield group, [s.data for s in group if s.live and s.data is not None]

    timed_decoder = _TimedDecoder(decoder, stats)
    t0 = time.perf_counter()
    for group, dev in prefetched(timed_decoder, keyed(), cpu_decode):
        stats.seconds["wait_decode"] += time.perf_counter() - t0
        for where, count in (("device", dev.gpu), ("cpu", dev.cpu)):
            if count:
                stats.decoded[where] = stats.decoded.get(where, 0) + count
        yield group, dev
        t0 = time.perf_counter()


class _TimedDecoder:
    """A device decoder whose calls are timed as the ``device_decode`` stage (CPU fallback included)."""

    def __init__(self, decoder: Any, stats: TaskStats) -> None:
        self.decoder = decoder
        self.stats = stats

    def decode(self, datas: Any, cpu_decode: Any = None) -> Any:
        t0 = time.perf_counter()
        try:
            return self.decoder.decode(datas, cpu_decode)
        finally:
            seconds = self.stats.seconds
            seconds["device_decode"] = seconds.get("device_decode", 0.0) + time.perf_counter() - t0


def infer_device(
    pairs: Iterable[tuple[list[Sample], Any]],
    session: Session,
    stats: TaskStats,
    progress: Callable[[int], None],
    stopping: Callable[[], bool],
) -> Iterator[Sample]:
    for group, dev in pairs:
        if stopping():
            raise Stop()
        live = [s for s in group if s.live]
        for s, res in zip(live, dev.results, strict=True):
            if isinstance(res, ImageError):
                s.fail(res, stats)
        if dev.rows:
            t0 = time.perf_counter()
            logits = session.infer_device(dev)
            stats.seconds["infer"] += time.perf_counter() - t0
            idx, prob = topk(logits)
            for k, i in enumerate(dev.rows):
                width, height = dev.results[i]
                live[i].predict(idx[k], prob[k], width, height)
            stats.batches += 1
        progress(len(dev.rows))
        yield from group
