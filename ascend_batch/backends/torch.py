"""PyTorch backend: ``cpu``, ``cuda:N`` (NVIDIA) and ``npu:N`` (Ascend, through ``torch_npu``).

Imported only when a manifest selects ``runtime.backend = "torch"``; torch is the optional extra
``pip install 'ascend-batch[torch]'``. Options, devices and model loading (torchscript, torch-export,
state-dict) are in :mod:`.torch_setup`; this module is the session.

Precision (:class:`TorchOptions`): fp16 on cuda/npu, fp32 on cpu by default; bf16 on request. On CUDA
the model and its input are channels_last; each batch goes numpy -> a pinned host buffer (reused) ->
device on a copy stream (non-blocking) -> compute stream -> pinned output buffer. Two buffer slots let
the caller keep one batch in flight (:meth:`TorchSession.submit`) while it prepares the next, so H2D,
compute and D2H of neighbouring batches overlap with each other and with decoding.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    import torch
except ImportError as _exc:  # pragma: no cover - exercised only without torch
    raise ImportError(
        f"the torch backend needs PyTorch ({_exc}); install it with pip install 'ascend-batch[torch]'"
    ) from _exc

from ..errors import BackendError, StartupError
from ..models.spec import ModelSpec
from .base import BackendFeatures, Device, SessionBase, SessionFeatures
from .torch_setup import (
    ENV_PRECISION,
    PRECISIONS,
    TorchOptions,
    first_line,
    load_model,
    logits_of,
    torch_device,
)

__all__ = ["Pending", "TorchBackend", "TorchOptions", "TorchSession", "load_model", "torch_device"]


# --------------------------------------------------------------------------- session


@dataclass
class _Slot:
    """One pinned host input/output pair with its device input, reused batch after batch."""

    host_in: torch.Tensor
    dev_in: torch.Tensor
    host_out: torch.Tensor
    copied: Any  # torch.cuda.Event: H2D finished
    done: Any  # torch.cuda.Event: D2H of the logits finished
    busy: bool = False


class Pending:
    """A submitted batch; :meth:`result` waits for its logits ``(n, classes)`` float32."""

    def __init__(self, session: TorchSession, n: int, slot: _Slot | None, logits: np.ndarray | None) -> None:
        self._session = session
        self._n = n
        self._slot = slot
        self._logits = logits

    def result(self) -> np.ndarray:
        if self._logits is None:
            slot = self._slot
            assert slot is not None
            try:
                slot.done.synchronize()
            except RuntimeError as exc:
                raise BackendError(f"device {self._session.device}: torch inference failed: {exc}") from exc
            self._logits = slot.host_out[: self._n].numpy().copy()
            slot.busy = False
            self._slot = None
        return self._logits


class TorchSession(SessionBase):
    """One model on one device. ``infer`` is ``submit(batch).result()``; ``submit`` copies the batch
    before it returns, so the caller may refill its array at once and keep up to two batches in flight
    on CUDA (one being computed while the next is copied in)."""

    def __init__(
        self, device: Device, model: ModelSpec, *, batch_size: int, threads: int, options: TorchOptions
    ) -> None:
        self.device = device
        self.features = SessionFeatures()  # device_decode: decided in _open
        self.model = model
        self.options = options
        self._net: torch.nn.Module | None = None
        self._slots: list[_Slot] = []
        self._next_slot = 0
        self._copy_stream: Any = None
        self._compute_stream: Any = None
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._open(batch_size, threads)
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- open

    def _open(self, batch_size: int, threads: int) -> None:
        device, options = self.device, self.options
        if batch_size < 1:
            raise StartupError(f"[runtime.batch_size] must be >= 1, got {batch_size}")
        self.tdevice = torch_device(device)
        if device.kind == "cpu" and threads > 0:
            torch.set_num_threads(threads)
        self.dtype = options.dtype_for(device)
        pp = self.model.preprocess
        self.max_batch = batch_size
        self.input_shape: tuple[int, ...] = pp.input_shape(batch_size)
        self._np_dtype = pp.numpy_dtype
        self._channels_last = options.channels_last and device.kind != "cpu" and pp.layout == "NCHW"
        self._pad = options.compile  # static shapes for compiled graphs

        net = load_model(self.model)
        from ..models.lite0_torch import EfficientNetLite0

        if isinstance(net, EfficientNetLite0):  # the built-in module folds BatchNorm into the convolutions
            net = net.fuse()
        if device.kind == "cuda":
            torch.cuda.set_device(self.tdevice)
            torch.backends.cudnn.benchmark = True
        elif device.kind == "npu":
            torch.npu.set_device(self.tdevice)  # type: ignore[attr-defined]
        try:
            net = net.to(self.tdevice)
            if self.dtype != torch.float32:
                net = net.to(self.dtype)
            if self._channels_last:
                net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        except RuntimeError as exc:
            raise StartupError(f"device {device}: cannot move the model there: {first_line(exc)}") from exc
        if options.compile:
            mode = "reduce-overhead" if device.kind == "cuda" else "default"
            net = torch.compile(net, mode=mode, dynamic=False)  # type: ignore[assignment]
        self._net = net

        if device.kind == "cuda":
            from . import gpu_decode

            # declared exactly: device_decoder() returns a decoder when this is true, None when false
            self.features = SessionFeatures(device_decode=gpu_decode.supports(pp) and gpu_decode.available())
            self._copy_stream = torch.cuda.Stream(self.tdevice)
            self._compute_stream = torch.cuda.Stream(self.tdevice)
            for _ in range(2):
                self._slots.append(self._new_slot())
        self._warm_up()

    def _new_slot(self) -> _Slot:
        shape, classes = self.input_shape, self.model.num_classes
        np_to_torch = torch.from_numpy(np.empty(0, dtype=self._np_dtype)).dtype
        return _Slot(
            host_in=torch.empty(shape, dtype=np_to_torch, pin_memory=True),
            dev_in=torch.empty(shape, dtype=np_to_torch, device=self.tdevice),
            host_out=torch.empty((shape[0], classes), dtype=torch.float32, pin_memory=True),
            copied=torch.cuda.Event(),
            done=torch.cuda.Event(),
        )

    def _warm_up(self) -> None:
        """Run one batch of zeros: checks the model takes the preprocessing's input and gives one row of
        ``num_classes`` logits per sample; on CUDA also picks the cuDNN algorithms for the full batch."""
        n = 1 if self.device.kind == "cpu" else self.max_batch
        zeros = np.zeros((n, *self.input_shape[1:]), dtype=self._np_dtype)
        try:
            out = self._forward_numpy(zeros) if not self._slots else self.submit(zeros).result()
        except (BackendError, RuntimeError) as exc:
            hint = ""
            if self.dtype != torch.float32:
                precision = {v: k for k, v in PRECISIONS.items()}[self.dtype]
                hint = f" (it ran in {precision}: try {ENV_PRECISION}=fp32)"
            raise StartupError(
                f"device {self.device}: model {self.model.path} failed on a {tuple(zeros.shape)} "
                f"{self._np_dtype} input{hint}: {first_line(exc)}"
            ) from exc
        if out.shape != (n, self.model.num_classes):
            raise StartupError(
                f"model {self.model.path} returns shape {tuple(out.shape)} for {n} input(s), but there are "
                f"{self.model.num_classes} labels (check model.labels)"
            )

    # ---------------------------------------------------------------- run

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point() and x.dtype != self.dtype:
            x = x.to(self.dtype)
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        assert self._net is not None, "session is closed"
        with torch.inference_mode():
            return logits_of(self._net(self._prepare(x))).float()

    def _forward_numpy(self, batch: np.ndarray) -> np.ndarray:
        """The synchronous path (cpu, npu)."""
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if self.device.kind != "cpu":
            x = x.to(self.tdevice)
        return self._run(x).cpu().numpy().reshape(x.shape[0], -1)

    def _check(self, batch: np.ndarray) -> int:
        if self._closed:
            raise BackendError(f"device {self.device}: the torch session is closed")
        n = int(batch.shape[0])
        if not 1 <= n <= self.max_batch:
            raise BackendError(f"device {self.device}: batch of {n}, expected 1..{self.max_batch}")
        if tuple(batch.shape[1:]) != tuple(self.input_shape[1:]):
            raise BackendError(
                f"device {self.device}: batch shaped {tuple(batch.shape)}, expected (n, *{self.input_shape[1:]})"
            )
        return n

    def submit(self, batch: np.ndarray) -> Pending:
        """Start inference on ``batch`` (``1 <= n <= max_batch``); the array is copied before this
        returns. At most two batches may be pending at once; the call blocks until a slot is free."""
        n = self._check(batch)
        if not self._slots:  # cpu, npu: synchronous
            padded = self._padded(batch)
            try:
                logits = self._forward_numpy(padded)[:n]
            except RuntimeError as exc:
                raise BackendError(f"device {self.device}: torch inference failed: {first_line(exc)}") from exc
            return Pending(self, n, None, logits)
        slot = self._acquire()
        with self._freed_on_error(slot):
            slot.done.synchronize()  # the slot's previous batch is fully out of both buffers
            m = self.max_batch if self._pad else n
            slot.host_in[:n].copy_(torch.from_numpy(np.ascontiguousarray(batch, dtype=self._np_dtype)))
            if m > n:
                slot.host_in[n:m].zero_()
            with torch.cuda.stream(self._copy_stream):
                slot.dev_in[:m].copy_(slot.host_in[:m], non_blocking=True)
                slot.copied.record(self._copy_stream)
            self._compute(slot, slot.dev_in[:m], slot.copied)
        return Pending(self, n, slot, None)

    def submit_tensor(self, x: torch.Tensor, ready: Any = None) -> Pending:
        """Start inference on a batch already on this device (GPU decode). ``ready`` is a CUDA event
        recorded on the stream that produced ``x``; the compute stream waits for it."""
        if not self._slots:
            return Pending(self, int(x.shape[0]), None, self._run(x.to(self.tdevice)).cpu().numpy())
        n = int(x.shape[0])
        if not 1 <= n <= self.max_batch:
            raise BackendError(f"device {self.device}: batch of {n}, expected 1..{self.max_batch}")
        if x.device != self.tdevice:
            raise BackendError(f"device {self.device}: the batch is on {x.device}")
        slot = self._acquire()
        with self._freed_on_error(slot):
            slot.done.synchronize()
            x.record_stream(self._compute_stream)  # x comes from the decoder stream's memory pool
            if self._pad and n < self.max_batch:
                with torch.cuda.stream(self._compute_stream):
                    if ready is not None:
                        self._compute_stream.wait_event(ready)
                    slot.dev_in[:n].copy_(x)
                    slot.dev_in[n:].zero_()
                x, ready = slot.dev_in, None
            self._compute(slot, x, ready)
        return Pending(self, n, slot, None)

    @contextlib.contextmanager
    def _freed_on_error(self, slot: _Slot) -> Iterator[None]:
        """Give ``slot`` back if starting its batch fails; CUDA errors become a BackendError."""
        try:
            yield
        except BackendError:
            slot.busy = False
            raise
        except RuntimeError as exc:
            slot.busy = False
            raise _cuda_error(self.device, exc) from exc

    def _acquire(self) -> _Slot:
        with self._lock:
            slot = self._slots[self._next_slot]
            if slot.busy:
                raise BackendError("more than two torch batches in flight: call result() on the older one first")
            self._next_slot = (self._next_slot + 1) % len(self._slots)
            slot.busy = True
            return slot

    def _compute(self, slot: _Slot, x: torch.Tensor, ready: Any) -> None:
        stream = self._compute_stream
        with torch.cuda.stream(stream):
            if ready is not None:
                stream.wait_event(ready)
            logits = self._run(x)
            rows = min(int(logits.shape[0]), slot.host_out.shape[0])
            if logits.dim() != 2 or logits.shape[1] != slot.host_out.shape[1]:
                raise BackendError(
                    f"device {self.device}: the model returned shape {tuple(logits.shape)}, "
                    f"expected (n, {slot.host_out.shape[1]})"
                )
            slot.host_out[:rows].copy_(logits[:rows], non_blocking=True)
            slot.done.record(stream)

    def _padded(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        if not self._pad or n == self.max_batch:
            return batch
        out = np.zeros((self.max_batch, *batch.shape[1:]), dtype=batch.dtype)
        out[:n] = batch
        return out

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.submit(batch).result()

    def infer_device(self, batch: Any) -> np.ndarray:
        """Logits of a :class:`~.gpu_decode.GpuBatch` already on this device (the device decode stage)."""
        return self.submit_tensor(batch.tensor, batch.ready).result()

    def device_decoder(self, max_pixels: int, max_batch: int = 64) -> Any:
        """A :class:`~.gpu_decode.GpuJpegDecoder` feeding this session, or ``None`` where GPU decode is
        not available (``features.device_decode`` is false: not CUDA, no torchvision with GPU
        ``decode_jpeg``, or an interpolation the GPU path lacks), or once the session is closed."""
        if not self.features.device_decode or self._closed:
            return None
        from . import gpu_decode

        return gpu_decode.GpuJpegDecoder(
            self.model.preprocess, self.tdevice, max_pixels=max_pixels, max_batch=min(max_batch, self.max_batch)
        )

    # ---------------------------------------------------------------- close

    def close(self) -> None:
        """Release buffers, streams and the model (reverse order); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._slots:
            for slot in self._slots:
                with contextlib.suppress(RuntimeError):  # a failed context: nothing more to wait for
                    slot.done.synchronize()
        self._slots = []
        self._copy_stream = self._compute_stream = None
        self._net = None
        if self.device.kind == "cuda" and torch.cuda.is_available():
            with contextlib.suppress(RuntimeError):
                torch.cuda.empty_cache()


def _cuda_error(device: Device, exc: RuntimeError) -> BackendError:
    text = first_line(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return BackendError(f"device {device}: out of GPU memory ({text}); lower runtime.batch_size")
    return BackendError(f"device {device}: torch inference failed: {text}")


class TorchBackend:
    name = "torch"
    # sessions on CUDA offer a device decoder; the worker asks once the session is open
    features = BackendFeatures(device_decode=True)

    def __init__(self, options: TorchOptions | Mapping[str, Any] | None = None) -> None:
        """``options``: TorchOptions, or the manifest's ``[runtime]`` torch keys as a mapping
        (``precision``, ``channels_last``, ``compile``); keys left out fall back to the env vars."""
        if isinstance(options, Mapping):
            base = TorchOptions.from_env()
            options = TorchOptions(
                precision=options.get("precision", base.precision),
                channels_last=bool(options.get("channels_last", base.channels_last)),
                compile=bool(options.get("compile", base.compile)),
            )
        self.options = options

    def open(self, device: Device, model: ModelSpec, *, batch_size: int, threads: int) -> TorchSession:
        options = self.options if self.options is not None else TorchOptions.from_env()
        return TorchSession(device, model, batch_size=batch_size, threads=threads, options=options)
