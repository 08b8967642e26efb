"""The :class:`Item` every source yields, and the small helpers the listers share."""

from __future__ import annotations

import errno
import io
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .ids import make_id, printable

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)
ARCHIVE_SUFFIXES = TAR_SUFFIXES + ZIP_SUFFIXES
LIST_SUFFIXES = (".txt", ".csv", ".parquet")
GLOB_CHARS = "*?["
DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024

# errors that a damaged archive can raise from the standard library's readers
ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,  # zipfile: encrypted member
)


@dataclass(frozen=True, slots=True)
class Item:
    """One input file. ``id`` is stable across runs and unique: ``relative/path.jpg`` for directory
    files, ``archive.tar::member/path.jpg`` for archive members, each part escaped by
    :func:`~ascend_batch.sources.ids.escape_name`. ``kind`` is ``file``, ``tar``, ``zip`` or
    ``error`` (a listing-time failure, e.g. a truncated archive, reported as one error row)."""

    id: str
    source: str  # the manifest entry it came from, as written
    kind: str
    path: str  # absolute path of the file or of the archive
    member: str | None = None  # archive member name, as the archive stores it (not escaped)
    size: int = -1
    mtime: float = 0.0
    error: str | None = None  # set for kind == "error": "kind: message"
    # tar: offset of the member's data in the (decompressed) tar stream; zip: offset of the
    # member's local header (tells apart members that share a name); -1 otherwise
    offset: int = -1
    # tar hard link: the member whose data it shares (whose header precedes ``offset``); None for
    # a member that holds its own data; "" when not recorded (listing snapshots of versions before
    # this field): the reader then checks that header's type and size but not its name
    link: str | None = None


class NotRegularFileError(OSError):
    """A FIFO, device, socket or folder where a regular file was expected (see :func:`open_regular`)."""

    def __init__(self, path: str) -> None:
        super().__init__(None, "not a regular file", path)

    def __str__(self) -> str:
        return f"not a regular file: {self.filename}"


def open_regular(path: str) -> io.BufferedReader:
    """``path`` opened for binary reading, only if it is a regular file: a FIFO would block
    ``open`` forever and a device (``/dev/zero``) never ends. A path that is not one is refused
    before it is opened; one swapped in after that check is opened without blocking and refused
    before anything is read. Raises :class:`NotRegularFileError` or the ``OSError`` of ``open``."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise NotRegularFileError(path)
    f = open(path, "rb", opener=_open_nonblocking)  # noqa: SIM115 (returned to the caller)
    try:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise NotRegularFileError(path)
        os.set_blocking(f.fileno(), True)
    except BaseException:
        f.close()
        raise
    return f


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY)


def error_item(name: str, source: str, path: str, kind: str, message: str) -> Item:
    """An error item for the file or archive ``name`` (raw, escaped here into its id)."""
    return Item(make_id(name), source, "error", path, error=printable(f"{kind}: {message}"))


def join_rel(prefix: str, rel: str) -> str:
    """``prefix/rel`` with either part possibly empty."""
    if not prefix:
        return rel
    if not rel:
        return prefix
    return f"{prefix.rstrip('/')}/{rel}"


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def is_list_file(name: str) -> bool:
    return name.lower().endswith(LIST_SUFFIXES)


def has_magic(text: str) -> bool:
    return any(ch in text for ch in GLOB_CHARS)


def split_glob(pattern: Path) -> tuple[str, tuple[str, ...]]:
    """``(leading folder without wildcards, the parts from the first wildcard on)`` of a glob
    pattern; the parts are empty when ``pattern`` has no wildcard."""
    parts = pattern.parts
    fixed = 0
    while fixed < len(parts) and not has_magic(parts[fixed]):
        fixed += 1
    return (str(Path(*parts[:fixed])) if fixed else os.sep), parts[fixed:]


# errors of the machine, not of a file: a dropped network mount, no file descriptors or memory left.
# They are never written as an image's error row: the job stops (exit 8) and a rerun resumes.
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ESTALE",
        "ENOTCONN",
        "EMFILE",
        "ENFILE",
        "ENOMEM",
        "ETIMEDOUT",
        "EHOSTDOWN",
        "ENETDOWN",
        "ENETUNREACH",
    )
    if hasattr(errno, name)
)


def environmental(exc: BaseException) -> bool:
    """Whether ``exc`` is the machine's fault rather than the file's (see ENVIRONMENT_ERRNOS)."""
    return isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS)


def oserror_text(exc: OSError, path: str) -> str:
    return f"{exc.strerror or type(exc).__name__}: {exc.filename or path}"


def exc_text(exc: BaseException) -> str:
    text = str(exc)
    return text if text else type(exc).__name__
