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
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends.base import Session
from ..backends.prefetch import prefetched
from ..errors import ImageError
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


class DecodePool:
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


def timed(
    fn: Callable[[bytes, Preprocess, int], Any], data: bytes, pp: Preprocess, max_pixels: int
) -> tuple[Any, float]:
    """``fn(data, pp, max_pixels)`` or the ImageError it raised, and the seconds it took."""
    t0 = time.perf_counter()
    try:
        result = fn(data, pp, max_pixels)
    except ImageError as exc:
        result = exc
    except Exception as exc:  # decode promises ImageError only; never let a bug kill the unit
        result = ImageError("decode", f"{type(exc).__name__}: {exc}")
    return result, time.perf_counter() - t0


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
    pending: collections.deque[tuple[Sample, cf.Future | None]] = collections.deque()
    source = iter(samples)

    def fill() -> None:
        while len(pending) < window:
            s = next(source, None)
            if s is None:
                return
            fut = pool.submit(timed, decode_pixels, s.data, pp, max_pixels) if s.live else None
            pending.append((s, fut))

    fill()
    while pending:
        sample, fut = pending.popleft()
        if fut is not None:
            t0 = time.perf_counter()
            try:
                result, seconds = fut.result(timeout=timeout)
                stats.seconds["decode"] += seconds
            except cf.TimeoutError:
                result = ImageError("timeout", f"decoding took longer than {timeout:g} s")
                pool.replace()  # the stuck thread is abandoned; the rest go on in a fresh pool
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
        futures = [pool.submit(timed, decode, d, pp, max_pixels) for d in datas]
        results: list[Decoded | ImageError] = []
        for fut in futures:
            try:
                result, seconds = fut.result(timeout=timeout)
                stats.seconds["decode"] += seconds
            except cf.TimeoutError:
                result = ImageError("timeout", f"decoding took longer than {timeout:g} s")
                pool.replace()  # the stuck thread is abandoned; the rest go on in a fresh pool
            results.append(result)
        return results

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
