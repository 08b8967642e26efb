"""Every input file ends as exactly one row: bad files in folders, tars and zips get the expected
error rows while the good images around them are classified, through the real CLI."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import cli, make_images, tiny_manifest
from PIL import Image


def jpeg_bytes(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def bad_files() -> dict[str, tuple[bytes, str]]:
    """name -> (content, expected error kind)"""
    big = io.BytesIO()
    Image.new("L", (4000, 3000)).save(big, "PNG")  # 12 Mpx, over the manifest's max_pixels
    return {
        "zero.jpg": (b"", "empty"),
        "truncated.jpg": (jpeg_bytes(1)[:600], "decode"),
        "truncated.png": (png_bytes(2)[:300], "decode"),
        "text.jpg": (b"this is not an image at all\n" * 20, "format"),
        "html.png": (b"<html><body>404 not found</body></html>", "format"),
        "bomb.png": (big.getvalue(), "too-large"),
    }


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_images(root / "dir", 5, seed=3)
    for name, (data, _) in bad_files().items():
        (root / "dir" / name).write_bytes(data)
    # the same bad files (and good ones) inside a tar and a zip
    with tarfile.open(root / "a.tar", "w") as tar:
        for i in range(3):
            data = jpeg_bytes(100 + i)
            info = tarfile.TarInfo(f"good/{i}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (data, _) in bad_files().items():
            info = tarfile.TarInfo(f"bad/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        evil = jpeg_bytes(7)
        info = tarfile.TarInfo("../../etc/evil.jpg")
        info.size = len(evil)
        tar.addfile(info, io.BytesIO(evil))
    with zipfile.ZipFile(root / "b.zip", "w") as zf:
        for i in range(3):
            zf.writestr(f"good/{i}.jpg", jpeg_bytes(200 + i))
        for name, (data, _) in bad_files().items():
            zf.writestr(f"bad/{name}", data)
        zf.writestr("huge.jpg", b"\0" * 300_000)  # over max_member_bytes
    # a tar cut off in the middle of its third member
    with tarfile.open(root / "cut.tar", "w") as tar:
        for i in range(4):
            data = jpeg_bytes(300 + i, (200, 150))
            info = tarfile.TarInfo(f"m{i}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = (root / "cut.tar").read_bytes()
    (root / "cut.tar").write_bytes(raw[: len(raw) // 2])
    return root


def test_every_bad_file_is_one_error_row_and_good_ones_are_classified(dataset: Path, tmp_path: Path) -> None:
    m = tiny_manifest(
        tmp_path,
        [str(dataset / "dir"), str(dataset / "a.tar"), str(dataset / "b.zip"), str(dataset / "cut.tar")],
        unit_size=7,
        extra_dataset="max_pixels = 10_000_000\nmax_member_bytes = 200_000",
    )
    r = cli("run", m, "--no-progress")
    assert r.returncode == 0, r.stderr
    df = pd.read_parquet(tmp_path / "out").set_index("image_id")
    assert df.index.is_unique
    expected = {}
    for name, (_, kind) in bad_files().items():
        expected[name] = kind
        expected[f"a.tar::bad/{name}"] = kind
        expected[f"b.zip::bad/{name}"] = kind
    expected["b.zip::huge.jpg"] = "too-large"
    expected["cut.tar"] = "archive"
    for image_id, kind in expected.items():
        assert image_id in df.index, image_id
        row = df.loc[image_id]
        assert row["status"] == "error", image_id
        assert row["error"].split(":")[0] == kind, (image_id, row["error"])
        assert len(row["top5_index"]) == 0
    good = [f"img{i:05d}.jpg" for i in range(5)] + [f"a.tar::good/{i}.jpg" for i in range(3)]
    good += [f"b.zip::good/{i}.jpg" for i in range(3)] + ["a.tar::../../etc/evil.jpg"]
    assert (df.loc[good, "status"] == "ok").all()
    cut_ok = [i for i in df.index if i.startswith("cut.tar::")]
    assert cut_ok and (df.loc[cut_ok, "status"] == "ok").all()  # members before the damage survive
    assert not (tmp_path.parent / "etc" / "evil.jpg").exists() and not Path("/etc/evil.jpg").exists()
    assert df.loc["truncated.jpg", "error"].startswith("decode: image file is truncated")
    # the end-of-run report names the most common kinds
    assert "most common errors:" in r.stdout and "format" in r.stdout
    assert len(df) == len(expected) + len(good) + len(cut_ok)


def test_decode_time_limit_turns_slow_images_into_error_rows(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    make_images(folder, 3, size=(3000, 2000), seed=5)
    m = tiny_manifest(tmp_path, folder, extra_dataset="decode_timeout = 0.000001")
    r = cli("run", m, "--no-progress")
    assert r.returncode == 0, r.stderr
    df = pd.read_parquet(tmp_path / "out")
    assert len(df) == 3
    assert df["error"].dropna().str.startswith("timeout: decoding took longer than").any()


def test_max_error_fraction_gives_exit_6(dataset: Path, tmp_path: Path) -> None:
    m = tiny_manifest(tmp_path, dataset / "dir", extra_job="max_error_fraction = 0.2")
    r = cli("run", m, "--no-progress")
    assert r.returncode == 6, r.stderr
    assert "max_error_fraction" in r.stderr
    r = cli("run", m, "--no-progress", "--max-error-fraction", "0.9")
    assert r.returncode == 0, r.stderr
