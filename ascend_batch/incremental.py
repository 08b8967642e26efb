"""Incremental runs: skip images already classified in earlier outputs.

``dataset.skip_existing = ["../results/*"]`` names earlier output directories (globs allowed,
relative to the manifest). When a job's listing snapshot is first made, every listed image whose
``(image_id, file_size, file_mtime)`` matches a row of a committed part file in one of those
directories is left out, so each night processes only new or changed files. A file that was
replaced (new size or modification time) is classified again; an item that failed at listing time
(no size) is never skipped. The job's own output directory is never used as an earlier result, so
``results/*`` can name tonight's sibling folders, e.g. with a date-partitioned layout::

    results/date=2026-11-23/part-*.parquet
    results/date=2026-11-24/part-*.parquet      <- tonight, output = "results/date=2026-11-24"

Earlier rows are held as 16-byte digests of their key in one sorted numpy array, so ten million
earlier images take about 160 MB (twice that briefly while they are loaded); the listing is
filtered in chunks.
"""

from __future__ import annotations

import glob
import hashlib
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from .errors import IncompatibleOutputError, ManifestError
from .runner.outdir import PART_RE
from .sources import GLOB_CHARS, Item

KEY_COLUMNS = ["image_id", "file_size", "file_mtime"]
_CHUNK = 8192


def item_key(image_id: str, size: int | None, mtime_ms: int | None) -> bytes:
    """The digest that identifies one version of one image (its id, size and mtime in ms)."""
    return hashlib.blake2b(f"{image_id}\0{size}\0{mtime_ms}".encode(), digest_size=16).digest()


def listed_key(item: Item) -> bytes:
    """Key of a freshly listed item, with the same conventions as the row writer
    (size < 0 and mtime 0 are missing values)."""
    size = item.size if item.size >= 0 else None
    mtime_ms = int(item.mtime * 1000) if item.mtime else None
    return item_key(item.id, size, mtime_ms)


def earlier_dirs(patterns: Sequence[Path], own: Path | None = None) -> list[Path]:
    """The directories ``patterns`` name (globs expanded, sorted), without ``own``. A name without
    glob characters must exist; a glob may match nothing (the first night)."""
    own_resolved = own.resolve() if own is not None else None
    found: list[Path] = []
    for i, pattern in enumerate(patterns):
        text = str(pattern)
        if any(ch in text for ch in GLOB_CHARS):
            matches = [Path(p) for p in sorted(glob.glob(text)) if Path(p).is_dir()]
        else:
            if not pattern.is_dir():
                raise ManifestError(f"dataset.skip_existing[{i}]", f"no such directory: {pattern}")
            matches = [pattern]
        for m in matches:
            r = m.resolve()
            if r != own_resolved and r not in found:
                found.append(r)
    return found


def existing_keys(dirs: Iterable[Path]) -> np.ndarray:
    """Sorted, unique digests of every row in the committed part files of ``dirs``."""
    chunks: list[np.ndarray] = []
    for d in dirs:
        for name in sorted(n.name for n in d.iterdir() if PART_RE.match(n.name)):
            path = d / name
            try:
                table = pq.read_table(path, columns=KEY_COLUMNS)
            except (KeyError, ValueError) as exc:
                raise IncompatibleOutputError(
                    f"{path} has no {', '.join(KEY_COLUMNS)} columns ({exc}); it cannot serve as an earlier "
                    "result for dataset.skip_existing"
                ) from None
            except OSError as exc:
                raise IncompatibleOutputError(
                    f"{path} is unreadable ({exc}); fix or remove it, or drop it from dataset.skip_existing"
                ) from None
            ids = table.column("image_id").to_pylist()
            sizes = table.column("file_size").to_pylist()
            mtimes = table.column("file_mtime").cast("int64").to_pylist()
            digests = [item_key(i, s, t) for i, s, t in zip(ids, sizes, mtimes, strict=True)]
            chunks.append(np.array(digests, dtype="S16"))
    if not chunks:
        return np.empty(0, dtype="S16")
    keys = np.concatenate(chunks)
    chunks.clear()
    keys.sort()
    if len(keys) > 1:
        distinct = np.empty(len(keys), dtype=bool)
        distinct[0] = True
        np.not_equal(keys[1:], keys[:-1], out=distinct[1:])
        keys = keys[distinct]
    return keys


class SkipExisting:
    """Filters a listing: ``filter(items)`` yields the items not found in ``keys``; counts both."""

    def __init__(self, keys: np.ndarray, dirs: Sequence[Path] = ()) -> None:
        self.keys = keys
        self.dirs = list(dirs)
        self.seen = 0
        self.skipped = 0

    def _known(self, items: list[Item]) -> np.ndarray:
        if not len(self.keys):
            return np.zeros(len(items), dtype=bool)
        want = np.array([listed_key(it) for it in items], dtype="S16")
        pos = np.searchsorted(self.keys, want)
        pos[pos == len(self.keys)] = 0
        return self.keys[pos] == want

    def filter(self, items: Iterable[Item]) -> Iterator[Item]:
        chunk: list[Item] = []
        for item in items:
            chunk.append(item)
            if len(chunk) == _CHUNK:
                yield from self._pass(chunk)
                chunk = []
        if chunk:
            yield from self._pass(chunk)

    def _pass(self, chunk: list[Item]) -> Iterator[Item]:
        self.seen += len(chunk)
        for item, known in zip(chunk, self._known(chunk), strict=True):
            if known:
                self.skipped += 1
            else:
                yield item


def skip_existing(items: Iterable[Item], patterns: Sequence[Path], own: Path | None = None) -> Iterator[Item]:
    """``items`` without those already in the earlier outputs ``patterns`` (no-op when empty); logs a
    line with the counts when the listing is exhausted."""
    if not patterns:
        yield from items
        return
    dirs = earlier_dirs(patterns, own)
    filt = SkipExisting(existing_keys(dirs), dirs)
    yield from filt.filter(items)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(
        f"{stamp} skip_existing: {filt.skipped} of {filt.seen} listed images are already in {len(dirs)} earlier "
        f"output(s); {filt.seen - filt.skipped} to classify",
        file=sys.stderr,
        flush=True,
    )
