"""The one way this project makes a file appear: write a hidden temp file beside it, flush and fsync,
then hard-link it to its name (exclusive: fails if the name exists) or rename it over the name
(replace), fsync the folder, and remove the temp file whatever happened.

Temp names carry their writer (``.tmp-<name>~<host>~<pid>~<random>``), so a later run can tell the
leftovers of a killed process from files still being written (:func:`temp_owner`)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".tmp-"


def temp_name(name: str) -> str:
    return f"{TEMP_PREFIX}{name}~{socket.gethostname()}~{os.getpid()}~{uuid.uuid4().hex[:8]}"


# temp names of versions before 0.2: ".tmp-<name>[<tag>].<host>.<pid>" and ".<name>.<pid>[.<random>].tmp"
_LEGACY_TMP = re.compile(r"^\.tmp-(?P<rest>.+)\.(?P<pid>\d+)$")
_LEGACY_DOT = re.compile(r"^\.[^.].*\.(?P<pid>\d+)(?:\.[0-9a-f]{8})?\.tmp$")


def temp_owner(name: str) -> tuple[str, int] | None:
    """``(host, pid)`` of the process that made temp file ``name`` ("" for a host it cannot tell);
    None if it is no temp file of this tool."""
    parts = name.rsplit("~", 3)
    if name.startswith(TEMP_PREFIX) and len(parts) == 4 and parts[2].isdigit():
        return parts[1], int(parts[2])
    here = socket.gethostname()
    if m := _LEGACY_TMP.match(name):
        return (here if m["rest"].endswith("." + here) else ""), int(m["pid"])
    if m := _LEGACY_DOT.match(name):
        return here, int(m["pid"])
    return None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Created:
    """What :func:`atomic_create` did: ``created`` is False when an exclusive create found the name
    taken (someone else committed it first; nothing was changed)."""

    path: Path
    created: bool = False


@contextlib.contextmanager
def atomic_create(path: Path, *, exclusive: bool) -> Iterator[tuple[BinaryIO, Created]]:
    """``with atomic_create(p, exclusive=True) as (f, result): f.write(...)``; after the block ``p``
    exists with exactly what was written (``result.created``), or is untouched. An exception in the
    block, or while committing, leaves no temp file behind and propagates."""
    tmp = path.with_name(temp_name(path.name))
    result = Created(path)
    try:
        with open(tmp, "xb") as f:
            yield f, result
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return
        else:
            os.replace(tmp, path)
        result.created = True
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text(path: Path, text: str, *, exclusive: bool = False) -> bool:
    """Write ``text`` to ``path`` atomically; with ``exclusive``, False if ``path`` already existed."""
    with atomic_create(path, exclusive=exclusive) as (f, result):
        f.write(text.encode("utf-8"))
    return result.created
