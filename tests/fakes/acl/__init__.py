"""An emulated pyACL (``import acl``) for tests: the subset ascend-batch uses, on onnxruntime.

Not a backend and never shipped: it enforces what real pyACL enforces so that the real
``ascend_batch.backends.acl`` code can be tested without an NPU.

- Same call shapes as pyACL: ``ret`` ints, ``(value, ret)`` tuples, handles that are ints.
- Call order: nothing before ``acl.init``; no ``rt.malloc``/``rt.memcpy``/``mdl.load_from_file``
  without a current context (per thread); no execute on an unloaded model or on another device.
- Return codes from CANN's headers (100001 ACL_ERROR_UNINITIALIZE, 100002
  ACL_ERROR_REPEAT_INITIALIZE, 107002 ACL_ERROR_RT_CONTEXT_NULL, 207001 ACL_ERROR_RT_MEMORY_ALLOCATION, ...).
- Device memory is real bytes, so host -> device -> execute -> device -> host moves data.
- Per-process accounting: ``acl.finalize`` with live resources returns 148051
  (ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED) and records them. With ``ACL_FAKE_REPORT_DIR`` set, a
  report ``<dir>/acl-<pid>.json`` (live handles, whether finalize ran, calls, misuse, injected
  failures) is written at every finalize and at interpreter exit.
- Failure injection: ``ACL_FAKE_FAIL="rt.malloc:3"`` (third call of the process fails),
  ``"mdl.execute:2@1"`` (second execute on device 1), ``"mdl.execute:1+"`` (every one),
  ``"rt.memcpy:5=507899"`` (custom code), ``"mdl.execute:2@1!"`` (only in the first process that
  gets there: a restarted worker does not fail again); comma-separated for several. Read at each call.
- ``acl.media`` (DVPP: JPEGD decode, VPC crop/resize) and AIPP models (``acl.mdl``): emulated
  with Pillow and numpy, never hardware figures; see the ``acl.media`` and ``acl.mdl`` docstrings
  (``ACL_FAKE_JPEGD`` chooses how JPEGD refuses a picture).
- ``ACL_FAKE_SYNC_DELAY`` (seconds) makes every ``synchronize_stream`` with pending work that much
  slower, like device time (for tests that must catch a job mid-run).
- ``ACL_FAKE_DEVICES`` (default 8) devices exist; ``ACL_FAKE_HIDE=util.numpy_to_ptr,...`` removes
  attributes to mimic other CANN versions; ``ACL_FAKE_THREADS`` sets onnxruntime threads (1).

Test helpers live in ``acl._fake`` (``reset``, ``live``, ``report``, ``calls``, ``misuse``).
"""

from __future__ import annotations

import os

from . import _fake, mdl, media, rt, util
from ._codes import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED,
    ACL_ERROR_REPEAT_FINALIZE,
    ACL_ERROR_REPEAT_INITIALIZE,
    ACL_ERROR_UNINITIALIZE,
    ACL_SUCCESS,
)
from ._state import (
    HANDLE_BASE,
    STATE,
    DataBuffer,
    Fail,
    api,
)

__all__ = [
    "_fake",
    "create_data_buffer",
    "destroy_data_buffer",
    "finalize",
    "get_data_buffer_addr",
    "get_data_buffer_size_v2",
    "init",
    "mdl",
    "media",
    "rt",
    "update_data_buffer",
    "util",
]


@api("init")
def init(config_path: str | None = None) -> int:
    if STATE.initialized:
        raise Fail(ACL_ERROR_REPEAT_INITIALIZE, "acl.init called twice in this process")
    STATE.initialized = True
    STATE.init_calls += 1
    STATE.leaks_at_finalize = {}
    return ACL_SUCCESS


@api("finalize")
def finalize() -> int:
    if not STATE.initialized:
        if STATE.finalize_calls:
            raise Fail(ACL_ERROR_REPEAT_FINALIZE, "acl.finalize called twice")
        raise Fail(ACL_ERROR_UNINITIALIZE, "acl.finalize without acl.init")
    live = {k: v for k, v in STATE.live().items() if v and k != "initialized"}
    STATE.finalize_calls += 1
    STATE.initialized = False
    STATE.leaks_at_finalize = live
    # finalize tears everything down, leaked or not
    for table in (
        STATE.contexts,
        STATE.streams,
        STATE.dev_mem,
        STATE.host_mem,
        STATE.models,
        STATE.descs,
        STATE.datasets,
        STATE.buffers,
        STATE.device_refs,
        STATE.default_ctx,
        STATE.channel_descs,
        STATE.pic_descs,
        STATE.roi_configs,
        STATE.resize_configs,
    ):
        table.clear()
    STATE.host_views.clear()
    STATE.set_current(None)
    STATE.write_report()
    if live:
        raise Fail(ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED, f"finalize with live resources: {live}")
    return ACL_SUCCESS


@api("create_data_buffer", "handle")
def create_data_buffer(data: int, size: int) -> int:
    STATE.require_init()
    if not isinstance(size, int) or size < 0:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"size {size!r}")
    handle = STATE.new_handle(HANDLE_BASE)
    STATE.buffers[handle] = DataBuffer(handle, int(data), size)
    return handle


@api("destroy_data_buffer")
def destroy_data_buffer(data_buffer: int) -> int:
    STATE.require_init()
    if data_buffer not in STATE.buffers:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"data buffer {data_buffer!r} is not live")
    del STATE.buffers[data_buffer]
    return ACL_SUCCESS


@api("update_data_buffer")
def update_data_buffer(data_buffer: int, data: int, size: int) -> int:
    STATE.require_init()
    buf = STATE.buffers.get(data_buffer)
    if buf is None:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"data buffer {data_buffer!r} is not live")
    buf.ptr, buf.size = int(data), size
    return ACL_SUCCESS


@api("get_data_buffer_addr", "value", empty=0)
def get_data_buffer_addr(data_buffer: int) -> int:
    buf = STATE.buffers.get(data_buffer)
    return buf.ptr if buf else 0


@api("get_data_buffer_size_v2", "value", empty=0)
def get_data_buffer_size_v2(data_buffer: int) -> int:
    buf = STATE.buffers.get(data_buffer)
    return buf.size if buf else 0


def _hide(spec: str) -> None:
    modules = {"rt": rt, "mdl": mdl, "media": media, "util": util}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        owner, _, name = item.rpartition(".")
        target = modules.get(owner) if owner else globals()
        if target is not None and name:
            if isinstance(target, dict):
                target.pop(name, None)
            elif hasattr(target, name):
                delattr(target, name)


_hide(os.environ.get("ACL_FAKE_HIDE", ""))
