"""Listing snapshot and deterministic units.

The snapshot (``out/_listing.parquet``) is written once, when a job starts, with one row group per
unit, so a resumed job (or another Slurm array task) sees exactly the same items and unit
boundaries, and a worker reads only its unit's rows.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_create
from .sources import Item

LISTING_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("source", pa.string()),
        ("kind", pa.string()),
        ("path", pa.binary()),  # file system bytes: names need not be UTF-8
        ("member", pa.binary()),
        ("offset", pa.int64()),
        ("size", pa.int64()),
        ("mtime", pa.float64()),
        ("error", pa.string()),
        # a tar hard link's target member (whose header precedes the shared data); a column added
        # after the first release: snapshots without it still load (see _items)
        ("link", pa.binary()),
    ]
)


@dataclass(frozen=True)
class Unit:
    """A contiguous slice ``[start, stop)`` of the snapshot listing."""

    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Snapshot:
    path: Path
    n_items: int
    unit_size: int
    digest: str  # hash of ids and sizes: identifies the listing

    @property
    def units(self) -> list[Unit]:
        return make_units(self.n_items, self.unit_size)


def make_units(n_items: int, unit_size: int) -> list[Unit]:
    return [Unit(i, s, min(s + unit_size, n_items)) for i, s in enumerate(range(0, n_items, unit_size))]


def shard_units(units: Sequence[Unit], shard: int, shards: int) -> list[Unit]:
    """The units of Slurm array task ``shard`` of ``shards``: ``unit % shards == shard``."""
    return [u for u in units if u.index % shards == shard]


def write_snapshot(items: Iterable[Item], path: Path, unit_size: int) -> Snapshot:
    """Write the listing in row groups of ``unit_size`` to ``path`` (atomically, exclusive:
    if another process wrote it first, its snapshot wins and is returned)."""
    digest = hashlib.sha256()
    n = 0
    cols: dict[str, list] = {name: [] for name in LISTING_SCHEMA.names}
    with (
        atomic_create(path, exclusive=True) as (f, result),
        pq.ParquetWriter(f, LISTING_SCHEMA, compression="zstd") as writer,
    ):
        for item in items:
            cols["image_id"].append(item.id)
            cols["source"].append(item.source)
            cols["kind"].append(item.kind)
            cols["path"].append(os.fsencode(item.path))
            cols["member"].append(None if item.member is None else os.fsencode(item.member))
            cols["offset"].append(item.offset)
            cols["size"].append(item.size)
            cols["mtime"].append(item.mtime)
            cols["error"].append(item.error)
            cols["link"].append(None if item.link is None else os.fsencode(item.link))
            digest.update(f"{item.id}\0{item.size}\n".encode())
            n += 1
            if len(cols["image_id"]) == unit_size:
                writer.write_table(pa.table(cols, schema=LISTING_SCHEMA), row_group_size=unit_size)
                cols = {name: [] for name in LISTING_SCHEMA.names}
        if cols["image_id"] or n == 0:
            writer.write_table(pa.table(cols, schema=LISTING_SCHEMA), row_group_size=unit_size)
    if not result.created:  # another process wrote it first: its snapshot wins
        return read_snapshot(path)
    return Snapshot(path, n, unit_size, digest.hexdigest()[:16])


def read_snapshot(path: Path) -> Snapshot:
    pf = pq.ParquetFile(path)
    n = pf.metadata.num_rows
    unit_size = pf.metadata.row_group(0).num_rows if pf.metadata.num_row_groups else 1
    digest = hashlib.sha256()
    for batch in pf.iter_batches(columns=["image_id", "size"], batch_size=65536):
        for image_id, size in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
            digest.update(f"{image_id}\0{size}\n".encode())
    return Snapshot(path, n, max(unit_size, 1), digest.hexdigest()[:16])


def read_unit_items(
    listing: pq.ParquetFile, unit: Unit, start: int | None = None, stop: int | None = None
) -> list[Item]:
    """Items of ``unit`` (or of its slice ``[start, stop)`` in listing coordinates)."""
    table = listing.read_row_group(unit.index)
    lo = (start if start is not None else unit.start) - unit.start
    hi = (stop if stop is not None else unit.stop) - unit.start
    rows = table.slice(lo, hi - lo).to_pylist()
    return list(_items(rows))


def unit_ids(listing: pq.ParquetFile, unit: Unit) -> list[str]:
    """The image ids of ``unit``, in listing order."""
    return listing.read_row_group(unit.index, columns=["image_id"]).column(0).to_pylist()


def _items(rows: list[dict]) -> Iterator[Item]:
    for r in rows:
        yield Item(
            id=r["image_id"],
            source=r["source"],
            kind=r["kind"],
            path=os.fsdecode(r["path"]),
            member=None if r["member"] is None else os.fsdecode(r["member"]),
            size=r["size"],
            mtime=r["mtime"],
            error=r["error"],
            offset=r["offset"],
            link=_link(r),
        )


def _link(row: dict) -> str | None:
    """The row's ``link``; ``""`` (not recorded) for a snapshot written before that column existed."""
    raw = row.get("link", b"")
    return None if raw is None else os.fsdecode(raw)
