"""List files: ``.txt`` (one path a line) and ``.csv``/``.parquet`` (a ``path`` column)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from ..errors import ManifestError
from .item import NotRegularFileError, exc_text, open_regular


def read_list(path: str, key: str) -> Iterator[str]:
    """Entries of a list file: ``.txt`` (one per line; blank lines and ``#`` comments skipped) or
    ``.csv``/``.parquet`` with a ``path`` column; each stripped of surrounding white space. A list
    that cannot be read, is not a regular file (a FIFO or device is never opened as a list) or holds
    an entry with a NUL byte (no file name can) is a manifest error naming ``key``."""
    for where, value in _entries(path, key):
        if "\0" in value:
            raise ManifestError(key, f"list file {path}, {where}: the entry holds a NUL byte, so it cannot name a file")
        yield value


def _entries(path: str, key: str) -> Iterator[tuple[str, str]]:
    """``(where, entry)`` pairs, ``where`` the entry's line (``.txt``, ``.csv``) or row (``.parquet``)."""
    lower = path.lower()
    is_csv = lower.endswith(".csv")
    try:
        if lower.endswith(".parquet"):
            yield from _parquet_entries(path, key)
            return
        with io.TextIOWrapper(open_regular(path), encoding="utf-8-sig", newline="" if is_csv else None) as f:
            yield from _csv_entries(f, path, key) if is_csv else _txt_entries(f)
    except ManifestError:
        raise
    except NotRegularFileError:
        raise ManifestError(key, f"list file {path} is not a regular file (a FIFO or device is never read)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(key, f"cannot read list file {path}: {exc_text(exc)}") from None


def _txt_entries(f: io.TextIOWrapper) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(f, 1):
        value = line.strip()
        if value and not value.startswith("#"):
            yield f"line {number}", value


def _csv_entries(f: io.TextIOWrapper, path: str, key: str) -> Iterator[tuple[str, str]]:
    reader = csv.DictReader(f)
    if reader.fieldnames is None or "path" not in reader.fieldnames:
        raise ManifestError(
            key,
            f"list file {path} has no 'path' column (columns: {', '.join(reader.fieldnames or []) or 'none'})",
        )
    for row in reader:
        value = (row.get("path") or "").strip()
        if value:
            yield f"line {reader.line_num}", value


def _parquet_entries(path: str, key: str) -> Iterator[tuple[str, str]]:
    """Entries of a Parquet list file's ``path`` column (strings; nulls and blanks skipped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open_regular(path) as f:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(key, f"cannot read list file {path}: {exc_text(exc)}") from None
        names = pf.schema_arrow.names
        if "path" not in names:
            raise ManifestError(key, f"list file {path} has no 'path' column (columns: {', '.join(names) or 'none'})")
        column_type = pf.schema_arrow.field("path").type
        if not pa.types.is_string(column_type) and not pa.types.is_large_string(column_type):
            raise ManifestError(key, f"list file {path}: the 'path' column holds {column_type}, expected strings")
        row = 0
        for batch in pf.iter_batches(columns=["path"]):
            for value in batch.column(0).to_pylist():
                row += 1
                if value and value.strip():
                    yield f"row {row}", value.strip()
