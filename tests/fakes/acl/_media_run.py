"""``acl.media``'s JPEGD and VPC calls (re-exported by ``acl.media``; see its docstring).

Each call checks what the real call checks from its arguments (ret != 0 and a misuse record), takes
a snapshot of the descriptions it was given (pyACL copies them into the task), and queues a
:class:`~acl._dvpp.Task` on the stream: the pixels move at ``acl.rt.synchronize_stream``.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from . import _dvpp, _jpeg, _pixels
from ._codes import (
    ACL_ERROR_FAILURE,
    ACL_ERROR_FEATURE_UNSUPPORTED,
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_AICPU_EXCEPTION,
    ACL_SUCCESS,
)
from ._dvpp import (
    JPEGD_ERR_ILLEGAL_PARAM,
    JPEGD_ERR_NOT_SUPPORT,
    JPEGD_ERR_STREAM,
    PIXEL_FORMAT_YUV_400,
    YUV420SP,
    Task,
    align,
    nv12_size,
)
from ._state import (
    STATE,
    DevMem,
    Fail,
    api,
)

VPC_MIN_W, VPC_MIN_H = 10, 6
VPC_MAX_IN, VPC_MAX_OUT = 8192, 4096
VPC_STRIDE_MIN_W, VPC_STRIDE_MIN_H, VPC_STRIDE_MAX = 32, 6, 16384
VPC_SCALE_MIN, VPC_SCALE_MAX = 1 / 32, 16


def _jpegd_mode() -> str:
    mode = os.environ.get("ACL_FAKE_JPEGD", "header") or "header"
    if mode not in ("header", "late", "sync"):
        raise ValueError(f"ACL_FAKE_JPEGD={mode!r}: use header, late or sync")
    return mode


def _host_jpeg(data: int, size: int) -> _jpeg.JpegHeader:
    """The header of a JPEG in host memory (these calls read it on the host)."""
    STATE.require_init()
    if not isinstance(size, int) or size <= 0:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"size must be > 0, got {size!r}")
    if not isinstance(data, int) or not STATE.host_region(data, size):
        kind = "device memory" if isinstance(data, int) and STATE.device_region(data, 1) else "not known host memory"
        shown = f"{data:#x}" if isinstance(data, int) else repr(data)
        raise Fail(ACL_ERROR_INVALID_PARAM, f"data {shown}..+{size} is {kind}: pass a host pointer (acl.util)")
    try:
        header = _jpeg.parse(ctypes.string_at(data, size))
    except _jpeg.NotJpeg as exc:
        raise Fail(ACL_ERROR_FAILURE, f"not a JPEG header: {exc}", misuse=False) from None
    if _jpegd_mode() == "header":
        why = _jpeg.unsupported(header)
        if why:
            raise Fail(ACL_ERROR_FEATURE_UNSUPPORTED, f"JPEGD cannot decode this: {why}", misuse=False)
    return header


@api("media.dvpp_jpeg_get_image_info", "tuple", empty=(0, 0, 0))
def dvpp_jpeg_get_image_info(data: int, size: int) -> tuple[int, int, int, int]:
    """``(width, height, components, ret)`` of the frame header (EXIF orientation not applied)."""
    header = _host_jpeg(data, size)
    return header.width, header.height, header.components, ACL_SUCCESS


@api("media.dvpp_jpeg_predict_dec_size", "pair", empty=0)
def dvpp_jpeg_predict_dec_size(data: int, size: int, output_format: int) -> tuple[int, int]:
    """``(bytes, ret)`` JPEGD needs for its output: ``align(w, 128) * align(h, 16) * 3 // 2`` for
    NV12/NV21 (``* 1`` for YUV400), with the EXIF orientation applied to w and h."""
    header = _host_jpeg(data, size)
    if output_format not in (*YUV420SP, PIXEL_FORMAT_YUV_400):
        raise Fail(ACL_ERROR_INVALID_PARAM, f"output format {output_format!r} is not emulated (0, 1, 2)")
    w, h = header.out_size
    ws, hs = align(w, 128), align(h, 16)
    return (ws * hs if output_format == PIXEL_FORMAT_YUV_400 else nv12_size(ws, hs)), ACL_SUCCESS


@dataclass(frozen=True)
class _Picture:
    """A pic desc as the task sees it (copied at call time), with its memory."""

    handle: int
    mem: DevMem
    offset: int
    size: int
    fmt: int
    width: int
    height: int
    ws: int
    hs: int


def _snapshot(handle: int, device: int, what: str) -> _Picture:
    d = _dvpp.pic(handle, what)
    mem, offset = _dvpp.dvpp_region(d.data, d.size, device, f"{what} data")
    return _Picture(handle, mem, offset, d.size, d.format, d.width, d.height, d.width_stride, d.height_stride)


def _check_alive(pictures: list[_Picture], what: str) -> None:
    for p in pictures:
        if not _dvpp.live_mem(p.mem):
            raise Fail(
                ACL_ERROR_RT_AICPU_EXCEPTION, f"{what}: DVPP memory {p.mem.ptr:#x} was freed before the task ran"
            )


# --- JPEGD -------------------------------------------------------------------------------------
@api("media.dvpp_jpeg_decode_async", inject=False)
def dvpp_jpeg_decode_async(channel_desc: int, data: int, size: int, output_desc: int, stream: int) -> int:
    """Queue a decode of the JPEG at ``data`` (DVPP memory) into ``output_desc``'s buffer. At the
    sync: NV12/NV21 (or YUV400) written with width stride ``align(w, 128)`` and height stride
    ``align(h, 16)``; the desc's width/height/strides set to the decoded picture's (width and height
    rounded down to even for NV12/NV21) and its ret code to 0, or to a JPEGD error code and the
    buffer untouched."""
    ctx = STATE.current
    injected = STATE.injected_code("media.dvpp_jpeg_decode_async", ctx.device if ctx else None)
    ctx = STATE.require_context()
    _dvpp.open_channel(channel_desc, ctx)
    s = _dvpp.stream_in(stream, ctx)
    in_mem, in_off = _dvpp.dvpp_region(data, size, ctx.device, "JPEGD input")
    out = _snapshot(output_desc, ctx.device, "JPEGD output desc")
    if out.fmt not in (*YUV420SP, PIXEL_FORMAT_YUV_400):
        raise Fail(ACL_ERROR_INVALID_PARAM, f"JPEGD output format {out.fmt} (NV12 1, NV21 2 or YUV400 0 only)")
    mode = _jpegd_mode()
    device = ctx.device

    def run() -> int | None:
        _check_alive([out], "JPEGD")
        desc = STATE.pic_descs.get(output_desc)
        if desc is None:
            return None  # destroyed before the sync: recorded as misuse then
        if not _dvpp.live_mem(in_mem):
            raise Fail(ACL_ERROR_RT_AICPU_EXCEPTION, "JPEGD: input DVPP memory was freed before the task ran")
        code = injected if injected is not None else _decode(bytes(in_mem.data[in_off : in_off + size]), out, desc)
        if code:
            desc.ret_code = code
            return ACL_ERROR_RT_AICPU_EXCEPTION if mode == "sync" else None
        return None

    def _decode(jpeg: bytes, out: _Picture, desc: _dvpp.PicDesc) -> int:
        try:
            header = _jpeg.parse(jpeg)
        except _jpeg.NotJpeg:
            return JPEGD_ERR_STREAM
        if _jpeg.unsupported(header):
            return JPEGD_ERR_NOT_SUPPORT
        w, h = header.out_size
        ws, hs = align(w, 128), align(h, 16)
        grey_out = out.fmt == PIXEL_FORMAT_YUV_400
        need = ws * hs if grey_out else nv12_size(ws, hs)
        if grey_out and header.components != 1:
            _dvpp.misuse("media.dvpp_jpeg_decode_async", "YUV400 output for a colour JPEG (use NV12/NV21)", device)
            return JPEGD_ERR_ILLEGAL_PARAM
        if out.size < need:
            _dvpp.misuse(
                "media.dvpp_jpeg_decode_async",
                f"output buffer {out.size} bytes < {need} for {w}x{h} (use dvpp_jpeg_predict_dec_size)",
                device,
            )
            return JPEGD_ERR_ILLEGAL_PARAM
        try:
            y, cbcr = _jpeg.decode(jpeg, header)
        except Exception:  # Pillow/libjpeg refused the data: corrupt or truncated stream
            return JPEGD_ERR_STREAM
        if grey_out:
            _pixels.write_yuv400(out.mem.data, out.offset, ws, hs, y)
            desc.width, desc.height = w, h
        else:
            uv = None if cbcr is None else _pixels.subsample(cbcr)
            _pixels.write_yuv420sp(out.mem.data, out.offset, ws, hs, out.fmt, y, uv)
            desc.width, desc.height = w & ~1, h & ~1
        desc.width_stride, desc.height_stride, desc.ret_code = ws, hs, 0
        return 0

    s.pending.append(Task(run, outputs={output_desc}, memory={in_mem.ptr, out.mem.ptr}))
    return ACL_SUCCESS


# --- VPC ---------------------------------------------------------------------------------------
def _check_vpc_picture(p: _Picture, what: str, max_side: int) -> None:
    def bad(why: str) -> Fail:
        return Fail(ACL_ERROR_INVALID_PARAM, f"VPC {what} {p.width}x{p.height} (strides {p.ws}x{p.hs}): {why}")

    if p.fmt not in YUV420SP:
        raise bad(f"format {p.fmt}: NV12 (1) or NV21 (2) only")
    if not (VPC_MIN_W <= p.width <= max_side and VPC_MIN_H <= p.height <= max_side):
        raise bad(f"size outside {VPC_MIN_W}x{VPC_MIN_H}..{max_side}x{max_side}")
    if p.width % 2 or p.height % 2:
        raise bad("YUV420SP width and height must be even")
    if p.ws % 16 or p.ws < p.width or not VPC_STRIDE_MIN_W <= p.ws <= VPC_STRIDE_MAX:
        raise bad(f"width stride must be a multiple of 16, >= width, in {VPC_STRIDE_MIN_W}..{VPC_STRIDE_MAX}")
    if p.hs % 2 or p.hs < p.height or not VPC_STRIDE_MIN_H <= p.hs <= VPC_STRIDE_MAX:
        raise bad(f"height stride must be even, >= height, in {VPC_STRIDE_MIN_H}..{VPC_STRIDE_MAX}")
    if p.size < nv12_size(p.ws, p.hs):
        raise bad(f"buffer size {p.size} < width_stride * height_stride * 3 / 2 = {nv12_size(p.ws, p.hs)}")


def _vpc(
    name: str, channel_desc: int, input_desc: int, output_desc: int, roi: tuple[int, int, int, int], stream: int
) -> int:
    ctx = STATE.require_context()
    _dvpp.open_channel(channel_desc, ctx)
    s = _dvpp.stream_in(stream, ctx)
    src = _snapshot(input_desc, ctx.device, "VPC input desc")
    dst = _snapshot(output_desc, ctx.device, "VPC output desc")
    _check_vpc_picture(src, "input", VPC_MAX_IN)
    _check_vpc_picture(dst, "output", VPC_MAX_OUT)
    left, right, top, bottom = roi
    if left % 2 or top % 2 or right % 2 == 0 or bottom % 2 == 0:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"ROI {roi}: left and top must be even, right and bottom odd")
    if not (left < right < src.width and top < bottom < src.height):
        raise Fail(ACL_ERROR_INVALID_PARAM, f"ROI {roi} (inclusive) is not inside the {src.width}x{src.height} input")
    rw, rh = right - left + 1, bottom - top + 1
    if rw < VPC_MIN_W or rh < VPC_MIN_H:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"ROI {rw}x{rh} is smaller than {VPC_MIN_W}x{VPC_MIN_H}")
    for out_n, in_n, axis in ((dst.width, rw, "width"), (dst.height, rh, "height")):
        if not VPC_SCALE_MIN <= out_n / in_n <= VPC_SCALE_MAX:
            raise Fail(ACL_ERROR_INVALID_PARAM, f"{axis} scale {in_n} -> {out_n} is outside 1/32..16")

    def run() -> None:
        _check_alive([src, dst], f"VPC ({name})")
        y, uv = _pixels.read_yuv420sp(src.mem.data, src.offset, src.ws, src.hs, src.width, src.height, src.fmt)
        y = _pixels.resize_bilinear(y[top : bottom + 1, left : right + 1], dst.height, dst.width)
        uv = _pixels.resize_bilinear(
            uv[top // 2 : (bottom + 1) // 2, left // 2 : (right + 1) // 2], dst.height // 2, dst.width // 2
        )
        _pixels.write_yuv420sp(dst.mem.data, dst.offset, dst.ws, dst.hs, dst.fmt, y, uv)
        desc = STATE.pic_descs.get(output_desc)
        if desc is not None:
            desc.ret_code = 0

    s.pending.append(Task(run, outputs={output_desc}, memory={src.mem.ptr, dst.mem.ptr}))
    return ACL_SUCCESS


@api("media.dvpp_vpc_crop_async")
def dvpp_vpc_crop_async(channel_desc: int, input_desc: int, output_desc: int, crop_area: int, stream: int) -> int:
    """Queue: the ROI ``crop_area`` of the input, resized (bilinear) to the output's width x height."""
    STATE.require_init()
    roi = STATE.roi_configs.get(crop_area)
    if roi is None:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"ROI config {crop_area!r} is not live")
    return _vpc("crop", channel_desc, input_desc, output_desc, (roi.left, roi.right, roi.top, roi.bottom), stream)


@api("media.dvpp_vpc_crop_resize_async")
def dvpp_vpc_crop_resize_async(
    channel_desc: int, input_desc: int, output_desc: int, crop_area: int, resize_config: int, stream: int
) -> int:
    """Queue: the ROI ``crop_area`` of the input, resized to the output's width x height with
    ``resize_config``'s interpolation (0 and 1 are both emulated as bilinear; see ``_pixels``)."""
    STATE.require_init()
    roi = STATE.roi_configs.get(crop_area)
    if roi is None:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"ROI config {crop_area!r} is not live")
    if resize_config not in STATE.resize_configs:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"resize config {resize_config!r} is not live")
    return _vpc(
        "crop_resize", channel_desc, input_desc, output_desc, (roi.left, roi.right, roi.top, roi.bottom), stream
    )


@api("media.dvpp_vpc_resize_async")
def dvpp_vpc_resize_async(channel_desc: int, input_desc: int, output_desc: int, resize_config: int, stream: int) -> int:
    """Queue: the whole input resized (bilinear) to the output's width x height."""
    STATE.require_init()
    if resize_config not in STATE.resize_configs:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"resize config {resize_config!r} is not live")
    d = _dvpp.pic(input_desc, "VPC input desc")
    roi = (0, max(d.width, 1) - 1, 0, max(d.height, 1) - 1)
    return _vpc("resize", channel_desc, input_desc, output_desc, roi, stream)
