"""Folder walking and glob matching, shared by the directory and glob listers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from fnmatch import fnmatchcase
from typing import NamedTuple

from .item import join_rel, oserror_text


class Found(NamedTuple):
    """One entry met by :func:`walk`."""

    rel: str  # posix path relative to the walk root (raw: may hold surrogate escapes)
    path: str
    is_dir: bool
    error: str | None = None  # "cannot list directory: ..." for a folder that could not be listed


def walk(root: str, descend: Callable[[str], bool] | None = None) -> Iterator[Found]:
    """Depth-first walk of ``root`` following symbolic links, entries of each folder in name order
    (so ids come out sorted folder by folder). A folder reached twice (symlink loop or alias) is
    walked once: folders are identified by (st_dev, st_ino). ``descend(rel)`` may prune folders.
    Yields folders (before their contents), other entries, and an error for a folder that cannot
    be listed."""
    try:
        st = os.stat(root)
    except OSError as exc:
        yield Found("", root, True, oserror_text(exc, root))
        return
    visited = {(st.st_dev, st.st_ino)}
    stack: list[Iterator[os.DirEntry[str]]] = []
    rels: list[str] = []

    def scan(path: str, rel: str) -> Found | None:
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            return Found(rel, path, True, f"cannot list directory: {oserror_text(exc, path)}")
        stack.append(iter(entries))
        rels.append(rel)
        return None

    failed = scan(root, "")
    if failed is not None:
        yield failed
        return
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            rels.pop()
            continue
        rel = join_rel(rels[-1], entry.name)
        try:
            is_dir = entry.is_dir()  # follows symbolic links
        except OSError:
            is_dir = False
        if not is_dir:
            yield Found(rel, entry.path, False)
            continue
        try:
            dst = entry.stat()
        except OSError:
            continue  # vanished since the listing of its parent
        key = (dst.st_dev, dst.st_ino)
        if key in visited or (descend is not None and not descend(rel)):
            continue
        visited.add(key)
        yield Found(rel, entry.path, True)
        failed = scan(entry.path, rel)
        if failed is not None:
            yield failed


def glob_match(pat: tuple[str, ...], parts: tuple[str, ...], *, partial: bool) -> bool:
    """Whether path ``parts`` match glob ``pat`` component by component (``**`` = zero or more
    components; like :mod:`glob`, wildcards do not match names starting with '.'). With
    ``partial``, whether a folder at ``parts`` could still contain a match."""
    if not parts:
        return partial or all(p == "**" for p in pat)
    if not pat:
        return False
    head = pat[0]
    if head == "**":
        if glob_match(pat[1:], parts, partial=partial):
            return True
        return not parts[0].startswith(".") and glob_match(pat, parts[1:], partial=partial)
    if parts[0].startswith(".") and not head.startswith("."):
        return False
    return fnmatchcase(parts[0], head) and glob_match(pat[1:], parts[1:], partial=partial)
