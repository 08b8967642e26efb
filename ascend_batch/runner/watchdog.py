"""Stalled workers. A worker busy with a task talks to the supervisor all the time: ``Ready`` when its
model is up, ``Progress`` after every batch, ``Alive`` every few seconds while samples go by without a
batch (failed samples ride along uninferred, so a run of decode timeouts sends no ``Progress``), then
``TaskDone`` or ``TaskFailed``. One that sends nothing for ``runtime.stall_timeout`` seconds is stuck
(SIGSTOPped, hung in a device call or in a read of a hung NFS mount): the supervisor kills it with
SIGKILL (SIGTERM does nothing to a stopped process) and handles it exactly as a worker that died
during its task, so the task is retried, bisected and its device given up by the same rules
(:mod:`.scheduler`).

The longest legitimate silence is the first task's (the model loading, ``torch.compile`` and warm-up
included, before ``Ready``), then one batch: its inference, or one decode that
``dataset.decode_timeout`` ends. The heartbeat is sent from the thread that consumes the samples,
so it stops when that thread hangs (in an inference call, a read), and never hides a stall.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from ..backends.base import Device
from .messages import Task

T = TypeVar("T")

HEARTBEAT_MAX = 5.0  # seconds between a worker's Alive messages, at most
KEY = "runtime.stall_timeout"
_SIGNAL_NAMES = {-s.value: s.name for s in signal.Signals}


def heartbeat_interval(stall_timeout: float) -> float:
    """How often a busy worker says it is alive: well inside the stall timeout."""
    return min(HEARTBEAT_MAX, stall_timeout / 4)


def heartbeats(samples: Iterable[T], beat: Callable[[], None], every: float) -> Iterator[T]:
    """``samples`` unchanged, calling ``beat`` when ``every`` seconds have passed since the last call
    (or the start) as one goes by."""
    last = time.monotonic()
    for sample in samples:
        now = time.monotonic()
        if now - last >= every:
            beat()
            last = now
        yield sample


def death_message(exitcode: int | None, stalled: float | None = None) -> str:
    """How a worker ended, as the rest of "worker on cpu:0 ...": killed by the watchdog after
    ``stalled`` seconds of silence, or its exit code or signal."""
    if stalled is not None:
        return f"sent nothing for {stalled:g} s ({KEY}) and was killed"
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        return f"killed by {_SIGNAL_NAMES.get(exitcode, f'signal {-exitcode}')}"
    return f"exited with code {exitcode}"


def stall_log(device: Device, timeout: float, task: Task | None, loading: bool) -> str:
    """The log line of a worker the watchdog kills."""
    where = f" while on unit {task.unit.index} [{task.start}, {task.stop})" if task is not None else ""
    said = f"worker {device} sent nothing for {timeout:g} s{where}"
    if loading:
        return f"{said}, its model loading ({KEY}): killed, handled as a death while starting"
    return f"{said} ({KEY}): killed, handled as a crash"


def overdue(last_heard: float, timeout: float, now: float | None = None) -> bool:
    """Whether a busy worker last heard from at ``last_heard`` (``time.monotonic()``) has stalled."""
    return (time.monotonic() if now is None else now) - last_heard > timeout
