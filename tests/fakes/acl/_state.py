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

from ._codes import (
    ACL_ERROR_INTERNAL_ERROR,
    ACL_ERROR_RT_CONTEXT_NULL,
    ACL_ERROR_RT_INVALID_HANDLE,
    ACL_ERROR_RT_STREAM_CONTEXT,
    ACL_ERROR_UNINITIALIZE,
    ACL_SUCCESS,
    INJECTED_CODES,
)
from ._inject import FailSpec, parse_fail


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
    dvpp: bool = False  # from acl.media.dvpp_malloc (freed with dvpp_free), not rt.malloc


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
    aipp: Any = None  # acl._aipp.Aipp: static AIPP on input 0 (sidecar "aipp"), or None


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
            # acl.media (DVPP): the record types live in acl._dvpp
            self.channel_descs: dict[int, Any] = {}
            self.pic_descs: dict[int, Any] = {}
            self.roi_configs: dict[int, Any] = {}
            self.resize_configs: dict[int, Any] = {}
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

    def current_stream(self, handle: int, ctx: Context | None = None) -> Stream:
        """The live stream ``handle`` of the current context (or of ``ctx``)."""
        ctx = ctx or self.require_context()
        s = self.streams.get(handle)
        if s is None:
            raise Fail(ACL_ERROR_RT_INVALID_HANDLE, f"stream {handle!r} is not live")
        if s.ctx != ctx.handle:
            raise Fail(ACL_ERROR_RT_STREAM_CONTEXT, "stream belongs to another context than the current one")
        return s

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
                "device_memory": sum(1 for m in self.dev_mem.values() if not m.dvpp),
                "dvpp_memory": sum(1 for m in self.dev_mem.values() if m.dvpp),
                "host_memory": len(self.host_mem),
                "models": len(self.models),
                "descs": len(self.descs),
                "datasets": len(self.datasets),
                "data_buffers": len(self.buffers),
                "dvpp_channel_descs": len(self.channel_descs),
                "dvpp_channels": sum(1 for c in self.channel_descs.values() if c.created),
                "dvpp_pic_descs": len(self.pic_descs),
                "dvpp_roi_configs": len(self.roi_configs),
                "dvpp_resize_configs": len(self.resize_configs),
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


def api(name: str, kind: str = "ret", empty: Any = None, device_arg: bool = False, inject: bool = True) -> Callable:
    """Wrap one fake API function: log it, count it, inject failures, turn :class:`Fail` into the
    return shape pyACL uses. ``kind``: ``ret`` (returns a code), ``pair`` ((value, code)),
    ``tuple`` ((v1, v2, ..., code); ``empty`` gives the values on failure), ``handle`` (a handle, 0
    on failure) or ``value`` (a plain value, ``empty`` on failure).
    ``inject=False``: the function itself calls :meth:`State.injected_code` once per call (for an
    injected failure that is not an immediate return code, e.g. a JPEGD rejection at run time)."""

    def shape(code: int) -> Any:
        if kind == "ret":
            return code
        if kind == "pair":
            return (empty() if callable(empty) else empty, code)
        if kind == "tuple":
            return (*(empty() if callable(empty) else empty), code)
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
                code = STATE.injected_code(name, device) if inject else None
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
                elif kind in ("pair", "tuple"):
                    ret = result[-1]
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
