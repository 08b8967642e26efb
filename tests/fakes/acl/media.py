"""``acl.media``: DVPP memory, channels, picture descriptions, ROI/resize configs, JPEGD and VPC.

JPEGD and VPC are emulated: the figures (strides, sizes, limits) follow CANN's documentation for
Ascend 310, and the pixels come from Pillow (JPEG decoding) and numpy (NV12 bilinear resize), not
from DVPP hardware. What is enforced, each a non-zero ``ret`` and a misuse record:

- DVPP memory only from ``dvpp_malloc`` (a current context needed), freed once with ``dvpp_free``;
  ``rt.free`` on it and ``dvpp_free`` on ``rt.malloc`` memory are misuse; JPEGD input and output and
  VPC input and output must lie in it; freeing it while a queued task still uses it is misuse.
  ``rt.memcpy`` and model execution take it like any device memory.
- ``dvpp_create_channel_desc`` then ``dvpp_create_channel`` before use; ``dvpp_destroy_channel``
  before ``dvpp_destroy_channel_desc`` and before its context goes; descs, configs and channels
  destroyed exactly once. Everything live counts in ``acl._fake.live()`` and is reported at
  ``acl.finalize`` (``dvpp_memory``, ``dvpp_channel_descs``, ``dvpp_channels``, ``dvpp_pic_descs``,
  ``dvpp_roi_configs``, ``dvpp_resize_configs``).
- JPEGD and VPC are asynchronous: their output bytes, and the output pic desc's width, height,
  strides and ret code, change only at ``acl.rt.synchronize_stream`` on that stream.

How JPEGD refuses a picture it cannot decode (progressive, arithmetic, lossless, hierarchical,
12-bit, CMYK/YCCK or RGB-coded, other chroma sampling, outside 32x32..8192x8192, corrupt):
``ACL_FAKE_JPEGD`` = ``header`` (default): ``dvpp_jpeg_get_image_info``/``dvpp_jpeg_predict_dec_size``
already fail where the header tells (ret 200006 ACL_ERROR_FEATURE_UNSUPPORTED; 500001 for no JPEG),
and a decode of it sets the output desc's ret code after the sync, which returns 0; ``late``: the
header calls only fail on data that is no JPEG, every refusal is the desc's ret code; ``sync``: as
``late``, and the sync also returns 507018 (ACL_ERROR_RT_AICPU_EXCEPTION, what rtStreamSynchronize
reports for a failed DVPP task) after running the rest of the stream.

Failure injection (``ACL_FAKE_FAIL``): ``media.dvpp_jpeg_decode_async:N`` makes JPEGD reject the
N-th decode of the process at run time: the call returns 0, after the sync the output desc's ret
code is 0xA0058008 (or ``=code``) and the output buffer is untouched. Every other ``media.*`` call
fails at once with its usual shape (``dvpp_malloc`` -> (0, 207001), handle calls -> 0, ...).
"""

from __future__ import annotations

from . import _dvpp
from ._codes import (
    ACL_ERROR_INVALID_PARAM,
    ACL_SUCCESS,
    GARBAGE,
)
from ._media_run import (
    dvpp_jpeg_decode_async,
    dvpp_jpeg_get_image_info,
    dvpp_jpeg_predict_dec_size,
    dvpp_vpc_crop_async,
    dvpp_vpc_crop_resize_async,
    dvpp_vpc_resize_async,
)
from ._state import (
    HANDLE_BASE,
    STATE,
    DevMem,
    Fail,
    api,
)

# pyACL exports no constants: the pixel formats (0 YUV400, 1 NV12, 2 NV21) are the caller's own
__all__ = [
    "dvpp_create_channel",
    "dvpp_create_channel_desc",
    "dvpp_create_pic_desc",
    "dvpp_create_resize_config",
    "dvpp_create_roi_config",
    "dvpp_destroy_channel",
    "dvpp_destroy_channel_desc",
    "dvpp_destroy_pic_desc",
    "dvpp_destroy_resize_config",
    "dvpp_destroy_roi_config",
    "dvpp_free",
    "dvpp_get_pic_desc_data",
    "dvpp_get_pic_desc_format",
    "dvpp_get_pic_desc_height",
    "dvpp_get_pic_desc_height_stride",
    "dvpp_get_pic_desc_ret_code",
    "dvpp_get_pic_desc_size",
    "dvpp_get_pic_desc_width",
    "dvpp_get_pic_desc_width_stride",
    "dvpp_get_resize_config_interpolation",
    "dvpp_jpeg_decode_async",
    "dvpp_jpeg_get_image_info",
    "dvpp_jpeg_predict_dec_size",
    "dvpp_malloc",
    "dvpp_set_pic_desc_data",
    "dvpp_set_pic_desc_format",
    "dvpp_set_pic_desc_height",
    "dvpp_set_pic_desc_height_stride",
    "dvpp_set_pic_desc_size",
    "dvpp_set_pic_desc_width",
    "dvpp_set_pic_desc_width_stride",
    "dvpp_set_resize_config_interpolation",
    "dvpp_set_roi_config",
    "dvpp_vpc_crop_async",
    "dvpp_vpc_crop_resize_async",
    "dvpp_vpc_resize_async",
]


# --- memory ----------------------------------------------------------------------------------
@api("media.dvpp_malloc", "pair", empty=0)
def dvpp_malloc(size: int) -> tuple[int, int]:
    ctx = STATE.require_context()
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"size must be a positive int, got {size!r}")
    ptr = STATE.new_device_ptr(ctx.device, size)
    STATE.dev_mem[ptr] = DevMem(ptr, ctx.device, bytearray([GARBAGE]) * size, dvpp=True)
    return ptr, ACL_SUCCESS


@api("media.dvpp_free")
def dvpp_free(dev_ptr: int) -> int:
    STATE.require_context()
    mem = STATE.dev_mem.get(dev_ptr)
    if mem is None:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"{dev_ptr!r} is not a live allocation (freed twice, or never allocated)")
    if not mem.dvpp:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"{dev_ptr:#x} is rt.malloc memory: free it with acl.rt.free")
    if any(dev_ptr in t.memory for t in _dvpp.pending_tasks()):
        _dvpp.misuse(
            "media.dvpp_free", f"{dev_ptr:#x} freed while a queued JPEGD/VPC task uses it (sync the stream first)"
        )
    if any(b.ptr == dev_ptr for b in STATE.buffers.values()):
        _dvpp.misuse("media.dvpp_free", "memory still referenced by a data buffer")
    del STATE.dev_mem[dev_ptr]
    return ACL_SUCCESS


# --- channel ---------------------------------------------------------------------------------
@api("media.dvpp_create_channel_desc", "handle")
def dvpp_create_channel_desc() -> int:
    STATE.require_init()
    handle = STATE.new_handle(HANDLE_BASE)
    STATE.channel_descs[handle] = _dvpp.ChannelDesc(handle)
    return handle


@api("media.dvpp_create_channel")
def dvpp_create_channel(channel_desc: int) -> int:
    ctx = STATE.require_context()
    ch = _dvpp.channel(channel_desc)
    if ch.created:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"channel desc {channel_desc:#x} already has a channel")
    ch.created, ch.ctx, ch.device = True, ctx.handle, ctx.device
    return ACL_SUCCESS


@api("media.dvpp_destroy_channel")
def dvpp_destroy_channel(channel_desc: int) -> int:
    ctx = STATE.require_context()
    ch = _dvpp.channel(channel_desc)
    if not ch.created:
        raise Fail(
            ACL_ERROR_INVALID_PARAM, f"channel desc {channel_desc:#x} has no channel (never created, or destroyed)"
        )
    if ch.device != ctx.device:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"channel is on device {ch.device}, current context on {ctx.device}")
    ch.created = False
    return ACL_SUCCESS


@api("media.dvpp_destroy_channel_desc")
def dvpp_destroy_channel_desc(channel_desc: int) -> int:
    STATE.require_init()
    ch = _dvpp.channel(channel_desc)
    if ch.created:
        raise Fail(ACL_ERROR_INVALID_PARAM, "the channel is still open: dvpp_destroy_channel before its desc")
    del STATE.channel_descs[channel_desc]
    return ACL_SUCCESS


# --- picture descriptions --------------------------------------------------------------------
@api("media.dvpp_create_pic_desc", "handle")
def dvpp_create_pic_desc() -> int:
    STATE.require_init()
    handle = STATE.new_handle(HANDLE_BASE)
    STATE.pic_descs[handle] = _dvpp.PicDesc(handle)
    return handle


@api("media.dvpp_destroy_pic_desc")
def dvpp_destroy_pic_desc(pic_desc: int) -> int:
    STATE.require_init()
    _dvpp.pic(pic_desc)
    if any(pic_desc in t.outputs for t in _dvpp.pending_tasks()):
        _dvpp.misuse("media.dvpp_destroy_pic_desc", f"pic desc {pic_desc:#x} destroyed before the task writing it ran")
    del STATE.pic_descs[pic_desc]
    return ACL_SUCCESS


def _setter(field: str, check: str):
    @api(f"media.dvpp_set_pic_desc_{field}")
    def setter(pic_desc: int, value: int) -> int:
        STATE.require_init()
        desc = _dvpp.pic(pic_desc)
        if check == "ptr":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
                raise Fail(ACL_ERROR_INVALID_PARAM, f"data must be a pointer (int), got {value!r}")
        else:
            value = _dvpp.uint(value, field)
        if check == "format" and value not in _dvpp.FORMAT_NAMES:
            raise Fail(ACL_ERROR_INVALID_PARAM, f"format {value} is not emulated (0 YUV400, 1 NV12, 2 NV21)")
        setattr(desc, field, value)
        return ACL_SUCCESS

    setter.__name__ = setter.__qualname__ = f"dvpp_set_pic_desc_{field}"
    return setter


def _getter(field: str):
    @api(f"media.dvpp_get_pic_desc_{field}", "value", empty=0)
    def getter(pic_desc: int) -> int:
        return getattr(_dvpp.pic(pic_desc), field)

    getter.__name__ = getter.__qualname__ = f"dvpp_get_pic_desc_{field}"
    return getter


dvpp_set_pic_desc_data = _setter("data", "ptr")
dvpp_set_pic_desc_size = _setter("size", "uint")
dvpp_set_pic_desc_format = _setter("format", "format")
dvpp_set_pic_desc_width = _setter("width", "uint")
dvpp_set_pic_desc_height = _setter("height", "uint")
dvpp_set_pic_desc_width_stride = _setter("width_stride", "uint")
dvpp_set_pic_desc_height_stride = _setter("height_stride", "uint")
dvpp_get_pic_desc_data = _getter("data")
dvpp_get_pic_desc_size = _getter("size")
dvpp_get_pic_desc_format = _getter("format")
dvpp_get_pic_desc_width = _getter("width")
dvpp_get_pic_desc_height = _getter("height")
dvpp_get_pic_desc_width_stride = _getter("width_stride")
dvpp_get_pic_desc_height_stride = _getter("height_stride")
dvpp_get_pic_desc_ret_code = _getter("ret_code")


# --- ROI and resize configs ------------------------------------------------------------------
@api("media.dvpp_create_roi_config", "handle")
def dvpp_create_roi_config(left: int, right: int, top: int, bottom: int) -> int:
    STATE.require_init()
    values = [_dvpp.uint(v, n) for v, n in ((left, "left"), (right, "right"), (top, "top"), (bottom, "bottom"))]
    handle = STATE.new_handle(HANDLE_BASE)
    STATE.roi_configs[handle] = _dvpp.RoiConfig(handle, *values)
    return handle


@api("media.dvpp_set_roi_config")
def dvpp_set_roi_config(roi_config: int, left: int, right: int, top: int, bottom: int) -> int:
    STATE.require_init()
    roi = STATE.roi_configs.get(roi_config)
    if roi is None:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"ROI config {roi_config!r} is not live")
    roi.left, roi.right, roi.top, roi.bottom = (
        _dvpp.uint(v, n) for v, n in ((left, "left"), (right, "right"), (top, "top"), (bottom, "bottom"))
    )
    return ACL_SUCCESS


@api("media.dvpp_destroy_roi_config")
def dvpp_destroy_roi_config(roi_config: int) -> int:
    STATE.require_init()
    if STATE.roi_configs.pop(roi_config, None) is None:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"ROI config {roi_config!r} is not live (destroyed twice?)")
    return ACL_SUCCESS


@api("media.dvpp_create_resize_config", "handle")
def dvpp_create_resize_config() -> int:
    STATE.require_init()
    handle = STATE.new_handle(HANDLE_BASE)
    STATE.resize_configs[handle] = _dvpp.ResizeConfig(handle)
    return handle


@api("media.dvpp_set_resize_config_interpolation")
def dvpp_set_resize_config_interpolation(resize_config: int, interpolation: int) -> int:
    STATE.require_init()
    cfg = STATE.resize_configs.get(resize_config)
    if cfg is None:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"resize config {resize_config!r} is not live")
    if interpolation not in (0, 1):
        raise Fail(
            ACL_ERROR_INVALID_PARAM, f"interpolation {interpolation!r}: only 0 (default) and 1 (bilinear) emulated"
        )
    cfg.interpolation = interpolation
    return ACL_SUCCESS


@api("media.dvpp_get_resize_config_interpolation", "value", empty=0)
def dvpp_get_resize_config_interpolation(resize_config: int) -> int:
    cfg = STATE.resize_configs.get(resize_config)
    if cfg is None:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"resize config {resize_config!r} is not live")
    return cfg.interpolation


@api("media.dvpp_destroy_resize_config")
def dvpp_destroy_resize_config(resize_config: int) -> int:
    STATE.require_init()
    if STATE.resize_configs.pop(resize_config, None) is None:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"resize config {resize_config!r} is not live (destroyed twice?)")
    return ACL_SUCCESS
