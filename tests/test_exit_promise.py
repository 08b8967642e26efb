"""The promise users build on, tried as a hostile archive and an unlucky night would, through the
real CLI: exit 0 and ``_SUCCESS`` mean every listed image has exactly one honest row; a failure no
image caused stops the job with a documented code, blames no image, loses nothing, and a rerun
recovers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import PLUGINS, cli, make_images, tiny_manifest, use_test_backend
from PIL import Image

from ascend_batch.errors import (
    EXIT_ENVIRONMENT,
    EXIT_INCOMPATIBLE,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_STARTUP,
    EXIT_TOO_MANY_ERRORS,
    IncompatibleOutputError,
)


def rows(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values("image_id").reset_index(drop=True)


def run(manifest: Path, *args: str) -> subprocess.CompletedProcess:
    return cli("run", manifest, "--no-progress", *args, env=PLUGINS, timeout=240)


def snapshot_tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_exactly_once(out: Path, names: list[str]) -> pd.DataFrame:
    df = rows(out)
    assert sorted(df["image_id"]) == sorted(names) and df["image_id"].is_unique
    return df


# -- 1. _SUCCESS exists exactly when run or finalize would exit 0 --------------------------------


def test_exit_6_writes_no_success_and_finalize_agrees(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 8, seed=1)
    for i in range(2):
        (tmp_path / "imgs" / f"broken{i}.jpg").write_bytes(b"not an image")
    m = tiny_manifest(tmp_path, tmp_path / "imgs", extra_job="max_error_fraction = 0.1")
    r = run(m)
    assert r.returncode == EXIT_TOO_MANY_ERRORS, r.stderr
    out = tmp_path / "out"
    assert not (out / "_SUCCESS").exists()
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["complete"] and summary["verified"]["success"] is False
    assert len(rows(out)) == 10  # the rows are all there: only the verdict on them is "too many errors"
    fin = cli("finalize", out)  # the threshold recorded in _job.json applies to finalize too
    assert fin.returncode == EXIT_TOO_MANY_ERRORS and not (out / "_SUCCESS").exists()
    ok = cli("finalize", out, "--max-error-fraction", "0.5")
    assert ok.returncode == EXIT_OK and (out / "_SUCCESS").exists()


def test_finalize_removes_a_stale_success(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 25, seed=2)
    m = tiny_manifest(tmp_path, tmp_path / "imgs")
    assert run(m).returncode == EXIT_OK
    out = tmp_path / "out"
    assert (out / "_SUCCESS").exists()
    (out / "part-000001.parquet").unlink()
    fin = cli("finalize", out)
    assert fin.returncode == EXIT_INCOMPLETE, fin.stderr
    assert not (out / "_SUCCESS").exists()
    assert "1 of 3 units are not committed" in fin.stderr


# -- 2. a poison image is isolated to its own row in every case -------------------------------------


def test_poison_image_alone_in_its_unit_gets_its_row(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 10, seed=3)
    Image.new("RGB", (40, 40), (255, 0, 255)).save(tmp_path / "imgs" / "zz-poison.png")  # unit 1: one image
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=10, extra_runtime="max_retries = 2")
    use_test_backend(m, "CrashyBackend")
    r = run(m)
    assert r.returncode == EXIT_OK, r.stderr
    out = tmp_path / "out"
    df = assert_exactly_once(out, [f"img{i:05d}.jpg" for i in range(10)] + ["zz-poison.png"])
    bad = df[df["status"] == "error"]
    assert list(bad["image_id"]) == ["zz-poison.png"]
    # the unit's first try and its two retries all died: three failed tasks held this image
    assert bad["error"].iloc[0] == (
        "crash: worker on cpu:0 killed by SIGSEGV while processing this image (failed 3 times)"
    )
    assert (out / "_SUCCESS").exists()


@pytest.mark.parametrize("units", [1, 2])
def test_poison_image_on_two_devices_is_blamed_and_the_job_completes(tmp_path: Path, units: int) -> None:
    # the unit dies on one device, a half succeeds on the other, the poison image dies first on a
    # device that has not proven a fresh worker yet: it must wait for one that has, not stop the job
    make_images(tmp_path / "imgs", 4 * units - 1, seed=18)
    Image.new("RGB", (40, 40), (255, 0, 255)).save(tmp_path / "imgs" / "img00001z-poison.png")
    m = tiny_manifest(
        tmp_path, tmp_path / "imgs", devices='["cpu:0", "cpu:1"]', unit_size=4, batch_size=2,
        extra_runtime="max_retries = 0",
    )  # fmt: skip
    use_test_backend(m, "CrashyBackend")
    r = run(m)
    assert r.returncode == EXIT_OK, r.stderr
    df = rows(tmp_path / "out")
    assert len(df) == 4 * units and df["image_id"].is_unique
    assert list(df.loc[df["status"] == "error", "image_id"]) == ["img00001z-poison.png"]


def test_crash_count_adds_up_over_bisection(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 3, seed=4)
    Image.new("RGB", (40, 40), (255, 0, 255)).save(tmp_path / "imgs" / "a-poison.png")  # position 0 of 4
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=4, extra_runtime="max_retries = 1")
    use_test_backend(m, "CrashyBackend")
    r = run(m)
    assert r.returncode == EXIT_OK, r.stderr
    bad = rows(tmp_path / "out").query("status == 'error'")
    # unit [0,4) twice (max_retries = 1), then [0,2), then [0,1): four failed tasks held it
    assert bad["error"].tolist() == [
        "crash: worker on cpu:0 killed by SIGSEGV while processing this image (failed 4 times)"
    ]


def test_poison_image_that_kills_the_decoder_while_the_model_loads(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 6, seed=5)
    Image.new("RGB", (48, 48), (10, 200, 30)).save(tmp_path / "imgs" / "img00002-poison.jpg", comment=b"poison")
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=10, extra_runtime="max_retries = 1")
    use_test_backend(m, "PoisonDecodeBackend")
    r = run(m)
    assert r.returncode == EXIT_OK, r.stderr  # not "no device could start a worker" (exit 3)
    assert "while starting; restarting it with the model loaded first" in r.stderr
    df = assert_exactly_once(tmp_path / "out", [f"img{i:05d}.jpg" for i in range(6)] + ["img00002-poison.jpg"])
    bad = df[df["status"] == "error"]
    assert list(bad["image_id"]) == ["img00002-poison.jpg"]
    assert bad["error"].iloc[0].startswith("crash: worker on cpu:0 killed by SIGSEGV while processing this image")


# -- 3. a failure no image caused is never blamed on images -----------------------------------------


@pytest.mark.parametrize(
    ("backend", "says"),
    [
        ("FailingBackend", "runtime: device cpu:0: onnxruntime"),  # never reached: see the assertion below
        ("DyingBackend", "tasks in a row failed on cpu:0"),
    ],
)
def test_runtime_failing_every_batch_stops_the_job_and_blames_no_image(tmp_path: Path, backend: str, says: str) -> None:
    make_images(tmp_path / "imgs", 20, seed=6)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=10, extra_runtime="max_retries = 1")
    use_test_backend(m, backend)
    r = run(m)
    assert r.returncode == EXIT_STARTUP, r.stderr
    assert "no image" in r.stderr and "rerun to resume" in r.stderr
    if backend == "FailingBackend":
        assert "device lost (injected): every batch fails" in r.stderr and "both halves of unit" in r.stderr
    else:
        assert says in r.stderr
    out = tmp_path / "out"
    assert not (out / "_SUCCESS").exists()
    assert not list(out.glob("part-*.parquet"))  # no row at all: nothing was blamed
    pieces = out / "_pieces"
    assert not pieces.exists() or not any(p.name.endswith(".parquet") for p in pieces.iterdir())
    # the cause fixed, a rerun completes the job
    m.write_text(m.read_text().replace(f'"crashy_backend:{backend}"', '"onnxruntime"'))
    again = run(m)
    assert again.returncode == EXIT_OK, again.stderr
    df = assert_exactly_once(out, [f"img{i:05d}.jpg" for i in range(20)])
    assert (df["status"] == "ok").all()


def test_batch_that_cannot_be_allocated_is_out_of_memory_not_images(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 6, seed=7)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", batch_size=10**9)
    r = run(m)
    assert r.returncode == EXIT_ENVIRONMENT, r.stderr
    assert "out of memory" in r.stderr and "runtime.batch_size" in r.stderr
    out = tmp_path / "out"
    assert not list(out.glob("part-*.parquet")) and not (out / "_SUCCESS").exists()
    m.write_text(m.read_text().replace(f"batch_size = {10**9}", "batch_size = 4"))
    assert run(m).returncode == EXIT_OK
    assert (rows(out)["status"] == "ok").all()


def test_a_runtime_that_cannot_allocate_memory_is_out_of_memory_not_a_device_failure(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 6, seed=17)
    m = tiny_manifest(tmp_path, tmp_path / "imgs")
    use_test_backend(m, "ArenaFullBackend")
    r = run(m)
    assert r.returncode == EXIT_ENVIRONMENT, r.stderr
    assert "out of memory" in r.stderr and "Failed to allocate memory" in r.stderr
    assert not list((tmp_path / "out").glob("part-*.parquet"))  # no image blamed


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def test_full_disk_stops_the_job_and_a_rerun_recovers(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 60, seed=8)
    with tmpfs(tmp_path / "disk", "64k") as disk:
        m = tiny_manifest(tmp_path, tmp_path / "imgs", output=str(disk / "out"), unit_size=10)
        # fill the disk but for the job's own files: the listing fits, the parts do not
        filler = disk / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            f.write(b"x" * (64 * 1024))
        filler.unlink()
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            f.write(b"x" * (40 * 1024))
        r = run(m)
        assert r.returncode == EXIT_ENVIRONMENT, r.stdout + r.stderr
        assert "No space left on device" in r.stderr or "no space left on the device" in r.stderr
        out = disk / "out"
        assert not (out / "_SUCCESS").exists()
        for part in out.glob("part-*.parquet"):  # what was committed is whole, and no row blames an image
            assert (pq.read_table(part).column("status").to_pylist()) == ["ok"] * 10
        assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]  # no temp file left behind
        remount(disk, "size=8m")
        filler.unlink()
        again = run(m)
        assert again.returncode == EXIT_OK, again.stderr
        df = assert_exactly_once(out, [f"img{i:05d}.jpg" for i in range(60)])
        assert (df["status"] == "ok").all()


def test_read_only_output_is_an_environment_error(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 30, seed=9)
    with tmpfs(tmp_path / "disk", "8m") as disk:
        m = tiny_manifest(tmp_path, tmp_path / "imgs", output=str(disk / "out"), unit_size=10)
        assert run(m).returncode == EXIT_OK
        out = disk / "out"
        (out / "part-000001.parquet").unlink()
        (out / "_SUCCESS").unlink()
        remount(disk, "ro")
        r = run(m)
        assert r.returncode == EXIT_ENVIRONMENT, r.stderr
        assert "read-only file system" in r.stderr.lower() and str(out) in r.stderr
        assert "internal error" not in r.stderr
        remount(disk, "rw")
        assert run(m).returncode == EXIT_OK
        assert_exactly_once(out, [f"img{i:05d}.jpg" for i in range(30)])


# -- 4. corrupt committed parts are found and redone ---------------------------------------------


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 3  # inside the data pages, far from the footer at the end
    for i in range(mid, mid + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "flip-page"])
def test_damaged_part_is_moved_aside_and_redone_by_a_rerun(tmp_path: Path, damage: str) -> None:
    make_images(tmp_path / "imgs", 30, seed=10)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=10)
    assert run(m).returncode == EXIT_OK
    out = tmp_path / "out"
    ref = rows(out)
    part = out / "part-000001.parquet"
    if damage == "truncate":
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    else:
        _flip_middle(part)
    r = run(m)
    assert r.returncode == EXIT_OK, r.stderr
    assert "unit 1: its committed part is damaged" in r.stderr
    kept = [p.name for p in (out / "_damaged").iterdir() if not p.name.endswith(".why.txt")]
    assert len(kept) == 1 and kept[0].startswith("part-000001.parquet.")  # kept for inspection
    got = rows(out)
    pd.testing.assert_frame_equal(
        got.drop(columns=["processed_at", "run_id"]), ref.drop(columns=["processed_at", "run_id"])
    )
    assert (out / "_SUCCESS").exists()


def test_finalize_reads_every_page_and_checks_ids(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 30, seed=11)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=10)
    assert run(m).returncode == EXIT_OK
    out = tmp_path / "out"
    for record in (out / "_commits").iterdir():  # no commit record: only reading the part itself can tell
        record.unlink()
    _flip_middle(out / "part-000000.parquet")  # damaged page, footer intact
    pq.write_table(pq.read_table(out / "part-000002.parquet").slice(0, 9), out / "part-000002.parquet")  # a row gone
    t = pq.read_table(out / "part-000001.parquet")  # right count, wrong ids
    ids = t["image_id"].to_pylist()
    pq.write_table(t.set_column(0, "image_id", pa.array(ids[1:] + ids[:1])), out / "part-000001.parquet")
    fin = cli("finalize", out)
    assert fin.returncode == EXIT_INCOMPLETE, fin.stderr
    assert "3 committed part(s) failed verification" in fin.stderr
    assert not (out / "_SUCCESS").exists() and not list(out.glob("part-*.parquet"))
    assert len([p for p in (out / "_damaged").iterdir() if p.name.endswith(".why.txt")]) == 3
    assert run(m).returncode == EXIT_OK
    assert_exactly_once(out, [f"img{i:05d}.jpg" for i in range(30)])


# -- 5. --restart never deletes what this job did not write --------------------------------------


@pytest.mark.parametrize("layout", ["pyarrow-dataset", "user-part-file"])
def test_restart_refuses_a_directory_that_is_not_this_jobs(tmp_path: Path, layout: str) -> None:
    make_images(tmp_path / "imgs", 5, seed=12)
    out = tmp_path / "out"
    out.mkdir()
    if layout == "pyarrow-dataset":
        pq.write_table(pa.table({"x": [1, 2, 3]}), out / "part-0.parquet")
        (out / "_common_metadata").write_bytes(b"metadata")
    else:
        pq.write_table(pa.table({"mine": ["precious"]}), out / "part-000000.parquet")
    before = snapshot_tree(out)
    m = tiny_manifest(tmp_path, tmp_path / "imgs")
    r = run(m, "--restart")
    assert r.returncode == EXIT_INCOMPATIBLE, r.stderr
    assert "choose another job.output" in r.stderr
    assert snapshot_tree(out) == before  # byte-identical, and nothing added (not even a lock file)
    assert run(m).returncode == EXIT_INCOMPATIBLE and snapshot_tree(out) == before


# -- 6. environmental errors are not internal errors ---------------------------------------------


def test_output_path_that_is_a_file_or_unwritable(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 3, seed=13)
    (tmp_path / "afile").write_text("x")
    for output, cause in [
        (tmp_path / "afile", "job.output must be a directory"),
        (tmp_path / "afile" / "below", "job.output must be a directory"),
        (Path("/proc/ascend-batch-test-out"), ""),
    ]:
        m = tiny_manifest(tmp_path, tmp_path / "imgs", output=str(output))
        r = run(m)
        assert r.returncode == EXIT_ENVIRONMENT, (output, r.stderr)
        assert str(output) in r.stderr and cause in r.stderr
        assert "internal error" not in r.stderr and "Traceback" not in r.stderr


# -- 8. left-over temp files of killed runs are cleaned ------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_next_run_cleans_temp_files_of_killed_writers_only(tmp_path: Path) -> None:
    import socket

    make_images(tmp_path / "imgs", 12, seed=14)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=10)
    assert run(m).returncode == EXIT_OK
    out = tmp_path / "out"
    (out / "part-000001.parquet").unlink()
    host, dead = socket.gethostname(), _dead_pid()
    leftovers = [
        out / f".tmp-part-000001.parquet~{host}~{dead}~0a1b2c3d",  # this version's names
        out / f".tmp-_listing.parquet~{host}~{dead}~0a1b2c3d",
        out / f".tmp-part-000001.parquet.{host}.{dead}",  # names of earlier versions
        out / f"._listing.parquet.{dead}.tmp",
        out / f"._job.json.{dead}.0a1b2c3d.tmp",
    ]
    live = out / f".tmp-part-000007.parquet~{host}~{os.getpid()}~0a1b2c3d"  # a writer still at work
    for p in [*leftovers, live]:
        p.write_bytes(b"partial")
    assert run(m).returncode == EXIT_OK
    assert [p.name for p in leftovers if p.exists()] == []
    assert live.exists()


# -- the input side of an unlucky night: a dropped mount is not the images' fault ---------------------


@pytest.mark.parametrize("code", ["ESTALE", "ENOTCONN", "EMFILE"])
def test_a_dropped_input_mount_is_not_an_error_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    import builtins
    import errno as errno_mod

    from ascend_batch.runner.messages import Cause
    from ascend_batch.runner.worker import failure_cause
    from ascend_batch.sources import ItemReader, list_source

    make_images(tmp_path / "imgs", 1, seed=15)
    (item,) = list(list_source(str(tmp_path / "imgs"), tmp_path / "imgs", (".jpg",)))
    real_open = builtins.open

    def failing_open(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path) == item.path:
            err = getattr(errno_mod, code)
            raise OSError(err, os.strerror(err), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing_open)
    with ItemReader() as reader, pytest.raises(OSError) as info:
        reader.read(item)  # raised, not turned into an ImageError (an error row)
    cause, message = failure_cause(info.value)
    assert cause is Cause.ENVIRONMENT and item.path in message


def test_overlapping_pieces_merge_each_image_once(tmp_path: Path) -> None:
    # a worker committed piece [0, 4) and died before reporting it; its task was split and [0, 2), [2, 4)
    # were committed too: the merge must still hold each image exactly once
    from ascend_batch.plan import Unit
    from ascend_batch.runner.outdir import commit_piece, merge_pieces
    from ascend_batch.runner.writer import RowBuffer

    def piece(start: int, stop: int) -> None:
        rows = RowBuffer("m", "b", "cpu:0", "r")
        for i in range(start, stop):
            rows.add_error(f"img{i}", "s", 0, 0, 1, 0.0, "decode: x")
        commit_piece(tmp_path, 0, start, stop, rows.table(), {"images": stop - start})

    for start, stop in [(0, 4), (0, 2), (2, 4), (4, 6)]:
        piece(start, stop)
    assert merge_pieces(tmp_path, Unit(0, 0, 6))
    ids = pq.read_table(tmp_path / "part-000000.parquet")["image_id"].to_pylist()
    assert ids == [f"img{i}" for i in range(6)]
    assert not list((tmp_path / "_pieces").glob("*.parquet"))
    piece(0, 2)  # a gap is never merged
    with pytest.raises(ValueError, match="cover"):
        merge_pieces(tmp_path, Unit(0, 0, 6))


# -- 5. what readers of the output would see is what was verified ------------------------------


@pytest.mark.parametrize("stray", ["part-000009.parquet", "part-000001-copy.parquet", "extra.parquet", "notes.txt"])
def test_a_file_that_is_not_one_of_the_jobs_parts_is_refused_not_read_as_rows(tmp_path: Path, stray: str) -> None:
    make_images(tmp_path / "imgs", 30, seed=12)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=10)
    assert run(m).returncode == EXIT_OK
    out = tmp_path / "out"
    (out / stray).write_bytes((out / "part-000001.parquet").read_bytes())  # pandas would read 40 rows
    for again in (run(m), cli("finalize", out)):
        assert again.returncode == EXIT_INCOMPATIBLE, again.stdout + again.stderr
        assert f"holds files that are not this job's parts: {stray}" in again.stderr
        assert not (out / "_SUCCESS").exists()  # no longer true of what a reader sees
    (out / stray).unlink()
    assert run(m).returncode == EXIT_OK
    assert_exactly_once(out, [f"img{i:05d}.jpg" for i in range(30)])


def test_a_replaced_part_without_its_commit_record_is_redone_in_the_same_run(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 30, seed=13)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=10)
    assert run(m).returncode == EXIT_OK
    out = tmp_path / "out"
    shutil.rmtree(out / "_commits")
    (out / "_SUCCESS").unlink()
    shutil.copy(out / "part-000002.parquet", out / "part-000001.parquet")  # right row count, wrong images
    r = run(m)
    assert r.returncode == EXIT_OK, r.stderr
    assert "unit 1: its committed part is damaged" in r.stderr and "image ids differ" in r.stderr
    assert_exactly_once(out, [f"img{i:05d}.jpg" for i in range(30)])


def test_finalize_on_a_read_only_output_is_an_environment_error(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 20, seed=14)
    with tmpfs(tmp_path / "disk", "8m") as disk:
        m = tiny_manifest(tmp_path, tmp_path / "imgs", output=str(disk / "out"), unit_size=10)
        assert run(m).returncode == EXIT_OK
        remount(disk, "ro")
        fin = cli("finalize", disk / "out")
        assert fin.returncode == EXIT_ENVIRONMENT, fin.stderr
        assert "Read-only file system" in fin.stderr and str(disk / "out") in fin.stderr
        assert "internal error" not in fin.stderr and "Traceback" not in fin.stderr
        remount(disk, "rw")


def test_a_labels_file_edited_between_runs_is_another_job_not_mixed_names(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 20, seed=15)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=10)
    assert run(m).returncode == EXIT_OK
    out = tmp_path / "out"
    (out / "part-000001.parquet").unlink()
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"X{line}\n" for line in labels.read_text().splitlines()))
    r = run(m)
    assert r.returncode == EXIT_INCOMPATIBLE, r.stderr
    assert "the class labels (model.labels): content" in r.stderr
    assert len(rows(out)) == 10  # nothing written under the new names


@pytest.mark.parametrize("damage", ["garbage", "a part file", "n_units"])
def test_damaged_bookkeeping_is_exit_4_naming_the_file_and_restart_recovers(tmp_path: Path, damage: str) -> None:
    make_images(tmp_path / "imgs", 20, seed=16)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=10)
    assert run(m).returncode == EXIT_OK
    out = tmp_path / "out"
    (out / "_SUCCESS").unlink()
    if damage == "garbage":
        (out / "_listing.parquet").write_bytes(os.urandom(1000))
        named = "_listing.parquet is damaged"
    elif damage == "a part file":
        shutil.copy(out / "part-000000.parquet", out / "_listing.parquet")
        named = "_listing.parquet is damaged"
    else:
        job = json.loads((out / "_job.json").read_text())
        (out / "_job.json").write_text(json.dumps({**job, "n_units": "x"}))
        named = "_job.json is damaged (n_units is 'x', not a count)"
    for r in (run(m), cli("validate", m), cli("finalize", out)):
        assert r.returncode == EXIT_INCOMPATIBLE, [*r.args[3:], r.stderr]
        assert named in r.stderr and "Traceback" not in r.stderr
    for r in (cli("status", out), cli("report", out)):  # they read _job.json, the listing only for thumbnails
        assert r.returncode == (EXIT_INCOMPATIBLE if damage == "n_units" else EXIT_OK), [*r.args[3:], r.stderr]
        assert "Traceback" not in r.stderr
    assert run(m, "--restart").returncode == EXIT_OK
    assert_exactly_once(out, [f"img{i:05d}.jpg" for i in range(20)])


def test_a_run_that_finds_a_stray_file_at_its_end_still_records_how_it_ended(tmp_path: Path) -> None:
    from ascend_batch.runner.finalize import finalize, run_record

    make_images(tmp_path / "imgs", 10, seed=19)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=10)
    assert run(m).returncode == EXIT_OK
    out = tmp_path / "out"
    shutil.copy(out / "part-000000.parquet", out / "copy.parquet")  # appeared while the run went on
    record = run_record("20261202T000000-abcdef", 0.0, 1.0)
    with pytest.raises(IncompatibleOutputError):
        finalize(out, record)
    saved = json.loads((out / "_runs" / "20261202T000000-abcdef.json").read_text())
    assert saved["exit_code"] == EXIT_INCOMPATIBLE and "copy.parquet" in saved["detail"]
    assert not (out / "_SUCCESS").exists()


def test_a_summary_that_cannot_be_written_is_exit_8_with_the_runs_counts(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 20, seed=20)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=10)
    assert run(m).returncode == EXIT_OK
    out = tmp_path / "out"
    (out / "part-000001.parquet").unlink()
    (out / "_summary.json").unlink()
    (out / "_summary.json").mkdir()  # the summary cannot be written where it goes
    r = run(m, "--json")
    assert r.returncode == EXIT_ENVIRONMENT, r.stderr
    report = json.loads(r.stdout)
    assert report["exit_code"] == EXIT_ENVIRONMENT and "_summary.json" in report["error"]
    assert (report["images_this_run"], report["units_done"], report["images"]) == (10, 2, 20)
    assert not (out / "_SUCCESS").exists()
    (out / "_summary.json").rmdir()
    assert run(m).returncode == EXIT_OK


def test_a_dataset_folder_that_empties_mid_job_is_a_dropped_mount_not_read_rows(tmp_path: Path) -> None:
    # a lazy unmount leaves the mount point as an empty folder: every file left is "not found"
    imgs = tmp_path / "imgs"
    make_images(imgs, 30, seed=21)
    m = tiny_manifest(tmp_path, imgs, unit_size=10)
    assert run(m, "--shard", "0/3").returncode == EXIT_OK  # unit 0 committed, as before the mount dropped
    kept = tmp_path / "kept"
    imgs.rename(kept)
    imgs.mkdir()
    r = run(m)
    assert r.returncode == EXIT_ENVIRONMENT, r.stderr
    assert "dataset.paths[0]" in r.stderr and "is gone or empty" in r.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("part-*.parquet")) == ["part-000000.parquet"]  # no read rows
    imgs.rmdir()
    kept.rename(imgs)  # the mount is back
    assert run(m).returncode == EXIT_OK
    df = assert_exactly_once(out, [f"img{i:05d}.jpg" for i in range(30)])
    assert (df["status"] == "ok").all()
    # one file deleted from a folder that still holds others is that file's row, as before
    (imgs / "img00015.jpg").unlink()
    (out / "part-000001.parquet").unlink()
    assert run(m).returncode == EXIT_OK
    assert rows(out).set_index("image_id").loc["img00015.jpg", "error"].startswith("read: ")
