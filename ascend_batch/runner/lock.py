"""One run per job shard at a time: an ``flock`` on ``out/.lock[-shard-k-of-K]`` holding who owns it.

The kernel drops an ``flock`` when its holder dies, so a lock left by a killed process is stale by
construction and is simply taken over; a live holder is named (pid, host, start time).

:func:`held_locks` tells, from any shell, which of a job's locks are held now and by whom (``status``):
a non-blocking *shared* ``flock`` on each existing lock file, released at once. It never creates a
lock file, and a run starting in that instant retries its own attempt briefly rather than taking the
probe for another run (:data:`ACQUIRE_RETRY_SECONDS`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..errors import LockedError
from .outdir import LOCK_PREFIX, lock_name

ACQUIRE_RETRY_SECONDS = 0.5  # a `status` probe holds a lock file for microseconds: retry past it
_LOCK_RE = re.compile(r"^" + re.escape(LOCK_PREFIX) + r"(?:-shard-(\d+)-of-(\d+))?$")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


@dataclass(frozen=True)
class LockHolder:
    """A held lock of a job: which shard (None: the whole job) and who holds it, as it recorded."""

    path: Path
    shard: tuple[int, int] | None
    pid: int | None = None
    host: str | None = None
    started: str | None = None  # local time of the holder, ISO 8601 with its UTC offset
    started_epoch: float | None = None  # seconds since the epoch (older versions: from ``started``)

    def describe(self) -> str:
        who = f"pid {self.pid} on {self.host}" if self.pid is not None else "holder not recorded yet"
        since = f", since {self.started}" if self.started else ""
        scope = f"shard {self.shard[0]}/{self.shard[1]}: " if self.shard else ""
        return f"{scope}{who}{since}"

    def covers(self, unit: int) -> bool:
        return self.shard is None or unit % self.shard[1] == self.shard[0]

    def as_dict(self) -> dict:
        return {
            "shard": list(self.shard) if self.shard else None,
            "pid": self.pid,
            "host": self.host,
            "started": self.started,
            "started_epoch": self.started_epoch,
            "lock_file": self.path.name,
        }


def _read_info(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _holder(path: Path, shard: tuple[int, int] | None, info: dict) -> LockHolder:
    pid = info.get("pid")
    started = info.get("started")
    epoch = info.get("started_epoch")
    if not isinstance(epoch, int | float) and isinstance(started, str):
        with contextlib.suppress(ValueError):  # a lock written by an earlier version
            epoch = datetime.strptime(started, _TIME_FORMAT).timestamp()
    return LockHolder(
        path,
        shard,
        pid if isinstance(pid, int) else None,
        str(info["host"]) if info.get("host") is not None else None,
        started if isinstance(started, str) else None,
        float(epoch) if isinstance(epoch, int | float) else None,
    )


def held_locks(out: Path) -> list[LockHolder]:
    """The locks of the job in ``out`` that a live process holds now (whole job and shards)."""
    try:
        names = sorted(os.listdir(out))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    held = []
    for name in names:
        m = _LOCK_RE.match(name)
        if m is None:
            continue
        shard = (int(m[1]), int(m[2])) if m[1] is not None else None
        try:
            fd = os.open(out / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # never O_CREAT
        except OSError:
            continue  # vanished (--restart), a dangling link, not readable: not a lock we can test
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(_holder(out / name, shard, _read_info(fd)))
            except OSError:
                continue  # a file system without flock: nothing can be told
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return held


class JobLock:
    def __init__(self, out: Path, shard: tuple[int, int] | None = None) -> None:
        self.path = out / lock_name(shard)
        self.shard = shard
        self._fd: int | None = None

    def acquire(self) -> JobLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + ACQUIRE_RETRY_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.02)  # perhaps a `status` probe, gone in a moment
                    continue
                holder = self._describe(fd)
                os.close(fd)
                raise LockedError(
                    f"another run is already working on {self.path.parent} ({holder}); "
                    "wait for it to finish, or stop it first"
                ) from None
        now = time.time()
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime(_TIME_FORMAT, time.localtime(now)),
            "started_epoch": round(now, 3),
            "shard": list(self.shard) if self.shard else None,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _describe(fd: int) -> str:
        info = _read_info(fd)
        if not info:
            return "holder unknown"
        return f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JobLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
