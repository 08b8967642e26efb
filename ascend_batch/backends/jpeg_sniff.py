"""Which JPEGs the GPU decoder may take, from their headers alone (no decoding, no torch).

:func:`sniff_jpeg` reads the frame header (SOFn: coding, precision, size, components), the EXIF
orientation and the Adobe colour transform; :func:`gpu_refusal` says why a file must take the CPU path
instead (progressive, arithmetic or lossless coding, 12-bit, CMYK/YCCK, Adobe-RGB coding, EXIF rotation,
truncation, size, or not a JPEG at all), or ``None`` when nvJPEG may have it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SOF_SEQUENTIAL = (0xC0, 0xC1)  # baseline and extended sequential, Huffman: what nvJPEG takes
SOF_OTHER = (0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
GPU_MAX_PIXELS = 50_000_000  # larger JPEGs decode faster on the CPU at reduced DCT scale anyway


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int
    components: int
    precision: int
    sof: int  # the SOFn marker byte (0xC0 baseline, 0xC2 progressive, ...)
    orientation: int = 1  # EXIF orientation (1 = as stored)
    adobe_transform: int | None = None  # Adobe APP14 colour transform, when present
    complete: bool = True  # ends with the EOI marker


def sniff_jpeg(data: bytes) -> JpegInfo | None:
    """The frame header of a JPEG (and its EXIF orientation), read without decoding; ``None`` when
    ``data`` is not a JPEG or its headers are damaged."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    orientation, adobe, sof = 1, None, None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            continue
        if marker == 0xD9 or i + 2 > n:
            break
        (length,) = struct.unpack(">H", data[i : i + 2])
        if length < 2 or i + length > n:
            return None
        payload = data[i + 2 : i + length]
        if marker == 0xE1 and payload.startswith(b"Exif\x00\x00"):
            orientation = exif_orientation(payload[6:])
        elif marker == 0xEE and payload.startswith(b"Adobe") and len(payload) >= 12:
            adobe = payload[11]
        elif (marker in SOF_SEQUENTIAL or marker in SOF_OTHER) and len(payload) >= 6:
            precision, height, width, components = struct.unpack(">BHHB", payload[:6])
            sof = (marker, precision, width, height, components)
        elif marker == 0xDA:  # start of scan: the headers are over
            break
        i += length
    if sof is None:
        return None
    marker, precision, width, height, components = sof
    complete = data.rstrip(b"\x00")[-2:] == b"\xff\xd9"
    return JpegInfo(width, height, components, precision, marker, orientation, adobe, complete)


def exif_orientation(tiff: bytes) -> int:
    """The orientation tag (0x0112) of IFD0 in an EXIF TIFF block; 1 when absent or unreadable."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    endian = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(endian + "I", tiff[4:8])
        (count,) = struct.unpack(endian + "H", tiff[ifd : ifd + 2])
        for k in range(count):
            entry = tiff[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
            tag, typ, _, value = struct.unpack(endian + "HHI4s", entry)
            if tag == 0x0112 and typ == 3:
                (orient,) = struct.unpack(endian + "H", value[:2])
                return int(orient) if 1 <= orient <= 8 else 1
    except struct.error:
        return 1
    return 1


def gpu_refusal(info: JpegInfo | None, max_pixels: int, gpu_max_pixels: int = GPU_MAX_PIXELS) -> str | None:
    """Why an image must take the CPU path, or ``None`` when the GPU decoder may have it."""
    if info is None:
        return "not a JPEG"
    if info.sof not in SOF_SEQUENTIAL:
        return "progressive/lossless/arithmetic JPEG"
    if info.precision != 8:
        return f"{info.precision}-bit JPEG"
    if info.components not in (1, 3):
        return f"{info.components}-component JPEG (CMYK/YCCK)"
    if info.components == 3 and info.adobe_transform == 0:
        return "Adobe RGB-coded JPEG"
    if info.orientation != 1:
        return "EXIF-rotated"
    if not info.complete:
        return "truncated"
    pixels = info.width * info.height
    if pixels == 0 or pixels > min(max_pixels, gpu_max_pixels):
        return "size"
    return None
