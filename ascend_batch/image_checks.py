"""Checks on an image file's container, made before any pixel is decoded: what Pillow would let
through silently (a PNG whose data fails its checksums decodes into garbage rows), only warn about,
or decode before the caller's pixel limit is applied (an icon's frames). Each raises
:class:`~ascend_batch.errors.ImageError`; a file that passes is not known to be good, only not known
to be bad: Pillow decides the rest."""

from __future__ import annotations

import struct
import zlib

from .errors import ImageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_container(data: bytes, max_pixels: int) -> None:
    """Raise ``decode`` for a damaged PNG or WebP container, ``too-large`` for an icon frame over
    ``max_pixels``; nothing for other formats."""
    if data[:8] == PNG_SIGNATURE:
        check_png_chunks(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        # WebP declares its length; its decoder only says "could not create decoder object"
        declared = int.from_bytes(data[4:8], "little") + 8
        if len(data) < declared:
            raise ImageError("decode", f"image file is truncated (WebP declares {declared} bytes, has {len(data)})")
    elif data[:4] == b"\0\0\1\0":
        check_icon_frames(data, max_pixels)


def check_png_chunks(data: bytes) -> None:
    """Every critical chunk (IHDR, PLTE, IDAT, IEND: an upper-case first letter) must pass its CRC,
    as libpng requires. Pillow checks the chunks before the image data but not the data itself, so a
    PNG cut short and padded, or with flipped bits in its image data, would otherwise decode into
    wrong pixels without a word. Ancillary chunks after the image data (text, times) may fail
    theirs, as libpng tolerates. A file that ends inside a chunk is left to Pillow, which reports it
    as truncated."""
    view = memoryview(data)
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            return
        if not kind.isalpha():
            raise ImageError("decode", f"damaged PNG file: invalid chunk type {kind!r} at byte {pos}")
        critical = kind[:1].isupper()
        if critical and zlib.crc32(view[pos + 4 : end]) != int.from_bytes(data[end : end + 4], "big"):
            raise ImageError("decode", f"damaged PNG file: its {kind.decode()} chunk at byte {pos} fails its CRC check")
        if kind == b"IEND":
            return
        pos = end + 4


def check_icon_frames(data: bytes, max_pixels: int) -> None:
    """An ICO's directory declares at most 256x256 per frame, but Pillow decodes the frame's own PNG
    or BMP header size, and already while opening: check every frame's real size from its header
    first, so ``max_pixels`` holds for icons too."""
    count = int.from_bytes(data[4:6], "little")
    for i in range(count):
        entry = data[6 + 16 * i : 22 + 16 * i]
        if len(entry) < 16:
            return  # a cut-off directory: Pillow reports the damage
        offset = int.from_bytes(entry[12:16], "little")
        header = data[offset : offset + 24]
        if header[:8] == PNG_SIGNATURE and len(header) == 24:
            w, h = struct.unpack(">II", header[16:24])
        elif len(header) >= 12:  # BITMAPINFOHEADER: its height counts the colour and the mask image
            w, h = struct.unpack("<ii", header[4:12])
            w, h = abs(w), abs(h) // 2
        else:
            continue
        if w * h > max_pixels:
            raise ImageError(
                "too-large", f"icon frame {i + 1} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}"
            )
