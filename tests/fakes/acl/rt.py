"""``acl.rt``: devices, contexts, streams, memory. Device memory is real bytes (one bytearray per
pointer); host memory is real process memory, so copies really move data. DVPP memory
(``acl.media.dvpp_malloc``) is device memory too: ``memcpy`` and model execution take it, but only
``acl.media.dvpp_free`` frees it (``free`` on it is misuse). Work queued on a stream (``mdl.execute_async``,
JPEGD, VPC) runs at ``synchronize_stream``, in order."""

from __future__ import annotations

import ctypes
import os
import time

from ._codes import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_CONTEXT_NULL,
    ACL_ERROR_RT_INVALID_DEVICEID,
    ACL_ERROR_RT_INVALID_HANDLE,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_HOST,
    ACL_MEMCPY_DEVICE_TO_DEVICE,
    ACL_MEMCPY_DEVICE_TO_HOST,
    ACL_MEMCPY_HOST_TO_DEVICE,
    ACL_MEMCPY_HOST_TO_HOST,
    ACL_SUCCESS,
    GARBAGE,
)
from ._state import (
    HANDLE_BASE,
    STATE,
    Context,
    DevMem,
    Fail,
    HostMem,
    Stream,
    api,
    device_count,
)

__all__ = [
    "create_context",
    "create_stream",
    "destroy_context",
    "destroy_stream",
    "free",
    "free_host",
    "get_context",
    "get_device_count",
    "get_run_mode",
    "malloc",
    "malloc_host",
    "memcpy",
    "reset_device",
    "set_context",
    "set_device",
    "synchronize_stream",
]


def _check_device(device_id: int) -> None:
    if not isinstance(device_id, int) or not 0 <= device_id < device_count():
        raise Fail(ACL_ERROR_RT_INVALID_DEVICEID, f"device {device_id!r} does not exist ({device_count()} devices)")


@api("rt.get_device_count", "pair", empty=0)
def get_device_count() -> tuple[int, int]:
    return device_count(), ACL_SUCCESS


@api("rt.get_run_mode", "pair", empty=ACL_HOST)
def get_run_mode() -> tuple[int, int]:
    STATE.require_init()
    return ACL_HOST, ACL_SUCCESS


@api("rt.set_device", device_arg=True)
def set_device(device_id: int) -> int:
    STATE.require_init()
    _check_device(device_id)
    refs = STATE.device_refs.get(device_id, 0)
    if refs == 0:
        handle = STATE.new_handle(HANDLE_BASE)
        STATE.contexts[handle] = Context(handle, device_id, default=True)
        STATE.default_ctx[device_id] = handle
    STATE.device_refs[device_id] = refs + 1
    STATE.devices_used.add(device_id)
    STATE.set_current(STATE.default_ctx[device_id])
    return ACL_SUCCESS


@api("rt.reset_device", device_arg=True)
def reset_device(device_id: int) -> int:
    STATE.require_init()
    _check_device(device_id)
    refs = STATE.device_refs.get(device_id, 0)
    if refs == 0:
        raise Fail(ACL_ERROR_RT_INVALID_DEVICEID, f"device {device_id} was not set in this process")
    if refs == 1:
        default = STATE.default_ctx[device_id]
        held = [f"{c.handle:#x}" for c in STATE.channel_descs.values() if c.created and c.ctx == default]
        if held:
            raise Fail(
                ACL_ERROR_RT_PARAM_INVALID, f"DVPP channel(s) {', '.join(held)} still live: dvpp_destroy_channel first"
            )
        del STATE.device_refs[device_id]
        handle = STATE.default_ctx.pop(device_id)
        STATE.contexts.pop(handle, None)
        if getattr(STATE.tls, "ctx", None) == handle:
            STATE.set_current(None)
    else:
        STATE.device_refs[device_id] = refs - 1
    return ACL_SUCCESS


@api("rt.create_context", "pair", empty=0, device_arg=True)
def create_context(device_id: int) -> tuple[int, int]:
    STATE.require_init()
    _check_device(device_id)
    if STATE.device_refs.get(device_id, 0) == 0:
        raise Fail(ACL_ERROR_RT_CONTEXT_NULL, f"rt.set_device({device_id}) must come before rt.create_context")
    handle = STATE.new_handle(HANDLE_BASE)
    STATE.contexts[handle] = Context(handle, device_id)
    STATE.set_current(handle)
    return handle, ACL_SUCCESS


@api("rt.destroy_context")
def destroy_context(context: int) -> int:
    STATE.require_init()
    ctx = STATE.contexts.get(context)
    if ctx is None or ctx.default:
        raise Fail(ACL_ERROR_RT_INVALID_HANDLE, f"context {context!r} is not a live context made by create_context")
    held = [f"stream {s.handle:#x}" for s in STATE.streams.values() if s.ctx == ctx.handle]
    held += [f"DVPP channel {c.handle:#x}" for c in STATE.channel_descs.values() if c.created and c.ctx == ctx.handle]
    if held:
        raise Fail(ACL_ERROR_RT_PARAM_INVALID, f"context still holds {', '.join(held)}: destroy them first")
    del STATE.contexts[context]
    if getattr(STATE.tls, "ctx", None) == context:
        STATE.set_current(None)
    return ACL_SUCCESS


@api("rt.set_context")
def set_context(context: int) -> int:
    STATE.require_init()
    if context not in STATE.contexts:
        raise Fail(ACL_ERROR_RT_INVALID_HANDLE, f"context {context!r} is not live")
    STATE.set_current(context)
    return ACL_SUCCESS


@api("rt.get_context", "pair", empty=0)
def get_context() -> tuple[int, int]:
    ctx = STATE.require_context()
    return ctx.handle, ACL_SUCCESS


@api("rt.create_stream", "pair", empty=0)
def create_stream() -> tuple[int, int]:
    ctx = STATE.require_context()
    handle = STATE.new_handle(HANDLE_BASE)
    STATE.streams[handle] = Stream(handle, ctx.handle, ctx.device)
    return handle, ACL_SUCCESS


@api("rt.destroy_stream")
def destroy_stream(stream: int) -> int:
    STATE.current_stream(stream)  # live, and in the current context
    del STATE.streams[stream]
    return ACL_SUCCESS


@api("rt.synchronize_stream")
def synchronize_stream(stream: int) -> int:
    s = STATE.current_stream(stream)
    pending, s.pending = s.pending, []
    delay = float(os.environ.get("ACL_FAKE_SYNC_DELAY", "0") or 0)  # device time per sync (tests that race it)
    if delay and pending:
        time.sleep(delay)
    code = ACL_SUCCESS
    for task in pending:
        # a task raising Fail (misuse found at run time) makes synchronize_stream return its code at
        # once; a task returning a non-zero code (a DVPP task that failed on its data) is reported
        # after the remaining tasks have run
        failed = task()
        if failed and code == ACL_SUCCESS:
            code = failed
    return code


@api("rt.malloc", "pair", empty=0)
def malloc(size: int, policy: int) -> tuple[int, int]:
    ctx = STATE.require_context()
    if not isinstance(size, int) or size <= 0:
        raise Fail(ACL_ERROR_RT_PARAM_INVALID, f"size must be a positive int, got {size!r}")
    if policy not in (0, 1, 2, 3, 4, 5, 6):
        raise Fail(ACL_ERROR_RT_PARAM_INVALID, f"unknown malloc policy {policy!r}")
    ptr = STATE.new_device_ptr(ctx.device, size)
    STATE.dev_mem[ptr] = DevMem(ptr, ctx.device, bytearray([GARBAGE]) * size)
    return ptr, ACL_SUCCESS


@api("rt.free")
def free(dev_ptr: int) -> int:
    STATE.require_context()
    if dev_ptr not in STATE.dev_mem:
        raise Fail(ACL_ERROR_RT_PARAM_INVALID, f"{dev_ptr!r} is not a live device allocation")
    if STATE.dev_mem[dev_ptr].dvpp:
        raise Fail(ACL_ERROR_RT_PARAM_INVALID, f"{dev_ptr:#x} is DVPP memory: free it with acl.media.dvpp_free")
    referenced = [b for b in STATE.buffers.values() if b.ptr == dev_ptr]
    if referenced:  # allowed by ACL, but a dangling data buffer is the classic leak/use-after-free
        STATE.misuse.append({"call": "acl.rt.free", "code": 0, "why": "memory still referenced by a data buffer"})
    del STATE.dev_mem[dev_ptr]
    return ACL_SUCCESS


@api("rt.malloc_host", "pair", empty=0)
def malloc_host(size: int) -> tuple[int, int]:
    STATE.require_context()
    if not isinstance(size, int) or size <= 0:
        raise Fail(ACL_ERROR_RT_PARAM_INVALID, f"size must be a positive int, got {size!r}")
    buf = (ctypes.c_char * size)()
    ptr = ctypes.addressof(buf)
    STATE.host_mem[ptr] = HostMem(ptr, buf)
    return ptr, ACL_SUCCESS


@api("rt.free_host")
def free_host(host_ptr: int) -> int:
    STATE.require_init()
    if host_ptr not in STATE.host_mem:
        raise Fail(ACL_ERROR_RT_PARAM_INVALID, f"{host_ptr!r} is not a live malloc_host allocation")
    del STATE.host_mem[host_ptr]
    return ACL_SUCCESS


def _device_bytes(ptr: int, count: int, device: int, what: str) -> tuple[DevMem, int]:
    found = STATE.device_region(ptr, count)
    if found is None:
        raise Fail(ACL_ERROR_RT_PARAM_INVALID, f"{what} {ptr!r}..+{count} is not inside a live device allocation")
    mem, offset = found
    if mem.device != device:
        raise Fail(ACL_ERROR_RT_PARAM_INVALID, f"{what} is on device {mem.device}, current context is {device}")
    return mem, offset


def _check_host(ptr: int, count: int, what: str) -> None:
    if not isinstance(ptr, int) or not STATE.host_region(ptr, count):
        raise Fail(ACL_ERROR_RT_PARAM_INVALID, f"{what} {ptr!r}..+{count} is not known host memory")


@api("rt.memcpy")
def memcpy(dst: int, dest_max: int, src: int, count: int, kind: int) -> int:
    ctx = STATE.require_context()
    if not isinstance(count, int) or count <= 0 or count > dest_max:
        raise Fail(ACL_ERROR_RT_PARAM_INVALID, f"count {count!r} must be > 0 and <= dest_max {dest_max!r}")
    if kind == ACL_MEMCPY_HOST_TO_DEVICE:
        _check_host(src, count, "source")
        mem, off = _device_bytes(dst, count, ctx.device, "destination")
        mem.data[off : off + count] = ctypes.string_at(src, count)
    elif kind == ACL_MEMCPY_DEVICE_TO_HOST:
        mem, off = _device_bytes(src, count, ctx.device, "source")
        _check_host(dst, count, "destination")
        ctypes.memmove(dst, bytes(mem.data[off : off + count]), count)
    elif kind == ACL_MEMCPY_DEVICE_TO_DEVICE:
        smem, soff = _device_bytes(src, count, ctx.device, "source")
        dmem, doff = _device_bytes(dst, count, ctx.device, "destination")
        dmem.data[doff : doff + count] = smem.data[soff : soff + count]
    elif kind == ACL_MEMCPY_HOST_TO_HOST:
        _check_host(src, count, "source")
        _check_host(dst, count, "destination")
        ctypes.memmove(dst, src, count)
    else:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"unknown memcpy kind {kind!r}")
    return ACL_SUCCESS
