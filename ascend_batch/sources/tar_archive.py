"""Tar archives (plain or gz/bz2/xz-compressed): listing members by offset, and the decompressing
stream the reader shares. Nothing is ever extracted to disk."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from collections.abc import Callable, Iterator
from typing import IO, cast

from .ids import escape_name, member_id
from .item import ARCHIVE_ERRORS, Item, error_item, exc_text, oserror_text


def list_tar(path: str, name: str, source: str, wanted: Callable[[str], bool]) -> Iterator[Item]:
    """Members of the tar at ``path`` (``name``: its raw name for ids) in stored order, those whose
    name passes ``wanted``. A damaged tar yields the members before the damage, then one error item
    (id = the archive's id)."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 (closed below; the generator may be abandoned)
    except OSError as exc:
        yield error_item(name, source, path, "read", oserror_text(exc, path))
        return
    try:
        yield from _members(raw, path, name, source, wanted)
    finally:
        raw.close()


def _members(
    raw: io.BufferedIOBase, path: str, name: str, source: str, wanted: Callable[[str], bool]
) -> Iterator[Item]:
    try:
        compression = sniff_compression(raw)
        stream = decompressed(raw, compression)
        tf = tarfile.open(fileobj=stream, mode="r:")  # noqa: SIM115 (its stream is closed by list_tar())
    except (*ARCHIVE_ERRORS, KeyError) as exc:
        yield error_item(name, source, path, "archive", f"not a readable tar archive: {exc_text(exc)}")
        return
    archive_id = escape_name(name)
    intact = 0  # members whose data is known to be complete
    pending: tarfile.TarInfo | None = None  # last header read; its data not yet verified
    regular: dict[str, tuple[int, int]] = {}  # name -> (data offset, size), for hard links
    listed: set[str] = set()
    duplicates: list[str] = []
    sparse: list[str] = []
    problem: str | None = None

    def emit(m: tarfile.TarInfo) -> Item | None:
        if m.issparse():  # its data is not stored contiguously: not readable by offset
            if wanted(m.name):
                sparse.append(m.name)
            return None
        if m.isreg():
            regular[m.name] = (m.offset_data, m.size)
            offset, size = m.offset_data, m.size
        elif m.islnk() and m.linkname in regular:
            offset, size = regular[m.linkname]
        else:
            return None  # directories, symlinks (may point anywhere), devices
        if not wanted(m.name):
            return None
        if m.name in listed:
            duplicates.append(m.name)
            return None
        listed.add(m.name)
        return Item(member_id(archive_id, m.name), source, "tar", path, m.name, size, float(m.mtime), offset=offset)

    try:
        while True:
            m = tf.next()  # reading the next header proves the pending member's data is there
            forget_members(tf)
            if pending is not None:
                intact += 1
                item = emit(pending)
                if item is not None:
                    yield item
            pending = m
            if m is None:
                break
        problem = tar_end_problem(stream, tf.offset, intact)
    except (*ARCHIVE_ERRORS, KeyError) as exc:
        where = f" (in or after member {pending.name!r})" if pending is not None else ""
        problem = f"truncated tar after {intact} members: {exc_text(exc)}{where}"
    notes = [problem] if problem else []
    if duplicates:
        notes.append(f"{len(duplicates)} duplicate member names, first copy kept (e.g. {duplicates[0]!r})")
    if sparse:
        notes.append(f"{len(sparse)} sparse members not supported (e.g. {sparse[0]!r})")
    if notes:
        yield error_item(name, source, path, "archive", "; ".join(notes))


def forget_members(tf: tarfile.TarFile) -> None:
    """Drop the headers ``TarFile.next()`` keeps in ``tf.members``: a listing does not need them,
    and dropping them keeps memory flat on archives with millions of members."""
    members = getattr(tf, "members", None)
    if isinstance(members, list):
        members.clear()


def sniff_compression(raw: io.BufferedIOBase) -> str | None:
    """``gz``, ``bz2``, ``xz`` or ``None`` (plain), told by content; zstd is refused."""
    head = raw.read(6)
    raw.seek(0)
    if head[:2] == b"\x1f\x8b":
        return "gz"
    if head[:3] == b"BZh":
        return "bz2"
    if head == b"\xfd7zXZ\x00":
        return "xz"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        raise tarfile.CompressionError("zstd-compressed tar is not supported (recompress with gzip or xz)")
    return None


def decompressed(raw: io.BufferedIOBase, compression: str | None) -> io.BufferedIOBase:
    """A seekable view of the tar stream: the file itself, or a decompressing reader (seeking
    forward decompresses, seeking backward restarts from the beginning)."""
    if compression == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "bz2":
        return bz2.BZ2File(raw, mode="rb")
    if compression == "xz":
        return lzma.LZMAFile(cast("IO[bytes]", raw), mode="rb")
    return raw


def tar_end_problem(stream: io.BufferedIOBase, offset: int, intact: int) -> str | None:
    """tarfile ends quietly on a cut-off or corrupt header after the first; look for the
    end-of-archive block (512 zero bytes) where it stopped."""
    stream.seek(offset)
    block = stream.read(tarfile.BLOCKSIZE)
    if len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0"):
        return None
    if not block:
        return f"truncated tar after {intact} members: no end-of-archive marker at byte {offset}"
    if len(block) < tarfile.BLOCKSIZE:
        return f"truncated tar after {intact} members: header at byte {offset} is cut short"
    return f"corrupt tar after {intact} members: invalid header at byte {offset}"
