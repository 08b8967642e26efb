"""A test backend plugin (``crashy_backend:CrashyBackend``): onnxruntime, except that the worker
process dies with SIGSEGV whenever a batch holds a pure-magenta image, as a buggy native runtime
would. Used to prove that poison images are isolated by bisection. The other backends here fail in
other ways on demand: dying or stopping (SIGSTOP) on every batch or while opening, failing, slow."""

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


class FailingSession(OnnxSession):
    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("device lost (injected): every batch fails")


class FailingBackend(OnnxBackend):
    """The model loads, then every batch fails with the same runtime error, whatever the images (a
    device fallen off the bus, a broken driver)."""

    name = "failing"

    def open(self, device, model, *, batch_size, threads):  # type: ignore[no-untyped-def]
        return FailingSession(device, model, batch_size=batch_size, threads=threads)


class DyingSession(OnnxSession):
    def infer(self, batch: np.ndarray) -> np.ndarray:
        os.kill(os.getpid(), signal.SIGSEGV)
        return super().infer(batch)


class DyingBackend(OnnxBackend):
    """The model loads, then the process dies on every batch, whatever the images."""

    name = "dying"

    def open(self, device, model, *, batch_size, threads):  # type: ignore[no-untyped-def]
        return DyingSession(device, model, batch_size=batch_size, threads=threads)


def _poison_jpeg_decoder() -> None:
    """Make Pillow's JPEG decoder crash the process (SIGSEGV) on a JPEG whose comment is b"poison",
    as a native decoder bug on a crafted file would."""
    from PIL import JpegImagePlugin

    cls = JpegImagePlugin.JpegImageFile
    if getattr(cls, "_poisoned", False):
        return
    original = cls.load

    def load(self):  # type: ignore[no-untyped-def]
        if self.info.get("comment") == b"poison":
            os.kill(os.getpid(), signal.SIGSEGV)
        return original(self)

    cls.load = load  # type: ignore[method-assign]
    cls._poisoned = True  # type: ignore[attr-defined]


class PoisonDecodeBackend(OnnxBackend):
    """onnxruntime whose model takes 1.5 s to load, in a process whose JPEG decoder dies on a poison
    file: the first unit decodes (and dies) while the model is still loading."""

    name = "poison-decode"

    def __init__(self, options=None) -> None:  # type: ignore[no-untyped-def]
        _poison_jpeg_decoder()

    def open(self, device, model, *, batch_size, threads):  # type: ignore[no-untyped-def]
        time.sleep(1.5)
        return OnnxSession(device, model, batch_size=batch_size, threads=threads)


class _ArenaFull:
    """An onnxruntime session whose every run fails the way its memory arena does when the machine
    has no memory left for a batch."""

    def __init__(self, sess) -> None:  # type: ignore[no-untyped-def]
        self._sess = sess

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._sess, name)

    def run(self, *args, **kw):  # type: ignore[no-untyped-def]
        raise RuntimeError(
            "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
            "Name:'conv' Status Message: BFCArena::AllocateRawInternal Failed to allocate memory for requested "
            "buffer of size 1073741824"
        )


class ArenaFullBackend(OnnxBackend):
    """onnxruntime on a machine whose memory is exhausted: every inference fails to allocate."""

    name = "arena-full"

    def open(self, device, model, *, batch_size, threads):  # type: ignore[no-untyped-def]
        session = OnnxSession(device, model, batch_size=batch_size, threads=threads)
        session._sess = _ArenaFull(session._sess)
        return session


def _stop_self() -> None:
    """Stop this process (SIGSTOP), as a worker stuck in a device call or a hung NFS read is: alive,
    silent, deaf to SIGTERM."""
    os.kill(os.getpid(), signal.SIGSTOP)


class HangOnceSession(OnnxSession):
    def infer(self, batch: np.ndarray) -> np.ndarray:
        marker = os.environ.get("ASCEND_BATCH_TEST_HANG_MARKER")
        if marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                _stop_self()
        return super().infer(batch)


class HangOnceBackend(OnnxBackend):
    """onnxruntime, except that the first batch of the whole job (over every worker, decided by creating
    the file ``$ASCEND_BATCH_TEST_HANG_MARKER``) stops its worker with SIGSTOP."""

    name = "hang-once"

    def open(self, device, model, *, batch_size, threads):  # type: ignore[no-untyped-def]
        return HangOnceSession(device, model, batch_size=batch_size, threads=threads)


class HangingSession(OnnxSession):
    def infer(self, batch: np.ndarray) -> np.ndarray:
        _stop_self()
        return super().infer(batch)


class HangingBackend(OnnxBackend):
    """The model loads, then the worker stops (SIGSTOP) on every batch, whatever the images."""

    name = "hanging"

    def open(self, device, model, *, batch_size, threads):  # type: ignore[no-untyped-def]
        return HangingSession(device, model, batch_size=batch_size, threads=threads)


class HangsOnOpenBackend(OnnxBackend):
    """The worker stops (SIGSTOP) while opening its session, as a runtime hanging in its initialisation."""

    name = "hangs-on-open"

    def open(self, device, model, *, batch_size, threads):  # type: ignore[no-untyped-def]
        _stop_self()
        return super().open(device, model, batch_size=batch_size, threads=threads)


class SlowDecodeBackend(OnnxBackend):
    """onnxruntime in a process whose JPEG decoder takes 0.7 s per file: with a shorter
    dataset.decode_timeout every image becomes a 'timeout' row, and no batch is ever inferred."""

    name = "slow-decode"

    def __init__(self, options=None) -> None:  # type: ignore[no-untyped-def]
        from PIL import JpegImagePlugin

        cls = JpegImagePlugin.JpegImageFile
        if getattr(cls, "_slowed", False):
            return
        original = cls.load

        def load(self):  # type: ignore[no-untyped-def]
            time.sleep(0.7)
            return original(self)

        cls.load = load  # type: ignore[method-assign]
        cls._slowed = True  # type: ignore[attr-defined]
