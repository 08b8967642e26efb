"""DVPP decode for AIPP models on the acl backend: the device decode stage of :class:`~.acl.AclSession`.

Per batch: each JPEG that JPEGD can take (decided from its header, :func:`dvpp_refusal`) is copied into
DVPP memory and decoded asynchronously (JPEGD, NV12). VPC then brings the centred region that the CPU
path's resize-then-crop maps from to the model's input size, in the steps :mod:`.vpc_plan` plans
(exact halvings, a crop onto an even-aligned window of twice the size, a last halving), the last one
straight into one row of a DVPP staging buffer; one ``synchronize_stream`` waits for the whole batch.
Meanwhile the worker's CPU decode threads take the other files (progressive, CMYK, 12-bit,
EXIF-rotated, too small or large, not JPEG), whose RGB crops are converted to NV12 on the host
(:func:`rgb_to_nv12`) and copied into their rows, so the model sees the same input either way. A file
JPEGD rejects at run time (its picture description's return code) goes the CPU way too; it is an
error row only if the CPU fails as well.

Everything is made once per session and reused: the channel, a DVPP stream, a bilinear resize config;
per batch slot a JPEGD output description, one description per intermediate VPC picture and one for
its staging row, and input, decode and two intermediate buffers (grown when a larger image comes);
and two staging buffers (a batch decodes into one while the previous one is copied into the model).
:meth:`DvppDecoder.close` releases them in reverse order; the session calls it before its own
resources, also after a failure mid-batch. A failure after anything was queued waits for the stream
before anything is freed.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BackendError, ImageError
from ..preprocess import Decoded, Preprocess
from .jpeg_sniff import JpegInfo, gpu_refusal, sniff_jpeg
from .vpc_plan import plan

PIXEL_FORMAT_YUV_SEMIPLANAR_420 = 1  # NV12
JPEGD_MIN_SIDE, JPEGD_MAX_SIDE = 32, 8192
STAGING_BUFFERS = 2  # the batch being decoded, and the one being copied into the model
VPC_BILINEAR = 1  # resize config interpolation: OpenCV's bilinear, as CANN documents it (0 is chip-dependent)

CpuDecode = Callable[[list[bytes]], list[Decoded | ImageError]]


def align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def dvpp_refusal(info: JpegInfo | None, max_pixels: int) -> str | None:
    """Why JPEGD must not have an image (it goes to the CPU), or None."""
    reason = gpu_refusal(info, max_pixels, gpu_max_pixels=JPEGD_MAX_SIDE * JPEGD_MAX_SIDE)
    if reason is not None or info is None:
        return reason
    if not (JPEGD_MIN_SIDE <= info.width <= JPEGD_MAX_SIDE and JPEGD_MIN_SIDE <= info.height <= JPEGD_MAX_SIDE):
        return f"{info.width}x{info.height} is outside JPEGD's {JPEGD_MIN_SIDE}..{JPEGD_MAX_SIDE}"
    return None


def rgb_to_nv12(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> NV12 bytes (``H * W * 3 // 2``): full-range BT.601 (JFIF) YCbCr, as a
    JPEG stores it and JPEGD outputs it; chroma averaged over 2x2 blocks. H and W even."""
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    v = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    h, w = y.shape
    uv = np.stack([u, v], axis=-1).reshape(h // 2, 2, w // 2, 2, 2).mean(axis=(1, 3))
    out = np.empty(h * w * 3 // 2, dtype=np.uint8)
    out[: h * w] = np.clip(np.rint(y), 0, 255).reshape(-1)
    out[h * w :] = np.clip(np.rint(uv), 0, 255).reshape(-1)
    return out


@dataclass
class DvppBatch:
    """One decoded batch (a :class:`~.base.DeviceBatch`): model row ``k`` is staging row ``staging_rows[k]``
    and holds input ``rows[k]``; ``results[i]`` is ``(width, height)`` of input ``i`` or its ImageError."""

    rows: list[int]
    results: list[Any]
    staging: int  # which staging buffer holds the rows
    staging_rows: list[int]
    gpu: int = 0  # decoded by DVPP (named like the GPU decoder's counts)
    cpu: int = 0  # decoded by the CPU
    seconds: float = 0.0  # DVPP submission and synchronisation
    reasons: dict[str, int] = field(default_factory=dict)  # why files went to the CPU


@dataclass
class _Slot:
    """One batch position's reusable DVPP resources (buffers grown when a larger image comes): the
    JPEG, JPEGD's picture, two intermediate VPC pictures used in turn (``mid0``, ``mid1``) with a
    description per intermediate step, and the description of its staging row."""

    jpeg_desc: int
    vpc_desc: int
    step_descs: list[int] = field(default_factory=list)
    in_ptr: int = 0
    in_cap: int = 0
    out_ptr: int = 0
    out_cap: int = 0
    mid0_ptr: int = 0
    mid0_cap: int = 0
    mid1_ptr: int = 0
    mid1_cap: int = 0


class DvppDecoder:
    """JPEG bytes of up to ``max_batch`` images -> NV12 rows of the model's input size in DVPP memory."""

    def __init__(self, session: Any, pp: Preprocess, max_batch: int, max_pixels: int) -> None:
        self.session = session
        self.acl = session.acl
        self.pp = pp
        self.max_pixels = max_pixels
        self.max_batch = max_batch
        self.width = self.height = pp.size
        self.row = self.width * self.height * 3 // 2
        self._lock = threading.Lock()
        self._undo: list[tuple[str, Callable[[], Any]]] = []
        self._slots: list[_Slot] = []
        self._next = 0
        self.closed = False
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- resources --------------------------------------------------------------------------
    def _open(self) -> None:
        media, s = self.acl.media, self.session
        s.use_context()
        chan = s.handle("acl.media.dvpp_create_channel_desc", media.dvpp_create_channel_desc())
        self._undo.append(("acl.media.dvpp_destroy_channel_desc", lambda: media.dvpp_destroy_channel_desc(chan)))
        s.check("acl.media.dvpp_create_channel", media.dvpp_create_channel(chan))
        self._undo.append(("acl.media.dvpp_destroy_channel", lambda: media.dvpp_destroy_channel(chan)))
        self.channel = chan
        stream = s.value("acl.rt.create_stream", self.acl.rt.create_stream())
        self._undo.append(("acl.rt.destroy_stream", lambda: self.acl.rt.destroy_stream(stream)))
        self.stream = stream
        # VPC crop+resize with an explicit bilinear filter where this pyACL has it (CANN 6+); older ones
        # only have dvpp_vpc_crop_async, whose filter is the chip's default
        self.resize_config = 0
        if hasattr(media, "dvpp_vpc_crop_resize_async"):
            cfg = s.handle("acl.media.dvpp_create_resize_config", media.dvpp_create_resize_config())
            self._undo.append(("acl.media.dvpp_destroy_resize_config", lambda: media.dvpp_destroy_resize_config(cfg)))
            s.check(
                "acl.media.dvpp_set_resize_config_interpolation",
                media.dvpp_set_resize_config_interpolation(cfg, VPC_BILINEAR),
            )
            self.resize_config = cfg
        self.staging = []
        for _ in range(STAGING_BUFFERS):
            ptr = self._dvpp_malloc(self.row * self.max_batch)
            self._undo.append(("acl.media.dvpp_free", functools.partial(media.dvpp_free, ptr)))
            self.staging.append(ptr)
        for _ in range(self.max_batch):
            self._slots.append(_Slot(self._pic_desc(), self._pic_desc()))

    def _pic_desc(self) -> int:
        media = self.acl.media
        desc = int(self.session.handle("acl.media.dvpp_create_pic_desc", media.dvpp_create_pic_desc()))
        self._undo.append(("acl.media.dvpp_destroy_pic_desc", lambda: media.dvpp_destroy_pic_desc(desc)))
        return desc

    def _dvpp_malloc(self, size: int) -> int:
        return int(self.session.value("acl.media.dvpp_malloc", self.acl.media.dvpp_malloc(size)))

    def _buffer(self, slot: _Slot, which: str, size: int) -> int:
        """The slot's input (``which="in"``), decode (``"out"``) or intermediate (``"mid0"``, ``"mid1"``)
        buffer, at least ``size`` bytes."""
        ptr, cap = getattr(slot, f"{which}_ptr"), getattr(slot, f"{which}_cap")
        if cap < size:
            if ptr:
                setattr(slot, f"{which}_ptr", 0)
                setattr(slot, f"{which}_cap", 0)
                self.session.check("acl.media.dvpp_free", self.acl.media.dvpp_free(ptr))
            cap = align(size, 1 << 16)
            ptr = self._dvpp_malloc(cap)
            setattr(slot, f"{which}_ptr", ptr)
            setattr(slot, f"{which}_cap", cap)
        return int(ptr)

    def close(self) -> list[str]:
        """Release everything in reverse order (the slots' buffers, the newest, first); returns what
        failed, and keeps going past it."""
        with self._lock:
            undo, self._undo = self._undo, []
            slots, self._slots = self._slots, []
            self.closed = True
        steps: list[tuple[str, Callable[[], Any]]] = list(undo)
        for slot in slots:
            for ptr in (slot.in_ptr, slot.out_ptr, slot.mid0_ptr, slot.mid1_ptr):
                if ptr:
                    steps.append(("acl.media.dvpp_free", functools.partial(self.acl.media.dvpp_free, ptr)))
        problems = []
        for name, fn in reversed(steps):
            try:
                ret = fn()
            except Exception as exc:
                problems.append(f"{name} raised {type(exc).__name__}: {exc}")
                continue
            if ret not in (0, None):
                problems.append(f"{name} returned {ret}")
        return problems

    def close_checked(self) -> int:
        """:meth:`close` for the session's undo stack: raises with every failure, else returns 0."""
        problems = self.close()
        if problems:
            raise BackendError("; ".join(problems))
        return 0

    # -- one batch --------------------------------------------------------------------------
    def decode(self, datas: Sequence[bytes], cpu_decode: CpuDecode | None = None) -> DvppBatch:
        """Decode ``datas`` into the next staging buffer; every input ends as a row or an error."""
        if cpu_decode is None:
            raise ValueError("the DVPP decoder needs the CPU decode path for its fallback")
        if len(datas) > self.max_batch:
            raise ValueError(f"{len(datas)} images for a decoder of {self.max_batch}")
        with self._lock:
            if self.closed:
                raise BackendError(f"device {self.session.device}: the DVPP decoder is closed")
            staging = self._next
            self._next = (self._next + 1) % STAGING_BUFFERS
            self.session.use_context()  # this runs in the decode thread: pyACL's context is per thread
            return self._decode(list(datas), cpu_decode, staging)

    def _decode(self, datas: list[bytes], cpu_decode: CpuDecode, staging: int) -> DvppBatch:
        infos = [sniff_jpeg(d) for d in datas]
        reasons: dict[str, int] = {}
        device: list[int] = []
        cpu: list[int] = []
        for i, info in enumerate(infos):
            why = dvpp_refusal(info, self.max_pixels)
            if why is None:
                device.append(i)
            else:
                cpu.append(i)
                reasons[why] = reasons.get(why, 0) + 1
        # the CPU decode threads take their files while DVPP takes the others
        with cf.ThreadPoolExecutor(1, thread_name_prefix="dvpp-cpu") as helper:
            cpu_future = helper.submit(cpu_decode, [datas[i] for i in cpu]) if cpu else None
            t0 = time.perf_counter()
            refused = self._submit_and_wait(datas, infos, device, staging) if device else set()
            seconds = time.perf_counter() - t0
            cpu_results = list(cpu_future.result()) if cpu_future is not None else []
        if refused:  # JPEGD said no at run time: the CPU tries
            reasons["refused by JPEGD"] = len(refused)
            late = sorted(refused)
            cpu += late
            cpu_results += cpu_decode([datas[i] for i in late])
        results: list[Any] = [None] * len(datas)
        rows: list[int] = []
        staging_rows: list[int] = []
        for k, i in enumerate(device):
            if i not in refused:
                info = infos[i]
                assert info is not None
                results[i] = (info.width, info.height)
                rows.append(i)
                staging_rows.append(k)  # JPEGD + VPC wrote staging row k
        gpu = len(rows)
        slot_of = {i: k for k, i in enumerate(device)}  # a refused file's CPU rows go where DVPP's would have
        free_row = len(device)
        for i, res in zip(cpu, cpu_results, strict=True):
            if isinstance(res, ImageError):
                results[i] = res
                continue
            results[i] = (res.width, res.height)
            target = slot_of.get(i)
            if target is None:
                target, free_row = free_row, free_row + 1
            self.session.copy_in(self.staging[staging] + target * self.row, self.row, rgb_to_nv12(res.array).tobytes())
            rows.append(i)
            staging_rows.append(target)
        return DvppBatch(rows, results, staging, staging_rows, gpu, len(rows) - gpu, seconds, reasons)

    def _submit_and_wait(
        self, datas: list[bytes], infos: list[JpegInfo | None], device: list[int], staging: int
    ) -> set[int]:
        """JPEGD then VPC for each ``device`` input (slot k writes staging row k), one sync; returns the
        inputs JPEGD refused (each picture description's return code says so)."""
        media, s = self.acl.media, self.session
        rois: list[int] = []
        queued = submitted = False
        try:
            for k, i in enumerate(device):
                info = infos[i]
                assert info is not None
                slot, data = self._slots[k], datas[i]
                in_ptr = self._buffer(slot, "in", len(data))
                s.copy_in(in_ptr, slot.in_cap, data)
                # JPEGD's NV12 output: even width and height, strides aligned to 128 and 16. JPEGD fills them
                # in at the sync; VPC, queued behind it, is described with them now
                w, h = info.width & ~1, info.height & ~1
                ws, hs = align(info.width, 128), align(info.height, 16)
                out_ptr = self._buffer(slot, "out", ws * hs * 3 // 2)
                self._describe(slot.jpeg_desc, out_ptr, slot.out_cap, w, h, ws, hs)
                ret = media.dvpp_jpeg_decode_async(self.channel, in_ptr, len(data), slot.jpeg_desc, self.stream)
                queued = True  # from here a failure must wait for the stream before anything is freed
                s.check("acl.media.dvpp_jpeg_decode_async", ret)
                row = self.staging[staging] + k * self.row
                self._submit_vpc(slot, info.width, info.height, row, rois)
            synced = self.acl.rt.synchronize_stream(self.stream)
            submitted = True
        finally:
            if queued and not submitted:  # failed half-way: let the queued tasks finish before freeing what they use
                self.acl.rt.synchronize_stream(self.stream)
            for roi in rois:  # read by the asynchronous calls: destroyed only now
                media.dvpp_destroy_roi_config(roi)
        refused = {i for k, i in enumerate(device) if media.dvpp_get_pic_desc_ret_code(self._slots[k].jpeg_desc) != 0}
        if synced != 0:
            if not refused:  # a failed task that no picture owns: the device's fault, not the images'
                s.check("acl.rt.synchronize_stream", synced)
            # after a failed task the stream may have skipped the ones queued behind it: no row of this batch
            # can be trusted, so the CPU decodes them all
            return set(device)
        return refused

    def _submit_vpc(self, slot: _Slot, width: int, height: int, row: int, rois: list[int]) -> None:
        """Queue the VPC steps (:func:`~.vpc_plan.plan`) from the slot's JPEGD picture to staging ``row``;
        the ROI configs made go in ``rois``, to destroy after the sync."""
        media, s = self.acl.media, self.session
        steps = plan(width, height, self.pp).steps
        while len(slot.step_descs) < len(steps) - 1:
            slot.step_descs.append(self._pic_desc())
        pictures = []  # (width, height, width stride) of each intermediate picture
        need = [0, 0]
        for n, step in enumerate(steps[:-1]):
            w, h = step.out_size
            pictures.append((w, h, align(w, 16)))
            need[n % 2] = max(need[n % 2], align(w, 16) * h * 3 // 2)
        mids = [self._buffer(slot, f"mid{m}", need[m]) if need[m] else 0 for m in (0, 1)]  # before queuing
        source = slot.jpeg_desc
        for n, step in enumerate(steps):
            if n == len(steps) - 1:
                target = slot.vpc_desc
                self._describe(target, row, self.row, self.width, self.height, self.width, self.height)
            else:
                target = slot.step_descs[n]
                w, h, ws = pictures[n]
                self._describe(target, mids[n % 2], getattr(slot, f"mid{n % 2}_cap"), w, h, ws, h)
            roi = s.handle("acl.media.dvpp_create_roi_config", media.dvpp_create_roi_config(*step.roi))
            rois.append(roi)
            if self.resize_config:
                s.check(
                    "acl.media.dvpp_vpc_crop_resize_async",
                    media.dvpp_vpc_crop_resize_async(
                        self.channel, source, target, roi, self.resize_config, self.stream
                    ),
                )
            else:
                s.check(
                    "acl.media.dvpp_vpc_crop_async",
                    media.dvpp_vpc_crop_async(self.channel, source, target, roi, self.stream),
                )
            source = target

    def _describe(self, desc: int, ptr: int, size: int, w: int, h: int, ws: int, hs: int) -> None:
        media, check = self.acl.media, self.session.check
        check("acl.media.dvpp_set_pic_desc_data", media.dvpp_set_pic_desc_data(desc, ptr))
        check("acl.media.dvpp_set_pic_desc_size", media.dvpp_set_pic_desc_size(desc, size))
        check(
            "acl.media.dvpp_set_pic_desc_format", media.dvpp_set_pic_desc_format(desc, PIXEL_FORMAT_YUV_SEMIPLANAR_420)
        )
        check("acl.media.dvpp_set_pic_desc_width", media.dvpp_set_pic_desc_width(desc, w))
        check("acl.media.dvpp_set_pic_desc_height", media.dvpp_set_pic_desc_height(desc, h))
        check("acl.media.dvpp_set_pic_desc_width_stride", media.dvpp_set_pic_desc_width_stride(desc, ws))
        check("acl.media.dvpp_set_pic_desc_height_stride", media.dvpp_set_pic_desc_height_stride(desc, hs))
