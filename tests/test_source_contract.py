"""One contract for every source kind: from the same generated images (and the same awkward names),
each kind lists the ids its documented rules give, once each, in a repeatable order, and
``ItemReader`` returns exactly the original bytes of every item.

Id rules (see ``ascend_batch.sources``): a folder's or glob's files are named relative to the folder,
a single file by its name, a list entry as written, an archive member ``<archive id>::<member>``;
every name is escaped the same way (``\\`` -> ``\\\\``, a non-UTF-8 byte -> ``\\xNN``, a colon pair
-> ``\\:\\:``)."""

from __future__ import annotations

import csv
import io
import os
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import make_images

from ascend_batch.manifest import DatasetConfig
from ascend_batch.sources import ItemReader, list_items

# raw name (as Python reads it from the file system: surrogate escapes for non-UTF-8 bytes) ->
# its escaped form in an id, written out by hand from the documented rules
NAMES = {
    "img0.jpg": "img0.jpg",
    "sub/img1.jpg": "sub/img1.jpg",
    "sub/deeper/img2.png": "sub/deeper/img2.png",
    "back\\slash.jpg": "back\\\\slash.jpg",
    "two::colons.jpg": "two\\:\\:colons.jpg",
    "caf\udce9.jpg": "caf\\xe9.jpg",  # the byte 0xE9 (Latin-1): not UTF-8
}
NOT_UTF8 = {"caf\udce9.jpg"}  # cannot be written into a zip (names are cp437/UTF-8) or a text list
SKIPPED = "notes.md"  # not an image extension: skipped by walks and archives


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Raw name -> original bytes, from generated JPEGs (no external data)."""
    folder = tmp_path_factory.mktemp("generated")
    paths = make_images(folder, len(NAMES), seed=21)
    return {name: p.read_bytes() for name, p in zip(NAMES, paths, strict=True)}


def write_tree(root: Path, images: dict[str, bytes]) -> None:
    for name, data in {**images, SKIPPED: b"# not an image"}.items():
        path = os.fsencode(root) + b"/" + os.fsencode(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def write_tar(path: Path, images: dict[str, bytes], mode: str) -> None:
    with tarfile.open(path, mode) as tf:  # type: ignore[call-overload]
        for name, data in {**images, SKIPPED: b"# not an image"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


# each kind: write the source under tmp_path, return (manifest entry, raw name -> expected id)
Build = Callable[[Path, dict[str, bytes]], tuple[str, dict[str, str]]]


def directory(tmp: Path, images: dict[str, bytes]) -> tuple[str, dict[str, str]]:
    write_tree(tmp / "data", images)
    return "data", dict(NAMES)


def glob(tmp: Path, images: dict[str, bytes]) -> tuple[str, dict[str, str]]:
    write_tree(tmp / "data", images)
    return "data/**/*.*", dict(NAMES)


def single_files(tmp: Path, images: dict[str, bytes]) -> tuple[str, dict[str, str]]:
    write_tree(tmp / "data", images)
    return "<each file>", {name: NAMES[name].rsplit("/", 1)[-1] for name in images}


def tar_kind(suffix: str, mode: str) -> Build:
    def build(tmp: Path, images: dict[str, bytes]) -> tuple[str, dict[str, str]]:
        write_tar(tmp / f"a{suffix}", images, mode)
        return f"a{suffix}", {name: f"a{suffix}::{NAMES[name]}" for name in images}

    return build


def zip_kind(tmp: Path, images: dict[str, bytes]) -> tuple[str, dict[str, str]]:
    with zipfile.ZipFile(tmp / "a.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in {**images, SKIPPED: b"# not an image"}.items():
            zf.writestr(name, data)
    return "a.zip", {name: f"a.zip::{NAMES[name]}" for name in images}


def list_kind(suffix: str) -> Build:
    def build(tmp: Path, images: dict[str, bytes]) -> tuple[str, dict[str, str]]:
        write_tree(tmp / "data", images)
        entries = [f"data/{name}" for name in images]
        path = tmp / f"list{suffix}"
        if suffix == ".txt":
            path.write_text("# tonight\n" + "\n".join(entries) + "\n", "utf-8")
        elif suffix == ".csv":
            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["label", "path"])
                writer.writerows([i, e] for i, e in enumerate(entries))
        else:
            pq.write_table(pa.table({"path": entries}), path)
        return path.name, {name: f"data/{NAMES[name]}" for name in images}

    return build


KINDS: dict[str, tuple[Build, bool]] = {  # kind -> (builder, holds non-UTF-8 names)
    "directory": (directory, True),
    "glob": (glob, True),
    "single-file": (single_files, True),
    ".tar": (tar_kind(".tar", "w"), True),
    ".tar.gz": (tar_kind(".tar.gz", "w:gz"), True),
    ".zip": (zip_kind, False),
    ".txt": (list_kind(".txt"), False),
    ".csv": (list_kind(".csv"), False),
    ".parquet": (list_kind(".parquet"), False),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_source_contract(tmp_path: Path, images: dict[str, bytes], kind: str) -> None:
    build, raw_bytes = KINDS[kind]
    wanted = {n: d for n, d in images.items() if raw_bytes or n not in NOT_UTF8}
    entry, expected = build(tmp_path, wanted)
    if entry == "<each file>":
        paths = tuple(os.fsdecode(os.fsencode(tmp_path) + b"/data/" + os.fsencode(n)) for n in wanted)
    else:
        paths = (entry,)
    resolved = tuple(Path(p) if os.path.isabs(p) else tmp_path / p for p in paths)
    config = DatasetConfig(paths=paths, resolved=resolved, extensions=(".jpg", ".png"))

    items = list(list_items(config))
    assert [i.kind for i in items if i.kind == "error"] == []
    assert sorted(i.id for i in items) == sorted(expected.values())
    assert [i.id for i in list_items(config)] == [i.id for i in items]  # repeatable order
    for item in items:
        item.id.encode("utf-8")  # ids end in Parquet strings
    original = {expected[name]: data for name, data in wanted.items()}
    with ItemReader() as reader:
        for item in [*items, *reversed(items)]:  # forward, then backward (reopens compressed streams)
            assert reader.read(item) == original[item.id], item.id
