"""Per-process state of the emulated pyACL: handles, device memory, call log, failure injection.

Everything real pyACL keeps per process lives in the one ``STATE`` object; a spawned worker gets a
fresh one. Nothing here raises for API misuse: like pyACL, the API returns non-zero codes (values
from CANN's ``acl_base.h`` and ``rt_error_codes.h``), and each misuse is recorded so tests can
assert there was none.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import functools
import itertools
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# --- return codes (acl_base.h, rt_error_codes.h, ge_error_codes.h) -----------------------------
ACL_SUCCESS = 0
ACL_ERROR_INVALID_PARAM = 100000
ACL_ERROR_UNINITIALIZE = 100001
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_INVALID_FILE = 100003
ACL_ERROR_INVALID_MODEL_ID = 100011
ACL_ERROR_PARSE_MODEL = 100013
ACL_ERROR_READ_MODEL_FAILURE = 100014
ACL_ERROR_MODEL_INPUT_NOT_MATCH = 100017
ACL_ERROR_MODEL_OUTPUT_NOT_MATCH = 100018
ACL_ERROR_MODEL_NOT_DYNAMIC = 100019
ACL_ERROR_REPEAT_FINALIZE = 100037
ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED = 148051
ACL_ERROR_INTERNAL_ERROR = 500000
ACL_ERROR_FAILURE = 500001
ACL_ERROR_RT_PARAM_INVALID = 107000
ACL_ERROR_RT_INVALID_DEVICEID = 107001
ACL_ERROR_RT_CONTEXT_NULL = 107002
ACL_ERROR_RT_STREAM_CONTEXT = 107003
ACL_ERROR_RT_MODEL_CONTEXT = 107004
ACL_ERROR_RT_INVALID_HANDLE = 107017
ACL_ERROR_RT_MEMORY_ALLOCATION = 207001
ACL_ERROR_RT_RESOURCE_ALLOC_FAIL = 207005
ACL_ERROR_RT_NO_STREAM_RESOURCE = 207008
ACL_ERROR_RT_MODEL_EXECUTE = 507011
ACL_ERROR_RT_DEV_SETUP_ERROR = 507033
ACL_ERROR_RT_STREAM_SYNC_TIMEOUT = 507046
ACL_ERROR_RT_COPY_DATA = 507052
ACL_ERROR_GE_LOAD_MODEL = 545001

# what an injected failure returns, by call (realistic codes for that call)
INJECTED_CODES = {
    "init": ACL_ERROR_FAILURE,
    "rt.set_device": ACL_ERROR_RT_DEV_SETUP_ERROR,
    "rt.create_context": ACL_ERROR_RT_RESOURCE_ALLOC_FAIL,
    "rt.create_stream": ACL_ERROR_RT_NO_STREAM_RESOURCE,
    "rt.malloc": ACL_ERROR_RT_MEMORY_ALLOCATION,
    "rt.malloc_host": ACL_ERROR_RT_MEMORY_ALLOCATION,
    "rt.memcpy": ACL_ERROR_RT_COPY_DATA,
    "rt.synchronize_stream": ACL_ERROR_RT_STREAM_SYNC_TIMEOUT,
    "mdl.load_from_file": ACL_ERROR_GE_LOAD_MODEL,
    "mdl.execute": ACL_ERROR_RT_MODEL_EXECUTE,
    "mdl.execute_async": ACL_ERROR_RT_MODEL_EXECUTE,
    "mdl.set_dynamic_batch_size": ACL_ERROR_INVALID_PARAM,
}

# enums
ACL_FLOAT, ACL_FLOAT16, ACL_INT8, ACL_INT32, ACL_UINT8, ACL_INT64 = 0, 1, 2, 3, 4, 9
ACL_FORMAT_NCHW, ACL_FORMAT_NHWC, ACL_FORMAT_ND = 0, 1, 2
ACL_MEMCPY_HOST_TO_HOST, ACL_MEMCPY_HOST_TO_DEVICE = 0, 1
ACL_MEMCPY_DEVICE_TO_HOST, ACL_MEMCPY_DEVICE_TO_DEVICE = 2, 3
ACL_DEVICE, ACL_HOST = 0, 1  # run modes

NP_OF_ACL = {
    ACL_FLOAT: np.dtype(np.float32),
    ACL_FLOAT16: np.dtype(np.float16),
    ACL_INT8: np.dtype(np.int8),
    ACL_INT32: np.dtype(np.int32),
    ACL_UINT8: np.dtype(np.uint8),
    ACL_INT64: np.dtype(np.int64),
}
ACL_OF_NP = {v: k for k, v in NP_OF_ACL.items()}
GARBAGE = 0xCD  # fresh device memory is not zeroed on a real NPU either


class Fail(Exception):
    """Raised inside a fake call to make it return ``code`` (and record the misuse)."""

    def __init__(self, code: int, why: str, *, misuse: bool = True) -> None:
        super().__init__(why)
        self.code = code
        self.why = why
        self.misuse = misuse  # False for an answer such as "no input with that name"


# --- resources ----------------------------------------------------------------------------
@dataclass
class Context:
    handle: int
    device: int
    default: bool = False  # the implicit context of rt.set_device


@dataclass
class Stream:
    handle: int
    ctx: int
    device: int
    pending: list[Callable[[], None]] = field(default_factory=list)


@dataclass
class DevMem:
    ptr: int
    device: int
    data: bytearray


@dataclass
class HostMem:
    ptr: int
    buf: Any  # a ctypes char array: real host memory, so ptr_to_numpy can view it


@dataclass
class Tensor:
    name: str
    dims: list[int]  # as get_*_dims reports them (-1 for the dynamic batch dim)
    dtype: int  # ACL data type
    fmt: int
    size: int  # bytes at the largest batch


@dataclass
class Model:
    model_id: int
    device: int
    path: str
    session: Any  # onnxruntime.InferenceSession
    inputs: list[Tensor]
    outputs: list[Tensor]
    batch: int  # static batch (0 for dynamic-batch models)
    gears: list[int]
    dyn_index: int  # index of ascend_mbatch_shape_data, or -1


@dataclass
class Desc:
    handle: int
    model: Model | None = None


@dataclass
class Dataset:
    handle: int
    buffers: list[int] = field(default_factory=list)


@dataclass
class DataBuffer:
    handle: int
    ptr: int
    size: int


@dataclass
class Call:
    name: str
    device: int | None
    ret: int | None
    injected: bool = False


# --- failure injection ---------------------------------------------------------------------
@dataclass(frozen=True)
class FailSpec:
    call: str
    nth: int
    and_later: bool
    device: int | None
    code: int | None
    once: bool = False  # once per job: the first process to reach it claims it (a file in the report dir)


def parse_fail(text: str) -> list[FailSpec]:
    """``call[:nth[+]][@device][=code][!]``, comma-separated. ``rt.malloc:3`` fails the third
    ``acl.rt.malloc`` of the process; ``mdl.execute:2@1`` the second execute on device 1;
    ``mdl.execute:2+`` the second and every later one; ``=code`` overrides the return code;
    a trailing ``!`` fails only in the first process that gets there (needs ``ACL_FAKE_REPORT_DIR``),
    so a restarted worker does not fail again."""
    specs = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        once = part.endswith("!")
        part = part.rstrip("!")
        code = None
        if "=" in part:
            part, code_text = part.split("=", 1)
            code = int(code_text)
        device = None
        if "@" in part:
            part, dev_text = part.split("@", 1)
            device = int(dev_text)
        nth, and_later = 1, False
        if ":" in part:
            part, nth_text = part.split(":", 1)
            and_later = nth_text.endswith("+")
            nth = int(nth_text.rstrip("+"))
        name = part.strip()
        if name.startswith("acl."):
            name = name[4:]
        specs.append(FailSpec(name, nth, and_later, device, code, once))
    return specs


class State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tls = threading.local()
        self._ids = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.initialized = False
            self.init_calls = 0
            self.finalize_calls = 0
            self.device_refs: dict[int, int] = {}
            self.default_ctx: dict[int, int] = {}
            self.contexts: dict[int, Context] = {}
            self.streams: dict[int, Stream] = {}
            self.dev_mem: dict[int, DevMem] = {}
            self.host_mem: dict[int, HostMem] = {}
            self.host_views: collections.OrderedDict[int, tuple[int, Any]] = collections.OrderedDict()
            self.models: dict[int, Model] = {}
            self.dev_next: dict[int, int] = {}
            self.model_ids = itertools.count(1)
            self.descs: dict[int, Desc] = {}
            self.datasets: dict[int, Dataset] = {}
            self.buffers: dict[int, DataBuffer] = {}
            self.log: collections.deque[Call] = collections.deque(maxlen=20000)
            self.counts: collections.Counter[tuple[str, int | None]] = collections.Counter()
            self.misuse: list[dict[str, Any]] = []
            self.injected: list[dict[str, Any]] = []
            self.leaks_at_finalize: dict[str, int] = {}
            self.devices_used: set[int] = set()  # every device rt.set_device succeeded on
            self.executions: list[tuple[int, int]] = []  # (device, batch) of every model run
            self._fail_text: str | None = None
            self._fail_specs: list[FailSpec] = []
            self.tls = threading.local()

    # handles look like pointers and are unique per process
    def new_handle(self, base: int) -> int:
        return base + next(self._ids) * 0x100

    def new_device_ptr(self, device: int, size: int) -> int:
        """Non-overlapping, 512-byte aligned addresses with a guard gap, never reused."""
        ptr = self.dev_next.get(device, DEVICE_BASE + (device << 40))
        self.dev_next[device] = ptr + ((size + 511) // 512 + 1) * 512
        return ptr

    # -- current context (per thread, as in real ACL) --
    @property
    def current(self) -> Context | None:
        handle = getattr(self.tls, "ctx", None)
        return self.contexts.get(handle) if handle is not None else None

    def set_current(self, handle: int | None) -> None:
        self.tls.ctx = handle

    def require_init(self) -> None:
        if not self.initialized:
            raise Fail(ACL_ERROR_UNINITIALIZE, "acl.init has not been called (or acl.finalize already was)")

    def require_context(self) -> Context:
        self.require_init()
        ctx = self.current
        if ctx is None:
            raise Fail(
                ACL_ERROR_RT_CONTEXT_NULL,
                "no current context in this thread (set_device/create_context first)",
            )
        return ctx

    # -- failure injection --
    def injected_code(self, name: str, device: int | None) -> int | None:
        text = os.environ.get("ACL_FAKE_FAIL", "")
        if text != self._fail_text:
            self._fail_text = text
            self._fail_specs = parse_fail(text)
        self.counts[(name, None)] += 1
        if device is not None:
            self.counts[(name, device)] += 1
        for spec in self._fail_specs:
            if spec.call != name:
                continue
            if spec.device is not None and spec.device != device:
                continue
            n = self.counts[(name, spec.device)]
            if (n == spec.nth or (spec.and_later and n > spec.nth)) and self._claim(spec):
                code = spec.code if spec.code is not None else INJECTED_CODES.get(name, ACL_ERROR_INTERNAL_ERROR)
                self.injected.append({"call": "acl." + name, "nth": n, "device": device, "code": code})
                return code
        return None

    @staticmethod
    def _claim(spec: FailSpec) -> bool:
        directory = os.environ.get("ACL_FAKE_REPORT_DIR")
        if not spec.once or not directory:
            return True
        os.makedirs(directory, exist_ok=True)
        tag = "".join(ch if ch.isalnum() else "_" for ch in repr(spec))
        try:
            os.close(os.open(os.path.join(directory, f".claimed-{tag}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    # -- accounting --
    def live(self) -> dict[str, int]:
        with self.lock:
            return {
                "initialized": int(self.initialized),
                "devices": sum(self.device_refs.values()),
                "contexts": sum(1 for c in self.contexts.values() if not c.default),
                "streams": len(self.streams),
                "device_memory": len(self.dev_mem),
                "host_memory": len(self.host_mem),
                "models": len(self.models),
                "descs": len(self.descs),
                "datasets": len(self.datasets),
                "data_buffers": len(self.buffers),
            }

    def report(self) -> dict[str, Any]:
        with self.lock:
            live = self.live()
            return {
                "pid": os.getpid(),
                "init_calls": self.init_calls,
                "finalize_calls": self.finalize_calls,
                "finalized": self.init_calls > 0 and not self.initialized,
                "live": live,
                "leaked": sum(v for k, v in live.items() if k != "initialized"),
                "leaks_at_finalize": dict(self.leaks_at_finalize),
                "devices": sorted(self.devices_used),
                "calls": dict(sorted((f"acl.{name}", n) for (name, dev), n in self.counts.items() if dev is None)),
                "injected": list(self.injected),
                "misuse": list(self.misuse),
            }

    def write_report(self) -> None:
        directory = os.environ.get("ACL_FAKE_REPORT_DIR")
        if not directory:
            return
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"acl-{os.getpid()}.json")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.report(), f, indent=1)
        os.replace(tmp, path)

    # -- host memory the fake may touch (real addresses, bounds-checked) --
    def register_host_view(self, addr: int, size: int, owner: Any) -> None:
        self.host_views[addr] = (size, owner)
        self.host_views.move_to_end(addr)
        while len(self.host_views) > 64:
            self.host_views.popitem(last=False)

    def host_region(self, ptr: int, count: int) -> bool:
        for mem in self.host_mem.values():
            if mem.ptr <= ptr and ptr + count <= mem.ptr + ctypes.sizeof(mem.buf):
                return True
        return any(addr <= ptr and ptr + count <= addr + size for addr, (size, _) in self.host_views.items())

    def device_region(self, ptr: int, count: int) -> tuple[DevMem, int] | None:
        mem = self.dev_mem.get(ptr)
        if mem is not None:
            return (mem, 0) if count <= len(mem.data) else None
        for mem in self.dev_mem.values():
            if mem.ptr <= ptr and ptr + count <= mem.ptr + len(mem.data):
                return mem, ptr - mem.ptr
        return None


STATE = State()

DEVICE_BASE = 0x12C0_0000_0000
HANDLE_BASE = 0x5500_0000_0000


def device_count() -> int:
    return int(os.environ.get("ACL_FAKE_DEVICES", "8"))


def api(name: str, kind: str = "ret", empty: Any = None, device_arg: bool = False) -> Callable:
    """Wrap one fake API function: log it, count it, inject failures, turn :class:`Fail` into the
    return shape pyACL uses. ``kind``: ``ret`` (returns a code), ``pair`` ((value, code)),
    ``handle`` (a handle, 0 on failure) or ``value`` (a plain value, ``empty`` on failure)."""

    def shape(code: int) -> Any:
        if kind == "ret":
            return code
        if kind == "pair":
            return (empty() if callable(empty) else empty, code)
        if kind == "handle":
            return 0
        return empty() if callable(empty) else empty

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with STATE.lock:
                if device_arg and args:
                    device: int | None = int(args[0])
                else:
                    ctx = STATE.current
                    device = ctx.device if ctx is not None else None
                code = STATE.injected_code(name, device)
                if code is not None:
                    STATE.log.append(Call("acl." + name, device, code, injected=True))
                    return shape(code)
                try:
                    result = fn(*args, **kwargs)
                except Fail as exc:
                    if exc.misuse:
                        STATE.misuse.append({"call": "acl." + name, "code": exc.code, "why": exc.why, "device": device})
                    STATE.log.append(Call("acl." + name, device, exc.code))
                    return shape(exc.code)
                if kind == "ret":
                    ret: int | None = result
                elif kind == "pair":
                    ret = result[1]
                elif kind == "handle":
                    ret = ACL_SUCCESS if result else None
                else:
                    ret = None
                STATE.log.append(Call("acl." + name, device, ret))
                return result

        return wrapper

    return deco


def _at_exit() -> None:
    STATE.write_report()


atexit.register(_at_exit)
