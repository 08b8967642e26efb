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

``acl.init``/``acl.finalize`` are once per process: sessions of one process share them, the last
``close`` finalizes, and an ``atexit`` hook closes sessions still open when the interpreter exits
(``sys.exit`` from a signal handler included).
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import BackendError, StartupError
from ..models.spec import ModelSpec
from ..preprocess import Preprocess
from .base import BackendFeatures, Device, SessionBase

# Constants from CANN's acl_base.h / acl_rt.h / acl_mdl.h (pyACL exports none of them).
ACL_SUCCESS = 0
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_REPEAT_FINALIZE = 100037
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_MEMCPY_DEVICE_TO_DEVICE = 3
# acl.rt.get_run_mode(): ACL_DEVICE = on the NPU's own CPU (host memory is device memory), ACL_HOST = a server
ACL_DEVICE, ACL_HOST = 0, 1
ACL_FORMAT_NCHW, ACL_FORMAT_NHWC = 0, 1
DYNAMIC_BATCH_INPUT = "ascend_mbatch_shape_data"

# aclDataType -> numpy (the ones an image classifier's input or output can have)
ACL_DTYPES: dict[int, np.dtype] = {
    0: np.dtype(np.float32),
    1: np.dtype(np.float16),
    2: np.dtype(np.int8),
    3: np.dtype(np.int32),
    4: np.dtype(np.uint8),
    9: np.dtype(np.int64),
}

# Names of the codes users meet most (acl_base.h, rt_error_codes.h, ge_error_codes.h).
ERROR_NAMES: dict[int, str] = {
    100000: "ACL_ERROR_INVALID_PARAM",
    100001: "ACL_ERROR_UNINITIALIZE",
    100002: "ACL_ERROR_REPEAT_INITIALIZE",
    100003: "ACL_ERROR_INVALID_FILE",
    100011: "ACL_ERROR_INVALID_MODEL_ID",
    100013: "ACL_ERROR_PARSE_MODEL",
    100014: "ACL_ERROR_READ_MODEL_FAILURE",
    100017: "ACL_ERROR_MODEL_INPUT_NOT_MATCH",
    100018: "ACL_ERROR_MODEL_OUTPUT_NOT_MATCH",
    100019: "ACL_ERROR_MODEL_NOT_DYNAMIC",
    100037: "ACL_ERROR_REPEAT_FINALIZE",
    148051: "ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED",
    200000: "ACL_ERROR_BAD_ALLOC",
    200002: "ACL_ERROR_INVALID_DEVICE",
    500000: "ACL_ERROR_INTERNAL_ERROR",
    500001: "ACL_ERROR_FAILURE",
    500002: "ACL_ERROR_GE_FAILURE",
    500003: "ACL_ERROR_RT_FAILURE",
    107000: "ACL_ERROR_RT_PARAM_INVALID",
    107001: "ACL_ERROR_RT_INVALID_DEVICEID",
    107002: "ACL_ERROR_RT_CONTEXT_NULL",
    107003: "ACL_ERROR_RT_STREAM_CONTEXT",
    107004: "ACL_ERROR_RT_MODEL_CONTEXT",
    107017: "ACL_ERROR_RT_INVALID_HANDLE",
    207001: "ACL_ERROR_RT_MEMORY_ALLOCATION",
    207004: "ACL_ERROR_RT_NO_DEVICE",
    207005: "ACL_ERROR_RT_RESOURCE_ALLOC_FAIL",
    207008: "ACL_ERROR_RT_NO_STREAM_RESOURCE",
    207018: "ACL_ERROR_RT_DEVICE_OOM",
    507011: "ACL_ERROR_RT_MODEL_EXECUTE",
    507033: "ACL_ERROR_RT_DEV_SETUP_ERROR",
    507046: "ACL_ERROR_RT_STREAM_SYNC_TIMEOUT",
    507052: "ACL_ERROR_RT_COPY_DATA",
    507899: "ACL_ERROR_RT_DRV_INTERNAL_ERROR",
    545001: "ACL_ERROR_GE_LOAD_MODEL",
}

_HINTS = {
    "acl.init": "is the CANN runtime installed and set_env.sh sourced?",
    "acl.rt.set_device": "check `npu-smi info` and ASCEND_RT_VISIBLE_DEVICES",
    "acl.rt.malloc": "out of device memory? lower runtime.batch_size or use fewer workers per NPU",
    "acl.mdl.load_from_file": "was the .om built by ATC for this chip (--soc_version) and this CANN version?",
}


def describe(call: str, ret: int) -> str:
    """``acl.rt.malloc returned 207001 (ACL_ERROR_RT_MEMORY_ALLOCATION)``."""
    name = ERROR_NAMES.get(ret)
    return f"{call} returned {ret}" + (f" ({name})" if name else "")


def _import_acl() -> Any:
    try:
        import acl
    except ImportError as exc:
        raise StartupError(
            f"backend 'acl' needs pyACL, the `acl` module of the Ascend CANN toolkit ({exc}); "
            "install CANN and `source /usr/local/Ascend/ascend-toolkit/set_env.sh` in the shell that runs "
            "the job"
        ) from exc
    return acl


class _AclProcess:
    """``acl.init``/``acl.finalize`` once per process, shared by that process's sessions."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pid = -1
        self.users = 0
        self.owned = False  # False when someone else in the process (torch_npu, ...) initialised ACL
        self.sessions: dict[int, AclSession] = {}
        self.hooked = False

    def _this_process(self) -> None:
        if self.pid != os.getpid():  # a forked child inherits none of the parent's ACL state
            self.pid, self.users, self.owned = os.getpid(), 0, False
            self.sessions = {}

    def acquire(self, acl: Any, device: Device) -> None:
        with self.lock:
            self._this_process()
            if self.users == 0:
                ret = acl.init()
                if ret == ACL_ERROR_REPEAT_INITIALIZE:
                    self.owned = False
                elif ret != ACL_SUCCESS:
                    raise BackendError(f"device {device}: {describe('acl.init', ret)}; {_HINTS['acl.init']}")
                else:
                    self.owned = True
                if not self.hooked:
                    atexit.register(self.close_all)
                    self.hooked = True
            self.users += 1

    def release(self, acl: Any) -> int:
        with self.lock:
            self.users -= 1
            if self.users > 0 or not self.owned:
                return ACL_SUCCESS
            self.owned = False
            ret = acl.finalize()
            return ACL_SUCCESS if ret == ACL_ERROR_REPEAT_FINALIZE else int(ret)

    def register(self, session: AclSession) -> None:
        with self.lock:
            self._this_process()
            self.sessions[id(session)] = session

    def unregister(self, session: AclSession) -> None:
        with self.lock:
            self.sessions.pop(id(session), None)

    def close_all(self) -> None:
        """At interpreter exit: close what is still open, newest first."""
        with self.lock:
            if self.pid != os.getpid():
                return
            sessions = list(self.sessions.values())
        for session in reversed(sessions):
            try:
                session.close()
            except Exception as exc:
                print(f"ascend-batch: {exc}", file=sys.stderr)


_PROCESS = _AclProcess()


def _dtype_name(dtype: np.dtype) -> str:
    return str(np.dtype(dtype))


def check_input(
    model: ModelSpec, dims: list[int], size: int, dtype: np.dtype | None, fmt: int | None, batch: int
) -> None:
    """Refuse a manifest whose preprocessing does not produce what the model takes.

    ``dims`` from ``acl.mdl.get_input_dims`` (batch dim -1 for dynamic batch), ``size`` the byte
    size at ``batch`` (``get_input_size_by_index``), ``dtype``/``fmt`` from
    ``get_input_data_type``/``get_input_format`` when this CANN has them (else ``None``).
    """
    pp: Preprocess = model.preprocess
    where = f"model {model.path}"
    if len(dims) != 4:
        raise StartupError(
            f"{where}: input dims {dims} are not an image batch (N,C,H,W or N,H,W,C); "
            "the acl backend runs single-input image classifiers"
        )
    if fmt == ACL_FORMAT_NCHW:
        layout = "NCHW"
    elif fmt == ACL_FORMAT_NHWC:
        layout = "NHWC"
    elif dims[1] == 3 and dims[3] != 3:
        layout = "NCHW"
    elif dims[3] == 3 and dims[1] != 3:
        layout = "NHWC"
    else:
        layout = pp.layout
    chw = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    channels, height, width = chw
    if layout != pp.layout:
        raise StartupError(
            f"[model.layout] {where} takes {layout} input {dims}, but the manifest has model.layout = "
            f"'{pp.layout}': set model.layout = '{layout}'"
        )
    if channels != 3:
        raise StartupError(f"{where} takes {channels}-channel input {dims} ({layout}); images are fed as RGB (3)")
    if (height, width) != (pp.size, pp.size):
        raise StartupError(
            f"[model.input_size] {where} takes {height}x{width} input {dims} ({layout}), "
            f"but model.input_size = {pp.size}"
            + (f": set model.input_size = {height}" if height == width else " (only square inputs)")
        )
    want = pp.numpy_dtype
    if dtype is not None and dtype != want:
        raise StartupError(
            f"[model.dtype] {where} takes {_dtype_name(dtype)} input, but model.dtype = '{pp.dtype}': "
            f"set model.dtype = '{_dtype_name(dtype)}'"
        )
    elements = batch * 3 * pp.size * pp.size
    if size != elements * want.itemsize:
        per = size / elements if elements else 0
        guess = {1.0: "uint8", 2.0: "float16", 4.0: "float32"}.get(per)
        if guess is not None and guess != pp.dtype:
            raise StartupError(
                f"[model.dtype] {where}: its input is {size} bytes for "
                f"{batch}x3x{pp.size}x{pp.size} values, i.e. {guess}, but model.dtype = '{pp.dtype}': "
                f"set model.dtype = '{guess}'"
            )
        raise StartupError(
            f"{where}: its input is {size} bytes, but the manifest's preprocessing gives "
            f"{elements * want.itemsize} ({batch}x{pp.input_shape(1)[1:]} {pp.dtype}): check "
            "model.input_size, model.layout and model.dtype (a model built with AIPP, --insert_op_conf, "
            "takes YUV/uint8 input and is not supported)"
        )


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
        self._acl = _import_acl()
        _PROCESS.register(self)
        try:
            self._open(model, batch_size)
        except BaseException as exc:
            problems = self._release()
            _PROCESS.unregister(self)
            self._closed = True
            if problems and isinstance(exc, StartupError):
                raise type(exc)(f"{exc}; then, while releasing: {'; '.join(problems)}") from exc
            raise

    # -- helpers --
    def _fail(self, call: str, ret: int) -> BackendError:
        hint = _HINTS.get(call)
        return BackendError(f"device {self.device}: {describe(call, ret)}" + (f"; {hint}" if hint else ""))

    def _check(self, call: str, ret: int) -> None:
        if ret != ACL_SUCCESS:
            raise self._fail(call, ret)

    def _value(self, call: str, result: tuple[Any, int]) -> Any:
        value, ret = result
        self._check(call, ret)
        return value

    def _dims(self, call: str, result: tuple[dict[str, Any], int]) -> list[int]:
        return [int(d) for d in self._value(call, result)["dims"]]

    def _handle(self, call: str, handle: int) -> int:
        if not handle:
            raise BackendError(f"device {self.device}: {call} returned a null handle (out of host memory?)")
        return handle

    def _push(self, call: str, undo: Callable[[], Any]) -> None:
        self._undo.append((call, undo))

    # -- open --
    def _open(self, model: ModelSpec, batch_size: int) -> None:
        if not model.path.is_file():
            raise StartupError(f"[model.path] device {self.device}: no such model file: {model.path}")
        acl = self._acl
        index = self.device.index
        _PROCESS.acquire(acl, self.device)
        self._push("acl.finalize", lambda: _PROCESS.release(acl))

        self._check("acl.rt.set_device", acl.rt.set_device(index))
        self._push("acl.rt.reset_device", lambda: acl.rt.reset_device(index))
        ctx = self._value("acl.rt.create_context", acl.rt.create_context(index))
        self._ctx = ctx
        self._push("acl.rt.destroy_context", lambda: acl.rt.destroy_context(ctx))
        stream = self._value("acl.rt.create_stream", acl.rt.create_stream())
        self._push("acl.rt.destroy_stream", lambda: acl.rt.destroy_stream(stream))
        self._stream = stream
        run_mode = ACL_HOST
        if hasattr(acl.rt, "get_run_mode"):
            run_mode = self._value("acl.rt.get_run_mode", acl.rt.get_run_mode())
        on_device = run_mode == ACL_DEVICE
        self._h2d = ACL_MEMCPY_DEVICE_TO_DEVICE if on_device else ACL_MEMCPY_HOST_TO_DEVICE
        self._d2h = ACL_MEMCPY_DEVICE_TO_DEVICE if on_device else ACL_MEMCPY_DEVICE_TO_HOST

        desc = self._handle("acl.mdl.create_desc", acl.mdl.create_desc())
        self._push("acl.mdl.destroy_desc", lambda: acl.mdl.destroy_desc(desc))
        model_id = self._value("acl.mdl.load_from_file", acl.mdl.load_from_file(str(model.path)))
        self._push("acl.mdl.unload", lambda: acl.mdl.unload(model_id))
        self._model_id = model_id
        self._check("acl.mdl.get_desc", acl.mdl.get_desc(desc, model_id))

        self._describe(acl, desc, model, batch_size)

        # device buffers for every input and output, once
        in_ptrs = [self._malloc(acl, size) for size in self._in_sizes]
        out_ptrs = [self._malloc(acl, size) for size in self._out_sizes]
        self._in_ds = self._dataset(acl, in_ptrs, self._in_sizes)
        self._out_ds = self._dataset(acl, out_ptrs, self._out_sizes)
        self._in_ptr, self._in_size = in_ptrs[self._in_index], self._in_sizes[self._in_index]
        self._out_ptr, self._out_size = out_ptrs[0], self._out_sizes[0]
        host = self._value("acl.rt.malloc_host", acl.rt.malloc_host(self._out_size))
        self._push("acl.rt.free_host", lambda: acl.rt.free_host(host))
        self._host_out = host

        # CANN >= 6 replaced numpy_to_ptr/ptr_to_numpy by bytes_to_ptr/ptr_to_bytes
        self._numpy_ptrs = hasattr(acl.util, "numpy_to_ptr") and hasattr(acl.util, "ptr_to_numpy")
        if not self._numpy_ptrs and not (hasattr(acl.util, "bytes_to_ptr") and hasattr(acl.util, "ptr_to_bytes")):
            raise StartupError("this pyACL has neither acl.util.numpy_to_ptr nor acl.util.bytes_to_ptr")

    def _malloc(self, acl: Any, size: int) -> int:
        ptr = self._value("acl.rt.malloc", acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST))
        self._push("acl.rt.free", lambda: acl.rt.free(ptr))
        return int(ptr)

    def _dataset(self, acl: Any, ptrs: list[int], sizes: list[int]) -> int:
        dataset = self._handle("acl.mdl.create_dataset", acl.mdl.create_dataset())
        self._push("acl.mdl.destroy_dataset", lambda: acl.mdl.destroy_dataset(dataset))
        for ptr, size in zip(ptrs, sizes, strict=True):
            buf = self._handle("acl.create_data_buffer", acl.create_data_buffer(ptr, size))
            self._push("acl.destroy_data_buffer", functools.partial(acl.destroy_data_buffer, buf))
            self._value("acl.mdl.add_dataset_buffer", acl.mdl.add_dataset_buffer(dataset, buf))
        return int(dataset)

    def _describe(self, acl: Any, desc: int, model: ModelSpec, batch_size: int) -> None:
        """Inputs, outputs and batch gears from the model description; check them against the manifest."""
        n_in = acl.mdl.get_num_inputs(desc)
        n_out = acl.mdl.get_num_outputs(desc)
        if n_in < 1 or n_out < 1:
            raise BackendError(f"device {self.device}: model {model.path} reports {n_in} inputs, {n_out} outputs")
        self._in_sizes = [int(acl.mdl.get_input_size_by_index(desc, i)) for i in range(n_in)]
        self._out_sizes = [int(acl.mdl.get_output_size_by_index(desc, i)) for i in range(n_out)]

        dyn_index, ret = acl.mdl.get_input_index_by_name(desc, DYNAMIC_BATCH_INPUT)
        self._dyn_index = int(dyn_index) if ret == ACL_SUCCESS else None
        self._gears: list[int] = []
        if self._dyn_index is not None:
            info = self._value("acl.mdl.get_dynamic_batch", acl.mdl.get_dynamic_batch(desc))
            count = int(info.get("batchCount", 0))
            self._gears = sorted(int(b) for b in info.get("batch", [])[:count])
            if not self._gears:
                raise StartupError(
                    f"model {model.path} has dynamic dims other than batch gears (dynamic image size "
                    "or dims); convert it with a static --input_shape or with --dynamic_batch_size"
                )
        data_inputs = [i for i in range(n_in) if i != self._dyn_index]
        if len(data_inputs) != 1:
            raise StartupError(
                f"model {model.path} has {len(data_inputs)} data inputs; the acl backend runs single-input classifiers"
            )
        self._in_index = data_inputs[0]
        dims = self._dims("acl.mdl.get_input_dims", acl.mdl.get_input_dims(desc, self._in_index))
        if self._gears:
            model_batch = self._gears[-1]
            fits = [g for g in self._gears if g >= batch_size]
            self.max_batch = fits[0] if fits else model_batch
        else:
            if dims and dims[0] <= 0:
                raise StartupError(f"model {model.path} has a dynamic batch dim {dims} but no batch gears")
            model_batch = dims[0] if dims else 1
            self.max_batch = model_batch
        in_dtype = in_fmt = None
        if hasattr(acl.mdl, "get_input_data_type"):
            code = int(acl.mdl.get_input_data_type(desc, self._in_index))
            in_dtype = ACL_DTYPES.get(code)
            if in_dtype is None and code >= 0:
                raise StartupError(f"model {model.path} takes input of aclDataType {code}, not an image type")
        if hasattr(acl.mdl, "get_input_format"):
            in_fmt = int(acl.mdl.get_input_format(desc, self._in_index))
        check_input(model, dims, self._in_sizes[self._in_index], in_dtype, in_fmt, model_batch)
        self.input_shape: tuple[int, ...] = model.preprocess.input_shape(self.max_batch)
        self._in_dtype = model.preprocess.numpy_dtype
        self._in_row = int(math.prod(self.input_shape[1:])) * self._in_dtype.itemsize

        # logits: output 0, dims from the description, never a hard-coded 1000
        out_dims = self._dims("acl.mdl.get_output_dims", acl.mdl.get_output_dims(desc, 0))
        row_bytes, rem = divmod(self._out_sizes[0], model_batch)
        from_dims = math.prod(out_dims[1:]) if len(out_dims) > 1 and all(d > 0 for d in out_dims[1:]) else None
        out_dtype: np.dtype | None = None
        if hasattr(acl.mdl, "get_output_data_type"):
            out_dtype = ACL_DTYPES.get(int(acl.mdl.get_output_data_type(desc, 0)))
        if out_dtype is None and from_dims:
            by_size: dict[int, np.dtype] = {2: np.dtype(np.float16), 4: np.dtype(np.float32)}
            out_dtype = by_size.get(row_bytes // from_dims)
        if out_dtype is None and from_dims is None:
            out_dtype = np.dtype(np.float32)
        if out_dtype is None or out_dtype.kind != "f" or out_dtype.itemsize not in (2, 4) or rem:
            raise StartupError(
                f"model {model.path}: output 0 ({out_dims}, {self._out_sizes[0]} bytes) is not "
                f"float32/float16 logits for a batch of {model_batch}"
            )
        classes = row_bytes // out_dtype.itemsize
        if from_dims is not None and from_dims != classes:
            raise StartupError(
                f"model {model.path}: output dims {out_dims} do not match its size {self._out_sizes[0]} bytes"
            )
        if classes != model.num_classes:
            raise StartupError(
                f"[model.labels] model {model.path} outputs {classes} classes, but the labels have "
                f"{model.num_classes} names: set model.labels to a file with {classes} names"
            )
        self.num_classes = classes
        self._out_dtype = out_dtype
        self._out_row = row_bytes

    # -- inference --
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
        data = np.ascontiguousarray(batch, dtype=self._in_dtype)
        acl = self._acl
        with self._lock:
            try:
                return self._run(acl, data, n)
            except BackendError:
                self._gear = None  # set the gear again next time
                raise

    def _run(self, acl: Any, data: np.ndarray, n: int) -> np.ndarray:
        self._check("acl.rt.set_context", acl.rt.set_context(self._ctx))
        if self._gears:
            gear = next(g for g in self._gears if g >= n)
            if gear != self._gear:
                ret = acl.mdl.set_dynamic_batch_size(self._model_id, self._in_ds, self._dyn_index, gear)
                self._check("acl.mdl.set_dynamic_batch_size", ret)
                self._gear = gear
        # rows n.. of a padded (static) or geared (dynamic) batch keep stale data: computed, never returned
        if self._numpy_ptrs:
            keep: Any = data
            src = acl.util.numpy_to_ptr(data)
        else:
            keep = data.tobytes()
            src = acl.util.bytes_to_ptr(keep)
        self._check("acl.rt.memcpy", acl.rt.memcpy(self._in_ptr, self._in_size, src, n * self._in_row, self._h2d))
        del keep
        if self._async:
            self._check(
                "acl.mdl.execute_async",
                acl.mdl.execute_async(self._model_id, self._in_ds, self._out_ds, self._stream),
            )
            self._check("acl.rt.synchronize_stream", acl.rt.synchronize_stream(self._stream))
        else:
            self._check("acl.mdl.execute", acl.mdl.execute(self._model_id, self._in_ds, self._out_ds))
        count = n * self._out_row
        self._check("acl.rt.memcpy", acl.rt.memcpy(self._host_out, self._out_size, self._out_ptr, count, self._d2h))
        if self._numpy_ptrs:
            raw = np.array(acl.util.ptr_to_numpy(self._host_out, (count,), np.dtype(np.uint8).num), copy=True)
        else:
            raw = np.frombuffer(acl.util.ptr_to_bytes(self._host_out, count), dtype=np.uint8)
        return raw.view(self._out_dtype).astype(np.float32).reshape(n, self.num_classes)

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
        _PROCESS.unregister(self)
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
    features = BackendFeatures()  # contexts are bound to the opening thread: opened on first use

    def __init__(self, *, execute: str = "async") -> None:
        self.execute = execute

    def open(self, device: Device, model: ModelSpec, *, batch_size: int, threads: int) -> AclSession:
        return AclSession(device, model, batch_size=batch_size, threads=threads, execute=self.execute)
