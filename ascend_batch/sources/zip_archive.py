"""Zip archives: listing members from the central directory. Nothing is ever extracted to disk."""

from __future__ import annotations

import calendar
import zipfile
from collections.abc import Callable, Iterator

from .ids import escape_name, member_id
from .item import ARCHIVE_ERRORS, Item, error_item, exc_text, open_regular, oserror_text


def list_zip(path: str, name: str, source: str, wanted: Callable[[str], bool]) -> Iterator[Item]:
    """Members of the zip at ``path`` (``name``: its raw name for ids) in central-directory order,
    those whose name passes ``wanted``. A zip that cannot be opened (bad central directory,
    truncated) yields one error item."""
    try:
        with open_regular(path) as f, zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
    except OSError as exc:
        yield error_item(name, source, path, "read", oserror_text(exc, path))
        return
    except ARCHIVE_ERRORS as exc:
        yield error_item(name, source, path, "archive", f"corrupt zip: {exc_text(exc)}")
        return
    archive_id = escape_name(name)
    listed: set[str] = set()
    duplicates: list[str] = []
    for info in infos:
        if info.is_dir() or not wanted(info.filename):
            continue
        if info.filename in listed:
            duplicates.append(info.filename)
            continue
        listed.add(info.filename)
        yield Item(
            member_id(archive_id, info.filename),
            source,
            "zip",
            path,
            info.filename,
            info.file_size,
            zip_mtime(info),
            offset=info.header_offset,
        )
    if duplicates:
        yield error_item(
            name,
            source,
            path,
            "archive",
            f"{len(duplicates)} duplicate member names, first copy kept (e.g. {duplicates[0]!r})",
        )


def zip_mtime(info: zipfile.ZipInfo) -> float:
    """A member's modification time (its DOS date and time read as UTC); 0.0 when invalid."""
    try:
        return float(calendar.timegm((*info.date_time, 0, 0, 0)))
    except (ValueError, OverflowError, TypeError):
        return 0.0
