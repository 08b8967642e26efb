"""A test backend plugin (``crashy_backend:CrashyBackend``): onnxruntime, except that the worker
process dies with SIGSEGV whenever a batch holds a pure-magenta image, as a buggy native runtime
would. Used to prove that poison images are isolated by bisection."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from ascend_batch.backends.onnx import OnnxBackend, OnnxSession


def is_magenta(sample: np.ndarray) -> bool:
    r, g, b = sample[0], sample[1], sample[2]
    return bool(r.min() > 1.9 and g.max() < -1.9 and b.min() > 1.9)


class CrashySession(OnnxSession):
    def infer(self, batch: np.ndarray) -> np.ndarray:
        if any(is_magenta(s) for s in batch):
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().infer(batch)


class CrashyBackend(OnnxBackend):
    name = "crashy"

    def open(self, device, model, *, batch_size, threads):  # type: ignore[no-untyped-def]
        return CrashySession(device, model, batch_size=batch_size, threads=threads)


class DiesOnOpenBackend(OnnxBackend):
    """The worker process dies while opening its session, before it can report anything (as a
    runtime that aborts in its initialisation would)."""

    name = "dies-on-open"

    def open(self, device, model, *, batch_size, threads):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGKILL)


class SlowSession(OnnxSession):
    def infer(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(0.1)
        return super().infer(batch)


class SlowBackend(OnnxBackend):
    """onnxruntime with 0.1 s more per batch: a run that is certainly still going a moment later."""

    name = "slow"

    def open(self, device, model, *, batch_size, threads):  # type: ignore[no-untyped-def]
        return SlowSession(device, model, batch_size=batch_size, threads=threads)
