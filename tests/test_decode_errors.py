"""decode(): every kind of bad input ends as one specific ImageError; every image mode ends as a
correct 3-channel model input. All images are made here with Pillow."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile
from PIL.JpegImagePlugin import JpegImageFile

from ascend_batch.errors import ImageError
from ascend_batch.preprocess import Preprocess, _to_rgb, decode

PP = Preprocess()  # 224 crop of a 256 short side, (x - 127) / 128, NCHW float32


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def pattern(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gradients plus noise: compresses like a photo (not to nearly nothing)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)
    y = np.linspace(0, 255, height)
    arr = np.stack([np.add.outer(y * 0, x), np.add.outer(y, x * 0), rng.integers(0, 256, (height, width))], axis=-1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def pixels(array: np.ndarray, pp: Preprocess = PP) -> np.ndarray:
    """A float32 NCHW sample back on the 0..255 scale, HWC."""
    mean = np.asarray(pp.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(pp.std, dtype=np.float32)[:, None, None]
    return (array * std + mean).transpose(1, 2, 0)


def mean_rgb(array: np.ndarray) -> np.ndarray:
    return pixels(array).reshape(-1, 3).mean(axis=0)


def kind_of(data: bytes, max_pixels: int | None = None) -> ImageError:
    with pytest.raises(ImageError) as info:
        if max_pixels is None:
            decode(data, PP)
        else:
            decode(data, PP, max_pixels=max_pixels)
    return info.value


# --- bad inputs ---------------------------------------------------------------------------------


def test_zero_bytes_is_empty() -> None:
    assert kind_of(b"").kind == "empty"


@pytest.mark.parametrize("fmt", ["JPEG", "JPEG-progressive", "PNG", "GIF", "TIFF", "WEBP"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_image_is_reported_not_padded(fmt: str, keep: float) -> None:
    img = pattern(160, 120)
    if fmt == "JPEG-progressive":
        data = encode(img, "JPEG", progressive=True, quality=90)
    elif fmt == "GIF":
        data = encode(img.convert("P"), "GIF")
    else:
        data = encode(img, fmt)
    decode(data, PP)  # the whole file is fine
    err = kind_of(data[: int(len(data) * keep)])
    assert err.kind == "decode"
    assert err.message.startswith("image file is truncated"), err.message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_or_damaged_header_is_decode() -> None:
    data = encode(pattern(64, 48), "PNG")
    err = kind_of(data[:20])  # signature and part of IHDR
    assert err.kind == "decode"
    assert err.message.startswith("image file is truncated")
    broken = bytearray(data)
    broken[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
    err = kind_of(bytes(broken))
    assert err.kind == "decode"
    assert "damaged PNG" in err.message


@pytest.mark.parametrize(
    "data",
    [
        b"hello, this is a text file named photo.jpg\n",
        b"<html><body>404 not found</body></html>",
        bytes(range(256)) * 4,
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n",
        b"PK\x03\x04" + b"\0" * 60,
        b"\0\0\0\0" * 100,
    ],
    ids=["text", "html", "binary", "pdf", "zip", "zeros"],
)
def test_not_an_image_is_format(data: bytes) -> None:
    assert kind_of(data).kind == "format"


@pytest.mark.parametrize("fmt", ["EPS", "TGA", "PCX", "SGI", "PSD-magic", "HEIC-magic"])
def test_unsupported_formats_are_format(fmt: str) -> None:
    img = pattern(32, 24)
    if fmt == "PSD-magic":
        data = b"8BPS\x00\x01" + b"\0" * 64
    elif fmt == "HEIC-magic":
        data = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64
    else:
        data = encode(img, fmt)
        assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself would read it
    err = kind_of(data)
    assert err.kind == "format"
    assert "supported" in err.message


def test_over_the_pixel_limit_is_too_large() -> None:
    data = encode(Image.new("RGB", (300, 200), (1, 2, 3)), "PNG")
    err = kind_of(data, max_pixels=300 * 200 - 1)
    assert err.kind == "too-large"
    assert "300x200" in err.message
    assert decode(data, PP, max_pixels=300 * 200).width == 300


def png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size and holds almost no pixel data: cheap to make and to refuse."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def test_pixel_limit_is_ours_not_pillows_global(monkeypatch: pytest.MonkeyPatch) -> None:
    # far above Pillow's own 2 x MAX_IMAGE_PIXELS: our configured limit still answers first
    huge = png_header_only(40_000, 40_000)
    err = kind_of(huge, max_pixels=1_000_000)
    assert err.kind == "too-large"
    assert "40000x40000" in err.message
    assert "decompression bomb" not in err.message
    # a tiny process-wide limit neither warns nor refuses an image within the configured limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    data = encode(pattern(120, 90), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = decode(data, PP, max_pixels=120 * 90)
    assert (out.width, out.height) == (120, 90)
    assert Image.MAX_IMAGE_PIXELS == 100  # not touched by decode


@pytest.mark.parametrize("fmt", ["GIF", "APNG", "TIFF"])
def test_multi_frame_uses_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (64, 48), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    save_fmt = "PNG" if fmt == "APNG" else fmt
    data = encode(frames[0], save_fmt, save_all=True, append_images=frames[1:])
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    r, g, b = mean_rgb(decode(data, PP).array)
    assert r > 250 and g < 5 and b < 5


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_exif_does_not_fail_the_image() -> None:
    exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + b"\x01" * 20  # IFD count 65535, no entries
    data = encode(Image.new("RGB", (64, 48), (0, 0, 255)), "JPEG", exif=exif)
    out = decode(data, PP)
    assert (out.width, out.height) == (64, 48)
    assert mean_rgb(out.array)[2] > 240


# --- modes --------------------------------------------------------------------------------------

RED = (255, 0, 0)


def mode_sample(mode: str) -> tuple[bytes, tuple[float, float, float]]:
    """(file bytes, expected colour) for an image stored in ``mode``."""
    size = (80, 60)
    if mode == "RGB":
        return encode(Image.new("RGB", size, RED), "PNG"), RED
    if mode == "RGBA":
        return encode(Image.new("RGBA", size, (*RED, 255)), "PNG"), RED
    if mode == "RGBA-half":  # half-transparent red over white
        return encode(Image.new("RGBA", size, (*RED, 128)), "PNG"), (255, 127, 127)
    if mode == "LA":
        return encode(Image.new("LA", size, (100, 255)), "PNG"), (100, 100, 100)
    if mode == "LA-clear":  # fully transparent: white
        return encode(Image.new("LA", size, (0, 0)), "PNG"), (255, 255, 255)
    if mode == "P":
        return encode(Image.new("RGB", size, RED).convert("P"), "PNG"), RED
    if mode == "P-transparent":
        img = Image.new("P", size, 0)
        img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
        return encode(img, "PNG", transparency=0), (255, 255, 255)
    if mode == "L":
        return encode(Image.new("L", size, 200), "PNG"), (200, 200, 200)
    if mode == "CMYK":
        return encode(Image.new("CMYK", size, (0, 255, 255, 0)), "JPEG", quality=95), RED
    if mode == "CMYK-tiff":
        return encode(Image.new("CMYK", size, (0, 255, 255, 0)), "TIFF"), RED
    if mode == "I;16":
        return encode(Image.new("I;16", size, 40000), "PNG"), (155.6, 155.6, 155.6)
    if mode == "I;16B":
        return encode(Image.new("I;16B", size, 65535), "TIFF"), (255, 255, 255)
    if mode == "I":
        return encode(Image.new("I", size, 40000), "TIFF"), (155.6, 155.6, 155.6)
    if mode == "I-8bit":
        return encode(Image.new("I", size, 77), "TIFF"), (77, 77, 77)
    if mode == "F":
        return encode(Image.new("F", size, 0.5), "TIFF"), (127.5, 127.5, 127.5)
    if mode == "1":
        return encode(Image.new("1", size, 1), "PNG"), (255, 255, 255)
    raise AssertionError(mode)


@pytest.mark.parametrize(
    "mode",
    [
        "RGB", "RGBA", "RGBA-half", "LA", "LA-clear", "P", "P-transparent", "L", "CMYK", "CMYK-tiff",
        "I;16", "I;16B", "I", "I-8bit", "F", "1",
    ],
)  # fmt: skip
def test_every_mode_gives_three_channels(mode: str) -> None:
    data, expected = mode_sample(mode)
    stored = Image.open(io.BytesIO(data)).mode
    assert stored.split("-")[0] == mode.split("-")[0] or mode.startswith(("RGBA", "I;16")), stored
    out = decode(data, PP)
    assert out.array.shape == (3, 224, 224)
    assert out.array.dtype == np.float32
    assert np.isfinite(out.array).all()
    assert (out.width, out.height) == (80, 60)
    np.testing.assert_allclose(mean_rgb(out.array), expected, atol=2.0)


@pytest.mark.parametrize("mode", ["PA", "La", "RGBa", "YCbCr", "HSV", "LAB"])
def test_in_memory_only_modes_convert_to_rgb(mode: str) -> None:
    # modes a decoder can hand back but that have no simple file to make them from
    img = Image.new(mode, (8, 8))
    rgb = _to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == (8, 8)


@pytest.mark.parametrize(
    ("layout", "dtype", "shape"),
    [("NCHW", "float16", (3, 224, 224)), ("NHWC", "uint8", (224, 224, 3)), ("NHWC", "float32", (224, 224, 3))],
)
def test_layout_and_dtype(layout: str, dtype: str, shape: tuple[int, ...]) -> None:
    pp = Preprocess(layout=layout, dtype=dtype)
    out = decode(encode(Image.new("RGB", (50, 40), RED), "PNG"), pp)
    assert out.array.shape == shape
    assert out.array.dtype == np.dtype(dtype)
    if dtype == "uint8":
        assert out.array[..., 0].min() == 255 and out.array[..., 1].max() == 0


# --- geometry -----------------------------------------------------------------------------------


def test_exif_orientation_6_rotates_and_reports_displayed_size() -> None:
    img = Image.new("RGB", (300, 200), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 150, 200))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: displayed after a quarter turn clockwise
    out = decode(encode(img, "JPEG", quality=95, exif=exif.tobytes()), PP)
    assert (out.width, out.height) == (200, 300)
    hwc = pixels(out.array)
    top, bottom = hwc[:60].reshape(-1, 3).mean(axis=0), hwc[-60:].reshape(-1, 3).mean(axis=0)
    assert top[0] > 240 and top[2] < 15, top  # the left (red) half is now on top
    assert bottom[2] > 240 and bottom[0] < 15, bottom


def smooth(width: int, height: int) -> Image.Image:
    """Photo-like content at low spatial frequency (what draft decoding is meant for)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(xx / 170.0) * np.cos(yy / 230.0)
    g = 128 + 90 * np.cos((xx + yy) / 300.0)
    b = 255 * ((xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (height / 3) ** 2)
    b = np.asarray(Image.fromarray(b.astype(np.uint8)).resize((width // 20, height // 20)).resize((width, height)))
    return Image.fromarray(np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8), "RGB")


def test_large_jpeg_uses_draft_and_matches_full_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(smooth(3000, 2000), "JPEG", quality=92)
    decoded_sizes: list[tuple[int, int]] = []
    original_draft = JpegImageFile.draft

    def spy(self: JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> object:
        result = original_draft(self, mode, size)
        decoded_sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    out = decode(data, PP)
    assert (out.width, out.height) == (3000, 2000)
    assert decoded_sizes and decoded_sizes[0][0] <= 3000 / 4  # decoded at 1/4 scale or less

    # reference: full-resolution decode, same geometry (short side 256, centre crop 224)
    ref = Image.open(io.BytesIO(data)).convert("RGB")
    ref = ref.resize((384, 256), Image.Resampling.BILINEAR, reducing_gap=None)
    ref_arr = np.asarray(ref.crop((80, 16, 304, 240)), dtype=np.float32)
    diff = np.abs(pixels(out.array) - ref_arr)
    assert diff.mean() < 3.0, diff.mean()


def test_small_image_is_upscaled_to_the_crop() -> None:
    out = decode(encode(pattern(20, 10), "PNG"), PP)
    assert out.array.shape == (3, 224, 224)
    assert (out.width, out.height) == (20, 10)
