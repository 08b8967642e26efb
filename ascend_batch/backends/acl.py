"""pyACL backend: Ascend NPUs through CANN's Python API (``import acl``), running ATC ``.om`` models.

One session per worker process, everything created inside that process (ACL does not survive
``fork``). A session walks the CANN inference sequence once::

    acl.init -> rt.set_device -> rt.create_context -> rt.create_stream -> mdl.create_desc
    -> mdl.load_from_file -> mdl.get_desc -> rt.malloc (every input and output)
    -> mdl.create_dataset + create_data_buffer + mdl.add_dataset_buffer (inputs, then outputs)
    -> rt.malloc_host (output staging)

and :meth:`AclSession.close` undoes exactly what was done, in reverse order (free_host,
destroy_data_buffer, destroy_dataset, rt.free, mdl.unload, mdl.destroy_desc, rt.destroy_stream,
rt.destroy_context, rt.reset_device, acl.finalize), whether ``open`` got that far or failed half-way.
Device buffers and datasets are made once per session and reused for every batch:
``infer`` is memcpy host->device, execute, memcpy device->host.

Static-batch models run their compiled batch, padding the last one; models converted with ATC
``--dynamic_batch_size`` run the smallest gear that holds the batch (``mdl.set_dynamic_batch_size``
on the ``ascend_mbatch_shape_data`` input). Every return code is checked; a failure raises
:class:`~ascend_batch.errors.BackendError` naming the call, the code and the device.

Models compiled with static AIPP taking YUV420SP (ATC ``--insert_op_conf aipp.cfg``) take uint8 NV12
of the model's size and do colour conversion and normalisation themselves. Their sessions take the
manifest's crop as uint8 RGB (:meth:`AclSession.input_preprocess`) and convert it to NV12 on the host;
and they offer DVPP as their device decode stage (:mod:`.dvpp`): JPEGD + VPC straight into NV12 rows.

Around the session: :mod:`.acl_runtime` (constants, return codes in words, ``acl.init``/``acl.finalize``
once per process), :mod:`.acl_model` (the model's inputs and outputs, checked against the manifest) and
:mod:`.dvpp` (the DVPP decode stage).
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import BackendError, StartupError
from ..models.spec import ModelSpec
from ..preprocess import Preprocess
from .acl_model import ModelIO, aipp_preprocess, check_input, read_model_io
from .acl_runtime import (
    ACL_DEVICE,
    ACL_HOST,
    ACL_MEM_MALLOC_HUGE_FIRST,
    ACL_MEMCPY_DEVICE_TO_DEVICE,
    ACL_MEMCPY_DEVICE_TO_HOST,
    ACL_MEMCPY_HOST_TO_DEVICE,
    ACL_PROCESS,
    ACL_SUCCESS,
    ERROR_NAMES,
    check_call,
    describe,
    import_acl,
    value_of,
)
from .base import BackendFeatures, Device, SessionBase, SessionFeatures
from .dvpp import DvppDecoder, rgb_to_nv12

__all__ = ["ACL_PROCESS", "ERROR_NAMES", "AclBackend", "AclSession", "check_input", "describe"]


class AclSession(SessionBase):
    """A model loaded on one NPU, with its buffers; see the module docstring."""

    def __init__(
        self, device: Device, model: ModelSpec, *, batch_size: int, threads: int = 0, execute: str = "async"
    ) -> None:
        if device.kind != "npu":
            raise StartupError(f"device {device}: the acl backend runs on NPUs ('npu:N' or an index)")
        if execute not in ("async", "sync"):
            raise ValueError(f"execute must be 'async' or 'sync', got {execute!r}")
        self.device = device
        self.model = model
        self._async = execute == "async"
        self._undo: list[tuple[str, Callable[[], Any]]] = []
        self._ctx: int | None = None
        self._closed = False
        self._lock = threading.RLock()
        self._gear: int | None = None
        self._decoder: Any = None
        self._acl = import_acl()
        ACL_PROCESS.register(self)
        try:
            self._open(model, batch_size)
        except BaseException as exc:
            problems = self._release()
            ACL_PROCESS.unregister(self)
            self._closed = True
            if problems and isinstance(exc, StartupError):
                raise type(exc)(f"{exc}; then, while releasing: {'; '.join(problems)}") from exc
            raise

    # -- helpers (also the DVPP stage's) --
    @property
    def acl(self) -> Any:
        return self._acl

    def check(self, call: str, ret: int) -> None:
        check_call(self.device, call, ret)

    def value(self, call: str, result: tuple[Any, int]) -> Any:
        return value_of(self.device, call, result)

    def handle(self, call: str, handle: int) -> int:
        if not handle:
            raise BackendError(f"device {self.device}: {call} returned a null handle (out of host memory?)")
        return handle

    def use_context(self) -> None:
        """Make this session's context current in the calling thread (pyACL's is per thread)."""
        self.check("acl.rt.set_context", self._acl.rt.set_context(self._ctx))

    def copy_in(self, dst: int, dst_max: int, data: bytes | np.ndarray) -> None:
        """Host bytes (or a contiguous array) -> device memory at ``dst`` (synchronous)."""
        acl = self._acl
        arr = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else np.ascontiguousarray(data)
        if self._numpy_ptrs:
            keep: Any = arr
            src = acl.util.numpy_to_ptr(arr)
        else:
            keep = arr.tobytes()
            src = acl.util.bytes_to_ptr(keep)
        self.check("acl.rt.memcpy", acl.rt.memcpy(dst, dst_max, src, arr.nbytes, self._h2d))
        del keep

    def _push(self, call: str, undo: Callable[[], Any]) -> None:
        self._undo.append((call, undo))

    # -- open --
    def _open(self, model: ModelSpec, batch_size: int) -> None:
        if not model.path.is_file():
            raise StartupError(f"[model.path] device {self.device}: no such model file: {model.path}")
        acl = self._acl
        index = self.device.index
        ACL_PROCESS.acquire(acl, self.device)
        self._push("acl.finalize", lambda: ACL_PROCESS.release(acl))

        self.check("acl.rt.set_device", acl.rt.set_device(index))
        self._push("acl.rt.reset_device", lambda: acl.rt.reset_device(index))
        ctx = self.value("acl.rt.create_context", acl.rt.create_context(index))
        self._ctx = ctx
        self._push("acl.rt.destroy_context", lambda: acl.rt.destroy_context(ctx))
        stream = self.value("acl.rt.create_stream", acl.rt.create_stream())
        self._push("acl.rt.destroy_stream", lambda: acl.rt.destroy_stream(stream))
        self._stream = stream
        run_mode = ACL_HOST
        if hasattr(acl.rt, "get_run_mode"):
            run_mode = self.value("acl.rt.get_run_mode", acl.rt.get_run_mode())
        on_device = run_mode == ACL_DEVICE
        self._h2d = ACL_MEMCPY_DEVICE_TO_DEVICE if on_device else ACL_MEMCPY_HOST_TO_DEVICE
        self._d2h = ACL_MEMCPY_DEVICE_TO_DEVICE if on_device else ACL_MEMCPY_DEVICE_TO_HOST

        desc = self.handle("acl.mdl.create_desc", acl.mdl.create_desc())
        self._push("acl.mdl.destroy_desc", lambda: acl.mdl.destroy_desc(desc))
        model_id = self.value("acl.mdl.load_from_file", acl.mdl.load_from_file(str(model.path)))
        self._push("acl.mdl.unload", lambda: acl.mdl.unload(model_id))
        self._model_id = model_id
        self.check("acl.mdl.get_desc", acl.mdl.get_desc(desc, model_id))

        io = read_model_io(acl, desc, model, batch_size, self.device, model_id)
        self._io: ModelIO = io
        # an AIPP model decodes on DVPP where this pyACL has acl.media
        self.features = SessionFeatures(device_decode=io.aipp and hasattr(acl, "media"))
        self.max_batch = io.max_batch
        self.input_shape: tuple[int, ...] = io.input_shape
        self.num_classes = io.num_classes

        # device buffers for every input and output, once
        in_ptrs = [self._malloc(acl, size) for size in io.in_sizes]
        out_ptrs = [self._malloc(acl, size) for size in io.out_sizes]
        self._in_ds = self._dataset(acl, in_ptrs, io.in_sizes)
        self._out_ds = self._dataset(acl, out_ptrs, io.out_sizes)
        self._in_ptr, self._in_size = in_ptrs[io.in_index], io.in_sizes[io.in_index]
        self._out_ptr, self._out_size = out_ptrs[0], io.out_sizes[0]
        host = self.value("acl.rt.malloc_host", acl.rt.malloc_host(self._out_size))
        self._push("acl.rt.free_host", lambda: acl.rt.free_host(host))
        self._host_out = host

        # CANN >= 6 replaced numpy_to_ptr/ptr_to_numpy by bytes_to_ptr/ptr_to_bytes
        self._numpy_ptrs = hasattr(acl.util, "numpy_to_ptr") and hasattr(acl.util, "ptr_to_numpy")
        if not self._numpy_ptrs and not (hasattr(acl.util, "bytes_to_ptr") and hasattr(acl.util, "ptr_to_bytes")):
            raise StartupError("this pyACL has neither acl.util.numpy_to_ptr nor acl.util.bytes_to_ptr")

    def _malloc(self, acl: Any, size: int) -> int:
        ptr = self.value("acl.rt.malloc", acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST))
        self._push("acl.rt.free", lambda: acl.rt.free(ptr))
        return int(ptr)

    def _dataset(self, acl: Any, ptrs: list[int], sizes: tuple[int, ...]) -> int:
        dataset = self.handle("acl.mdl.create_dataset", acl.mdl.create_dataset())
        self._push("acl.mdl.destroy_dataset", lambda: acl.mdl.destroy_dataset(dataset))
        for ptr, size in zip(ptrs, sizes, strict=True):
            buf = self.handle("acl.create_data_buffer", acl.create_data_buffer(ptr, size))
            self._push("acl.destroy_data_buffer", functools.partial(acl.destroy_data_buffer, buf))
            self.value("acl.mdl.add_dataset_buffer", acl.mdl.add_dataset_buffer(dataset, buf))
        return int(dataset)

    # -- inference --
    def input_preprocess(self, pp: Preprocess) -> Preprocess:
        """An AIPP model takes the crop as uint8 RGB (HWC): this session converts it to NV12."""
        return aipp_preprocess(pp) if self._io.aipp else pp

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``(n, C, H, W)`` (or NHWC) samples, ``1 <= n <= max_batch`` -> ``(n, classes)`` float32 logits."""
        n = int(batch.shape[0])
        if self._closed:
            raise BackendError(f"device {self.device}: acl session is closed")
        if not 1 <= n <= self.max_batch or tuple(batch.shape[1:]) != self.input_shape[1:]:
            raise BackendError(
                f"device {self.device}: batch of shape {tuple(batch.shape)}; this session takes "
                f"(1..{self.max_batch}, {', '.join(map(str, self.input_shape[1:]))})"
            )
        data = np.ascontiguousarray(batch, dtype=self._io.in_dtype)
        if self._io.aipp:  # the crops as NV12, as DVPP would have written them
            data = np.stack([rgb_to_nv12(x) for x in data])
        with self._lock:
            return self._guarded(n, lambda: self.copy_in(self._in_ptr, self._in_size, data))

    def device_decoder(self, max_pixels: int, max_batch: int) -> DvppDecoder | None:
        """The DVPP decode stage (AIPP models only), made once and released with the session; None (CPU
        decode from then on) where DVPP cannot be set up on this device."""
        if not self.features.device_decode or self._closed:
            return None
        with self._lock:
            if self._decoder is None:
                self.use_context()
                try:
                    decoder = DvppDecoder(self, self.model.preprocess, min(max_batch, self.max_batch), max_pixels)
                except BackendError as exc:
                    print(
                        f"ascend-batch worker {self.device}: no DVPP decode, decoding on the CPU: {exc}",
                        file=sys.stderr,
                    )
                    self.features = SessionFeatures(device_decode=False)
                    return None
                self._push("the DVPP decoder", decoder.close_checked)
                self._decoder = decoder
        return self._decoder

    def infer_device(self, batch: Any) -> np.ndarray:
        """Logits of a :class:`~.dvpp.DvppBatch`: its staging rows are copied into the model's input
        on the device, then the model runs."""
        n = len(batch.rows)
        if not 1 <= n <= self.max_batch:
            raise BackendError(f"device {self.device}: device batch of {n}, expected 1..{self.max_batch}")
        decoder = self._decoder
        assert decoder is not None
        row = self._io.in_row
        base = decoder.staging[batch.staging]

        def stage() -> None:
            for k, src_row in enumerate(batch.staging_rows):
                src = base + src_row * row
                ret = self._acl.rt.memcpy(
                    self._in_ptr + k * row, self._in_size - k * row, src, row, ACL_MEMCPY_DEVICE_TO_DEVICE
                )
                self.check("acl.rt.memcpy", ret)

        with self._lock:
            return self._guarded(n, stage)

    def _guarded(self, n: int, stage: Callable[[], None]) -> np.ndarray:
        try:
            return self._run(self._acl, n, stage)
        except BackendError:
            self._gear = None  # set the gear again next time
            raise

    def _run(self, acl: Any, n: int, stage: Callable[[], None]) -> np.ndarray:
        self.use_context()
        io = self._io
        if io.gears:
            gear = next(g for g in io.gears if g >= n)
            if gear != self._gear:
                ret = acl.mdl.set_dynamic_batch_size(self._model_id, self._in_ds, io.dyn_index, gear)
                self.check("acl.mdl.set_dynamic_batch_size", ret)
                self._gear = gear
        # rows n.. of a padded (static) or geared (dynamic) batch keep stale data: computed, never returned
        stage()
        if self._async:
            self.check(
                "acl.mdl.execute_async",
                acl.mdl.execute_async(self._model_id, self._in_ds, self._out_ds, self._stream),
            )
            self.check("acl.rt.synchronize_stream", acl.rt.synchronize_stream(self._stream))
        else:
            self.check("acl.mdl.execute", acl.mdl.execute(self._model_id, self._in_ds, self._out_ds))
        count = n * io.out_row
        self.check("acl.rt.memcpy", acl.rt.memcpy(self._host_out, self._out_size, self._out_ptr, count, self._d2h))
        if self._numpy_ptrs:
            raw = np.array(acl.util.ptr_to_numpy(self._host_out, (count,), np.dtype(np.uint8).num), copy=True)
        else:
            raw = np.frombuffer(acl.util.ptr_to_bytes(self._host_out, count), dtype=np.uint8)
        return raw.view(io.out_dtype).astype(np.float32).reshape(n, self.num_classes)

    # -- release --
    def _release(self) -> list[str]:
        """Undo everything done so far, newest first; keep going past failures and return them."""
        with self._lock:
            undo, self._undo = self._undo, []
        problems: list[str] = []
        if self._ctx is not None and any(call != "acl.finalize" for call, _ in undo):
            ret = self._acl.rt.set_context(self._ctx)
            if ret != ACL_SUCCESS:
                problems.append(describe("acl.rt.set_context", ret))
        for call, fn in reversed(undo):
            try:
                ret = fn()
            except Exception as exc:
                problems.append(f"{call} raised {type(exc).__name__}: {exc}")
                continue
            if ret not in (ACL_SUCCESS, None):
                problems.append(describe(call, int(ret)))
        return problems

    def close(self) -> None:
        """Release everything, in reverse order. Idempotent; safe after a failed ``open``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        problems = self._release()
        ACL_PROCESS.unregister(self)
        if problems:
            raise BackendError(f"device {self.device}: releasing the acl session: {'; '.join(problems)}")

    def __enter__(self) -> AclSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AclBackend:
    """``runtime.backend = "acl"``. ``execute="sync"`` uses ``acl.mdl.execute`` instead of
    ``execute_async`` + ``synchronize_stream``."""

    name = "acl"
    # contexts are bound to the opening thread: opened on first use; AIPP models decode on DVPP
    features = BackendFeatures(device_decode=True)

    def __init__(self, *, execute: str = "async") -> None:
        self.execute = execute

    def open(self, device: Device, model: ModelSpec, *, batch_size: int, threads: int) -> AclSession:
        return AclSession(device, model, batch_size=batch_size, threads=threads, execute=self.execute)
