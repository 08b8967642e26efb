"""What travels between the supervisor and a worker process: its configuration, the tasks it is sent,
and the typed messages it sends back (dataclasses, pickled over the worker's own pipe)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.base import Device
from ..manifest.config import DEFAULT_STALL_TIMEOUT
from ..models.spec import ModelSpec
from ..plan import Unit


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
    device_decode: bool = True  # decode on the device when the session offers a decoder (torch + CUDA)
    # open the model before touching any image: set for a replacement after a worker died while its
    # model was loading and its first unit decoding, so that a second death says which was to blame
    open_first: bool = False
    stall_timeout: float = DEFAULT_STALL_TIMEOUT  # runtime.stall_timeout: sets how often a busy worker sends Alive
    # the folders the dataset's folder and glob entries list (dataset.paths[i]: folder): a file gone
    # because its whole folder is gone or empty is a dropped mount, not the file's error row
    source_roots: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Task:
    """Work sent to a worker: a whole unit (``depth`` 0), or the slice ``[start, stop)`` of one being
    bisected (a piece, ``depth`` halvings down)."""

    unit: Unit
    start: int
    stop: int
    depth: int = 0
    # failed tasks (raised or died) that held these images so far, the unit's tries and every halving
    # together; a task that failed before runs without device decode
    attempt: int = 0

    @property
    def piece(self) -> bool:
        return self.depth > 0

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.unit.index, self.start, self.stop)

    @property
    def size(self) -> int:
        return self.stop - self.start


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
    decoded: dict[str, int] = field(default_factory=dict)  # images decoded on "device" and on "cpu"
    batches: int = 0
    started: float = 0.0
    finished: float = 0.0

    def count_error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


class Cause(enum.Enum):
    """Why a task failed without any image being to blame for it (so far)."""

    ENVIRONMENT = "environment"  # out of memory, disk full, output read-only or not permitted
    RUNTIME = "runtime"  # the backend raised; bisection tells an image's fault from the runtime's


# -- worker -> supervisor ----------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """The session is open; from now on a death is charged to the task the worker holds."""

    max_batch: int


@dataclass(frozen=True)
class Progress:
    images: int


@dataclass(frozen=True)
class Alive:
    """The worker is busy with its task and not stuck: sent every few seconds while samples go by
    without a ``Progress`` (the supervisor's stall watchdog, :mod:`.watchdog`)."""


@dataclass(frozen=True)
class TaskDone:
    key: tuple[int, int, int]
    stats: TaskStats


@dataclass(frozen=True)
class TaskFailed:
    """The task raised; the worker exits after sending this (a fresh process takes over)."""

    key: tuple[int, int, int]
    cause: Cause
    message: str


@dataclass(frozen=True)
class StartupFailed:
    """The session could not be opened; the worker exits."""

    message: str


Message = Ready | Progress | Alive | TaskDone | TaskFailed | StartupFailed
