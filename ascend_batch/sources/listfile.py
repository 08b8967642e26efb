"""List files: ``.txt`` (one path a line) and ``.csv``/``.parquet`` (a ``path`` column)."""

from __future__ import annotations

import csv
from collections.abc import Iterator

from ..errors import ManifestError
from .item import exc_text


def read_list(path: str, key: str) -> Iterator[str]:
    """Entries of a list file: ``.txt`` (one per line; blank lines and ``#`` comments skipped) or
    ``.csv``/``.parquet`` with a ``path`` column; each stripped of surrounding white space. A list
    that cannot be read is a manifest error naming ``key``."""
    lower = path.lower()
    try:
        if lower.endswith(".parquet"):
            yield from read_parquet_list(path, key)
            return
        with open(path, encoding="utf-8-sig", newline="" if lower.endswith(".csv") else None) as f:
            if lower.endswith(".csv"):
                reader = csv.DictReader(f)
                if reader.fieldnames is None or "path" not in reader.fieldnames:
                    raise ManifestError(
                        key,
                        f"list file {path} has no 'path' column "
                        f"(columns: {', '.join(reader.fieldnames or []) or 'none'})",
                    )
                for row in reader:
                    value = (row.get("path") or "").strip()
                    if value:
                        yield value
            else:
                for line in f:
                    value = line.strip()
                    if value and not value.startswith("#"):
                        yield value
    except ManifestError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(key, f"cannot read list file {path}: {exc_text(exc)}") from None


def read_parquet_list(path: str, key: str) -> Iterator[str]:
    """Entries of a Parquet list file's ``path`` column (strings; nulls and blanks skipped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(key, f"cannot read list file {path}: {exc_text(exc)}") from None
    names = pf.schema_arrow.names
    if "path" not in names:
        raise ManifestError(key, f"list file {path} has no 'path' column (columns: {', '.join(names) or 'none'})")
    column_type = pf.schema_arrow.field("path").type
    if not pa.types.is_string(column_type) and not pa.types.is_large_string(column_type):
        raise ManifestError(key, f"list file {path}: the 'path' column holds {column_type}, expected strings")
    for batch in pf.iter_batches(columns=["path"]):
        for value in batch.column(0).to_pylist():
            if value and value.strip():
                yield value.strip()
