"""Bytes -> model input: decode (draft mode), EXIF orientation, RGB, resize, centre crop, normalise.

Every failure becomes an :class:`~ascend_batch.errors.ImageError` with a short kind, never another
exception, so one bad file yields one error row and nothing else.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import ImageError
from .image_checks import check_container

DEFAULT_MAX_PIXELS = 178_956_970  # per image (dataset.max_pixels); the value at which Pillow itself refuses

RESAMPLE = {  # Preprocess.interpolation (model.interpolation) -> Pillow filter
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float16", "uint8")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes one model input. Mean/std are on the 0..255 pixel scale."""

    size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    layout: str = "NCHW"
    dtype: str = "float32"
    interpolation: str = "bilinear"

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        if self.layout == "NCHW":
            return (batch, 3, self.size, self.size)
        return (batch, self.size, self.size, 3)

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


@dataclass(frozen=True)
class Decoded:
    array: np.ndarray  # one sample, CHW or HWC per layout, in the preprocess dtype
    width: int  # original width (after EXIF orientation)
    height: int


@dataclass(frozen=True)
class Pixels:
    """An image resized and cropped but not yet normalised: ``size`` x ``size`` x 3 uint8 RGB. A
    quarter of the bytes of the model input; :func:`normalise_into` writes it into a batch slot."""

    hwc: np.ndarray
    width: int  # original width (after EXIF orientation)
    height: int


# The formats decode() reads, tried in this order. Others (EPS runs Ghostscript, PSD, TGA, which
# has no signature and mistakes arbitrary bytes for an image, ...) are refused as ``format``.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO", "AVIF", "JPEG2000", "PPM", "ICO")

# signatures of common files that are not (supported) images, for a clearer ``format`` message
_SIGNATURES = (
    (b"%PDF", "a PDF document"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "Photoshop PSD"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML (SVG?)"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "gzip data"),
)
_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF"}
_TOLERATED_OPEN_ERRORS = (SyntaxError, IndexError, TypeError, struct.error)  # "not this format"
# formats whose signature is specific enough that a header failing to parse means a damaged file
# (``decode``) rather than something else (``format``)
_SIGNED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "TIFF", "MPO", "AVIF", "JPEG2000"})


# Pillow plugins for FORMATS beyond the five that Image.preinit() loads. Loading just these instead
# of all of Pillow's (Image.init()) takes 25-40 ms less of every worker's start (measured).
_PLUGIN_MODULES = {
    "WEBP": "WebPImagePlugin",
    "TIFF": "TiffImagePlugin",
    "MPO": "MpoImagePlugin",
    "AVIF": "AvifImagePlugin",
    "JPEG2000": "Jpeg2KImagePlugin",
    "ICO": "IcoImagePlugin",
}


@functools.cache
def _plugins() -> dict[str, tuple[Callable[..., Image.Image], Callable[[bytes], bool | str] | None]]:
    """Pillow's (open, accept) pair for each of FORMATS that this Pillow has, in FORMATS order."""
    Image.preinit()
    for fmt, module in _PLUGIN_MODULES.items():
        if fmt not in Image.OPEN:
            with contextlib.suppress(ImportError):  # a plugin this Pillow lacks (AVIF before 11.2)
                importlib.import_module(f"PIL.{module}")
    return {fmt: Image.OPEN[fmt] for fmt in FORMATS if fmt in Image.OPEN}


def _describe(data: bytes) -> str:
    head = data[:32]
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return f"{what} is not a supported image (supported: {', '.join(FORMATS)})"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        what = f"{_FTYP_BRANDS[brand]} images are" if brand in _FTYP_BRANDS else f"ISO media ({brand!r}) is"
        return f"{what} not supported (supported: {', '.join(FORMATS)})"
    if head.lstrip()[:1] in (b"<", b"{") or (head and all(32 <= b < 127 or b in b"\t\r\n" for b in head)):
        return "text, not an image"
    return f"not a recognised image file (supported: {', '.join(FORMATS)})"


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Identify ``data`` among :data:`FORMATS` and check its size against ``max_pixels`` before any
    pixel is decoded. Like :func:`PIL.Image.open`, but without its check against the process-wide
    ``Image.MAX_IMAGE_PIXELS`` (which would warn, or refuse above twice that, regardless of the
    configured limit), so the per-call limit alone decides and no global state is touched."""
    if not data:
        raise ImageError("empty", "file has zero bytes")
    check_container(data, max_pixels)
    prefix = data[:16]
    fp = io.BytesIO(data)
    img: Image.Image | None = None
    damaged: str | None = None  # a format whose signature matched but whose header did not parse
    try:
        for fmt, (factory, accept) in _plugins().items():
            if accept is not None:
                result = accept(prefix)
                if not result or isinstance(result, str):
                    continue
            fp.seek(0)
            try:
                img = factory(fp, "")
            except _TOLERATED_OPEN_ERRORS as exc:
                if damaged is None and fmt in _SIGNED_FORMATS:
                    damaged = f"damaged {fmt} file: {_message(exc)}"
                continue
            if img is not None:
                break
    except Image.DecompressionBombError as exc:
        raise ImageError("too-large", str(exc)) from None
    except MemoryError:
        raise  # the machine's failure, not the image's (exit 8)
    except Exception as exc:
        raise ImageError("decode", _message(exc)) from None
    if img is None:
        if damaged is not None:
            raise ImageError("decode", damaged)
        raise ImageError("format", _describe(data))
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageError("too-large", f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
    return img


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if "truncated" in text.lower() and not text.startswith("image file is truncated"):
        text = f"image file is truncated ({text})"
    return text


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Transparent pixels are composited onto white (as viewers show them);
    16-bit, 32-bit integer and float grey are scaled to 8 bits (see :func:`_grey_to_8bit`)."""
    if img.mode == "La":  # premultiplied grey + alpha converts only to LA
        img = img.convert("LA")
    mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa") or (mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        grey = _grey_to_8bit(np.asarray(img), mode)
        return Image.fromarray(grey).convert("RGB")
    return img.convert("RGB")  # L, P, 1, CMYK, YCbCr, LAB, HSV


def _grey_to_8bit(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale one high-depth grey plane to uint8, by the value range the data uses: 16-bit modes by
    65535 -> 255; ``I`` as 8-bit when within 0..255, else as 16-bit when within 0..65535; ``F`` as
    0..1 when within it, else 0..255 when within it; anything else stretched from its min to max."""
    values = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(values.min()) if values.size else 0.0
    hi = float(values.max()) if values.size else 0.0
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and 255 < hi <= 65535):
        values = values * (255.0 / 65535.0)
    elif mode == "F" and lo >= 0 and hi <= 1.0:
        values = values * 255.0
    elif lo < 0 or hi > 255:
        values = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose)
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = (5, 6, 7, 8)


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8), 1 when absent or unreadable: a damaged EXIF block never fails an
    image whose pixels are fine."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION else 1


def decode(data: bytes, pp: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode ``data`` and preprocess it for ``pp`` (:func:`decode_pixels`, then :func:`normalise`)."""
    px = decode_pixels(data, pp, max_pixels)
    return Decoded(normalise(px.hwc, pp), px.width, px.height)


def decode_pixels(data: bytes, pp: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS) -> Pixels:
    """Decode ``data``, orient, convert to RGB, resize and centre-crop it for ``pp``. Raises
    :class:`ImageError` only: ``empty``, ``format`` (not an image, or a format outside
    :data:`FORMATS`), ``too-large`` (more than ``max_pixels`` pixels) or ``decode`` (damaged data,
    e.g. a truncated file); and MemoryError when the machine runs out (never an image's row).
    Multi-frame images (GIF, APNG, TIFF, MPO) use their first frame."""
    img = _open(data, max_pixels)
    try:
        orig_w, orig_h = img.size
        if img.format in ("JPEG", "MPO"):
            # decode at a reduced scale when the image is much larger than needed (DCT scaling);
            # draft keeps the image >= the requested size, so quality is unaffected after resize
            scale = pp.resize / min(orig_w, orig_h)
            if scale < 0.5:
                img.draft("RGB", (max(1, int(orig_w * scale + 0.5)), max(1, int(orig_h * scale + 0.5))))
        img.load()  # a truncated file raises here (Pillow's LOAD_TRUNCATED_IMAGES is left False)
        orientation = _orientation(img)
        rgb = _to_rgb(img)
        if orientation != 1:
            rgb = rgb.transpose(_ORIENTATION[orientation])
        # report the full-resolution size as displayed (draft may have shrunk the decoded image)
        width, height = (orig_h, orig_w) if orientation in _SWAPS_AXES else (orig_w, orig_h)
        rgb = _resize_crop(rgb, pp, width, height)
        arr = np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # a plugin's own check on a frame or tile
        raise ImageError("too-large", str(exc)) from None
    except MemoryError:
        raise  # the machine's failure, not the image's (exit 8)
    except Exception as exc:
        raise ImageError("decode", _message(exc)) from None
    finally:
        img.close()
    if arr.shape != (pp.size, pp.size, 3):
        raise ImageError("decode", f"unexpected decoded shape {arr.shape}")
    return Pixels(arr, width, height)


def resize_crop_geometry(width: int, height: int, pp: Preprocess) -> tuple[int, int, int, int]:
    """``(new_w, new_h, left, top)``: a ``width`` x ``height`` image's short side resized to ``pp.resize``
    (Python ``round``, never below ``pp.size``) and the ``pp.size`` centre crop's corner. The one
    geometry of the CPU path, which the device decoders (GPU, DVPP) reproduce."""
    short = min(width, height)
    new_w = max(pp.size, round(width * pp.resize / short))
    new_h = max(pp.size, round(height * pp.resize / short))
    return new_w, new_h, (new_w - pp.size) // 2, (new_h - pp.size) // 2


def _resize_crop(img: Image.Image, pp: Preprocess, width: int, height: int) -> Image.Image:
    """Resize so the short side is ``pp.resize``, then take the centre ``pp.size`` square, in one
    resampling pass over just that region (the same pixels as resize-then-crop, about twice as
    fast). The geometry comes from the full-resolution ``width`` x ``height``, so a draft-decoded
    (smaller) image gives the same result; Image.crop is avoided because it checks the crop against
    Pillow's process-wide pixel limit."""
    w, h = img.size
    new_w, new_h, left, top = resize_crop_geometry(width, height, pp)
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + pp.size) * sx, (top + pp.size) * sy)
    return img.resize((pp.size, pp.size), RESAMPLE[pp.interpolation], box=box, reducing_gap=None)


def normalise(hwc: np.ndarray, pp: Preprocess) -> np.ndarray:
    """uint8 HWC RGB -> one sample in the layout and dtype of ``pp`` (a new array)."""
    out = np.empty(pp.input_shape(1)[1:], dtype=pp.numpy_dtype)
    normalise_into(hwc, pp, out)
    return out


def normalise_into(hwc: np.ndarray, pp: Preprocess, out: np.ndarray) -> None:
    """Write uint8 HWC RGB into ``out`` (one sample slot of a batch, in the layout and dtype of
    ``pp``) as ``(x - mean) / std``: two passes in place, no temporaries. Allocating, converting
    and transposing a fresh float array per image cost ten times more (measured: README,
    Performance)."""
    src = hwc.transpose(2, 0, 1) if pp.layout == "NCHW" else hwc
    if pp.dtype == "uint8":
        out[...] = src
        return
    shape = (3, 1, 1) if pp.layout == "NCHW" else (3,)
    mean = np.asarray(pp.mean, dtype=np.float32).reshape(shape)
    inv_std = (np.float32(1.0) / np.asarray(pp.std, dtype=np.float32)).reshape(shape)
    if pp.dtype == "float32":
        np.subtract(src, mean, out=out, dtype=np.float32)
        np.multiply(out, inv_std, out=out)
    else:  # float16: compute in float32, as the float32 path does, then round once
        tmp = np.subtract(src, mean, dtype=np.float32)
        np.multiply(tmp, inv_std, out=tmp)
        out[...] = tmp
