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
from .item import ARCHIVE_ERRORS, Item, error_item, exc_text, open_regular, oserror_text

COMPRESSION_NAMES = {"gz": "gzip", "bz2": "bzip2", "xz": "xz"}
DATA_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
USTAR_NAME_BYTES = 100  # a longer name lives in a PAX or GNU header before the member's own
PAX_SIZE = 8**11  # a size from here on lives in a PAX header (the ustar field may read 0)


def list_tar(path: str, name: str, source: str, wanted: Callable[[str], bool]) -> Iterator[Item]:
    """Members of the tar at ``path`` (``name``: its raw name for ids) in stored order, those whose
    name passes ``wanted``. A damaged tar yields the members before the damage, then one error item
    (id = the archive's id). A compressed tar whose checksum fails at its end yields its members,
    then that error item (the damage may lie anywhere before)."""
    try:
        raw = open_regular(path)  # closed below; the generator may be abandoned
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
        link = None
        if m.isreg():
            regular[m.name] = (m.offset_data, m.size)
            offset, size = m.offset_data, m.size
        elif m.islnk() and m.linkname in regular:
            (offset, size), link = regular[m.linkname], m.linkname
        else:
            return None  # directories, symlinks (may point anywhere), devices
        if not wanted(m.name):
            return None
        if m.name in listed:
            duplicates.append(m.name)
            return None
        listed.add(m.name)
        item_id = member_id(archive_id, m.name)
        return Item(item_id, source, "tar", path, m.name, size, float(m.mtime), offset=offset, link=link)

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
        if problem is None and compression is not None:
            problem = compressed_end_problem(stream, compression, len(listed))
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


def compressed_end_problem(stream: io.BufferedIOBase, compression: str, listed: int) -> str | None:
    """gzip checks its CRC and length, bzip2 and xz their checksums, only at the end of the
    compressed stream, which a listing that stops at the tar's end-of-archive marker never reaches:
    read on to the end (normally only the tar's padding is left)."""
    try:
        while stream.read(1 << 16):
            pass
    except ARCHIVE_ERRORS as exc:
        members = f"{listed} member{'' if listed == 1 else 's'}"
        if isinstance(exc, gzip.BadGzipFile) and str(exc).startswith("Not a gzipped file"):
            # raised where a next gzip member would start: every member before passed its CRC check
            return (
                f"trailing data after the gzip stream ({exc_text(exc)}); "
                f"the data of the {members} listed from it passed its CRC check"
            )
        return (
            f"corrupt {COMPRESSION_NAMES.get(compression, compression)} data at the end of the archive "
            f"({exc_text(exc)}): the data of the {members} listed from it may be damaged"
        )
    return None


def header_matches(block: bytes, item: Item) -> bool:
    """Whether ``block``, the 512 bytes before ``item``'s data, is still the header the listing saw:
    a valid header of a regular file of the listed size and name (for a hard link, its target's).
    The name is compared where the header holds it whole, ASCII names up to 100 bytes: a longer or
    non-ASCII name lives in a PAX or GNU header before, and this one holds a stand-in."""
    try:
        info = tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return False
    if info.type not in DATA_TYPES or (item.size < PAX_SIZE and info.size != item.size):
        return False
    name = item.member if item.link is None else item.link
    if not name or not name.isascii() or len(name) > USTAR_NAME_BYTES:
        return True
    field = block[:USTAR_NAME_BYTES].split(b"\0", 1)[0]  # the name field alone, without a ustar prefix
    return name == info.name or name.encode("ascii") == field
