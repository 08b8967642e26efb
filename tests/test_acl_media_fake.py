"""The emulated pyACL's DVPP (``acl.media``: JPEGD, VPC) and AIPP models, as the acl backend's witness.

Each rule the emulator enforces is shown to be enforced: a wrong call returns non-zero and leaves a
misuse record (or, for what the device finds at run time, a non-zero pic desc ret code after the
sync), and a right call leaves nothing live at ``acl.finalize``. Pixels: JPEGD's Y plane is the
JPEG's own Y (checked against Pillow), VPC crops and resizes NV12, an AIPP model gives the plain
model's logits on the equivalent normalised RGB within a bound computed from the model's weights.
Only tiny generated images.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import tiny_onnx
from onnx import numpy_helper
from PIL import Image

FAKES = Path(__file__).parent / "fakes"
NV12, NV21, YUV400 = 1, 2, 0
H2D, D2H, D2D = 1, 2, 3
GARBAGE = 0xCD  # what fresh device memory holds in the emulator
JPEGD_NOT_SUPPORT, JPEGD_ILLEGAL_PARAM = 0xA0058008, 0xA0058003
FEATURE_UNSUPPORTED, FAILURE, INVALID_PARAM = 200006, 500001, 100000
AICPU_EXCEPTION, RESOURCE_NOT_CLEARED, AIPP_NOT_EXIST = 507018, 148051, 145015


def align(v: int, to: int) -> int:
    return (v + to - 1) // to * to


@pytest.fixture
def acl(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The emulated pyACL, fresh for each test (tests check live/misuse themselves)."""
    for var in ("ACL_FAKE_FAIL", "ACL_FAKE_HIDE", "ACL_FAKE_REPORT_DIR", "ACL_FAKE_JPEGD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(FAKES))
    import acl as fake

    fake._fake.reset()
    yield fake
    for name in [m for m in sys.modules if m == "acl" or m.startswith("acl.")]:
        del sys.modules[name]


class Npu:
    """One device, context, stream and DVPP channel; tracks what the test allocates so ``close``
    releases it all, in reverse order, and returns ``acl.finalize``'s code."""

    def __init__(self, acl: ModuleType) -> None:
        self.acl, self.m = acl, acl.media
        assert acl.init() == 0
        assert acl.rt.set_device(0) == 0
        self.ctx, ret = acl.rt.create_context(0)
        assert ret == 0
        self.stream, ret = acl.rt.create_stream()
        assert ret == 0
        self.chan = self.m.dvpp_create_channel_desc()
        assert self.chan and self.m.dvpp_create_channel(self.chan) == 0
        self.mems: list[int] = []
        self.pics: list[int] = []
        self.rois: list[int] = []
        self.keep: list[Any] = []  # host buffers behind pointers handed out

    def host(self, data: bytes) -> int:
        self.keep.append(data)
        return self.acl.util.bytes_to_ptr(data)

    def malloc(self, size: int) -> int:
        ptr, ret = self.m.dvpp_malloc(size)
        assert ret == 0
        self.mems.append(ptr)
        return ptr

    def upload(self, data: bytes) -> int:
        ptr = self.malloc(len(data))
        assert self.acl.rt.memcpy(ptr, len(data), self.host(data), len(data), H2D) == 0
        return ptr

    def read(self, ptr: int, size: int) -> np.ndarray:
        out = np.empty(size, dtype=np.uint8)
        assert self.acl.rt.memcpy(self.acl.util.numpy_to_ptr(out), size, ptr, size, D2H) == 0
        return out

    def pic(self, ptr: int, size: int, fmt: int = NV12, w: int = 0, h: int = 0, ws: int = 0, hs: int = 0) -> int:
        d = self.m.dvpp_create_pic_desc()
        assert d
        self.pics.append(d)
        for setter, value in (
            (self.m.dvpp_set_pic_desc_data, ptr),
            (self.m.dvpp_set_pic_desc_size, size),
            (self.m.dvpp_set_pic_desc_format, fmt),
            (self.m.dvpp_set_pic_desc_width, w),
            (self.m.dvpp_set_pic_desc_height, h),
            (self.m.dvpp_set_pic_desc_width_stride, ws),
            (self.m.dvpp_set_pic_desc_height_stride, hs),
        ):
            assert setter(d, value) == 0
        return d

    def roi(self, left: int, right: int, top: int, bottom: int) -> int:
        r = self.m.dvpp_create_roi_config(left, right, top, bottom)
        assert r
        self.rois.append(r)
        return r

    def decode(self, jpeg: bytes, fmt: int = NV12, sync: bool = True) -> tuple[int, int, int]:
        """JPEGD the way a backend should: size from predict_dec_size, geometry from the desc after
        the sync. Returns (out desc, out pointer, out size)."""
        src = self.host(jpeg)
        size, ret = self.m.dvpp_jpeg_predict_dec_size(src, len(jpeg), fmt)
        assert ret == 0
        out = self.malloc(size)
        desc = self.pic(out, size, fmt)
        assert self.m.dvpp_jpeg_decode_async(self.chan, self.upload(jpeg), len(jpeg), desc, self.stream) == 0
        if sync:
            assert self.acl.rt.synchronize_stream(self.stream) == 0
        return desc, out, size

    def geometry(self, desc: int) -> tuple[int, int, int, int]:
        m = self.m
        return (
            m.dvpp_get_pic_desc_width(desc),
            m.dvpp_get_pic_desc_height(desc),
            m.dvpp_get_pic_desc_width_stride(desc),
            m.dvpp_get_pic_desc_height_stride(desc),
        )

    def planes(self, desc: int, ptr: int) -> tuple[np.ndarray, np.ndarray]:
        """Y (h, w) and interleaved UV (h/2, w) of an NV12 picture described by ``desc``."""
        w, h, ws, hs = self.geometry(desc)
        buf = self.read(ptr, ws * hs * 3 // 2)
        return buf[: ws * hs].reshape(hs, ws)[:h, :w], buf[ws * hs :].reshape(hs // 2, ws)[: h // 2, :w]

    def close(self) -> int:
        acl, m = self.acl, self.m
        assert acl.rt.synchronize_stream(self.stream) == 0
        for r in reversed(self.rois):
            assert m.dvpp_destroy_roi_config(r) == 0
        for d in reversed(self.pics):
            assert m.dvpp_destroy_pic_desc(d) == 0
        for p in reversed(self.mems):
            assert m.dvpp_free(p) == 0
        assert m.dvpp_destroy_channel(self.chan) == 0
        assert m.dvpp_destroy_channel_desc(self.chan) == 0
        assert acl.rt.destroy_stream(self.stream) == 0
        assert acl.rt.destroy_context(self.ctx) == 0
        assert acl.rt.reset_device(0) == 0
        return acl.finalize()


@pytest.fixture
def npu(acl: ModuleType) -> Npu:
    return Npu(acl)


def clean_close(npu: Npu) -> None:
    assert npu.close() == 0
    assert not npu.acl._fake.misuse(), npu.acl._fake.misuse()
    assert not any(npu.acl._fake.live().values())


def picture(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth colour picture (JPEG-friendly: few ringing artefacts)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def jpeg(img: Image.Image, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=kw.pop("quality", 92), **kw)
    return buf.getvalue()


def patch_sof(data: bytes, marker: int | None = None, precision: int | None = None) -> bytes:
    """The same bytes with the frame header's marker and/or precision changed (header-only tests)."""
    i = data.index(b"\xff\xc0")
    out = bytearray(data)
    if marker is not None:
        out[i + 1] = marker
    if precision is not None:
        out[i + 4] = precision
    return bytes(out)


# --- JPEGD ---------------------------------------------------------------------------------------
def test_jpegd_decodes_to_nv12_whose_y_is_the_jpegs_y(npu: Npu) -> None:
    data = jpeg(picture(100, 70))
    info = npu.m.dvpp_jpeg_get_image_info(npu.host(data), len(data))
    assert info == (100, 70, 3, 0)
    desc, out, size = npu.decode(data)
    assert size == 128 * 80 * 3 // 2  # width stride align(100, 128), height stride align(70, 16)
    assert npu.geometry(desc) == (100, 70, 128, 80)
    assert npu.m.dvpp_get_pic_desc_ret_code(desc) == 0
    y, uv = npu.planes(desc, out)
    pillow = Image.open(io.BytesIO(data))
    pillow.draft("YCbCr", pillow.size)  # Pillow's own YCbCr decode, no RGB round trip
    ycbcr = np.asarray(pillow).astype(int)
    assert pillow.mode == "YCbCr" and np.abs(y.astype(int) - ycbcr[..., 0]).max() <= 1
    via_rgb = np.asarray(Image.open(io.BytesIO(data)).convert("YCbCr")).astype(int)
    assert np.abs(y.astype(int) - via_rgb[..., 0]).max() <= 2  # an RGB round trip rounds and clips twice
    cbcr = ycbcr[..., 1:].reshape(35, 2, 50, 2, 2).mean(axis=(1, 3))  # NV12 chroma: 2x2 blocks, U first
    assert np.abs(uv.reshape(35, 50, 2).astype(float) - cbcr).max() <= 3
    padding = npu.read(out, size)[: 128 * 80].reshape(80, 128)
    assert (padding[:, 100:] == GARBAGE).all() and (padding[70:] == GARBAGE).all()  # strides: untouched
    clean_close(npu)


def test_jpegd_odd_size_grey_and_exif_rotation(npu: Npu) -> None:
    odd, _, _ = npu.decode(jpeg(picture(101, 75)))
    assert npu.geometry(odd) == (100, 74, 128, 80)  # NV12: width and height rounded down to even
    grey = jpeg(picture(64, 48).convert("L"))
    assert npu.m.dvpp_jpeg_get_image_info(npu.host(grey), len(grey)) == (64, 48, 1, 0)
    desc, out, _ = npu.decode(grey)
    y, uv = npu.planes(desc, out)
    assert (uv == 128).all() and np.abs(y.astype(int) - np.asarray(Image.open(io.BytesIO(grey)))).max() == 0
    desc400, _, size400 = npu.decode(grey, fmt=YUV400)
    assert size400 == 128 * 48 and npu.geometry(desc400) == (64, 48, 128, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    rotated = jpeg(picture(64, 40, seed=2), exif=exif.tobytes())
    assert npu.m.dvpp_jpeg_get_image_info(npu.host(rotated), len(rotated))[:2] == (64, 40)  # the header's
    desc, out, size = npu.decode(rotated)
    assert size == 128 * 64 * 3 // 2 and npu.geometry(desc) == (40, 64, 128, 64)  # JPEGD applies EXIF
    pillow = Image.open(io.BytesIO(rotated))
    pillow.draft("YCbCr", pillow.size)
    upright = np.asarray(pillow.transpose(Image.Transpose.ROTATE_270))  # what exif_transpose does for 6
    assert np.abs(npu.planes(desc, out)[0].astype(int) - upright[..., 0]).max() <= 1
    clean_close(npu)


@pytest.mark.parametrize(
    ("kind", "make"),
    [
        ("progressive", lambda: jpeg(picture(64, 48), progressive=True)),
        ("cmyk", lambda: jpeg(picture(64, 48).convert("CMYK"))),
        ("arithmetic", lambda: patch_sof(jpeg(picture(64, 48)), marker=0xC9)),
        ("lossless", lambda: patch_sof(jpeg(picture(64, 48)), marker=0xC3)),
        ("12-bit", lambda: patch_sof(jpeg(picture(64, 48)), marker=0xC1, precision=12)),
        ("too small", lambda: jpeg(picture(16, 40))),
        ("too large", lambda: jpeg(picture(8200, 32))),
    ],
)
def test_jpegd_refuses_what_it_cannot_decode(acl: ModuleType, kind: str, make: Any, monkeypatch: Any) -> None:
    data = make()
    npu = Npu(acl)
    # default: the header calls already say no (not a misuse: the data is at fault)
    w, h, c, ret = npu.m.dvpp_jpeg_get_image_info(npu.host(data), len(data))
    assert ret == FEATURE_UNSUPPORTED and (w, h, c) == (0, 0, 0)
    assert npu.m.dvpp_jpeg_predict_dec_size(npu.host(data), len(data), NV12) == (0, FEATURE_UNSUPPORTED)
    # ACL_FAKE_JPEGD=late: only the decode says no, through the desc's ret code after the sync
    monkeypatch.setenv("ACL_FAKE_JPEGD", "late")
    assert npu.m.dvpp_jpeg_get_image_info(npu.host(data), len(data))[3] == 0
    out = npu.malloc(4096)
    desc = npu.pic(out, 4096, NV12, 8, 8, 32, 8)
    assert npu.m.dvpp_jpeg_decode_async(npu.chan, npu.upload(data), len(data), desc, npu.stream) == 0
    assert npu.m.dvpp_get_pic_desc_ret_code(desc) == 0  # not yet: the task runs at the sync
    assert acl.rt.synchronize_stream(npu.stream) == 0
    assert npu.m.dvpp_get_pic_desc_ret_code(desc) == JPEGD_NOT_SUPPORT
    assert (npu.read(out, 4096) == GARBAGE).all() and npu.geometry(desc) == (8, 8, 32, 8)
    # ACL_FAKE_JPEGD=sync: the sync fails as well (what rtStreamSynchronize reports for a DVPP task)
    monkeypatch.setenv("ACL_FAKE_JPEGD", "sync")
    assert npu.m.dvpp_set_pic_desc_size(desc, 4096) == 0
    assert npu.m.dvpp_jpeg_decode_async(npu.chan, npu.upload(data), len(data), desc, npu.stream) == 0
    assert acl.rt.synchronize_stream(npu.stream) == AICPU_EXCEPTION
    clean_close(npu)


def test_jpegd_not_a_jpeg_and_corrupt_stream(acl: ModuleType, npu: Npu) -> None:
    png = io.BytesIO()
    picture(64, 48).save(png, format="PNG")
    assert npu.m.dvpp_jpeg_get_image_info(npu.host(png.getvalue()), len(png.getvalue()))[3] == FAILURE
    truncated = jpeg(picture(64, 48))[:-200]  # header intact, scan cut
    assert npu.m.dvpp_jpeg_get_image_info(npu.host(truncated), len(truncated))[3] == 0
    desc, out, size = npu.decode(truncated)
    assert npu.m.dvpp_get_pic_desc_ret_code(desc) != 0 and (npu.read(out, size) == GARBAGE).all()
    clean_close(npu)


def test_injected_jpegd_rejection_hits_one_image_at_run_time(acl: ModuleType, monkeypatch: Any) -> None:
    monkeypatch.setenv("ACL_FAKE_FAIL", "media.dvpp_jpeg_decode_async:2,media.dvpp_jpeg_decode_async:3=1234")
    npu = Npu(acl)
    results = []
    for seed in range(4):
        desc, out, size = npu.decode(jpeg(picture(64, 48, seed)))  # every call returns 0
        results.append((npu.m.dvpp_get_pic_desc_ret_code(desc), (npu.read(out, size) == GARBAGE).all()))
    assert results == [(0, False), (JPEGD_NOT_SUPPORT, True), (1234, True), (0, False)]
    injected = acl._fake.report()["injected"]
    assert [(i["call"], i["nth"], i["code"]) for i in injected] == [
        ("acl.media.dvpp_jpeg_decode_async", 2, JPEGD_NOT_SUPPORT),
        ("acl.media.dvpp_jpeg_decode_async", 3, 1234),
    ]
    clean_close(npu)


def test_jpegd_output_too_small_or_wrong_format(npu: Npu) -> None:
    data = jpeg(picture(100, 70))
    out = npu.malloc(128 * 80)  # room for Y only
    small = npu.pic(out, 128 * 80)
    assert npu.m.dvpp_jpeg_decode_async(npu.chan, npu.upload(data), len(data), small, npu.stream) == 0
    grey = npu.pic(npu.malloc(128 * 80), 128 * 80, YUV400)  # YUV400 for a colour JPEG
    assert npu.m.dvpp_jpeg_decode_async(npu.chan, npu.upload(data), len(data), grey, npu.stream) == 0
    assert npu.acl.rt.synchronize_stream(npu.stream) == 0
    assert npu.m.dvpp_get_pic_desc_ret_code(small) == JPEGD_ILLEGAL_PARAM
    assert npu.m.dvpp_get_pic_desc_ret_code(grey) == JPEGD_ILLEGAL_PARAM
    assert ["size" in m["why"] or "YUV400" in m["why"] for m in npu.acl._fake.misuse()] == [True, True]
    assert npu.close() == 0


# --- asynchrony ----------------------------------------------------------------------------------
def test_output_is_visible_only_after_the_sync(npu: Npu) -> None:
    data = jpeg(picture(64, 48))
    desc, out, size = npu.decode(data, sync=False)
    assert (npu.read(out, size) == GARBAGE).all()  # a missing sync reads the old bytes
    assert npu.geometry(desc) == (0, 0, 0, 0)
    assert npu.acl.rt.synchronize_stream(npu.stream) == 0
    assert npu.geometry(desc) == (64, 48, 128, 48) and not (npu.read(out, size) == GARBAGE).all()
    dst = npu.malloc(32 * 32 * 3 // 2)
    out_desc = npu.pic(dst, 32 * 32 * 3 // 2, NV12, 32, 32, 32, 32)
    assert npu.m.dvpp_vpc_crop_async(npu.chan, desc, out_desc, npu.roi(0, 47, 0, 47), npu.stream) == 0
    assert (npu.read(dst, 32 * 32 * 3 // 2) == GARBAGE).all()
    assert npu.acl.rt.synchronize_stream(npu.stream) == 0
    assert (npu.read(dst, 32 * 32 * 3 // 2) == GARBAGE).mean() < 0.05
    clean_close(npu)


def test_freeing_or_destroying_what_a_queued_task_uses_is_misuse(npu: Npu) -> None:
    desc, out, _ = npu.decode(jpeg(picture(64, 48)), sync=False)
    assert npu.m.dvpp_free(out) == 0  # allowed by the API; the device would write freed memory
    npu.mems.remove(out)
    assert npu.acl.rt.synchronize_stream(npu.stream) == AICPU_EXCEPTION
    why = [m["why"] for m in npu.acl._fake.misuse()]
    assert len(why) == 2 and "queued" in why[0] and "freed before the task ran" in why[1]
    desc, out, _ = npu.decode(jpeg(picture(64, 48)), sync=False)
    assert npu.m.dvpp_destroy_pic_desc(desc) == 0  # the device would write a freed description
    npu.pics.remove(desc)
    assert npu.acl.rt.synchronize_stream(npu.stream) == 0
    assert "destroyed before the task writing it ran" in npu.acl._fake.misuse()[2]["why"]
    assert npu.close() == 0


# --- VPC -----------------------------------------------------------------------------------------
def test_vpc_crop_to_224_after_jpegd(npu: Npu) -> None:
    """Resize-short-side-256 + centre-crop-224 in one call: the ROI is the centred source square."""
    desc, out, _ = npu.decode(jpeg(picture(300, 200, seed=5)))
    side = 200 * 224 // 256 // 2 * 2  # 174: the source square that maps onto the 224 crop, even
    left, top = (300 - side) // 2 // 2 * 2, (200 - side) // 2 // 2 * 2
    roi = npu.roi(left, left + side - 1, top, top + side - 1)
    dst = npu.malloc(224 * 224 * 3 // 2)
    crop = npu.pic(dst, 224 * 224 * 3 // 2, NV12, 224, 224, 224, 224)
    assert npu.m.dvpp_vpc_crop_async(npu.chan, desc, crop, roi, npu.stream) == 0
    assert npu.acl.rt.synchronize_stream(npu.stream) == 0
    assert npu.geometry(crop) == (224, 224, 224, 224) and npu.m.dvpp_get_pic_desc_ret_code(crop) == 0
    y, uv = npu.planes(crop, dst)
    src_y, src_uv = npu.planes(desc, out)
    expect = Image.fromarray(src_y[top : top + side, left : left + side]).resize((224, 224), Image.Resampling.BILINEAR)
    assert np.abs(y.astype(int) - np.asarray(expect)).mean() < 0.5
    assert np.abs(y.astype(int) - np.asarray(expect)).max() <= 3
    src_u = src_uv.reshape(100, 150, 2)[top // 2 : (top + side) // 2, left // 2 : (left + side) // 2, 0]
    u = uv.reshape(112, 112, 2)[..., 0]
    assert abs(float(u.mean()) - float(src_u.mean())) < 1.5
    # and the whole picture, resized
    small = npu.malloc(64 * 48 * 3 // 2)
    resized = npu.pic(small, 64 * 48 * 3 // 2, NV21, 64, 48, 64, 48)
    cfg = npu.m.dvpp_create_resize_config()
    assert npu.m.dvpp_vpc_resize_async(npu.chan, desc, resized, cfg, npu.stream) == 0
    assert npu.acl.rt.synchronize_stream(npu.stream) == 0
    assert npu.m.dvpp_destroy_resize_config(cfg) == 0
    ry, ruv = npu.planes(resized, small)
    expect = Image.fromarray(src_y[:200, :300]).resize((64, 48), Image.Resampling.BILINEAR, reducing_gap=None)
    assert abs(float(ry.mean()) - float(np.asarray(expect).mean())) < 2
    assert abs(float(ruv.reshape(24, 32, 2)[..., 1].mean()) - float(src_uv.reshape(100, 150, 2)[..., 0].mean())) < 2
    clean_close(npu)


VALID = {"in": (64, 48, 64, 48), "out": (32, 32, 32, 32), "roi": (0, 47, 0, 47)}
BAD_VPC = {
    "input width stride not a multiple of 16": {"in": (64, 48, 72, 48)},
    "input width stride below width": {"in": (64, 48, 48, 48)},
    "input height stride odd": {"in": (64, 48, 64, 49)},
    "input width odd": {"in": (63, 48, 64, 48)},
    "output width stride below 32": {"out": (16, 16, 16, 16)},
    "output height stride below height": {"out": (32, 32, 32, 30)},
    "output wider than 4096": {"out": (4098, 32, 4112, 32)},
    "output smaller than 10x6": {"out": (8, 6, 32, 6)},
    "output buffer too small": {"out_size": 32 * 32},
    "roi left odd": {"roi": (1, 47, 0, 47)},
    "roi right even": {"roi": (0, 46, 0, 47)},
    "roi bottom even": {"roi": (0, 47, 0, 46)},
    "roi outside the input": {"roi": (0, 65, 0, 47)},
    "roi smaller than 10x6": {"roi": (0, 7, 0, 5)},
    "scale above 16": {"roi": (0, 11, 0, 5), "out": (256, 32, 256, 32)},
    "scale below 1/32": {"in": (400, 48, 400, 48), "roi": (0, 399, 0, 47), "out": (10, 32, 32, 32)},
    "yuv400 input": {"in_fmt": YUV400},
}


@pytest.mark.parametrize("case", sorted(BAD_VPC))
def test_vpc_refuses_bad_strides_sizes_and_roi(npu: Npu, case: str) -> None:
    spec = {**VALID, **BAD_VPC[case]}
    iw, ih, iws, ihs = spec["in"]
    ow, oh, ows, ohs = spec["out"]
    src = npu.pic(
        npu.malloc(max(iws * ihs * 3 // 2, 1)), iws * ihs * 3 // 2, spec.get("in_fmt", NV12), iw, ih, iws, ihs
    )
    out_size = spec.get("out_size", ows * ohs * 3 // 2)
    dst_ptr = npu.malloc(ows * ohs * 3 // 2)
    dst = npu.pic(dst_ptr, out_size, NV12, ow, oh, ows, ohs)
    assert npu.m.dvpp_vpc_crop_async(npu.chan, src, dst, npu.roi(*spec["roi"]), npu.stream) == INVALID_PARAM
    assert len(npu.acl._fake.misuse()) == 1
    assert npu.acl.rt.synchronize_stream(npu.stream) == 0
    assert (npu.read(dst_ptr, ows * ohs * 3 // 2) == GARBAGE).all()  # nothing was queued
    assert npu.close() == 0


# --- memory kinds ---------------------------------------------------------------------------------
def test_dvpp_memory_kinds(acl: ModuleType, npu: Npu) -> None:
    m, data = npu.m, jpeg(picture(64, 48))
    dvpp = npu.upload(data)
    plain, ret = acl.rt.malloc(len(data), 0)
    assert ret == 0
    # memcpy works on DVPP memory: host -> dvpp -> device -> dvpp -> host
    assert acl.rt.memcpy(plain, len(data), dvpp, len(data), D2D) == 0
    back = npu.malloc(len(data))
    assert acl.rt.memcpy(back, len(data), plain, len(data), D2D) == 0
    assert npu.read(back, len(data)).tobytes() == data
    out = npu.malloc(128 * 48 * 3 // 2)
    desc = npu.pic(out, 128 * 48 * 3 // 2)
    plain_desc = npu.pic(plain, len(data))
    host_desc = npu.pic(npu.host(bytes(len(data))), len(data))
    wrong = [
        acl.rt.free(dvpp),  # DVPP memory is freed with dvpp_free
        m.dvpp_free(plain),  # and rt.malloc memory with rt.free
        m.dvpp_jpeg_decode_async(npu.chan, plain, len(data), desc, npu.stream),  # input not DVPP
        m.dvpp_jpeg_decode_async(npu.chan, npu.host(data), len(data), desc, npu.stream),  # host input
        m.dvpp_jpeg_decode_async(npu.chan, dvpp, len(data), plain_desc, npu.stream),  # output not DVPP
        m.dvpp_jpeg_decode_async(npu.chan, dvpp, len(data), host_desc, npu.stream),  # host output
        m.dvpp_jpeg_decode_async(npu.chan, dvpp, len(data) + (1 << 20), desc, npu.stream),  # past the allocation
        m.dvpp_jpeg_get_image_info(dvpp, len(data))[3],  # the header calls read host memory
    ]
    assert all(ret != 0 for ret in wrong), wrong
    assert len(acl._fake.misuse()) == len(wrong)
    assert acl.rt.free(plain) == 0
    assert npu.close() == 0


def test_dvpp_malloc_needs_a_context(acl: ModuleType) -> None:
    assert acl.media.dvpp_malloc(64) == (0, 100001)  # before acl.init
    assert acl.init() == 0
    assert acl.media.dvpp_malloc(64) == (0, 107002)  # ACL_ERROR_RT_CONTEXT_NULL
    assert acl.media.dvpp_create_channel(acl.media.dvpp_create_channel_desc()) == 107002
    assert acl.finalize() == RESOURCE_NOT_CLEARED  # the channel desc is still live
    assert acl._fake.report()["leaks_at_finalize"] == {"dvpp_channel_descs": 1}


# --- lifecycle ------------------------------------------------------------------------------------
def test_channel_lifecycle(acl: ModuleType, npu: Npu) -> None:
    m, data = npu.m, jpeg(picture(64, 48))
    src, out = npu.upload(data), npu.malloc(128 * 48 * 3 // 2)
    desc = npu.pic(out, 128 * 48 * 3 // 2)
    idle = m.dvpp_create_channel_desc()  # a desc without a channel
    assert m.dvpp_jpeg_decode_async(idle, src, len(data), desc, npu.stream) == INVALID_PARAM
    assert m.dvpp_destroy_channel(idle) == INVALID_PARAM  # nothing to destroy
    assert m.dvpp_destroy_channel_desc(npu.chan) == INVALID_PARAM  # channel still open
    assert acl.rt.destroy_context(npu.ctx) != 0  # the context still holds the channel
    assert m.dvpp_create_channel(npu.chan) == INVALID_PARAM  # already open
    assert len(acl._fake.misuse()) == 5
    assert m.dvpp_destroy_channel(npu.chan) == 0
    assert m.dvpp_jpeg_decode_async(npu.chan, src, len(data), desc, npu.stream) == INVALID_PARAM  # closed
    assert m.dvpp_destroy_channel(npu.chan) == INVALID_PARAM  # twice
    assert m.dvpp_create_channel(npu.chan) == 0  # a desc can get a new channel
    assert m.dvpp_destroy_channel_desc(idle) == 0
    assert m.dvpp_destroy_channel_desc(idle) == INVALID_PARAM  # twice
    assert len(acl._fake.misuse()) == 8
    assert npu.close() == 0
    assert not any(acl._fake.live().values())


def test_a_channel_in_the_default_context_holds_the_device(acl: ModuleType) -> None:
    assert acl.init() == 0 and acl.rt.set_device(0) == 0  # the implicit context of set_device
    chan = acl.media.dvpp_create_channel_desc()
    assert acl.media.dvpp_create_channel(chan) == 0
    assert acl.rt.reset_device(0) != 0  # the channel first
    assert acl.media.dvpp_destroy_channel(chan) == 0 and acl.media.dvpp_destroy_channel_desc(chan) == 0
    assert acl.rt.reset_device(0) == 0 and acl.finalize() == 0
    assert [m["call"] for m in acl._fake.misuse()] == ["acl.rt.reset_device"]


def test_everything_is_destroyed_exactly_once(acl: ModuleType, npu: Npu) -> None:
    m = npu.m
    pic, roi, cfg = m.dvpp_create_pic_desc(), m.dvpp_create_roi_config(0, 9, 0, 5), m.dvpp_create_resize_config()
    ptr, _ = m.dvpp_malloc(256)
    assert len({pic, roi, cfg, npu.chan}) == 4
    assert m.dvpp_destroy_roi_config(pic) == INVALID_PARAM  # a handle of another kind
    for destroy, handle in (
        (m.dvpp_destroy_pic_desc, pic),
        (m.dvpp_destroy_roi_config, roi),
        (m.dvpp_destroy_resize_config, cfg),
        (m.dvpp_free, ptr),
    ):
        assert destroy(handle) == 0
        assert destroy(handle) == INVALID_PARAM
    assert m.dvpp_get_pic_desc_width(pic) == 0 and m.dvpp_set_pic_desc_width(pic, 8) == INVALID_PARAM
    assert len(acl._fake.misuse()) == 7
    assert npu.close() == 0


def test_leaks_are_reported_at_finalize(acl: ModuleType, npu: Npu) -> None:
    npu.m.dvpp_malloc(1024)
    npu.m.dvpp_create_pic_desc()
    npu.m.dvpp_create_roi_config(0, 9, 0, 5)
    npu.m.dvpp_create_resize_config()
    assert acl.rt.destroy_stream(npu.stream) == 0
    assert acl.finalize() == RESOURCE_NOT_CLEARED
    assert acl._fake.report()["leaks_at_finalize"] == {
        "devices": 1,
        "contexts": 1,
        "dvpp_memory": 1,
        "dvpp_channel_descs": 1,
        "dvpp_channels": 1,
        "dvpp_pic_descs": 1,
        "dvpp_roi_configs": 1,
        "dvpp_resize_configs": 1,
    }
    assert not any(v for k, v in acl._fake.live().items())  # finalize tore it all down


# --- AIPP ------------------------------------------------------------------------------------------
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
JPEG_CSC = {  # ATC's "JPEG" YUV420SP_U8 -> RGB table (full-range BT.601), channel 0 = R
    "matrix_r0c0": 256, "matrix_r0c1": 0, "matrix_r0c2": 359,
    "matrix_r1c0": 256, "matrix_r1c1": -88, "matrix_r1c2": -183,
    "matrix_r2c0": 256, "matrix_r2c1": 454, "matrix_r2c2": 0,
    "input_bias_0": 0, "input_bias_1": 128, "input_bias_2": 128,
}  # fmt: skip


def aipp_sidecar(size: int) -> dict[str, Any]:
    return {
        "aipp_mode": "static",
        "input_format": "YUV420SP_U8",
        "src_image_size_w": size,
        "src_image_size_h": size,
        "csc_switch": True,
        "rbuv_swap_switch": False,
        **JPEG_CSC,
        **{f"mean_chn_{i}": 0 for i in range(3)},
        **{f"min_chn_{i}": 255 * MEAN[i] for i in range(3)},
        **{f"var_reci_chn_{i}": 1 / (255 * STD[i]) for i in range(3)},
    }


def lipschitz(model: Path) -> np.ndarray:
    """Per logit, the most it moves per unit of max |input change| in the tiny model (conv -> relu ->
    average pool -> gemm): sum_k |fc[c, k]| * sum |conv_w[k]|."""
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(model)).graph.initializer}
    return np.abs(weights["fc"]) @ np.abs(weights["w"]).reshape(8, -1).sum(axis=1)


def test_aipp_model_matches_the_plain_model_on_normalised_rgb(acl: ModuleType, tmp_path: Path) -> None:
    import json

    size, batch = 32, 2
    plain = tiny_onnx(tmp_path / "plain.onnx", size=size, batch=batch, seed=4)
    om = tiny_onnx(tmp_path / "aipp.om", size=size, batch=batch, seed=4)
    (tmp_path / "aipp.om.json").write_text(json.dumps({"aipp": aipp_sidecar(size)}))
    # two NV12 frames from real pictures: the JPEG's YCbCr, chroma 2x2-averaged
    frames = []
    for seed in range(batch):
        ycc = np.asarray(picture(size, size, seed).convert("YCbCr")).astype(np.uint16)
        uv = (ycc[0::2, 0::2, 1:] + ycc[1::2, 0::2, 1:] + ycc[0::2, 1::2, 1:] + ycc[1::2, 1::2, 1:] + 2) // 4
        frames.append(np.concatenate([ycc[..., 0].ravel(), uv.ravel()]).astype(np.uint8))
    nv12 = np.concatenate(frames)

    npu = Npu(acl)
    model_id, ret = acl.mdl.load_from_file(str(om))
    assert ret == 0
    desc = acl.mdl.create_desc()
    assert acl.mdl.get_desc(desc, model_id) == 0
    assert acl.mdl.get_aipp_type(model_id, 0) == (1, 0xFFFFFFFF, 0)  # ACL_DATA_WITH_STATIC_AIPP
    info, ret = acl.mdl.get_first_aipp_info(model_id, 0)
    assert ret == 0 and (info["inputFormat"], info["srcImageSizeW"], info["srcImageSizeH"]) == (1, size, size)
    assert info["cscSwitch"] == 1 and info["matrixR0C0"] == 256 and info["inputBias1"] == 128
    assert acl.mdl.get_input_data_type(desc, 0) == 4  # ACL_UINT8
    assert acl.mdl.get_input_format(desc, 0) == 1  # ACL_FORMAT_NHWC
    assert acl.mdl.get_input_size_by_index(desc, 0) == batch * size * size * 3 // 2 == nv12.nbytes
    assert acl.mdl.get_input_dims(desc, 0)[0]["dims"] == [batch, size, size, 3]
    assert acl.mdl.get_input_dims_v2(desc, 0)[0]["dims"] == [batch, size * 3 // 2, size, 1]

    # the NV12 batch goes in through DVPP memory, as VPC output would
    src = npu.upload(nv12.tobytes())
    out, ret = acl.rt.malloc(batch * 10 * 4, 0)
    assert ret == 0
    datasets = []
    for ptr, n in ((src, nv12.nbytes), (out, batch * 10 * 4)):
        ds = acl.mdl.create_dataset()
        buf = acl.create_data_buffer(ptr, n)
        assert acl.mdl.add_dataset_buffer(ds, buf)[1] == 0
        datasets.append((ds, buf))
    assert acl.mdl.execute(model_id, datasets[0][0], datasets[1][0]) == 0
    logits = npu.read(out, batch * 10 * 4).view(np.float32).reshape(batch, 10)
    for ds, buf in datasets:
        assert acl.destroy_data_buffer(buf) == 0 and acl.mdl.destroy_dataset(ds) == 0
    assert acl.rt.free(out) == 0
    assert acl.mdl.unload(model_id) == 0 and acl.mdl.destroy_desc(desc) == 0
    clean_close(npu)

    # references: the plain ONNX model on the equivalent normalised RGB
    session = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    y = nv12.reshape(batch, -1)[:, : size * size].reshape(batch, size, size).astype(np.int64)
    uv = nv12.reshape(batch, -1)[:, size * size :].reshape(batch, size // 2, size // 2, 2)
    uv = uv.repeat(2, axis=1).repeat(2, axis=2).astype(np.int64)
    u, v = uv[..., 0] - 128, uv[..., 1] - 128
    mean, std = np.array(MEAN) * 255, np.array(STD) * 255

    def run(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = ((rgb - mean) / std).astype(np.float32)
        return session.run(None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0], x

    bound = lipschitz(plain)
    # 1. AIPP's documented integer CSC: the only difference left is AIPP's float16 output, whose
    #    rounding error is at most half a float16 ulp of each input value
    fixed = np.clip(
        np.stack([(256 * y + 359 * v) >> 8, (256 * y - 88 * u - 183 * v) >> 8, (256 * y + 454 * u) >> 8], -1), 0, 255
    )
    expect, x = run(fixed.astype(np.float64))
    eps = float(np.spacing(np.abs(x).astype(np.float16)).max()) / 2 + 1e-6  # half a float16 ulp, at most
    assert (np.abs(logits - expect) <= bound * eps + 1e-4).all()
    # 2. the exact JFIF conversion (what a CPU decode gives): the fixed-point CSC is within 2 levels
    #    (coefficients rounded to 1/256, then floored), so inputs move by at most 2 / (255 * min std)
    exact = np.clip(np.stack([y + 1.402 * v, y - 0.344136 * u - 0.714136 * v, y + 1.772 * u], -1), 0, 255)
    levels = np.abs(fixed - exact).max()
    assert levels <= 2
    expect, _ = run(exact)
    assert (np.abs(logits - expect) <= bound * (levels / (255 * min(STD)) + eps) + 1e-4).all()
    assert np.array_equal(np.argmax(logits, 1), np.argmax(expect, 1))


def test_models_without_aipp_are_unchanged_and_bad_tables_refused(acl: ModuleType, tmp_path: Path) -> None:
    import json

    plain = tiny_onnx(tmp_path / "plain.om", size=32, batch=2)
    npu = Npu(acl)
    model_id, ret = acl.mdl.load_from_file(str(plain))
    assert ret == 0
    desc = acl.mdl.create_desc()
    assert acl.mdl.get_desc(desc, model_id) == 0
    assert acl.mdl.get_aipp_type(model_id, 0) == (0, 0xFFFFFFFF, 0)
    assert acl.mdl.get_first_aipp_info(model_id, 0) == (None, AIPP_NOT_EXIST)  # an answer, not misuse
    assert acl.mdl.get_input_data_type(desc, 0) == 0 and acl.mdl.get_input_size_by_index(desc, 0) == 2 * 3 * 32 * 32 * 4
    assert acl.mdl.get_input_dims_v2(desc, 0)[0]["dims"] == [2, 3, 32, 32]
    assert acl.mdl.get_aipp_type(model_id, 5)[2] == INVALID_PARAM
    assert acl.mdl.unload(model_id) == 0 and acl.mdl.destroy_desc(desc) == 0
    # AIPP on a dynamic-batch model: sized for the largest gear
    dynamic = tiny_onnx(tmp_path / "dynamic.om", size=32)
    (tmp_path / "dynamic.om.json").write_text(json.dumps({"dynamic_batch": [1, 4], "aipp": aipp_sidecar(32)}))
    model_id, ret = acl.mdl.load_from_file(str(dynamic))
    assert ret == 0
    assert acl.mdl.get_desc(desc := acl.mdl.create_desc(), model_id) == 0
    assert acl.mdl.get_input_size_by_index(desc, 0) == 4 * 32 * 32 * 3 // 2
    assert acl.mdl.get_input_dims(desc, 0)[0]["dims"] == [-1, 32, 32, 3]
    assert acl.mdl.get_aipp_type(model_id, 1) == (0, 0xFFFFFFFF, 0)  # ascend_mbatch_shape_data
    assert acl.mdl.unload(model_id) == 0 and acl.mdl.destroy_desc(desc) == 0
    for bad in ({"crop": True}, {"src_image_size_w": 30}, {"src_image_size_w": 33}, {"input_format": "RGB888_U8"},
                {"matrix_r0c0": None}, {"colour": 1}):  # fmt: skip
        table = {k: v for k, v in {**aipp_sidecar(32), **bad}.items() if v is not None}
        (tmp_path / "plain.om.json").write_text(json.dumps({"aipp": table}))
        assert acl.mdl.load_from_file(str(plain)) == (0, 100013), bad  # ACL_ERROR_PARSE_MODEL
    assert len(acl._fake.misuse()) == 7
    assert npu.close() == 0
