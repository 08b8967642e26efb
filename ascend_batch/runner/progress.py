"""Progress for people (a tqdm bar with img/s, ETA and per-device counts) and for cron/Slurm logs
(a plain line every ``interval`` seconds when stdout is not a terminal or ``--no-progress``)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


class Progress:
    def __init__(
        self,
        total_images: int,
        done_images: int,
        total_units: int,
        done_units: int,
        *,
        bar: bool,
        interval: float = 30.0,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.total_units = total_units
        self.done_units = done_units
        self.per_device: dict[str, int] = {}
        self.interval = interval
        self._start = time.monotonic()
        self._last_log = self._start
        self._run_images = 0
        self.total_images = total_images
        self.images = done_images
        self._bar: tqdm | None = None
        if bar:
            self._bar = tqdm(
                total=total_images,
                initial=done_images,
                unit="img",
                desc="classifying",
                file=self.stream,
                dynamic_ncols=True,
                smoothing=0.1,
            )

    def advance(self, device: str, n: int) -> None:
        if n <= 0:
            return
        self.images += n
        self._run_images += n
        self.per_device[device] = self.per_device.get(device, 0) + n
        if self._bar is not None:
            self._bar.update(n)

    def unit_done(self) -> None:
        self.done_units += 1

    def _devices(self) -> str:
        return " ".join(f"{d}={n}" for d, n in sorted(self.per_device.items()))

    def refresh(self) -> None:
        now = time.monotonic()
        if self._bar is not None:
            self._bar.set_postfix_str(f"units {self.done_units}/{self.total_units} {self._devices()}", refresh=False)
            return
        if now - self._last_log >= self.interval:
            self._last_log = now
            self.log(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self._run_images / elapsed
        left = self.total_images - self.images
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        return (
            f"progress: {self.images}/{self.total_images} images, units {self.done_units}/{self.total_units}, "
            f"{rate:.1f} img/s, eta {eta} [{self._devices()}]"
        )

    def log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if self._bar is not None:
            self._bar.write(f"{stamp} {message}", file=self.stream)
        else:
            print(f"{stamp} {message}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
