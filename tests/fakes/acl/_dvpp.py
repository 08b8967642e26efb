"""DVPP records and checks shared by ``acl.media`` and its JPEGD/VPC half (``acl._media_run``).

Handles are ints from the process-wide counter, so a pic desc passed where a ROI config belongs is
caught. Lookups raise :class:`Fail` with the code pyACL's DVPP functions return for a bad argument
(``ACL_ERROR_INVALID_PARAM``), and every such return is recorded as misuse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._codes import (
    ACL_ERROR_INVALID_PARAM,
    JPEGD_ERR_ILLEGAL_PARAM,
    JPEGD_ERR_NOT_SUPPORT,
    JPEGD_ERR_STREAM,
)
from ._state import (
    STATE,
    Context,
    DevMem,
    Fail,
    Stream,
)

# acldvppPixelFormat (acl_dvpp.h)
PIXEL_FORMAT_YUV_400 = 0
PIXEL_FORMAT_YUV_SEMIPLANAR_420 = 1  # NV12
PIXEL_FORMAT_YVU_SEMIPLANAR_420 = 2  # NV21
YUV420SP = (PIXEL_FORMAT_YUV_SEMIPLANAR_420, PIXEL_FORMAT_YVU_SEMIPLANAR_420)
FORMAT_NAMES = {0: "YUV400", 1: "NV12", 2: "NV21"}
JPEGD_ERRORS = (JPEGD_ERR_ILLEGAL_PARAM, JPEGD_ERR_NOT_SUPPORT, JPEGD_ERR_STREAM)  # see acl._state


def align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def nv12_size(width_stride: int, height_stride: int) -> int:
    return width_stride * height_stride * 3 // 2


@dataclass
class ChannelDesc:
    handle: int
    created: bool = False  # dvpp_create_channel succeeded and dvpp_destroy_channel has not run
    ctx: int | None = None
    device: int | None = None


@dataclass
class PicDesc:
    handle: int
    data: int = 0
    size: int = 0
    format: int = PIXEL_FORMAT_YUV_400  # acldvppCreatePicDesc zero-fills: format 0 is YUV400
    width: int = 0
    height: int = 0
    width_stride: int = 0
    height_stride: int = 0
    ret_code: int = 0


@dataclass
class RoiConfig:
    handle: int
    left: int
    right: int
    top: int
    bottom: int


@dataclass
class ResizeConfig:
    handle: int
    interpolation: int = 0


@dataclass
class Task:
    """Work queued on a stream; ``outputs``/``memory`` name what it will write, so destroying or
    freeing them before ``synchronize_stream`` is caught."""

    run: Callable[[], int | None]
    outputs: set[int] = field(default_factory=set)  # pic desc handles it writes
    memory: set[int] = field(default_factory=set)  # DVPP allocations (base pointers) it reads or writes

    def __call__(self) -> int | None:
        return self.run()


def uint(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"{what} must be a uint32, got {value!r}")
    return value


def channel(handle: int) -> ChannelDesc:
    ch = STATE.channel_descs.get(handle)
    if ch is None:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"channel desc {handle!r} is not live (dvpp_create_channel_desc)")
    return ch


def open_channel(handle: int, ctx: Context) -> ChannelDesc:
    ch = channel(handle)
    if not ch.created:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"channel desc {handle:#x} has no channel: call dvpp_create_channel first")
    if ch.device != ctx.device:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"channel is on device {ch.device}, current context on {ctx.device}")
    return ch


def pic(handle: int, what: str = "pic desc") -> PicDesc:
    desc = STATE.pic_descs.get(handle)
    if desc is None:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"{what} {handle!r} is not live (dvpp_create_pic_desc)")
    return desc


def stream_in(handle: int, ctx: Context) -> Stream:
    return STATE.current_stream(handle, ctx)


def dvpp_region(ptr: int, count: int, device: int, what: str) -> tuple[DevMem, int]:
    """The DVPP allocation holding ``[ptr, ptr + count)``: host memory, ``rt.malloc`` memory and freed
    memory are refused (JPEGD and VPC read and write DVPP memory only)."""
    if not isinstance(ptr, int) or ptr == 0:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"{what}: null or non-int pointer {ptr!r}")
    if not isinstance(count, int) or count <= 0:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"{what}: size must be > 0, got {count!r}")
    found = STATE.device_region(ptr, count)
    if found is None:
        kind = "host memory" if STATE.host_region(ptr, 1) else "not inside a live device allocation"
        raise Fail(ACL_ERROR_INVALID_PARAM, f"{what} {ptr:#x}..+{count} is {kind}: use acl.media.dvpp_malloc memory")
    mem, offset = found
    if not mem.dvpp:
        raise Fail(
            ACL_ERROR_INVALID_PARAM, f"{what} {ptr:#x} is rt.malloc memory: JPEGD/VPC need acl.media.dvpp_malloc memory"
        )
    if mem.device != device:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"{what} is on device {mem.device}, current context on {device}")
    return mem, offset


def live_mem(mem: DevMem) -> bool:
    return STATE.dev_mem.get(mem.ptr) is mem


def pending_tasks() -> list[Task]:
    return [t for s in STATE.streams.values() for t in s.pending if isinstance(t, Task)]


def misuse(call: str, why: str, device: int | None = None) -> None:
    """A misuse that the real call would not report (it returns success, or the damage shows later)."""
    STATE.misuse.append({"call": "acl." + call, "code": 0, "why": why, "device": device})
