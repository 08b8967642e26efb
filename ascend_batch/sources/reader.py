"""Reading an item's bytes, with size limits that hold even when an archive's declared sizes lie."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import threading
import zipfile
from collections import OrderedDict

from ..errors import ImageError
from .ids import printable
from .item import (
    ARCHIVE_ERRORS,
    DEFAULT_MAX_MEMBER_BYTES,
    Item,
    environmental,
    exc_text,
    open_regular,
    oserror_text,
)
from .roots import check_source
from .tar_archive import decompressed, header_matches, sniff_compression


class _Archive:
    """An open archive held by an :class:`ItemReader`."""

    def __init__(self, item: Item) -> None:
        self.raw: io.BufferedIOBase = open_regular(item.path)  # closed by close()
        self.zip: zipfile.ZipFile | None = None
        self.by_offset: dict[int, zipfile.ZipInfo] = {}
        self.stream: io.BufferedIOBase = self.raw
        try:
            if item.kind == "zip":
                self.zip = zipfile.ZipFile(self.raw)
                self.by_offset = {info.header_offset: info for info in self.zip.infolist()}
            else:  # compression is told by content, as when listed
                self.stream = decompressed(self.raw, sniff_compression(self.raw))
        except BaseException:
            self.raw.close()
            raise

    def close(self) -> None:
        try:
            if self.zip is not None:
                self.zip.close()
            if self.stream is not self.raw:
                self.stream.close()
        finally:
            self.raw.close()


class ItemReader:
    """Reads item bytes; keeps up to ``max_open`` archives open between reads (least recently used
    closed first). Plain tar members are read by offset (random access); compressed tars read
    forward, so read their members in listing order. Use one reader per thread (a lock keeps a
    shared one correct, but serialises archive reads). Raises :class:`ImageError` only:
    ``read`` (I/O, permissions; the message names the file), ``too-large`` (over
    ``max_member_bytes``, checked against the declared size and while reading), ``archive``
    (damaged archive data). A file or archive missing because its whole dataset folder (one of
    ``roots``: :func:`~.roots.source_roots`) is gone or empty raises :class:`~.roots.SourceGoneError`
    instead: a dropped mount, not the file's row."""

    def __init__(
        self,
        max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
        max_open: int = 8,
        roots: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.max_member_bytes = max_member_bytes
        self.max_open = max(1, max_open)
        self.roots = roots
        self._archives: OrderedDict[str, _Archive] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, item: Item) -> bytes:
        try:
            return self._read(item)
        except ImageError as exc:
            message = printable(exc.message)  # paths may hold undecodable bytes
            if message is exc.message:
                raise
            raise ImageError(exc.kind, message) from None

    def _read(self, item: Item) -> bytes:
        if item.kind == "error":
            kind, _, message = (item.error or "listing: unknown error").partition(": ")
            raise ImageError(kind, message)
        if item.kind == "file":
            return self._read_file(item)
        if item.kind not in ("tar", "zip"):
            raise ImageError("read", f"unknown item kind {item.kind!r}: {item.id}")
        if item.size > self.max_member_bytes:
            raise ImageError(
                "too-large",
                f"{item.path}::{item.member} is {item.size} bytes, over the "
                f"limit of {self.max_member_bytes} (dataset.max_member_bytes)",
            )
        with self._lock:
            try:
                archive = self._archive(item)
            except OSError as exc:
                if environmental(exc):
                    raise
                if isinstance(exc, FileNotFoundError):
                    check_source(self.roots, item.path)
                raise ImageError("read", oserror_text(exc, item.path)) from None
            except ARCHIVE_ERRORS as exc:
                raise ImageError("archive", f"{exc_text(exc)}: {item.path}") from None
            try:
                if item.kind == "tar":
                    return self._read_tar(archive, item)
                return self._read_zip(archive, item)
            except ImageError:
                raise
            except ARCHIVE_ERRORS as exc:
                self._drop(item.path)  # its state is unknown after a failure: reopen next time
                if environmental(exc):
                    raise
                raise ImageError("archive", f"{exc_text(exc)}: {item.path}::{item.member}") from None

    def _read_file(self, item: Item) -> bytes:
        limit = self.max_member_bytes
        try:
            with open_regular(item.path) as f:  # a FIFO or device swapped in is never read
                size = os.fstat(f.fileno()).st_size
                if size > limit:
                    raise ImageError(
                        "too-large",
                        f"{item.path} is {size} bytes, over the limit of {limit} (dataset.max_member_bytes)",
                    )
                # sized by fstat: read(limit + 1) would allocate the whole limit (256 MiB by default)
                # for every file and shrink it afterwards, which costs more than the read
                data = f.read(size + 1)
                if len(data) > size:  # it grew since fstat: read on, never past the limit
                    data += f.read(limit + 1 - len(data))
        except OSError as exc:
            if environmental(exc):  # the mount, not the file: never an error row
                raise
            if isinstance(exc, FileNotFoundError):
                check_source(self.roots, item.path)
            raise ImageError("read", oserror_text(exc, item.path)) from None
        if len(data) > limit:
            raise ImageError("too-large", f"{item.path} grew past the limit of {limit} bytes while read")
        return data

    def _archive(self, item: Item) -> _Archive:
        archive = self._archives.get(item.path)
        if archive is not None:
            self._archives.move_to_end(item.path)
            return archive
        archive = _Archive(item)
        self._archives[item.path] = archive
        while len(self._archives) > self.max_open:
            _, oldest = self._archives.popitem(last=False)
            oldest.close()
        return archive

    def _drop(self, path: str) -> None:
        archive = self._archives.pop(path, None)
        if archive is not None:
            with contextlib.suppress(*ARCHIVE_ERRORS):
                archive.close()

    def _read_tar(self, archive: _Archive, item: Item) -> bytes:
        if item.offset < tarfile.BLOCKSIZE:
            raise ImageError("read", f"tar item without a data offset: {item.id}")
        # the member's header precedes its data: an archive rewritten since the listing must not
        # hand out another member's bytes under this id (a forward seek for compressed tars too)
        archive.stream.seek(item.offset - tarfile.BLOCKSIZE)
        if not header_matches(archive.stream.read(tarfile.BLOCKSIZE), item):
            raise ImageError(
                "archive",
                f"member no longer in the archive (it changed since it was listed): {item.path}::{item.member}",
            )
        data = archive.stream.read(item.size)
        if len(data) != item.size:
            raise ImageError(
                "archive",
                f"member data cut short ({len(data)} of {item.size} bytes): {item.path}::{item.member}",
            )
        return data

    def _read_zip(self, archive: _Archive, item: Item) -> bytes:
        assert archive.zip is not None
        info = archive.by_offset.get(item.offset)
        if info is None or info.filename != item.member:
            raise ImageError("archive", f"member no longer in the archive: {item.path}::{item.member}")
        limit = self.max_member_bytes
        if info.file_size > limit:
            raise ImageError(
                "too-large",
                f"{item.path}::{item.member} is {info.file_size} bytes, over the "
                f"limit of {limit} (dataset.max_member_bytes)",
            )
        with archive.zip.open(info) as f:
            data = f.read(limit + 1)  # declared sizes can lie: never inflate past the limit
        if len(data) > limit:
            raise ImageError(
                "too-large",
                f"{item.path}::{item.member} inflates past the limit of {limit} bytes (dataset.max_member_bytes)",
            )
        return data

    def close(self) -> None:
        """Close every open archive (idempotent)."""
        with self._lock:
            while self._archives:
                _, archive = self._archives.popitem()
                with contextlib.suppress(*ARCHIVE_ERRORS):
                    archive.close()

    def __enter__(self) -> ItemReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
