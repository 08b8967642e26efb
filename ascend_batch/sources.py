"""Dataset sources -> Items.

One small lister per source kind (directory, glob, tar, zip, list file, single file), one
:func:`list_source` choosing by the path's form and suffix, and :func:`list_items` chaining the
manifest's entries and refusing duplicate ids. An :class:`Item` is plain data (it travels to worker
processes and into the listing snapshot); bytes are read through an :class:`ItemReader`, which keeps
archives open per worker.

Ids are stable across runs:

* ``relative/path.jpg`` for a file found under a directory (relative to that directory), or under a
  glob's fixed leading folder (``/data/*/x.jpg`` -> ``a/x.jpg``);
* the file name for a single file given directly;
* the path as written for an entry of a list file (``.txt``/``.csv``/``.parquet``);
* ``<archive id>::<member name>`` for an archive member, where the archive id follows the same rules
  (archives found while walking a directory are expanded into their members).

A bad input never raises while listing: a truncated or corrupt archive, an unreadable directory or a
missing list entry becomes an ``Item(kind="error")`` whose ``error`` is ``"<kind>: <message>"``, so it
ends as one error row. Members listed before the damage in a truncated tar are kept. Nothing is ever
extracted to disk: archive members are read into memory by offset.
"""

from __future__ import annotations

import bz2
import calendar
import contextlib
import csv
import gzip
import io
import lzma
import os
import stat
import tarfile
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, NamedTuple, cast

from .errors import ImageError, ManifestError
from .manifest import DatasetConfig

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)
ARCHIVE_SUFFIXES = TAR_SUFFIXES + ZIP_SUFFIXES
LIST_SUFFIXES = (".txt", ".csv", ".parquet")
GLOB_CHARS = "*?["
DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024

# errors that a damaged archive can raise from the standard library's readers
_ARCHIVE_ERRORS = (
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
    """One input file. ``id`` is stable across runs: ``relative/path.jpg`` for directory files,
    ``archive.tar::member/path.jpg`` for archive members. ``kind`` is ``file``, ``tar``, ``zip``
    or ``error`` (a listing-time failure, e.g. a truncated archive, reported as one error row)."""

    id: str
    source: str  # the manifest entry it came from, as written
    kind: str
    path: str  # absolute path of the file or of the archive
    member: str | None = None  # archive member name
    size: int = -1
    mtime: float = 0.0
    error: str | None = None  # set for kind == "error": "kind: message"
    # tar: offset of the member's data in the (decompressed) tar stream; zip: offset of the
    # member's local header (tells apart members that share a name); -1 otherwise
    offset: int = -1


def _error(item_id: str, source: str, path: str, kind: str, message: str) -> Item:
    return Item(_printable(item_id), source, "error", path, error=_printable(f"{kind}: {message}"))


def _printable(text: str) -> str:
    """``text`` as valid UTF-8 (ids and messages end in Parquet): bytes of a file name that are not
    UTF-8, which Python keeps as surrogate escapes, become ``\\xNN``. Stable across runs."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def _join(prefix: str, rel: str) -> str:
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


# --------------------------------------------------------------------------------------------
# listing


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
    lister = _Lister(written, exts, key)
    if has_magic(written) and not os.path.lexists(path):
        return lister.glob(path)
    return lister.path(str(path), path.name, allow_lists=True, filter_ext=False, entry=True)


class _Found(NamedTuple):
    rel: str  # posix path relative to the walk root
    path: str
    is_dir: bool
    error: str | None = None  # "read: ..." for a directory that could not be listed


class _Lister:
    """Listing state for one manifest entry."""

    def __init__(self, source: str, exts: tuple[str, ...], key: str) -> None:
        self.source = source
        self.exts = exts
        self.key = key

    def wanted(self, name: str) -> bool:
        return name.lower().endswith(self.exts)

    # one path: directory, archive, list file or plain file
    def path(
        self, path: str, item_id: str, *, allow_lists: bool, filter_ext: bool, entry: bool = False
    ) -> Iterator[Item]:
        """Items of ``path`` with id ``item_id``; ``entry``: the manifest entry itself (a folder's
        files then get ids relative to it, without the folder's name). ``filter_ext`` is for paths
        found by a walk, known not to be folders: other files are skipped without a ``stat``."""
        name = os.path.basename(path)
        if filter_ext and not (self.wanted(name) or is_archive(name)):
            return
        item_id = _printable(item_id)
        try:
            st = os.stat(path)
        except OSError as exc:
            yield _error(item_id, self.source, path, "read", _oserror(exc, path))
            return
        if stat.S_ISDIR(st.st_mode):
            yield from self.directory(path, "" if entry else item_id)
            return
        if allow_lists and is_list_file(name):
            yield from self.list_file(path)
            return
        if is_archive(name):
            if not stat.S_ISREG(st.st_mode):
                yield _error(item_id, self.source, path, "read", f"not a regular file: {path}")
            elif name.lower().endswith(ZIP_SUFFIXES):
                yield from self.zip(path, item_id)
            else:
                yield from self.tar(path, item_id)
            return
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            yield _error(item_id, self.source, path, "read", f"not a regular file: {path}")
            return
        yield Item(item_id, self.source, "file", path, None, st.st_size, st.st_mtime)

    def directory(self, root: str, prefix: str) -> Iterator[Item]:
        """Files under ``root`` (recursively, archives expanded) with ids ``prefix/relative/path``."""
        for found in _walk(root):
            item_id = _join(prefix, found.rel) if found.rel else (prefix or self.source)
            if found.error is not None:
                yield _error(item_id, self.source, found.path, "read", found.error)
            elif not found.is_dir:
                yield from self.path(found.path, item_id, allow_lists=False, filter_ext=True)

    def glob(self, pattern: Path) -> Iterator[Item]:
        """Matches of a glob pattern (``*``, ``?``, ``[...]``; ``**`` = any number of folders), in
        sorted order; ids relative to the pattern's leading folder without wildcards. Matched
        folders are walked, matched archives expanded; list files are read only when the pattern
        names them by suffix (``lists/*.txt``)."""
        parts = pattern.parts
        fixed = 0
        while fixed < len(parts) and not has_magic(parts[fixed]):
            fixed += 1
        base = str(Path(*parts[:fixed])) if fixed else os.sep
        pat = parts[fixed:]
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
            if _glob_match(pat, relparts, partial=False):
                matched.append(rel)
                return True
            return _glob_match(pat, relparts, partial=True)

        if not os.path.isdir(base):
            return
        for found in _walk(base, descend):
            if found.error is not None:
                yield _error(found.rel or self.source, self.source, found.path, "read", found.error)
                continue
            if found.is_dir:
                continue
            inside = under_match(found.rel)
            if not inside and not _glob_match(pat, tuple(found.rel.split("/")), partial=False):
                continue
            name = os.path.basename(found.path)
            if not inside and lists and is_list_file(name):
                yield from self.list_file(found.path)
            else:
                yield from self.path(found.path, found.rel, allow_lists=False, filter_ext=True)

    def list_file(self, path: str) -> Iterator[Item]:
        """Entries of a list file, each resolved against the list file's folder; ids as written.
        Entries are taken as given (no extension filter); folders and archives are expanded."""
        folder = os.path.dirname(os.path.abspath(path))
        for entry in _read_list(path, self.key):
            full = os.path.normpath(os.path.join(folder, os.path.expanduser(entry)))
            yield from self.path(full, entry, allow_lists=False, filter_ext=False)

    def tar(self, path: str, archive_id: str) -> Iterator[Item]:
        """Members of a tar (plain or gz/bz2/xz-compressed) in stored order. A damaged tar yields the
        members before the damage, then one error item (id = the archive id)."""
        try:
            raw = open(path, "rb")  # noqa: SIM115 (closed below; the generator may be abandoned)
        except OSError as exc:
            yield _error(archive_id, self.source, path, "read", _oserror(exc, path))
            return
        try:
            yield from self._tar_members(raw, path, archive_id)
        finally:
            raw.close()

    def _tar_members(self, raw: io.BufferedIOBase, path: str, archive_id: str) -> Iterator[Item]:
        try:
            compression = _sniff_compression(raw)
            stream = _decompressed(raw, compression)
            tf = tarfile.open(fileobj=stream, mode="r:")  # noqa: SIM115 (its stream is closed by tar())
        except (*_ARCHIVE_ERRORS, KeyError) as exc:
            yield _error(archive_id, self.source, path, "archive", f"not a readable tar archive: {_msg(exc)}")
            return
        intact = 0  # members whose data is known to be complete
        pending: tarfile.TarInfo | None = None  # last header read; its data not yet verified
        regular: dict[str, tuple[int, int]] = {}  # name -> (data offset, size), for hard links
        listed: set[str] = set()
        duplicates: list[str] = []
        sparse: list[str] = []
        problem: str | None = None

        def emit(m: tarfile.TarInfo) -> Item | None:
            if m.issparse():  # its data is not stored contiguously: not readable by offset
                if self.wanted(m.name):
                    sparse.append(m.name)
                return None
            if m.isreg():
                regular[m.name] = (m.offset_data, m.size)
                offset, size = m.offset_data, m.size
            elif m.islnk() and m.linkname in regular:
                offset, size = regular[m.linkname]
            else:
                return None  # directories, symlinks (may point anywhere), devices
            if not self.wanted(m.name):
                return None
            if m.name in listed:
                duplicates.append(m.name)
                return None
            listed.add(m.name)
            return Item(
                f"{archive_id}::{_printable(m.name)}",
                self.source,
                "tar",
                path,
                _printable(m.name),
                size,
                float(m.mtime),
                offset=offset,
            )

        try:
            while True:
                m = tf.next()  # reading the next header proves the pending member's data is there
                _forget_members(tf)
                if pending is not None:
                    intact += 1
                    item = emit(pending)
                    if item is not None:
                        yield item
                pending = m
                if m is None:
                    break
            problem = _tar_end_problem(stream, tf.offset, intact)
        except (*_ARCHIVE_ERRORS, KeyError) as exc:
            where = f" (in or after member {pending.name!r})" if pending is not None else ""
            problem = f"truncated tar after {intact} members: {_msg(exc)}{where}"
        notes = [problem] if problem else []
        if duplicates:
            notes.append(f"{len(duplicates)} duplicate member names, first copy kept (e.g. {duplicates[0]!r})")
        if sparse:
            notes.append(f"{len(sparse)} sparse members not supported (e.g. {sparse[0]!r})")
        if notes:
            problem = "; ".join(notes)
            yield _error(archive_id, self.source, path, "archive", problem)

    def zip(self, path: str, archive_id: str) -> Iterator[Item]:
        """Members of a zip in central-directory order. A zip that cannot be opened (bad central
        directory, truncated) yields one error item."""
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
        except OSError as exc:
            yield _error(archive_id, self.source, path, "read", _oserror(exc, path))
            return
        except _ARCHIVE_ERRORS as exc:
            yield _error(archive_id, self.source, path, "archive", f"corrupt zip: {_msg(exc)}")
            return
        listed: set[str] = set()
        duplicates: list[str] = []
        for info in infos:
            if info.is_dir() or not self.wanted(info.filename):
                continue
            if info.filename in listed:
                duplicates.append(info.filename)
                continue
            listed.add(info.filename)
            yield Item(
                f"{archive_id}::{info.filename}",
                self.source,
                "zip",
                path,
                info.filename,
                info.file_size,
                _zip_mtime(info),
                offset=info.header_offset,
            )
        if duplicates:
            yield _error(
                archive_id,
                self.source,
                path,
                "archive",
                f"{len(duplicates)} duplicate member names, first copy kept (e.g. {duplicates[0]!r})",
            )


def _walk(root: str, descend: Callable[[str], bool] | None = None) -> Iterator[_Found]:
    """Depth-first walk of ``root`` following symbolic links, entries of each folder in name order
    (so ids come out sorted folder by folder). A folder reached twice (symlink loop or alias) is
    walked once: folders are identified by (st_dev, st_ino). ``descend(rel)`` may prune folders.
    Yields folders (before their contents), other entries, and an error for a folder that cannot
    be listed."""
    try:
        st = os.stat(root)
    except OSError as exc:
        yield _Found("", root, True, _oserror(exc, root))
        return
    visited = {(st.st_dev, st.st_ino)}
    stack: list[Iterator[os.DirEntry[str]]] = []
    rels: list[str] = []

    def scan(path: str, rel: str) -> _Found | None:
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            return _Found(rel, path, True, f"cannot list directory: {_oserror(exc, path)}")
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
        rel = _join(rels[-1], entry.name)
        try:
            is_dir = entry.is_dir()  # follows symbolic links
        except OSError:
            is_dir = False
        if not is_dir:
            yield _Found(rel, entry.path, False)
            continue
        try:
            dst = entry.stat()
        except OSError:
            continue  # vanished since the listing of its parent
        key = (dst.st_dev, dst.st_ino)
        if key in visited or (descend is not None and not descend(rel)):
            continue
        visited.add(key)
        yield _Found(rel, entry.path, True)
        failed = scan(entry.path, rel)
        if failed is not None:
            yield failed


def _glob_match(pat: tuple[str, ...], parts: tuple[str, ...], *, partial: bool) -> bool:
    """Whether path ``parts`` match glob ``pat`` component by component (``**`` = zero or more
    components; like :mod:`glob`, wildcards do not match names starting with '.'). With
    ``partial``, whether a folder at ``parts`` could still contain a match."""
    if not parts:
        return partial or all(p == "**" for p in pat)
    if not pat:
        return False
    head = pat[0]
    if head == "**":
        if _glob_match(pat[1:], parts, partial=partial):
            return True
        return not parts[0].startswith(".") and _glob_match(pat, parts[1:], partial=partial)
    if parts[0].startswith(".") and not head.startswith("."):
        return False
    return fnmatchcase(parts[0], head) and _glob_match(pat[1:], parts[1:], partial=partial)


def _read_list(path: str, key: str) -> Iterator[str]:
    """Entries of a list file: ``.txt`` (one per line; blank lines and ``#`` comments skipped) or
    ``.csv``/``.parquet`` with a ``path`` column. A list that cannot be read is a manifest error."""
    lower = path.lower()
    try:
        if lower.endswith(".parquet"):
            yield from _read_parquet_list(path, key)
            return
        with open(path, encoding="utf-8-sig", newline="" if lower.endswith(".csv") else None) as f:
            if lower.endswith(".csv"):
                reader = csv.DictReader(f)
                if reader.fieldnames is None or "path" not in reader.fieldnames:
                    raise ManifestError(
                        key,
                        f"list file {path} has no 'path' column "
                        f"(columns: {', '.join(reader.fieldnames or []) or 'none'})",
                    )
                for row in reader:
                    value = (row.get("path") or "").strip()
                    if value:
                        yield value
            else:
                for line in f:
                    value = line.strip()
                    if value and not value.startswith("#"):
                        yield value
    except ManifestError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(key, f"cannot read list file {path}: {_msg(exc)}") from None


def _read_parquet_list(path: str, key: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(key, f"cannot read list file {path}: {_msg(exc)}") from None
    names = pf.schema_arrow.names
    if "path" not in names:
        raise ManifestError(key, f"list file {path} has no 'path' column (columns: {', '.join(names) or 'none'})")
    if not pa.types.is_string(pf.schema_arrow.field("path").type) and not pa.types.is_large_string(
        pf.schema_arrow.field("path").type
    ):
        raise ManifestError(
            key,
            f"list file {path}: the 'path' column holds {pf.schema_arrow.field('path').type}, expected strings",
        )
    for batch in pf.iter_batches(columns=["path"]):
        for value in batch.column(0).to_pylist():
            if value and value.strip():
                yield value.strip()


def _forget_members(tf: tarfile.TarFile) -> None:
    # TarFile.next() keeps every header read in tf.members; a listing does not need them, and
    # dropping them keeps memory flat on archives with millions of members
    members = getattr(tf, "members", None)
    if isinstance(members, list):
        members.clear()


def _sniff_compression(raw: io.BufferedIOBase) -> str | None:
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


def _decompressed(raw: io.BufferedIOBase, compression: str | None) -> io.BufferedIOBase:
    """A seekable view of the tar stream: the file itself, or a decompressing reader (seeking
    forward decompresses, seeking backward restarts from the beginning)."""
    if compression == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "bz2":
        return bz2.BZ2File(raw, mode="rb")
    if compression == "xz":
        return lzma.LZMAFile(cast("IO[bytes]", raw), mode="rb")
    return raw


def _tar_end_problem(stream: io.BufferedIOBase, offset: int, intact: int) -> str | None:
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


def _zip_mtime(info: zipfile.ZipInfo) -> float:
    try:
        return float(calendar.timegm((*info.date_time, 0, 0, 0)))
    except (ValueError, OverflowError, TypeError):
        return 0.0


def _oserror(exc: OSError, path: str) -> str:
    return f"{exc.strerror or type(exc).__name__}: {exc.filename or path}"


def _msg(exc: BaseException) -> str:
    text = str(exc)
    return text if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# reading


class _Archive:
    """An open archive held by an :class:`ItemReader`."""

    def __init__(self, item: Item) -> None:
        self.raw: io.BufferedIOBase = open(item.path, "rb")  # noqa: SIM115 (closed by close())
        self.zip: zipfile.ZipFile | None = None
        self.by_offset: dict[int, zipfile.ZipInfo] = {}
        self.stream: io.BufferedIOBase = self.raw
        try:
            if item.kind == "zip":
                self.zip = zipfile.ZipFile(self.raw)
                self.by_offset = {info.header_offset: info for info in self.zip.infolist()}
            else:  # compression is told by content, as when listed
                self.stream = _decompressed(self.raw, _sniff_compression(self.raw))
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
    (damaged archive data)."""

    def __init__(self, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES, max_open: int = 8) -> None:
        self.max_member_bytes = max_member_bytes
        self.max_open = max(1, max_open)
        self._archives: OrderedDict[str, _Archive] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, item: Item) -> bytes:
        try:
            return self._read(item)
        except ImageError as exc:
            message = _printable(exc.message)  # paths may hold undecodable bytes
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
                raise ImageError("read", _oserror(exc, item.path)) from None
            except _ARCHIVE_ERRORS as exc:
                raise ImageError("archive", f"{_msg(exc)}: {item.path}") from None
            try:
                if item.kind == "tar":
                    return self._read_tar(archive, item)
                return self._read_zip(archive, item)
            except ImageError:
                raise
            except _ARCHIVE_ERRORS as exc:
                self._drop(item.path)  # its state is unknown after a failure: reopen next time
                raise ImageError("archive", f"{_msg(exc)}: {item.path}::{item.member}") from None

    def _read_file(self, item: Item) -> bytes:
        limit = self.max_member_bytes
        try:
            with open(item.path, "rb") as f:
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
            raise ImageError("read", _oserror(exc, item.path)) from None
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
            with contextlib.suppress(*_ARCHIVE_ERRORS):
                archive.close()

    def _read_tar(self, archive: _Archive, item: Item) -> bytes:
        if item.offset < 0:
            raise ImageError("read", f"tar item without a data offset: {item.id}")
        archive.stream.seek(item.offset)
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
                with contextlib.suppress(*_ARCHIVE_ERRORS):
                    archive.close()

    def __enter__(self) -> ItemReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
