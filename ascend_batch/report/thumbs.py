"""Small JPEG thumbnails (data URIs) of a few inputs, read from the original files and archive members
through the runner's size-limited :class:`~ascend_batch.sources.ItemReader`, with the listing snapshot
saying where each image is. The pixel limit is checked from the header before any pixel is decoded, so
a decompression bomb costs nothing; any input that fails gets no thumbnail (never a failed report)."""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from ..errors import ImageError
from ..plan import make_units, read_unit_items
from ..preprocess import DEFAULT_MAX_PIXELS, FORMATS
from ..runner.outdir import LISTING_FILE
from ..sources import DEFAULT_MAX_MEMBER_BYTES, Item, ItemReader

THUMB_PX = 96  # longest side
MAX_THUMBS = 48  # per page, all sections together: 48 x ~4 KB keeps the page small
THUMB_MAX_BYTES = 64 * 1024  # a thumbnail larger than this once encoded is dropped


def thumbnail(data: bytes, size: int = THUMB_PX, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """``data`` as a JPEG at most ``size`` pixels on its longest side; :class:`ImageError` if it
    is not an image, or has more than ``max_pixels`` pixels (checked before decoding)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(FORMATS))
        with img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError("too-large", f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
            img.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a fraction of the size
            img.thumbnail((size, size), Image.Resampling.BILINEAR)
            small = ImageOps.exif_transpose(img).convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError("too-large", str(exc)) from None
    except Exception as exc:  # any decoder failure: no thumbnail
        raise ImageError("decode", f"{type(exc).__name__}: {exc}") from None
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=75)
    return buf.getvalue()


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def locate(out: Path, wanted: Iterable[tuple[str, int]], n_items: int, unit_size: int) -> dict[str, Item]:
    """Items of the ``(image_id, unit)`` pairs in ``wanted``, from the listing snapshot (only the row
    groups of their units are read)."""
    listing = out / LISTING_FILE
    by_unit: dict[int, set[str]] = {}
    for image_id, unit in wanted:
        by_unit.setdefault(unit, set()).add(image_id)
    if not by_unit:
        return {}
    units = make_units(n_items, unit_size)
    found: dict[str, Item] = {}
    try:
        pf = pq.ParquetFile(listing)
        for index, ids in sorted(by_unit.items()):
            if not 0 <= index < len(units) or index >= pf.metadata.num_row_groups:
                continue
            for item in read_unit_items(pf, units[index]):
                if item.id in ids:
                    found[item.id] = item
    except (OSError, ValueError, KeyError, IndexError, pa.ArrowException):
        pass  # a damaged or missing listing: the report goes without (more) thumbnails
    return found


def make_thumbnails(
    out: Path,
    wanted: list[tuple[str, int]],
    *,
    n_items: int,
    unit_size: int,
    limit: int = MAX_THUMBS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> tuple[dict[str, str], dict[str, str]]:
    """Data URIs of up to ``limit`` of ``wanted`` (in order) and, for those that got none, why."""
    wanted = list(dict.fromkeys(wanted))[: max(limit, 0)]
    uris: dict[str, str] = {}
    refused: dict[str, str] = {}
    try:
        items = locate(out, wanted, n_items, unit_size)
    except (OSError, ValueError) as exc:  # no readable listing: a page without thumbnails
        return {}, {image_id: f"listing unreadable: {exc}" for image_id, _ in wanted}
    with ItemReader(max_member_bytes) as reader:
        for image_id, _ in wanted:
            item = items.get(image_id)
            if item is None:
                refused[image_id] = "not in the listing"
                continue
            try:
                jpeg = thumbnail(reader.read(item), max_pixels=max_pixels)
            except ImageError as exc:
                refused[image_id] = str(exc)
                continue
            if len(jpeg) > THUMB_MAX_BYTES:
                refused[image_id] = f"thumbnail of {len(jpeg)} bytes, over {THUMB_MAX_BYTES}"
                continue
            uris[image_id] = data_uri(jpeg)
    return uris, refused
