"""Sources against inputs that change or lie after they were listed: FIFOs and devices swapped in,
list files that are not files or hold NUL bytes, tars rewritten before a resume, compressed tars
whose checksum fails. Each ends as an error row or an exit-2 manifest error, never a hang, a
traceback or another file's bytes."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import cli, tiny_manifest
from PIL import Image

from ascend_batch.errors import ImageError, ManifestError
from ascend_batch.manifest import DatasetConfig
from ascend_batch.plan import make_units, read_unit_items, write_snapshot
from ascend_batch.sources import Item, ItemReader, list_items

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")

EXTS = (".jpg",)


def listed(base: Path, *paths: str) -> list[Item]:
    resolved = tuple(base / p for p in paths)
    return list(list_items(DatasetConfig(paths=paths, resolved=resolved, extensions=EXTS)))


def make_tar(path: Path, members: Iterable[tuple[str, bytes]], fmt: int = tarfile.DEFAULT_FORMAT) -> None:
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def within(fn: Callable[[], object], fifo: Path, seconds: float = 10.0) -> object:
    """``fn()``'s result or raised exception; fails (instead of hanging) if it blocks on ``fifo``."""
    result: list[object] = []

    def call() -> None:
        try:
            result.append(fn())
        except Exception as exc:  # handed to the test
            result.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():  # blocked opening the FIFO: a writer's open releases it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(seconds)
        pytest.fail(f"blocked on the FIFO {fifo}")
    return result[0]


def swap(path: Path, kind: str) -> None:
    """Replace ``path`` by a FIFO or by a symbolic link to /dev/zero."""
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")


# --- FIFOs and devices swapped in after the listing ------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "devzero"])
def test_file_swapped_for_a_fifo_or_device_after_listing_is_a_read_error(tmp_path: Path, kind: str) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jpg").write_bytes(b"jpeg")
    [item] = listed(tmp_path, "data")
    swap(tmp_path / "data" / "a.jpg", kind)
    with ItemReader(max_member_bytes=10_000) as reader:
        exc = within(lambda: reader.read(item), tmp_path / "data" / "a.jpg")
    assert isinstance(exc, ImageError), exc
    assert (exc.kind, exc.message) == ("read", f"not a regular file: {item.path}")


@pytest.mark.parametrize("kind", ["fifo", "devzero"])
def test_archive_swapped_for_a_fifo_or_device_after_listing_is_a_read_error(tmp_path: Path, kind: str) -> None:
    make_tar(tmp_path / "a.tar", [("x.jpg", b"jpeg")])
    [item] = listed(tmp_path, "a.tar")
    swap(tmp_path / "a.tar", kind)
    with ItemReader() as reader:
        exc = within(lambda: reader.read(item), tmp_path / "a.tar")
    assert isinstance(exc, ImageError), exc
    assert (exc.kind, exc.message) == ("read", f"not a regular file: {item.path}")


# --- list files ------------------------------------------------------------------------------------


def test_list_file_that_is_a_fifo_is_exit_2_not_a_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "list.txt")
    m = tiny_manifest(tmp_path, [str(tmp_path / "list.txt")])
    r = cli("validate", m, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "dataset.paths[0]" in r.stderr and "is not a regular file" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("kind", ["fifo", "devzero"])
def test_globbed_list_file_that_is_not_a_file_is_a_manifest_error(tmp_path: Path, kind: str) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "a.txt").write_text("x.jpg\n")
    swap(tmp_path / "lists" / "a.txt", kind)
    exc = within(lambda: listed(tmp_path, "lists/*.txt"), tmp_path / "lists" / "a.txt")
    assert isinstance(exc, ManifestError), exc
    assert exc.key == "dataset.paths[0]"
    assert f"list file {tmp_path / 'lists' / 'a.txt'} is not a regular file" in str(exc)


def test_list_entry_with_a_nul_byte_is_exit_2_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / "good.jpg").write_bytes(jpeg((200, 0, 0)))
    (tmp_path / "list.txt").write_bytes(b"good.jpg\nb\0c.jpg\n")
    m = tiny_manifest(tmp_path, [str(tmp_path / "list.txt")])
    r = cli("validate", m)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "dataset.paths[0]" in r.stderr and f"{tmp_path / 'list.txt'}, line 2" in r.stderr and "NUL" in r.stderr


def test_csv_and_parquet_entries_with_a_nul_byte_are_manifest_errors(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_bytes(b"path,label\ngood.jpg,1\nb\0c.jpg,2\n")
    pd.DataFrame({"path": ["good.jpg", None, "b\0c.jpg"]}).to_parquet(tmp_path / "list.parquet")
    for name, where in (("list.csv", "line 3"), ("list.parquet", "row 3")):
        with pytest.raises(ManifestError) as info:
            listed(tmp_path, name)
        assert info.value.key == "dataset.paths[0]" and f"{name}, {where}: " in str(info.value)


# --- tars rewritten after the listing --------------------------------------------------------------

RED, BLUE = jpeg((255, 0, 0)), jpeg((0, 0, 255))


@pytest.mark.parametrize("compress", [False, True])
def test_tar_rewritten_after_listing_never_hands_out_another_members_bytes(tmp_path: Path, compress: bool) -> None:
    assert len(RED) == len(BLUE)
    tar = tmp_path / "a.tar"
    make_tar(tar, [("a.jpg", RED), ("b.jpg", BLUE)])
    items = listed(tmp_path, "a.tar")
    make_tar(tar, [("x.jpg", BLUE), ("y.jpg", RED)])  # same sizes, same offsets
    if compress:
        tar.write_bytes(gzip.compress(tar.read_bytes()))
    with ItemReader() as reader:
        for item in items:
            with pytest.raises(ImageError) as info:
                reader.read(item)
            assert info.value.kind == "archive"
            assert info.value.message == (
                f"member no longer in the archive (it changed since it was listed): {tar}::{item.member}"
            )


def test_tar_rewritten_with_other_sizes_or_types_is_refused(tmp_path: Path) -> None:
    tar = tmp_path / "a.tar"
    make_tar(tar, [("a.jpg", RED)])
    [item] = listed(tmp_path, "a.tar")
    make_tar(tar, [("a.jpg", RED + b"xx")])  # same name, another size
    with ItemReader() as reader, pytest.raises(ImageError, match="no longer in the archive"):
        reader.read(item)
    fifo = tarfile.TarInfo("a.jpg")  # same name and size, but a FIFO's header
    fifo.type = tarfile.FIFOTYPE
    fifo.size = len(RED)
    tar.write_bytes(fifo.tobuf() + RED + b"\0" * 2048)
    with ItemReader() as reader, pytest.raises(ImageError, match="no longer in the archive"):
        reader.read(item)


NAMES = [
    "short.jpg",
    "x" * 96 + ".jpg",  # 100 bytes: the whole name field, no NUL after it
    "d/" * 60 + "long.jpg",
    "p" * 120 + "/" + "q" * 90 + ".jpg",  # ustar: prefix/name
    "y" * 297 + ".jpg",
    "ünïcødé/naïve.jpg",
]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("compress", [False, True])
def test_unchanged_tar_reads_long_and_non_ascii_names_in_every_format(tmp_path: Path, fmt: int, compress: bool) -> None:
    """The header check must not refuse names that a PAX or GNU header holds for the member's own."""
    names = [n for n in NAMES if fmt != tarfile.USTAR_FORMAT or not n.startswith("y")]  # ustar: no room
    contents = {name: bytes([i]) * (100 + i) for i, name in enumerate(names)}
    make_tar(tmp_path / "plain.tar", contents.items(), fmt)
    raw = (tmp_path / "plain.tar").read_bytes()
    tar = tmp_path / ("a.tar.gz" if compress else "a.tar")
    tar.write_bytes(gzip.compress(raw) if compress else raw)
    items = listed(tmp_path, tar.name)
    assert [i.member for i in items] == names
    with ItemReader() as reader:
        assert [reader.read(i) for i in items] == list(contents.values())


def test_hard_links_read_through_the_listing_snapshot_and_old_snapshots_still_load(tmp_path: Path) -> None:
    tar = tmp_path / "h.tar"
    with tarfile.open(tar, "w") as tf:
        info = tarfile.TarInfo("a.jpg")
        info.size = len(RED)
        tf.addfile(info, io.BytesIO(RED))
        link = tarfile.TarInfo("link.jpg")
        link.type = tarfile.LNKTYPE
        link.linkname = "a.jpg"
        tf.addfile(link)
    snapshot = write_snapshot(listed(tmp_path, "h.tar"), tmp_path / "_listing.parquet", unit_size=10)
    [unit] = make_units(snapshot.n_items, snapshot.unit_size)
    items = read_unit_items(pq.ParquetFile(snapshot.path), unit)
    assert [i.link for i in items] == [None, "a.jpg"]
    # a snapshot written before the link column existed
    old = tmp_path / "old.parquet"
    pq.write_table(pq.read_table(snapshot.path).drop_columns(["link"]), old, row_group_size=10)
    old_items = read_unit_items(pq.ParquetFile(old), unit)
    with ItemReader() as reader:
        assert [reader.read(i) for i in items] == [RED, RED]
        assert [reader.read(i) for i in old_items] == [RED, RED]


# --- compressed tars whose checksum fails ----------------------------------------------------------


def corrupt_gz(tmp_path: Path, where: str) -> Path:
    """A .tar.gz of one JPEG stored uncompressed (level 0), one bit flipped in the JPEG's bytes or
    in the trailer's length: deflate still parses, only the CRC or length check at the end fails."""
    make_tar(tmp_path / "plain.tar", [("a.jpg", RED)])
    gz = bytearray(gzip.compress((tmp_path / "plain.tar").read_bytes(), compresslevel=0))
    at = gz.find(RED) + len(RED) // 2 if where == "data" else len(gz) - 1
    gz[at] ^= 0x01
    path = tmp_path / "data" / "a.tar.gz"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(gz)
    return path


@pytest.mark.parametrize(("where", "check"), [("data", "CRC check failed"), ("length", "Incorrect length")])
def test_compressed_tar_failing_its_checksum_adds_an_archive_error(tmp_path: Path, where: str, check: str) -> None:
    corrupt_gz(tmp_path, where)
    items = listed(tmp_path, "data/a.tar.gz")
    assert [(i.id, i.kind) for i in items] == [("a.tar.gz::a.jpg", "tar"), ("a.tar.gz", "error")]
    error = items[1].error or ""
    assert error.startswith(f"archive: corrupt gzip data at the end of the archive ({check}")
    assert error.endswith("): the data of the 1 member listed from it may be damaged")


def test_trailing_garbage_after_the_gzip_stream_is_reported_as_such(tmp_path: Path) -> None:
    make_tar(tmp_path / "plain.tar", [("a.jpg", RED)])
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress((tmp_path / "plain.tar").read_bytes()) + b"garbage")
    items = listed(tmp_path, "a.tar.gz")
    assert [i.kind for i in items] == ["tar", "error"]
    assert items[1].error is not None and items[1].error.startswith("archive: trailing data after the gzip stream")
    assert items[1].error.endswith("the data of the 1 member listed from it passed its CRC check")
    (tmp_path / "b.tar.gz").write_bytes(gzip.compress((tmp_path / "plain.tar").read_bytes()) + b"\0" * 512)
    assert [i.kind for i in listed(tmp_path, "b.tar.gz")] == ["tar"]  # zero padding is fine


def test_run_over_a_gzip_with_a_bad_crc_writes_the_archive_error_row(tmp_path: Path) -> None:
    corrupt_gz(tmp_path, "data")
    m = tiny_manifest(tmp_path, tmp_path / "data")
    r = cli("run", m, "--no-progress")
    assert r.returncode == 0, r.stderr  # no max_error_fraction: the error row counts like any other
    df = pd.read_parquet(tmp_path / "out").set_index("image_id")
    assert sorted(df.index) == ["a.tar.gz", "a.tar.gz::a.jpg"], r.stderr
    assert df.loc["a.tar.gz", "status"] == "error"
    assert df.loc["a.tar.gz", "error"].startswith("archive: corrupt gzip data at the end of the archive (CRC check")
