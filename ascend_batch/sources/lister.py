"""Listing one manifest entry: a directory (walked), a glob, a list file, an archive or one file.

Names are carried raw (as Python reads them: surrogate escapes for bytes that are not UTF-8) and
escaped into ids exactly once, when an :class:`Item` is made."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from .ids import make_id
from .item import (
    ZIP_SUFFIXES,
    Item,
    error_item,
    is_archive,
    is_list_file,
    join_rel,
    oserror_text,
    split_glob,
)
from .listfile import read_list
from .tar_archive import list_tar
from .walk import glob_match, walk
from .zip_archive import list_zip


class Lister:
    """Listing state for one manifest entry: ``source`` as written, the wanted extensions
    (lower case) and the manifest key named by errors in list files."""

    def __init__(self, source: str, exts: tuple[str, ...], key: str) -> None:
        self.source = source
        self.exts = exts
        self.key = key

    def wanted(self, name: str) -> bool:
        return name.lower().endswith(self.exts)

    # one path: directory, archive, list file or plain file
    def path(self, path: str, name: str, *, allow_lists: bool, filter_ext: bool, entry: bool = False) -> Iterator[Item]:
        """Items of ``path``, whose raw id name is ``name``; ``entry``: the manifest entry itself (a
        folder's files then get ids relative to it, without the folder's name). ``filter_ext`` is
        for paths found by a walk, known not to be folders: other files are skipped without a
        ``stat``."""
        base = os.path.basename(path)
        if filter_ext and not (self.wanted(base) or is_archive(base)):
            return
        try:
            st = os.stat(path)
        except OSError as exc:
            yield error_item(name, self.source, path, "read", oserror_text(exc, path))
            return
        if stat.S_ISDIR(st.st_mode):
            yield from self.directory(path, "" if entry else name)
            return
        if allow_lists and is_list_file(base):
            yield from self.list_file(path)
            return
        if is_archive(base):
            if not stat.S_ISREG(st.st_mode):
                yield error_item(name, self.source, path, "read", f"not a regular file: {path}")
            elif base.lower().endswith(ZIP_SUFFIXES):
                yield from list_zip(path, name, self.source, self.wanted)
            else:
                yield from list_tar(path, name, self.source, self.wanted)
            return
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            yield error_item(name, self.source, path, "read", f"not a regular file: {path}")
            return
        yield Item(make_id(name), self.source, "file", path, None, st.st_size, st.st_mtime)

    def directory(self, root: str, prefix: str) -> Iterator[Item]:
        """Files under ``root`` (recursively, archives expanded) named ``prefix/relative/path``."""
        for found in walk(root):
            name = join_rel(prefix, found.rel) if found.rel else (prefix or self.source)
            if found.error is not None:
                yield error_item(name, self.source, found.path, "read", found.error)
            elif not found.is_dir:
                yield from self.path(found.path, name, allow_lists=False, filter_ext=True)

    def glob(self, pattern: Path) -> Iterator[Item]:
        """Matches of a glob pattern (``*``, ``?``, ``[...]``; ``**`` = any number of folders), in
        sorted order; ids relative to the pattern's leading folder without wildcards. Matched
        folders are walked, matched archives expanded; list files are read only when the pattern
        names them by suffix (``lists/*.txt``)."""
        base, pat = split_glob(pattern)
        lists = is_list_file(pattern.name)
        matched: list[str] = []  # stack of matched folders enclosing the current walk position

        def under_match(rel: str) -> bool:
            while matched and not rel.startswith(matched[-1] + "/"):
                matched.pop()
            return bool(matched)

        def descend(rel: str) -> bool:
            if under_match(rel):
                return True
            relparts = tuple(rel.split("/"))
            if glob_match(pat, relparts, partial=False):
                matched.append(rel)
                return True
            return glob_match(pat, relparts, partial=True)

        if not os.path.isdir(base):
            return
        for found in walk(base, descend):
            if found.error is not None:
                yield error_item(found.rel or self.source, self.source, found.path, "read", found.error)
                continue
            if found.is_dir:
                continue
            inside = under_match(found.rel)
            if not inside and not glob_match(pat, tuple(found.rel.split("/")), partial=False):
                continue
            if not inside and lists and is_list_file(os.path.basename(found.path)):
                yield from self.list_file(found.path)
            else:
                yield from self.path(found.path, found.rel, allow_lists=False, filter_ext=True)

    def list_file(self, path: str) -> Iterator[Item]:
        """Entries of a list file, each resolved against the list file's folder; ids as written.
        Entries are taken as given (no extension filter); folders and archives are expanded."""
        folder = os.path.dirname(os.path.abspath(path))
        for entry in read_list(path, self.key):
            full = os.path.normpath(os.path.join(folder, os.path.expanduser(entry)))
            yield from self.path(full, entry, allow_lists=False, filter_ext=False)
