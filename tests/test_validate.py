"""``validate`` and ``run --dry-run`` check what ``run`` checks before it starts, through the real CLI:
the same exit code and message for every way ``run`` refuses a job, warnings for what is legitimate,
the counts of a good job, and nothing written anywhere."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import cli, make_images, tiny_manifest, write_manifest

from ascend_batch.models.torch_pickle import MAGIC_NUMBER, PROTOCOL_VERSION


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and mtime: a write anywhere changes it."""
    state = {".": (0, root.stat().st_mtime_ns)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            state[str(p.relative_to(root))] = (st.st_size if name in filenames else 0, st.st_mtime_ns)
    return state


def _edit(manifest: Path, old: str, new: str) -> None:
    text = manifest.read_text()
    assert old in text
    manifest.write_text(text.replace(old, new))


def _job(tmp: Path, n: int = 5, **kw: object) -> Path:
    make_images(tmp / "imgs", n)
    return tiny_manifest(tmp, tmp / "imgs", **kw)  # type: ignore[arg-type]


# -- how run refuses a job today, one builder each: (manifest, exit code) -------------------------


def _duplicate_ids(tmp: Path) -> tuple[Path, int]:
    m = _job(tmp)
    _edit(m, f'paths = ["{tmp}/imgs"]', f'paths = ["{tmp}/imgs", "{tmp}/imgs"]')
    return m, 2


def _foreign_output(tmp: Path) -> tuple[Path, int]:
    m = _job(tmp)
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine\n")
    return m, 4


def _incompatible_output(tmp: Path) -> tuple[Path, int]:
    m = _job(tmp)
    r = cli("run", m, "--no-progress")
    assert r.returncode == 0, r.stderr
    _edit(m, "unit_size = 10", "unit_size = 3")
    return m, 4


def _output_is_a_file(tmp: Path) -> tuple[Path, int]:
    m = _job(tmp)
    (tmp / "out").write_text("in the way\n")
    return m, 8


def _unknown_plugin(tmp: Path) -> tuple[Path, int]:
    m = _job(tmp)
    _edit(m, 'backend = "onnxruntime"', 'backend = "no_such_plugin_module:Backend"')
    return m, 3


def _unsafe_weights(tmp: Path) -> tuple[Path, int]:
    """The default model with weights whose pickle would run a command if loaded with plain pickle."""
    make_images(tmp / "imgs", 2)
    header = b"".join(pickle.dumps(o, protocol=2) for o in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}))
    command = f"touch {tmp / 'pwned'}".encode()
    evil = b"\x80\x02cos\nsystem\nX" + len(command).to_bytes(4, "little") + command + b"\x85R."
    (tmp / "evil.pth").write_bytes(header + evil + pickle.dumps([], protocol=2))
    body = """
[job]
output = "out"
[dataset]
paths = ["imgs"]
[model]
weights = "evil.pth"
[runtime]
devices = ["cpu:0"]
threads = 1
decode_workers = 1
"""
    return write_manifest(tmp / "job.toml", body), 3


REFUSALS: dict[str, Callable[[Path], tuple[Path, int]]] = {
    "duplicate ids": _duplicate_ids,
    "foreign output dir": _foreign_output,
    "incompatible job output": _incompatible_output,
    "output path is a file": _output_is_a_file,
    "unknown plugin backend module": _unknown_plugin,
    "unsafe default-model weights": _unsafe_weights,
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_validate_refuses_what_run_refuses(tmp_path: Path, case: str) -> None:
    manifest, code = REFUSALS[case](tmp_path)
    before = _tree(tmp_path)
    v = cli("validate", manifest)
    d = cli("run", "--dry-run", manifest)
    assert _tree(tmp_path) == before  # created nothing: no output dir, lock, listing
    assert (v.returncode, d.returncode) == (code, code), v.stderr + d.stderr
    assert v.stderr == d.stderr and v.stderr.startswith("error: ") and v.stdout == ""
    message = v.stderr.strip().removeprefix("error: ")
    r = cli("run", manifest, "--no-progress")
    assert r.returncode == code, r.stderr
    assert message in r.stderr  # run's own line (a worker's start-up failure is wrapped in a summary)
    assert not (tmp_path / "pwned").exists()


# -- what is legitimate: warnings, exit 0 -----------------------------------------------------------


def test_glob_matching_nothing_warns(tmp_path: Path) -> None:
    m = tiny_manifest(tmp_path, ["incoming/*.jpg"])
    before = _tree(tmp_path)
    v = cli("validate", m)
    d = cli("run", "--dry-run", m)
    assert v.returncode == d.returncode == 0, v.stderr
    assert v.stdout == d.stdout
    assert "warning: dataset.paths[0] 'incoming/*.jpg' matches nothing now (a quiet night?)" in v.stdout
    assert "0 images in 0 units" in v.stdout
    assert _tree(tmp_path) == before


def test_good_manifest_counts_and_writes_nothing(tmp_path: Path) -> None:
    m = _job(tmp_path, 25)
    before = _tree(tmp_path)
    v = cli("validate", m)
    d = cli("run", "--dry-run", m)
    assert v.returncode == d.returncode == 0, v.stderr
    assert v.stdout == d.stdout
    lines = v.stdout.splitlines()
    assert lines[0] == f"ok: job 'test' -> {tmp_path / 'out'}"
    assert f"  output: new: run creates it (in {tmp_path})" in lines
    assert "  listing: 25 images in 3 units (unit_size 10) from 1 dataset path (listed now, not saved)" in lines
    assert "warning" not in v.stdout
    assert _tree(tmp_path) == before and not (tmp_path / "out").exists()


def test_empty_output_dir_stays_empty(tmp_path: Path) -> None:
    m = _job(tmp_path)
    (tmp_path / "out").mkdir()
    v = cli("validate", m)
    assert v.returncode == 0, v.stderr
    assert "  output: exists, empty" in v.stdout
    assert list((tmp_path / "out").iterdir()) == []  # no .lock, no _listing.parquet


def test_rerun_resumes_the_snapshot(tmp_path: Path) -> None:
    m = _job(tmp_path, 25)
    r = cli("run", m, "--no-progress")
    assert r.returncode == 0, r.stderr
    (tmp_path / "out" / "part-000002.parquet").unlink()  # as if the run had stopped before the last unit
    make_images(tmp_path / "imgs", 3, prefix="new")  # not in the snapshot: the rerun does not see them
    before = _tree(tmp_path)
    v = cli("validate", m)
    assert v.returncode == 0, v.stderr
    assert (
        "  listing: 25 images in 3 units (unit_size 10), from the listing snapshot already in the output: "
        "a rerun resumes it; 2/3 units committed (1 to do)"
    ) in v.stdout.splitlines()
    assert _tree(tmp_path) == before


def test_locked_output_warns(tmp_path: Path) -> None:
    m = _job(tmp_path)
    r = cli("run", m, "--no-progress")
    assert r.returncode == 0, r.stderr
    fd = os.open(tmp_path / "out" / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": 4242, "host": "elsewhere", "started": "tonight"}).encode(), 0)
        v = cli("validate", m)
        assert v.returncode == 0, v.stderr
        assert (
            f"warning: another run is working on {tmp_path / 'out'} now (pid 4242 on elsewhere, since tonight): "
            "run would exit 5 until it ends"
        ) in v.stdout
        assert cli("run", m, "--no-progress").returncode == 5
    finally:
        os.close(fd)
    assert "warning" not in cli("validate", m).stdout  # the lock is free again
