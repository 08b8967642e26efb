"""Image ids are unique by construction: the escaping of names is injective and reversible, the
same for folders, globs, archives and list files; and a folder or tar holding a file named with the
byte 0xFF next to one literally named ``\\xff`` runs through the real CLI with two distinct rows."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from helpers import cli, make_images, tiny_manifest
from hypothesis import given, settings
from hypothesis import strategies as st

from ascend_batch.manifest import DatasetConfig
from ascend_batch.sources import (
    Item,
    ItemReader,
    escape_name,
    list_items,
    make_id,
    parse_id,
    printable,
    unescape_name,
)

PROPERTIES = settings(max_examples=400, derandomize=True, database=None, deadline=None)

# characters that matter to the escaping, often; any other character (and any surrogate) sometimes
_TRICKY = st.sampled_from(["\\", ":", "x", "u", "f", "0", "d", "/", "é", "\udcff", "\udc80", "\ud800", "\udfff"])
_ANY = st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr))
names = st.text(st.one_of(_TRICKY, _TRICKY, _ANY), max_size=24)


# --- the escaping, as properties ----------------------------------------------------------------


@PROPERTIES
@given(names)
def test_escape_round_trips_and_is_utf8(name: str) -> None:
    text = escape_name(name)
    text.encode("utf-8")  # ids end in Parquet strings
    assert unescape_name(text) == name
    assert "::" not in text.replace("\\:", "")  # "::" is only ever the archive separator
    assert not text.endswith(":") or text.endswith("\\:")


@PROPERTIES
@given(names, names)
def test_escape_is_injective(a: str, b: str) -> None:
    assert (escape_name(a) == escape_name(b)) == (a == b)


@PROPERTIES
@given(names, st.none() | names, names, st.none() | names)
def test_ids_are_injective_over_names_and_members(a: str, m: str | None, b: str, n: str | None) -> None:
    assert parse_id(make_id(a, m)) == (a, m)
    assert (make_id(a, m) == make_id(b, n)) == ((a, m) == (b, n))


@PROPERTIES
@given(st.binary(max_size=24))
def test_file_system_bytes_round_trip(raw: bytes) -> None:
    name = os.fsdecode(raw)  # as os.scandir and tarfile give names: surrogate escapes
    assert os.fsencode(unescape_name(escape_name(name))) == raw
    assert os.fsencode(parse_id(make_id("a.tar", name))[1] or "") == raw


@PROPERTIES
@given(st.binary(max_size=24).filter(lambda b: b"\\" not in b and b"::" not in b and not b.endswith(b":")))
def test_ids_without_backslash_or_colon_pairs_are_unchanged(raw: bytes) -> None:
    """Earlier versions wrote non-UTF-8 bytes as \\xNN too: those ids (and all plain ones) stay."""
    name = os.fsdecode(raw)
    assert escape_name(name) == printable(name)


def test_escape_examples() -> None:
    assert escape_name("caf\udce9.jpg") == "caf\\xe9.jpg"  # byte 0xE9 (Latin-1), not UTF-8
    assert escape_name("caf\\xe9.jpg") == "caf\\\\xe9.jpg"  # the four characters \xe9
    assert escape_name("a::b.jpg") == "a\\:\\:b.jpg"
    assert escape_name("12:30:00.jpg") == "12:30:00.jpg"  # lone colons stay
    assert escape_name("end:") == "end\\:"
    assert escape_name("dir/é.jpg") == "dir/é.jpg"
    assert make_id("a.tar", "m/x.jpg") == "a.tar::m/x.jpg"
    assert make_id("a.tar::m.jpg") == "a.tar\\:\\:m.jpg"  # a file so named is not a member
    assert parse_id("a.tar::m/x.jpg") == ("a.tar", "m/x.jpg")
    assert parse_id("x.tar:::lead.jpg") == ("x.tar", ":lead.jpg")
    assert parse_id("caf\\xe9.jpg") == ("caf\udce9.jpg", None)


@pytest.mark.parametrize("text", ["a\\", "\\q", "\\X41", "\\xE9", "\\x41", "a::b", "end:", "\\u12"])
def test_unescape_refuses_what_no_name_escapes_to(text: str) -> None:
    with pytest.raises(ValueError, match="not an escaped name"):
        unescape_name(text)


# --- listing: the same escaping everywhere ------------------------------------------------------

BYTE_NAME = b"\xff.jpg"  # the byte 0xFF: not UTF-8
LITERAL_NAME = "\\xff.jpg"  # the four characters \xff


def write_pair(folder: Path, data: tuple[bytes, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(os.fsencode(folder) + b"/" + BYTE_NAME, "wb") as f:
        f.write(data[0])
    (folder / LITERAL_NAME).write_bytes(data[1])


def tar_pair(path: Path, data: tuple[bytes, bytes]) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:  # GNU: names as raw bytes
        for name, content in zip((os.fsdecode(BYTE_NAME), LITERAL_NAME), data, strict=True):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))


def listed(base: Path, *paths: str) -> list[Item]:
    resolved = tuple(base / p for p in paths)
    return list(list_items(DatasetConfig(paths=paths, resolved=resolved, extensions=(".jpg",))))


def test_lookalike_names_get_distinct_ids_everywhere(tmp_path: Path) -> None:
    data = (b"byte-ff", b"literal")
    write_pair(tmp_path / "dir", data)
    tar_pair(tmp_path / "dir" / "in.tar", data)
    tar_pair(tmp_path / "t.tar", data)
    (tmp_path / "dir" / "in.tar::\\xff.jpg").write_bytes(b"not a member")  # looks like one
    items = listed(tmp_path, "dir", "t.tar")
    by_id = {i.id: i for i in items}
    assert len(by_id) == len(items) == 7
    with ItemReader() as reader:
        got = {i.id: reader.read(i) for i in items}
    assert got == {
        "\\\\xff.jpg": b"literal",
        "\\xff.jpg": b"byte-ff",
        "in.tar::\\\\xff.jpg": b"literal",
        "in.tar::\\xff.jpg": b"byte-ff",
        "in.tar\\:\\:\\\\xff.jpg": b"not a member",
        "t.tar::\\\\xff.jpg": b"literal",
        "t.tar::\\xff.jpg": b"byte-ff",
    }
    # the id gives back the name: the file's own bytes, or the archive's member
    assert os.fsencode(parse_id("\\xff.jpg")[0]) == BYTE_NAME
    assert by_id["t.tar::\\xff.jpg"].member == os.fsdecode(BYTE_NAME)
    for item in items:
        name, member = parse_id(item.id)
        assert member == item.member
        if member is None:
            assert os.path.basename(item.path) == os.path.basename(name)


def test_list_file_entries_are_escaped_the_same_way(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "back\\slash.jpg").write_bytes(b"b")
    (tmp_path / "imgs" / "a::b.jpg").write_bytes(b"c")
    (tmp_path / "l.txt").write_text("imgs/back\\slash.jpg\nimgs/a::b.jpg\n", "utf-8")
    assert [i.id for i in listed(tmp_path, "l.txt")] == ["imgs/back\\\\slash.jpg", "imgs/a\\:\\:b.jpg"]


# --- through the real CLI -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_cli_runs_byte_and_literal_lookalikes_as_two_rows(tmp_path: Path, kind: str) -> None:
    """Before ids escaped the backslash, both files got the id ``\\xff.jpg`` and the job refused
    with exit 2 (duplicate id)."""
    a, b = make_images(tmp_path / "src", 2, seed=11)
    data = (a.read_bytes(), b.read_bytes())
    if kind == "folder":
        write_pair(tmp_path / "data", data)
        entry, prefix = tmp_path / "data", ""
    else:
        (tmp_path / "data").mkdir()
        tar_pair(tmp_path / "data" / "pair.tar", data)
        entry, prefix = tmp_path / "data" / "pair.tar", "pair.tar::"
    m = tiny_manifest(tmp_path, entry)
    r = cli("run", m, "--no-progress")
    assert r.returncode == 0, r.stderr
    df = pd.read_parquet(tmp_path / "out")
    assert sorted(df["image_id"]) == [f"{prefix}\\\\xff.jpg", f"{prefix}\\xff.jpg"]
    assert (df["status"] == "ok").all() and df["image_id"].is_unique
