"""Incremental nightly runs: dataset.skip_existing skips images already in earlier outputs (same id,
size and mtime), with a date-partitioned layout read back as one table with a `date` column."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import cli, make_images, tiny_manifest

from ascend_batch.errors import ManifestError
from ascend_batch.incremental import SkipExisting, earlier_dirs, existing_keys, listed_key, skip_existing
from ascend_batch.sources import Item


def night(manifest: Path, results: Path, date: str) -> pd.DataFrame:
    out = results / f"date={date}"
    r = cli("run", manifest, "--output", out, "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "_SUCCESS").exists()
    return pd.read_parquet(out) if any(out.glob("part-*.parquet")) else pd.DataFrame(columns=["image_id"])


def test_nightly_runs_classify_only_new_and_changed_files(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    make_images(incoming, 10, prefix="a")
    (incoming / "broken.jpg").write_bytes(b"not a jpeg")
    results = tmp_path / "results"
    manifest = tiny_manifest(tmp_path, incoming, unit_size=4, extra_dataset='skip_existing = ["results/*"]')

    first = night(manifest, results, "2026-11-23")
    assert len(first) == 11 and (first["status"] == "error").sum() == 1

    # a day later: 5 new files, one file replaced (new size and mtime), one only touched (new mtime)
    make_images(incoming, 5, prefix="b", seed=1)
    make_images(incoming, 1, prefix="a", seed=7, size=(80, 60))  # rewrites a00000.jpg
    later = time.time() + 5
    os.utime(incoming / "a00001.jpg", (later, later))
    second = night(manifest, results, "2026-11-24")
    assert sorted(second["image_id"]) == ["a00000.jpg", "a00001.jpg"] + [f"b{i:05d}.jpg" for i in range(5)]

    # nothing new: an empty night, still complete
    third = night(manifest, results, "2026-11-25")
    assert len(third) == 0
    assert (
        "skip_existing: 16 of 16 listed images are already in 3 earlier output(s)"
        in cli("run", manifest, "--output", results / "date=2026-11-26", "--no-progress").stderr
    )

    # all nights as one table, partitioned by date; the latest row of each image is its current result
    df = pd.read_parquet(results)
    assert df["date"].astype(str).value_counts().to_dict() == {"2026-11-23": 11, "2026-11-24": 7}
    latest = df.assign(date=df["date"].astype(str)).sort_values("date").groupby("image_id").tail(1)
    assert len(latest) == 16 and latest["image_id"].is_unique

    # resuming tonight's output never skips its own images (the job's own folder is excluded)
    r = cli("run", manifest, "--output", results / "date=2026-11-24", "--no-progress")
    assert r.returncode == 0 and "7/7 images" in r.stdout, r.stdout + r.stderr


def test_earlier_dirs(tmp_path: Path) -> None:
    for d in ("date=1", "date=2", "date=3"):
        (tmp_path / "r" / d).mkdir(parents=True)
    (tmp_path / "r" / "notes.txt").write_text("x")
    found = earlier_dirs([tmp_path / "r" / "*"], own=tmp_path / "r" / "date=3")
    assert found == [tmp_path / "r" / "date=1", tmp_path / "r" / "date=2"]
    assert earlier_dirs([tmp_path / "nothing" / "*"]) == []  # the first night: a glob may match nothing
    with pytest.raises(ManifestError, match=r"skip_existing\[1\].*no such directory"):
        earlier_dirs([tmp_path / "r" / "*", tmp_path / "typo"])


def test_missing_glob_is_first_night(tmp_path: Path) -> None:
    make_images(tmp_path / "img", 3)
    manifest = tiny_manifest(tmp_path, tmp_path / "img", extra_dataset='skip_existing = ["results/*"]')
    assert len(night(manifest, tmp_path / "results", "2026-01-01")) == 3


def test_typo_in_skip_existing_is_a_manifest_error(tmp_path: Path) -> None:
    make_images(tmp_path / "img", 3)
    manifest = tiny_manifest(tmp_path, tmp_path / "img", extra_dataset='skip_existing = ["reslts"]')
    r = cli("run", manifest, "--no-progress")
    assert r.returncode == 2 and "dataset.skip_existing[0]" in r.stderr and "no such directory" in r.stderr


def test_filter_matches_id_size_and_mtime() -> None:
    old = [Item("a.jpg", "s", "file", "/a.jpg", size=10, mtime=1000.5), Item("b.jpg", "s", "file", "/b.jpg", size=20)]
    keys = np.unique(np.array([listed_key(i) for i in old], dtype="S16"))
    filt = SkipExisting(keys)
    now = [
        Item("a.jpg", "s", "file", "/a.jpg", size=10, mtime=1000.5),  # same: skipped
        Item("a.jpg", "s", "file", "/a.jpg", size=10, mtime=1001.0),  # touched: kept
        Item("b.jpg", "s", "file", "/b.jpg", size=21),  # grew: kept
        Item("c.jpg", "s", "file", "/c.jpg", size=10, mtime=1000.5),  # new: kept
        Item("x.tar", "s", "error", "/x.tar", error="archive: truncated"),  # no size: never skipped
    ]
    kept = list(filt.filter(now))
    assert kept == now[1:] and (filt.seen, filt.skipped) == (5, 1)
    assert list(skip_existing(iter(now), [])) == now  # no patterns: untouched
    assert len(existing_keys([])) == 0


def test_filter_scales(tmp_path: Path) -> None:
    """200k earlier images, 200k listed: well under the time a listing of that size takes."""
    n = 200_000
    items = [Item(f"d/{i:07d}.jpg", "s", "file", "/x", size=1000 + i, mtime=1.7e9 + i) for i in range(n)]
    t0 = time.perf_counter()
    keys = np.unique(np.array([listed_key(i) for i in items[: n // 2]], dtype="S16"))
    filt = SkipExisting(keys)
    kept = sum(1 for _ in filt.filter(items))
    took = time.perf_counter() - t0
    assert kept == n // 2 and filt.skipped == n // 2
    assert took < 10, took
    assert keys.nbytes == 16 * (n // 2)
