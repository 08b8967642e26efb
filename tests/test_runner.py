"""The sharded runner through the real CLI: exactly-once output, resume after kill -9 at random
moments, worker crashes, poison-image bisection, locks, signals, status."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import PLUGINS, children, cli, make_images, tiny_manifest, use_test_backend, wait_for
from PIL import Image


def start(manifest: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ascend_batch",
            "run",
            str(manifest),
            "--no-progress",
            "--log-interval",
            "0.5",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **PLUGINS, **(env or {})},
    )


def session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # session id, state
            pids.append(int(entry))
    return pids


def results(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values("image_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A dataset of 300 images and the result of one uninterrupted 2-worker run."""
    tmp = tmp_path_factory.mktemp("ref")
    make_images(tmp / "imgs", 300, seed=1)
    m = tiny_manifest(tmp, tmp / "imgs", devices='["cpu:0", "cpu:1"]', unit_size=10)
    r = cli("run", m, "--no-progress")
    assert r.returncode == 0, r.stderr
    return tmp / "imgs", results(tmp / "out")


def test_uninterrupted_run_layout(reference: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    _, df = reference
    assert len(df) == 300 and df["image_id"].is_unique
    assert (df["status"] == "ok").all()
    assert set(df["device"]) == {"cpu:0", "cpu:1"}  # both workers took units


def test_kill9_at_random_moments_then_resume_exactly_once(reference: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    images, ref = reference
    m = tiny_manifest(tmp_path, images, devices='["cpu:0", "cpu:1"]', unit_size=10)
    out = tmp_path / "out"
    rng = random.Random(1234)
    kills = 0
    for _attempt in range(40):
        proc = start(m)
        if kills < 5:
            # kill once some units are committed but before the end (or at a random early moment)
            target = rng.randint(1, 25)
            deadline = time.monotonic() + rng.uniform(1.0, 6.0)
            while time.monotonic() < deadline and proc.poll() is None:
                if len(list(out.glob("part-*.parquet"))) >= target:
                    break
                time.sleep(0.02)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                assert wait_for(lambda p=proc: not session_pids(p.pid), 10), "processes survived kill -9"
                if out.exists() and list(out.glob("part-*.parquet")):
                    partial = pd.read_parquet(out)  # readers never see partial parts
                    assert partial["image_id"].is_unique
                continue
        _stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        break
    assert kills >= 5
    got = results(out)
    assert len(got) == 300 and got["image_id"].is_unique
    pd.testing.assert_series_equal(got["image_id"], ref["image_id"])
    assert [list(x) for x in got["top5_index"]] == [list(x) for x in ref["top5_index"]]
    assert (out / "_SUCCESS").exists()
    assert not list(out.glob(".tmp-*")) or all(
        not p.name.startswith("part-") for p in out.iterdir() if p.name.startswith(".tmp")
    )


def test_killing_one_worker_requeues_its_unit(reference: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    images, ref = reference
    m = tiny_manifest(tmp_path, images, devices='["cpu:0", "cpu:1"]', unit_size=10)
    proc = start(m)
    assert wait_for(lambda: len(children(proc.pid)) >= 2, 30)
    assert wait_for(lambda: len(list((tmp_path / "out").glob("part-*.parquet"))) >= 1, 60)
    victim = children(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    got = results(tmp_path / "out")
    assert len(got) == 300 and got["image_id"].is_unique
    assert [list(x) for x in got["top5_index"]] == [list(x) for x in ref["top5_index"]]
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    if summary["run"]["worker_deaths"] == 0:  # the victim may have been between units: still a restart
        assert "SIGKILL" in stderr or summary["run"]["images"] == 300


def test_workers_never_outlive_the_supervisor(reference: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    images, _ = reference
    m = tiny_manifest(tmp_path, images, devices='["cpu:0", "cpu:1"]', unit_size=10)
    proc = start(m)
    assert wait_for(lambda: len(children(proc.pid)) >= 2, 30)
    workers = children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)  # the supervisor alone
    proc.wait()

    def gone() -> bool:
        return all(
            not Path(f"/proc/{w}").exists() or "Z" in Path(f"/proc/{w}/stat").read_text().split()[2] for w in workers
        )

    assert wait_for(gone, 5), "workers kept running after the supervisor died"


def test_poison_image_is_bisected_to_one_error_row(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 40, seed=2)
    Image.new("RGB", (40, 40), (255, 0, 255)).save(tmp_path / "imgs" / "img00017-poison.png")
    m = tiny_manifest(tmp_path, tmp_path / "imgs", devices='["cpu:0"]', unit_size=20, extra_runtime="max_retries = 1")
    use_test_backend(m, "CrashyBackend")
    r = cli("run", m, "--no-progress", env=PLUGINS, timeout=240)
    assert r.returncode == 0, r.stderr
    df = results(tmp_path / "out")
    assert len(df) == 41 and df["image_id"].is_unique
    bad = df[df["status"] == "error"]
    assert list(bad["image_id"]) == ["img00017-poison.png"]
    assert bad["error"].iloc[0].startswith("crash: worker on cpu:0 killed by SIGSEGV")
    assert (df[df["status"] == "ok"]["top1_label"].notna()).all()
    assert not (tmp_path / "out" / "_pieces").exists() or not list((tmp_path / "out" / "_pieces").iterdir())


def test_worker_that_dies_while_starting_is_given_up_after_retries(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 4, seed=3)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", devices='["cpu:0"]', extra_runtime="max_retries = 2")
    use_test_backend(m, "DiesOnOpenBackend")
    r = cli("run", m, "--no-progress", env=PLUGINS, timeout=120)
    assert r.returncode == 3, r.stderr
    assert "giving up on device cpu:0: worker killed by SIGKILL while starting" in r.stderr
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_sigterm_interrupts_resumably(reference: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    images, _ = reference
    m = tiny_manifest(tmp_path, images, devices='["cpu:0"]', unit_size=5)
    use_test_backend(m, "SlowBackend")
    proc = start(m)  # 60 units at 0.1 s each: still running when the signal comes
    assert wait_for(lambda: len(list((tmp_path / "out").glob("part-*.parquet"))) >= 2, 60)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "rerun the same command to resume" in stderr
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    assert wait_for(lambda: not session_pids(proc.pid), 10)
    r = cli("run", m, "--no-progress", env=PLUGINS)
    assert r.returncode == 0, r.stderr
    assert len(results(tmp_path / "out")) == 300


def test_second_run_refuses_while_first_holds_the_lock(reference: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    images, _ = reference
    m = tiny_manifest(tmp_path, images, devices='["cpu:0"]', unit_size=5)
    use_test_backend(m, "SlowBackend")
    proc = start(m)  # 300 images at 0.1 s per batch: still running long after this
    try:
        assert wait_for(lambda: len(list((tmp_path / "out").glob("part-*.parquet"))) >= 1, 60)
        r = cli("run", m, "--no-progress", env=PLUGINS)
        assert r.returncode == 5, r.stderr
        assert f"pid {proc.pid}" in r.stderr and "host" in r.stderr and "started" in r.stderr
        assert proc.poll() is None  # the first run was not disturbed
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_stale_lock_is_taken_over(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 6)
    m = tiny_manifest(tmp_path, tmp_path / "imgs")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": 999999, "host": "gone", "started": "yesterday"}))
    r = cli("run", m, "--no-progress")
    assert r.returncode == 0, r.stderr


def test_resume_skips_committed_and_refuses_incompatible(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 25)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=10)
    assert cli("run", m, "--no-progress").returncode == 0
    out = tmp_path / "out"
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    (out / "part-000001.parquet").unlink()
    make_images(tmp_path / "imgs", 30, seed=9, prefix="new")  # added after the snapshot
    r = cli("run", m, "--no-progress")
    assert r.returncode == 0, r.stderr
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert after["part-000000.parquet"] == before["part-000000.parquet"]  # never rewritten
    assert len(pd.read_parquet(out)) == 25  # the snapshot holds: new files wait for the next job
    changed = m.read_text().replace("resize = 36", "resize = 40")
    m.write_text(changed)
    r = cli("run", m, "--no-progress")
    assert r.returncode == 4
    assert "--restart" in r.stderr and "different job" in r.stderr
    r = cli("run", m, "--no-progress", "--restart")
    assert r.returncode == 0, r.stderr
    assert len(pd.read_parquet(out)) == 55


def test_refuses_foreign_non_empty_output(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 3)
    m = tiny_manifest(tmp_path, tmp_path / "imgs")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.csv").write_text("x")
    r = cli("run", m, "--no-progress")
    assert r.returncode == 4 and "not an ascend-batch output" in r.stderr
    assert (tmp_path / "out" / "precious.csv").exists()


def test_status_from_files_alone(reference: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    images, _ = reference
    m = tiny_manifest(tmp_path, images, unit_size=10)
    out = tmp_path / "out"
    proc = start(m)
    assert wait_for(lambda: len(list(out.glob("part-*.parquet"))) >= 3, 60)
    mid = cli("status", out)
    assert mid.returncode == 0, mid.stderr
    assert "units:" in mid.stdout and "/30 committed" in mid.stdout
    proc.communicate(timeout=120)
    r = cli("status", out, "--json")
    data = json.loads(r.stdout)
    assert data["complete"] is True
    assert data["images"] == {"total": 300, "processed": 300, "ok": 300, "error": 0}
    summary = json.loads((out / "_summary.json").read_text())
    stages = summary["stage_seconds"]
    assert set(stages) >= {"read", "decode", "preprocess", "infer", "write", "wait_decode", "wait_model", "wait_task"}
    assert all(stages[k] > 0 for k in ("decode", "preprocess", "infer"))
    assert summary["run"]["images_per_second"] > 0
