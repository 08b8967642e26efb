"""Sources: every kind listed with the right ids in a deterministic order, bytes read back exactly,
and bad inputs turned into error items or ImageErrors, never into crashes or files on disk."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ascend_batch import sources
from ascend_batch.errors import ImageError, ManifestError
from ascend_batch.manifest import DatasetConfig, parse_manifest
from ascend_batch.sources import Item, ItemReader, list_items

EXTS = (".jpg", ".jpeg", ".png")


def blob(name: str, size: int = 300) -> bytes:
    """Distinct, reproducible content per name (listing and reading do not decode)."""
    seed = name.encode()
    return (seed * (size // len(seed) + 1))[:size]


def put(root: Path, rel: str, data: bytes | None = None) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob(rel) if data is None else data)
    return path


def make_tar(path: Path, members: Iterable[str | tuple[str, bytes]], mode: str = "w") -> dict[str, bytes]:
    contents: dict[str, bytes] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tf:  # type: ignore[call-overload]
        for member in members:
            name, data = (member, blob(member)) if isinstance(member, str) else member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
            contents.setdefault(name, data)
    return contents


def make_zip(path: Path, members: Iterable[str | tuple[str, bytes]]) -> dict[str, bytes]:
    contents: dict[str, bytes] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member in members:
            name, data = (member, blob(member)) if isinstance(member, str) else member
            zf.writestr(name, data)
            contents[name] = data
    return contents


def dataset(base: Path, *paths: str, exts: tuple[str, ...] = EXTS) -> DatasetConfig:
    resolved = tuple(p if p.is_absolute() else base / p for p in map(Path, paths))
    return DatasetConfig(paths=paths, resolved=resolved, extensions=exts)


def listed(base: Path, *paths: str) -> list[Item]:
    return list(list_items(dataset(base, *paths)))


def ids(items: Iterable[Item]) -> list[str]:
    return [i.id for i in items]


def ok(items: Iterable[Item]) -> list[Item]:
    return [i for i in items if i.kind != "error"]


def errors(items: Iterable[Item]) -> list[Item]:
    return [i for i in items if i.kind == "error"]


# --- directories and single files -----------------------------------------------------------------


def test_directory_recursive_sorted_filtered(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for rel in ["b.jpg", "a/z.png", "a/b/c.JPG", "a.jpeg", "notes.txt", "a/b/readme.md", ".hidden/x.jpg"]:
        put(root, rel)
    items = listed(tmp_path, "data")
    assert ids(items) == [".hidden/x.jpg", "a/b/c.JPG", "a/z.png", "a.jpeg", "b.jpg"]
    item = items[1]
    assert item.kind == "file" and item.source == "data"
    assert item.path == str(root / "a/b/c.JPG") and item.size == 300 and item.mtime > 0
    with ItemReader() as reader:
        assert all(reader.read(i) == blob(i.id) for i in items)


def test_undecodable_file_names_give_utf8_ids(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    raw = os.fsencode(root) + b"/caf\xe9.jpg"  # Latin-1 bytes: not UTF-8
    with open(raw, "wb") as f:
        f.write(b"bytes")
    [item] = listed(tmp_path, "data")
    assert item.id == "caf\\xe9.jpg"
    item.id.encode("utf-8")  # safe for Parquet
    with ItemReader() as reader:
        assert reader.read(item) == b"bytes"


def test_single_file_id_is_its_name(tmp_path: Path) -> None:
    put(tmp_path, "x/y/photo.png")
    put(tmp_path, "odd.bin")  # named explicitly: listed whatever its extension
    assert ids(listed(tmp_path, "x/y/photo.png", str(tmp_path / "odd.bin"))) == ["photo.png", "odd.bin"]


def test_symlink_loop_terminates_and_links_are_followed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    put(root, "a/img.jpg")
    put(tmp_path, "elsewhere/linked.jpg")
    (root / "a" / "loop").symlink_to(root)  # a/loop -> data: a cycle
    (root / "a" / "self").symlink_to(".")  # a/self -> a
    (root / "file-link.jpg").symlink_to(tmp_path / "elsewhere" / "linked.jpg")
    (root / "outside").symlink_to(tmp_path / "elsewhere")
    (root / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    items = listed(tmp_path, "data")
    assert ids(items) == ["a/img.jpg", "broken.jpg", "file-link.jpg", "outside/linked.jpg"]
    assert items[1].kind == "error" and items[1].error is not None
    assert items[1].error.startswith("read: No such file")
    with ItemReader() as reader:
        assert reader.read(items[2]) == blob("elsewhere/linked.jpg")


def test_unreadable_directory_is_an_error_item(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    put(root, "a/ok.jpg")
    put(root, "locked/secret.jpg")
    put(root, "z.jpg")
    real_scandir = os.scandir

    def scandir(path: str) -> object:  # what chmod 000 does for a non-root user
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(sources.os, "scandir", scandir)
    items = listed(tmp_path, "data")
    assert ids(items) == ["a/ok.jpg", "locked", "z.jpg"]
    assert items[1].kind == "error"
    assert items[1].error == f"read: cannot list directory: Permission denied: {root / 'locked'}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_chmod_000_file_is_a_read_error(tmp_path: Path) -> None:
    path = put(tmp_path, "data/x.jpg")
    [item] = listed(tmp_path, "data")
    path.chmod(0)
    try:
        with ItemReader() as reader, pytest.raises(ImageError) as info:
            reader.read(item)
        assert info.value.kind == "read" and str(path) in info.value.message
    finally:
        path.chmod(0o644)


def test_file_gone_or_replaced_after_listing_is_a_read_error(tmp_path: Path) -> None:
    put(tmp_path, "data/gone.jpg")
    put(tmp_path, "data/now-a-dir.jpg")
    gone, replaced = listed(tmp_path, "data")
    (tmp_path / "data/gone.jpg").unlink()
    (tmp_path / "data/now-a-dir.jpg").unlink()
    (tmp_path / "data/now-a-dir.jpg").mkdir()
    with ItemReader() as reader:
        for item in (gone, replaced):
            with pytest.raises(ImageError) as info:
                reader.read(item)
            assert info.value.kind == "read"
            assert item.path in info.value.message


def test_fifo_is_an_error_item_not_a_hang(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    os.mkfifo(tmp_path / "data" / "pipe.jpg")
    [item] = listed(tmp_path, "data")
    assert item.kind == "error" and item.error is not None and "not a regular file" in item.error


def test_error_item_reads_as_its_error(tmp_path: Path) -> None:
    item = Item("a.tar", "a.tar", "error", str(tmp_path / "a.tar"), error="archive: truncated tar after 3 members")
    with ItemReader() as reader, pytest.raises(ImageError) as info:
        reader.read(item)
    assert (info.value.kind, info.value.message) == ("archive", "truncated tar after 3 members")


# --- globs ----------------------------------------------------------------------------------------


def test_glob_sorted_with_ids_relative_to_the_fixed_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_tar(root / "b.tar", ["x.jpg"])
    make_tar(root / "a.tar", ["y.jpg"])
    make_tar(root / "sub" / "c.tar", ["z.jpg"])
    put(root, "one.jpg")
    assert ids(listed(tmp_path, "data/*.tar")) == ["a.tar::y.jpg", "b.tar::x.jpg"]
    assert ids(listed(tmp_path, "data/**/*.tar")) == ["a.tar::y.jpg", "b.tar::x.jpg", "sub/c.tar::z.jpg"]
    assert ids(listed(tmp_path, "data/s*")) == ["sub/c.tar::z.jpg"]  # a matched folder is walked
    assert ids(listed(tmp_path, "data/*")) == ["a.tar::y.jpg", "b.tar::x.jpg", "one.jpg", "sub/c.tar::z.jpg"]
    assert listed(tmp_path, "data/*.zip") == []


def test_recursive_glob_filters_extensions_and_survives_loops(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for rel in ["a/1.jpg", "a/b/2.png", "c/3.jpg", "c/skip.gif", "4.jpg", ".dot/5.jpg"]:
        put(root, rel)
    (root / "a" / "b" / "up").symlink_to(root)
    assert ids(listed(tmp_path, "data/**")) == ["4.jpg", "a/1.jpg", "a/b/2.png", "c/3.jpg"]
    assert ids(listed(tmp_path, "data/**/*.jpg")) == ["4.jpg", "a/1.jpg", "c/3.jpg"]
    assert ids(listed(tmp_path, "data/*/b/*")) == ["a/b/2.png"]


def test_glob_of_list_files_reads_them(tmp_path: Path) -> None:
    put(tmp_path, "lists/a/x.jpg")
    put(tmp_path, "lists/b/y.jpg")
    (tmp_path / "lists" / "a" / "one.txt").write_text("x.jpg\n")
    (tmp_path / "lists" / "b" / "two.txt").write_text("y.jpg\n")
    assert ids(listed(tmp_path, "lists/*/*.txt")) == ["x.jpg", "y.jpg"]
    assert ids(listed(tmp_path, "lists/*")) == ["a/x.jpg", "b/y.jpg"]  # not named by suffix: not lists


def test_literal_path_with_glob_characters(tmp_path: Path) -> None:
    put(tmp_path, "shots [2020]/a.jpg")
    assert ids(listed(tmp_path, "shots [2020]")) == ["a.jpg"]


# --- list files -----------------------------------------------------------------------------------


def test_txt_list_relative_to_its_folder(tmp_path: Path) -> None:
    put(tmp_path, "lists/imgs/a.jpg")
    put(tmp_path, "other/b.png")
    put(tmp_path, "c.webp")  # named explicitly: no extension filter
    make_tar(tmp_path / "lists" / "t.tar", ["in/tar.jpg"])
    put(tmp_path, "lists/folder/d.jpg")
    text = (
        f"# images for tonight\n\nimgs/a.jpg\n  ../other/b.png  \n{tmp_path / 'c.webp'}\nmissing.jpg\nt.tar\nfolder\n"
    )
    (tmp_path / "lists" / "l.txt").write_text(text)
    items = listed(tmp_path, "lists/l.txt")
    assert ids(items) == [
        "imgs/a.jpg",
        "../other/b.png",
        str(tmp_path / "c.webp"),
        "missing.jpg",
        "t.tar::in/tar.jpg",
        "folder/d.jpg",
    ]
    assert items[3].kind == "error" and items[3].error is not None
    assert items[3].error.startswith("read: No such file") and str(tmp_path / "lists" / "missing.jpg") in items[3].error
    assert all(i.source == "lists/l.txt" for i in items)
    with ItemReader() as reader:
        assert reader.read(items[1]) == blob("other/b.png")
        assert reader.read(items[4]) == blob("in/tar.jpg")


def test_csv_and_parquet_lists(tmp_path: Path) -> None:
    put(tmp_path, "lists/a.jpg")
    put(tmp_path, "b.jpg")
    (tmp_path / "lists" / "l.csv").write_text("label,path\ncat,a.jpg\ndog,../b.jpg\nnone,\n")
    pq.write_table(pa.table({"path": ["../b.jpg", None, "a.jpg"], "n": [1, 2, 3]}), tmp_path / "lists" / "l.parquet")
    assert ids(listed(tmp_path, "lists/l.csv")) == ["a.jpg", "../b.jpg"]
    assert ids(listed(tmp_path, "lists/l.parquet")) == ["../b.jpg", "a.jpg"]


@pytest.mark.parametrize("name", ["l.csv", "l.parquet"])
def test_list_without_path_column_is_a_manifest_error(tmp_path: Path, name: str) -> None:
    if name.endswith(".csv"):
        (tmp_path / name).write_text("file,label\na.jpg,1\n")
    else:
        pq.write_table(pa.table({"file": ["a.jpg"]}), tmp_path / name)
    with pytest.raises(ManifestError) as info:
        listed(tmp_path, name)
    assert info.value.key == "dataset.paths[0]"
    assert "'path' column" in info.value.message


# --- archives -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mode"), [("a.tar", "w"), ("a.tar.gz", "w:gz"), ("a.tgz", "w:gz"), ("a.tar.xz", "w:xz")]
)
def test_tar_members_listed_in_order_and_read_exactly(tmp_path: Path, name: str, mode: str) -> None:
    names = ["z/first.jpg", "a/second.PNG", "notes.txt", "third.jpeg"]
    contents = make_tar(tmp_path / name, [*names, ("big.jpg", os.urandom(70_000))], mode=mode)
    items = listed(tmp_path, name)
    assert ids(items) == [f"{name}::z/first.jpg", f"{name}::a/second.PNG", f"{name}::third.jpeg", f"{name}::big.jpg"]
    assert all(i.kind == "tar" and i.offset >= 512 for i in items)
    assert items[0].size == 300 and items[0].mtime == 1_700_000_000
    with ItemReader() as reader:
        for item in [*items, *reversed(items), items[2], items[0]]:  # backwards and random access too
            assert reader.read(item) == contents[item.member or ""]


def test_zip_members_listed_and_read_exactly(tmp_path: Path) -> None:
    contents = make_zip(tmp_path / "p.zip", ["b/x.jpg", "a.png", "dir/", "readme.txt", ("big.jpg", os.urandom(70_000))])
    items = listed(tmp_path, "p.zip")
    assert ids(items) == ["p.zip::b/x.jpg", "p.zip::a.png", "p.zip::big.jpg"]
    with ItemReader() as reader:
        for item in reversed(items):
            assert reader.read(item) == contents[item.member or ""]


def test_archives_inside_a_directory_are_expanded(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_tar(root / "2024" / "day.tgz", ["m.jpg"], mode="w:gz")
    make_zip(root / "2024" / "more.zip", ["n.jpg"])
    put(root, "2024/plain.jpg")
    assert ids(listed(tmp_path, "data")) == ["2024/day.tgz::m.jpg", "2024/more.zip::n.jpg", "2024/plain.jpg"]


def test_reader_keeps_archives_open_and_close_closes_them(tmp_path: Path) -> None:
    for i in range(3):
        make_tar(tmp_path / f"t{i}.tar", ["a.jpg", "b.jpg"])
    items = listed(tmp_path, "t0.tar", "t1.tar", "t2.tar")
    reader = ItemReader(max_open=2)
    for item in items:
        reader.read(item)
    held = list(reader._archives.values())
    assert len(held) == 2  # least recently used closed first
    reader.read(items[-1])
    assert list(reader._archives.values()) == held  # reused, not reopened
    reader.close()
    reader.close()  # idempotent
    assert not reader._archives and all(a.raw.closed for a in held)


def test_tar_hardlink_and_duplicate_members(tmp_path: Path) -> None:
    path = tmp_path / "h.tar"
    with tarfile.open(path, "w") as tf:
        for name, data in [("a.jpg", b"first"), ("a.jpg", b"second")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.jpg")
        link.type = tarfile.LNKTYPE
        link.linkname = "a.jpg"
        tf.addfile(link)
    items = listed(tmp_path, "h.tar")
    assert ids(items) == ["h.tar::a.jpg", "h.tar::link.jpg", "h.tar"]
    assert items[2].error == "archive: 1 duplicate member names, first copy kept (e.g. 'a.jpg')"
    with ItemReader() as reader:
        assert reader.read(items[0]) == b"first"
        assert reader.read(items[1]) == b"second"  # a hard link names the latest copy


def test_path_traversal_members_stay_ids_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "deep" / "er" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    evil = "../../etc/x.jpg"
    make_tar(work / "a.tar", [evil, "/abs/y.jpg"])
    make_zip(work / "b.zip", [evil])
    before = sorted(p for p in tmp_path.rglob("*"))
    items = listed(work, "a.tar", "b.zip")
    assert ids(items) == [f"a.tar::{evil}", "a.tar::/abs/y.jpg", f"b.zip::{evil}"]
    with ItemReader() as reader:
        assert [reader.read(i) for i in items] == [blob(evil), blob("/abs/y.jpg"), blob(evil)]
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not (work / evil).exists() and not Path("/abs/y.jpg").exists()


# --- damaged archives -----------------------------------------------------------------------------


def five_member_tar(path: Path, mode: str = "w") -> dict[str, bytes]:
    return make_tar(path, [(f"m{i}.jpg", os.urandom(3000)) for i in range(5)], mode=mode)


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_truncated_tar_keeps_members_before_the_damage(tmp_path: Path, mode: str) -> None:
    full = tmp_path / "full.tar"
    contents = five_member_tar(full, mode)
    data = full.read_bytes()
    # plain: member 3's data starts at 3 * 3584 + 512; cut inside it. gz: cut the stream at 60 %
    cut = 3 * 3584 + 512 + 1000 if mode == "w" else int(len(data) * 0.6)
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    items = listed(tmp_path, "cut.tar")
    good, bad = ok(items), errors(items)
    assert ids(good) == [f"cut.tar::m{i}.jpg" for i in range(len(good))] and 1 <= len(good) <= 3
    assert len(bad) == 1 and items[-1] is bad[0]
    assert bad[0].id == "cut.tar"
    assert bad[0].error is not None
    assert bad[0].error.startswith(f"archive: truncated tar after {len(good)} members: ")
    with ItemReader() as reader:
        assert all(reader.read(i) == contents[i.member or ""] for i in good)


def test_tar_cut_at_a_member_boundary_or_corrupt_header(tmp_path: Path) -> None:
    five_member_tar(tmp_path / "full.tar")
    data = (tmp_path / "full.tar").read_bytes()
    (tmp_path / "no-end.tar").write_bytes(data[: 5 * 3584])
    garbage = bytearray(data)
    garbage[2 * 3584 : 2 * 3584 + 512] = b"\x5a" * 512  # header of member 2
    (tmp_path / "corrupt.tar").write_bytes(bytes(garbage))
    items = listed(tmp_path, "no-end.tar")
    assert ids(items) == [*(f"no-end.tar::m{i}.jpg" for i in range(5)), "no-end.tar"]
    assert items[5].error == "archive: truncated tar after 5 members: no end-of-archive marker at byte 17920"
    items = listed(tmp_path, "corrupt.tar")
    assert ids(items) == ["corrupt.tar::m0.jpg", "corrupt.tar::m1.jpg", "corrupt.tar"]
    assert items[2].error == "archive: corrupt tar after 2 members: invalid header at byte 7168"


@pytest.mark.parametrize(
    "data", [b"", b"not a tar at all" * 100, b"\x1f\x8b\x08\x00garbage"], ids=["empty", "text", "bad-gzip"]
)
def test_unreadable_tar_is_one_error_item(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "x.tar.gz").write_bytes(data)
    [item] = listed(tmp_path, "x.tar.gz")
    assert item.id == "x.tar.gz" and item.kind == "error"
    assert item.error is not None and item.error.startswith("archive: not a readable tar archive")


def test_corrupt_zip_is_one_error_item(tmp_path: Path) -> None:
    make_zip(tmp_path / "ok.zip", ["a.jpg", "b.jpg"])
    data = (tmp_path / "ok.zip").read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) - 30])  # central directory damaged
    (tmp_path / "text.zip").write_bytes(b"hello")
    items = listed(tmp_path, "cut.zip", "text.zip")
    assert ids(items) == ["cut.zip", "text.zip"]
    assert all(i.kind == "error" and (i.error or "").startswith("archive: corrupt zip: ") for i in items)


def test_zip_member_with_damaged_data_is_an_archive_error(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "d.zip", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.jpg", b"A" * 1000)
        zf.writestr("b.jpg", b"B" * 1000)
    data = bytearray((tmp_path / "d.zip").read_bytes())
    data[data.index(b"A" * 1000) + 500] ^= 0xFF
    (tmp_path / "d.zip").write_bytes(bytes(data))
    a, b = listed(tmp_path, "d.zip")
    with ItemReader() as reader:
        with pytest.raises(ImageError) as info:
            reader.read(a)
        assert info.value.kind == "archive" and "CRC" in info.value.message
        assert reader.read(b) == b"B" * 1000  # the archive stays usable


# --- size limits ----------------------------------------------------------------------------------


def test_members_over_the_byte_limit_are_too_large(tmp_path: Path) -> None:
    bomb = b"\0" * 2_000_000  # deflates to a few kB
    make_zip(tmp_path / "z.zip", [("bomb.jpg", bomb), "small.jpg"])
    make_tar(tmp_path / "t.tar", [("big.jpg", bomb), "small.jpg"])
    put(tmp_path, "big.jpg", bomb)
    items = listed(tmp_path, "z.zip", "t.tar", "big.jpg")
    with ItemReader(max_member_bytes=1_000_000) as reader:
        for item in items:
            if "small" in item.id:
                assert reader.read(item) == blob("small.jpg")
                continue
            with pytest.raises(ImageError) as info:
                reader.read(item)
            assert info.value.kind == "too-large" and "1000000" in info.value.message


def test_file_larger_than_its_stat_size_is_read_whole_but_never_past_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that grows after it was sized (here: fstat reports 0 bytes) is read to its end, or
    refused as too-large once it passes the limit."""
    real_fstat = os.fstat

    def sized_zero(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, 0, *st[7:10]))

    monkeypatch.setattr(os, "fstat", sized_zero)
    for payload, kind in ((blob("grows.jpg", 5000), None), (b"\0" * 50_000, "too-large")):
        path = put(tmp_path, f"grows-{len(payload)}.jpg", payload)
        item = Item(path.name, str(tmp_path), "file", str(path), size=len(payload))
        with ItemReader(max_member_bytes=10_000) as reader:
            if kind is None:
                assert reader.read(item) == payload
            else:
                with pytest.raises(ImageError) as info:
                    reader.read(item)
                assert info.value.kind == kind and "10000" in info.value.message


def test_zip_lying_about_its_size_is_never_inflated_past_it(tmp_path: Path) -> None:
    make_zip(tmp_path / "lie.zip", [("bomb.jpg", b"\0" * 2_000_000)])
    data = bytearray((tmp_path / "lie.zip").read_bytes())
    # declare 1,000 bytes in the local header and the central directory (uncompressed size fields)
    real = (2_000_000).to_bytes(4, "little")
    for start in (22, data.index(b"PK\x01\x02") + 24):
        assert data[start : start + 4] == real
        data[start : start + 4] = (1000).to_bytes(4, "little")
    (tmp_path / "lie.zip").write_bytes(bytes(data))
    [item] = listed(tmp_path, "lie.zip")
    assert item.size == 1000
    with ItemReader(max_member_bytes=100_000) as reader, pytest.raises(ImageError) as info:
        reader.read(item)
    assert info.value.kind in ("archive", "too-large")


# --- whole manifests ------------------------------------------------------------------------------


def test_mixed_manifest_in_order(tmp_path: Path) -> None:
    put(tmp_path, "incoming/2/b.jpg")
    put(tmp_path, "incoming/1/a.png")
    make_tar(tmp_path / "archive" / "n1.tar", ["t/1.jpg"])
    make_tar(tmp_path / "archive" / "n2.tar.gz", ["t/2.jpg"], mode="w:gz")
    make_zip(tmp_path / "extra.zip", ["z.jpeg"])
    put(tmp_path, "single/one.jpg")
    put(tmp_path, "listed/l.jpg")
    (tmp_path / "list.txt").write_text("listed/l.jpg\n")
    manifest = parse_manifest(
        {
            "job": {"output": "out"},
            "dataset": {
                "paths": ["incoming", "archive/*.tar*", "extra.zip", "single/one.jpg", "list.txt"],
                "extensions": [".jpg", ".jpeg", ".png"],
            },
        },
        tmp_path,
    )
    items = list(list_items(manifest.dataset))
    assert ids(items) == [
        "1/a.png",
        "2/b.jpg",
        "n1.tar::t/1.jpg",
        "n2.tar.gz::t/2.jpg",
        "extra.zip::z.jpeg",
        "one.jpg",
        "listed/l.jpg",
    ]
    assert [i.source for i in items] == ["incoming"] * 2 + ["archive/*.tar*"] * 2 + [
        "extra.zip",
        "single/one.jpg",
        "list.txt",
    ]
    assert ids(list_items(manifest.dataset)) == ids(items)  # deterministic
    with ItemReader() as reader:
        assert all(len(reader.read(i)) == 300 for i in items)


def test_duplicate_ids_are_a_manifest_error(tmp_path: Path) -> None:
    put(tmp_path, "a/same.jpg")
    put(tmp_path, "b/same.jpg")
    with pytest.raises(ManifestError) as info:
        listed(tmp_path, "a/same.jpg", "b/same.jpg")
    assert info.value.key == "dataset.paths"
    assert info.value.message == "duplicate id 'same.jpg' from 'a/same.jpg' and 'b/same.jpg'"
    (tmp_path / "twice.txt").write_text("a/same.jpg\na/same.jpg\n")
    with pytest.raises(ManifestError, match=r"listed twice in 'twice\.txt'"):
        listed(tmp_path, "twice.txt")
