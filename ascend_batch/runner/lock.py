"""One run per job shard at a time: an ``flock`` on ``out/.lock[-shard]`` holding who owns it.

The kernel drops an ``flock`` when its holder dies, so a lock left by a killed process is stale by
construction and is simply taken over; a live holder is named (pid, host, start time).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ..errors import LockedError


class JobLock:
    def __init__(self, out: Path, shard: tuple[int, int] | None = None) -> None:
        suffix = f"-shard-{shard[0]}-of-{shard[1]}" if shard else ""
        self.path = out / f".lock{suffix}"
        self._fd: int | None = None

    def acquire(self) -> JobLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._describe(fd)
            os.close(fd)
            raise LockedError(
                f"another run is already working on {self.path.parent} ({holder}); "
                "wait for it to finish, or stop it first"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _describe(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}"
        except (OSError, ValueError):
            return "holder unknown"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JobLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
