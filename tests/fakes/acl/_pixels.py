"""NV12/NV21 pictures in strided DVPP buffers, and VPC's resize, emulated with numpy.

Layout (acldvpp YUV420SP): the Y plane is ``height_stride`` rows of ``width_stride`` bytes, then the
interleaved chroma plane, ``height_stride / 2`` rows of ``width_stride`` bytes (U, V pairs for NV12;
V, U for NV21). Only the picture's own ``width x height`` (and its half-size chroma) is written: the
stride padding keeps whatever the buffer held, as on the device.

The resize is bilinear with pixel centres aligned (OpenCV's ``INTER_LINEAR``), each plane on its
own. CANN documents VPC's interpolation 1 as OpenCV's bilinear, so that mode is modelled as such (up to
a level of rounding). Interpolation 0, the default, is Huawei's own "high-order filter" on Ascend 310
(bilinear on 310P); its taps are not published, and the emulator uses bilinear for it too: figures
for mode 0 are a stand-in, which is why the acl backend asks for mode 1.
"""

from __future__ import annotations

import numpy as np

from ._dvpp import PIXEL_FORMAT_YVU_SEMIPLANAR_420


def _view(data: bytearray, offset: int, count: int) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=offset)


def subsample(cbcr: np.ndarray) -> np.ndarray:
    """Full-resolution (h, w, 2) chroma -> NV12's (ceil(h/2), ceil(w/2), 2), each 2x2 block averaged."""
    h, w, _ = cbcr.shape
    padded = np.pad(cbcr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge").astype(np.uint16)
    total = padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2]
    return ((total + 2) // 4).astype(np.uint8)


def write_yuv420sp(
    data: bytearray, offset: int, ws: int, hs: int, fmt: int, y: np.ndarray, uv: np.ndarray | None
) -> None:
    """Write Y (h, w) and UV (ceil(h/2), ceil(w/2), 2, U first) into a strided NV12/NV21 buffer;
    ``uv`` None is grey (chroma 128)."""
    h, w = y.shape
    _view(data, offset, ws * hs).reshape(hs, ws)[:h, :w] = y
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    if uv is None:
        uv = np.full((h2, w2, 2), 128, dtype=np.uint8)
    if fmt == PIXEL_FORMAT_YVU_SEMIPLANAR_420:
        uv = uv[..., ::-1]
    chroma = _view(data, offset + ws * hs, ws * (hs // 2)).reshape(hs // 2, ws)
    chroma[:h2, : 2 * w2] = uv.reshape(h2, 2 * w2)


def write_yuv400(data: bytearray, offset: int, ws: int, hs: int, y: np.ndarray) -> None:
    h, w = y.shape
    _view(data, offset, ws * hs).reshape(hs, ws)[:h, :w] = y


def read_yuv420sp(
    data: bytes | bytearray, offset: int, ws: int, hs: int, w: int, h: int, fmt: int
) -> tuple[np.ndarray, np.ndarray]:
    """Y (h, w) and UV (h/2, w/2, 2, U first) of a strided NV12/NV21 picture (w, h even)."""
    buf = np.frombuffer(bytes(data[offset : offset + ws * hs * 3 // 2]), dtype=np.uint8)
    y = buf[: ws * hs].reshape(hs, ws)[:h, :w]
    uv = buf[ws * hs :].reshape(hs // 2, ws)[: h // 2, :w].reshape(h // 2, w // 2, 2)
    if fmt == PIXEL_FORMAT_YVU_SEMIPLANAR_420:
        uv = uv[..., ::-1]
    return y.copy(), uv.copy()


def resize_bilinear(plane: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of an (H, W) or (H, W, C) uint8 plane, pixel centres aligned."""
    src_h, src_w = plane.shape[:2]

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        pos = np.clip(pos, 0, n_in - 1)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    y0, y1, fy = axis(out_h, src_h)
    x0, x1, fx = axis(out_w, src_w)
    src = plane.astype(np.float64)
    if src.ndim == 2:
        src = src[..., None]
    fx3, fy3 = fx[None, :, None], fy[:, None, None]
    top = src[y0][:, x0] * (1 - fx3) + src[y0][:, x1] * fx3
    bottom = src[y1][:, x0] * (1 - fx3) + src[y1][:, x1] * fx3
    out = np.clip(np.rint(top * (1 - fy3) + bottom * fy3), 0, 255).astype(np.uint8)
    return out[..., 0] if plane.ndim == 2 else out
