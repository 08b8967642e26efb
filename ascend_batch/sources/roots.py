"""The folders a dataset lists, to tell a dropped mount from files deleted one by one.

When every file of a folder entry (or of a glob's fixed folder) vanishes at once, the folder is gone
or empty: an unmounted or dropped file system (a lazy unmount leaves the mount point as an empty
folder, and reads then fail with "No such file or directory"). That is the machine's failure, not
the files': the job stops (exit 8) instead of writing a ``read`` row for every image left. A file
deleted from a folder that still holds others stays that file's ``read`` row."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from .item import split_glob


class SourceGoneError(OSError):
    """The folder of a dataset entry is gone or empty while its files are read."""


def source_roots(resolved: Iterable[Path]) -> tuple[tuple[str, str], ...]:
    """``(key, folder)`` for each entry of ``dataset.paths`` that is a folder or a glob (its leading
    folder without wildcards); files, archives and list files name no folder of their own."""
    roots = []
    for i, path in enumerate(resolved):
        base, pattern = split_glob(path)
        if pattern:
            folder = base
        elif path.is_dir():
            folder = str(path)
        else:
            continue
        roots.append((f"dataset.paths[{i}]", folder))
    return tuple(roots)


def check_source(roots: Iterable[tuple[str, str]], path: str) -> None:
    """Raise :class:`SourceGoneError` when ``path`` (a file that was not found) lies under a dataset
    folder that is itself gone or empty."""
    for key, folder in roots:
        if not path.startswith(folder.rstrip(os.sep) + os.sep):
            continue
        try:
            with os.scandir(folder) as entries:
                empty = next(entries, None) is None
        except FileNotFoundError:
            empty = True
        except OSError:
            continue
        if empty:
            raise SourceGoneError(
                errno.ENOENT,
                f"{key} ({folder}) is gone or empty while its files are read: an unmounted or dropped file "
                "system? Nothing is blamed on the images; rerun once it is back (or, if the dataset was "
                "removed on purpose, start afresh with --restart)",
                path,
            )
