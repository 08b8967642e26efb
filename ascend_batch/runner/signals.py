"""Signals that arrive before the supervisor takes them over."""

from __future__ import annotations

import signal
import threading
from typing import Any


class EarlyDrain:
    """Remembers a SIGUSR1 that arrives before the supervisor runs (Slurm's warning signal can come
    while the job is still listing), so it is honoured instead of killing the process."""

    received = threading.Event()

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        cls.received.set()


def install_early_drain() -> None:
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, EarlyDrain.handler)
