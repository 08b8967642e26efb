"""Dataset sources -> Items.

One small lister per source kind (directory, glob, tar, zip, list file, single file), one
:func:`list_source` choosing by the path's form and suffix, and :func:`list_items` chaining the
manifest's entries and refusing duplicate ids. An :class:`Item` is plain data (it travels to worker
processes and into the listing snapshot); bytes are read through an :class:`ItemReader`, which keeps
archives open per worker.

Modules: :mod:`.ids` (id escaping), :mod:`.item` (Item, shared helpers), :mod:`.walk` (folder walk,
glob matching), :mod:`.lister` (one manifest entry), :mod:`.tar_archive`, :mod:`.zip_archive`,
:mod:`.listfile`, :mod:`.reader` (bounded reads).

Ids are stable across runs:

* ``relative/path.jpg`` for a file found under a directory (relative to that directory), or under a
  glob's fixed leading folder (``/data/*/x.jpg`` -> ``a/x.jpg``);
* the file name for a single file given directly;
* the path as written for an entry of a list file (``.txt``/``.csv``/``.parquet``);
* ``<archive id>::<member name>`` for an archive member, where the archive id follows the same rules
  (archives found while walking a directory are expanded into their members).

Ids are unique by construction: each name (path, entry, member) is escaped the same way whatever
the source (:func:`escape_name`): a backslash becomes ``\\\\``, a byte of a file name that is not
UTF-8 becomes ``\\xNN``, and a colon that touches another colon or ends the name becomes ``\\:``
(so ``::`` only ever separates an archive from its member). :func:`parse_id` turns an id back into
its name and member. Two entries of the manifest that name the same file still give one id twice,
which :func:`list_items` refuses.

A bad input never raises while listing: a truncated or corrupt archive, an unreadable directory or a
missing list entry becomes an ``Item(kind="error")`` whose ``error`` is ``"<kind>: <message>"``, so it
ends as one error row. Members listed before the damage in a truncated tar are kept; a compressed
tar whose checksum fails at its end keeps its members and adds that error item. Nothing is ever
extracted to disk: archive members are read into memory by offset, a tar member only while the
header before its data still matches the listing. A user's file is opened only if it is a regular
file (:func:`~.item.open_regular`), so a FIFO or device swapped in after the listing never blocks
or streams forever.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ManifestError
from .ids import escape_name, make_id, member_id, parse_id, printable, unescape_name
from .item import (
    ARCHIVE_SUFFIXES,
    DEFAULT_MAX_MEMBER_BYTES,
    GLOB_CHARS,
    LIST_SUFFIXES,
    TAR_SUFFIXES,
    ZIP_SUFFIXES,
    Item,
    has_magic,
    is_archive,
    is_list_file,
)
from .lister import Lister
from .reader import ItemReader
from .roots import SourceGoneError, source_roots

if TYPE_CHECKING:  # a type only: sources do not depend on the manifest module at run time
    from ..manifest import DatasetConfig

__all__ = [
    "ARCHIVE_SUFFIXES",
    "DEFAULT_MAX_MEMBER_BYTES",
    "GLOB_CHARS",
    "LIST_SUFFIXES",
    "TAR_SUFFIXES",
    "ZIP_SUFFIXES",
    "Item",
    "ItemReader",
    "SourceGoneError",
    "escape_name",
    "has_magic",
    "is_archive",
    "is_list_file",
    "list_items",
    "list_source",
    "make_id",
    "member_id",
    "parse_id",
    "printable",
    "source_roots",
    "unescape_name",
]


def list_items(dataset: DatasetConfig) -> Iterator[Item]:
    """Every input of ``dataset`` in a deterministic order: manifest entries in order, each one's
    items in sorted (directories, globs) or stored (archives, list files) order.

    Raises :class:`ManifestError` for two items with the same id, or for a list file that cannot be
    read as a list; never for a bad input file (that becomes an error item)."""
    exts = tuple(e.lower() for e in dataset.extensions)
    seen: dict[str, str] = {}
    for i, (written, path) in enumerate(zip(dataset.paths, dataset.resolved, strict=True)):
        for item in list_source(written, path, exts, key=f"dataset.paths[{i}]"):
            first = seen.get(item.id)
            if first is not None:
                where = f"listed twice in {written!r}" if first == written else f"from {first!r} and {written!r}"
                raise ManifestError("dataset.paths", f"duplicate id {item.id!r} {where}")
            seen[item.id] = written
            yield item


def list_source(written: str, path: Path, extensions: Iterable[str], key: str = "dataset.paths") -> Iterator[Item]:
    """The items of one manifest entry (``written`` as in the manifest, ``path`` resolved).
    Chooses the lister: glob pattern, directory, archive, list file or single file."""
    exts = tuple(e.lower() for e in extensions)
    lister = Lister(written, exts, key)
    if has_magic(written) and not os.path.lexists(path):
        return lister.glob(path)
    return lister.path(str(path), path.name, allow_lists=True, filter_ext=False, entry=True)
