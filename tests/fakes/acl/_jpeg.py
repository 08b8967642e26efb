"""JPEG for the emulated JPEGD: header parsing (what JPEGD can decode) and decoding with Pillow.

The pixels come from Pillow (libjpeg), not from DVPP hardware: the Y plane is the JPEG's own Y
(full-range JFIF YCbCr, asked of Pillow with ``draft("YCbCr", ...)`` so there is no RGB round trip),
chroma is what libjpeg upsamples, averaged 2x2 for NV12. JPEGD applies the EXIF orientation, so
this does too (and the output geometry is the rotated one).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np

SOF_NAMES = {
    0xC0: "baseline",
    0xC1: "extended sequential",
    0xC2: "progressive",
    0xC3: "lossless",
    0xC5: "differential sequential",
    0xC6: "differential progressive",
    0xC7: "differential lossless",
    0xC9: "arithmetic extended sequential",
    0xCA: "arithmetic progressive",
    0xCB: "arithmetic lossless",
    0xCD: "arithmetic differential sequential",
    0xCE: "arithmetic differential progressive",
    0xCF: "arithmetic differential lossless",
}
MIN_SIDE, MAX_SIDE = 32, 8192
# Pillow's Image.Transpose values for EXIF orientations 2..8 (as ImageOps.exif_transpose uses them)
_TRANSPOSE = {2: 0, 3: 3, 4: 1, 5: 5, 6: 4, 7: 6, 8: 2}


class NotJpeg(Exception):
    """Not a JPEG, or a header too damaged to read."""


@dataclass(frozen=True)
class JpegHeader:
    width: int
    height: int
    components: int
    precision: int
    sof: int
    sampling: tuple[tuple[int, int, int], ...]  # (component id, h, v)
    adobe_transform: int | None
    orientation: int  # EXIF 1..8 (1 when absent)

    @property
    def rotated(self) -> bool:
        return self.orientation in (5, 6, 7, 8)

    @property
    def out_size(self) -> tuple[int, int]:
        """(width, height) of JPEGD's output: EXIF orientation applied."""
        return (self.height, self.width) if self.rotated else (self.width, self.height)


def _orientation(app1: bytes) -> int:
    if not app1.startswith(b"Exif\x00\x00"):
        return 1
    try:
        from PIL import Image

        exif = Image.Exif()
        exif.load(app1[6:])
        value = int(exif.get(0x0112, 1))
    except Exception:
        return 1  # an unreadable Exif block: JPEGD does not rotate either
    return value if 1 <= value <= 8 else 1


def parse(data: bytes) -> JpegHeader:
    """The frame header, the Adobe transform and the EXIF orientation; :class:`NotJpeg` when the
    markers up to the first scan cannot be read."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        raise NotJpeg("no SOI marker")
    pos, sof, adobe, orientation = 2, None, None, 1
    while pos < len(data):
        if data[pos] != 0xFF:
            raise NotJpeg(f"expected a marker at byte {pos}")
        while pos < len(data) and data[pos] == 0xFF:
            pos += 1
        if pos >= len(data):
            break
        marker = data[pos]
        pos += 1
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue
        if marker == 0xD9:
            break
        if pos + 2 > len(data):
            raise NotJpeg("truncated header")
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        body = data[pos + 2 : pos + length]
        if length < 2 or len(body) != length - 2:
            raise NotJpeg(f"truncated segment 0x{marker:02X}")
        if marker in SOF_NAMES:
            if sof is not None or len(body) < 6:
                raise NotJpeg("bad frame header")
            precision, height, width, ncomp = struct.unpack(">BHHB", body[:6])
            if len(body) < 6 + 3 * ncomp or ncomp == 0:
                raise NotJpeg("bad frame header")
            comps = tuple((body[6 + 3 * i], body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(ncomp))
            sof = (marker, precision, width, height, comps)
        elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            adobe = body[11]
        elif marker == 0xE1 and orientation == 1:
            orientation = _orientation(body)
        elif marker == 0xDA:
            break
        pos += length
    if sof is None:
        raise NotJpeg("no frame header before the first scan")
    marker, precision, width, height, comps = sof
    if width == 0 or height == 0:
        raise NotJpeg("zero width or height (DNL images are not supported)")
    return JpegHeader(width, height, len(comps), precision, marker, comps, adobe, orientation)


def unsupported(h: JpegHeader) -> str | None:
    """Why JPEGD (Ascend 310) cannot decode this JPEG, or None."""
    if h.sof not in (0xC0, 0xC1):
        return f"{SOF_NAMES[h.sof]} JPEG (JPEGD decodes baseline and extended sequential Huffman only)"
    if h.precision != 8:
        return f"{h.precision}-bit samples (JPEGD decodes 8-bit only)"
    if h.components == 4:
        return "4 components (CMYK/YCCK): JPEGD decodes YUV only"
    if h.components not in (1, 3):
        return f"{h.components} components"
    if h.components == 3:
        ids = tuple(c[0] for c in h.sampling)
        if h.adobe_transform == 0 or (h.adobe_transform is None and ids == (82, 71, 66)):
            return "RGB-coded JPEG (no YCbCr transform): JPEGD decodes YUV only"
        (_, yh, yv), (_, uh, uv), (_, vh, vv) = h.sampling
        if (uh, uv, vh, vv) != (1, 1, 1, 1) or (yh, yv) not in ((1, 1), (2, 1), (2, 2), (1, 2)):
            factors = ",".join(f"{a}x{b}" for _, a, b in h.sampling)
            return f"chroma sampling {factors} (JPEGD: 4:4:4, 4:2:2, 4:2:0, 4:4:0, 4:0:0)"
    if not (MIN_SIDE <= h.width <= MAX_SIDE and MIN_SIDE <= h.height <= MAX_SIDE):
        return f"{h.width}x{h.height} is outside {MIN_SIDE}x{MIN_SIDE}..{MAX_SIDE}x{MAX_SIDE}"
    return None


def decode(data: bytes, h: JpegHeader) -> tuple[np.ndarray, np.ndarray | None]:
    """Full-resolution Y (h, w) and CbCr (h, w, 2) uint8 planes after the EXIF orientation (CbCr is
    None for a grey JPEG). Raises ``OSError``/``ValueError`` on a corrupt or truncated stream."""
    from PIL import Image, ImageFile

    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # JPEGD fails on a truncated stream; so does this
    try:
        img = Image.open(io.BytesIO(data))
        if img.format != "JPEG":
            raise ValueError(f"Pillow reads this as {img.format}")
        img.draft("YCbCr", img.size)  # no scaling: the JPEG's own YCbCr, not RGB
        img.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated
    if img.mode not in ("YCbCr", "L"):
        raise ValueError(f"decoded to mode {img.mode}")
    if h.orientation in _TRANSPOSE:
        img = img.transpose(Image.Transpose(_TRANSPOSE[h.orientation]))
    arr = np.asarray(img)
    if img.mode == "L":
        return np.ascontiguousarray(arr), None
    return np.ascontiguousarray(arr[..., 0]), np.ascontiguousarray(arr[..., 1:3])
