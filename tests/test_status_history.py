"""`status` tells a running job from a stopped, copied, complete or just-starting one (through the
CLI), and `_summary.json` keeps every run's figures: resumes, reruns with nothing to do, `finalize`,
killed runs and concurrent shards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import PLUGINS, cli, make_images, tiny_manifest, use_test_backend, wait_for

from ascend_batch.runner.lock import JobLock, held_locks
from ascend_batch.runner.summary import STATES, live_status


def start(manifest: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ascend_batch", "run", str(manifest), "--no-progress", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **PLUGINS},
    )


def parts(out: Path) -> int:
    return len(list(out.glob("part-*.parquet")))


def status(out: Path) -> str:
    r = cli("status", out, env=PLUGINS)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout


def status_json(out: Path) -> dict:
    r = cli("status", out, "--json", env=PLUGINS)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture()
def slow_job(tmp_path: Path) -> Path:
    """300 images in 60 units, 0.1 s more per batch: ~15 s on one worker."""
    make_images(tmp_path / "imgs", 300)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=5)
    use_test_backend(m, "SlowBackend")
    return m


def test_running_stopped_and_copied(slow_job: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start(slow_job)
    try:
        assert wait_for(lambda: parts(out) >= 20, 90)  # 4 s of commits: more than MIN_RATE_SPAN
        text = status(out)
        first = text.splitlines()[0]
        assert f"running (pid {proc.pid} on {socket.gethostname()}, since " in first, text
        assert "img/s (this run:" in text and ", eta " in text, text
        data = status_json(out)
        assert data["state"] == "running"
        assert [(h["pid"], h["host"], h["shard"]) for h in data["holders"]] == [(proc.pid, socket.gethostname(), None)]
        run = data["current_run"]
        assert 1 < run["images_per_second"] < 500, run  # a sane rate: ~25 img/s here
        assert run["eta_seconds"] is not None and 0 < run["eta_seconds"] < 120
        assert data["eta_seconds"] == run["eta_seconds"]
        assert run["images_remaining"] == 300 - data["images"]["processed"]
        assert not any(out.glob(".lock-shard-*")), "status must not create lock files"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 130

    text = status(out)
    assert text.splitlines()[0].endswith(": stopped: rerun to resume"), text
    assert "eta" not in text and "img/s (this run" not in text
    assert "interrupted (exit 130)" in text  # the last run's line
    data = status_json(out)
    assert data["state"] == "stopped" and data["holders"] == []
    assert data["eta_seconds"] is None and data["current_run"]["images_per_second"] is None
    assert data["last_run"]["outcome"] == "interrupted"

    # a copy (new, near-identical file times): stopped, and no absurd rate from the copy's times
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, copy_function=shutil.copy)
    text = status(copy)
    assert text.splitlines()[0].endswith(": stopped: rerun to resume") and "img/s" not in text.split("last run")[0]
    before = status_json(copy)["images"]["processed"]

    # resuming the copy: the rate is measured on this run's commits only
    proc = start(slow_job, "--output", str(copy))
    try:
        assert wait_for(lambda: parts(copy) >= before // 5 + 6, 90)
        data = status_json(copy)
        assert data["state"] == "running", data
        run = data["current_run"]
        assert run["images_committed"] == data["images"]["processed"] - before
        assert run["images_per_second"] is None or 1 < run["images_per_second"] < 500, run
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


def test_complete_unverified_and_too_many_errors(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 12)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=5)
    out = tmp_path / "out"
    assert cli("run", m, "--no-progress").returncode == 0
    text = status(out)
    assert text.splitlines()[0] == f"job 'test' in {out}: complete (verified: _SUCCESS)"
    assert "last run: " in text and "ok (exit 0)" in text
    (out / "_SUCCESS").unlink()
    assert status(out).splitlines()[0].endswith("complete, not verified (run finalize)")
    assert status_json(out)["state"] == "unverified"
    assert cli("finalize", out).returncode == 0
    assert status_json(out)["state"] == "complete"

    for i in range(3):
        (tmp_path / "imgs" / f"broken{i}.jpg").write_bytes(b"not a jpeg")
    m.write_text(m.read_text().replace('output = "out"', 'output = "out2"\nmax_error_fraction = 0.1'))
    r = cli("run", m, "--no-progress")
    assert r.returncode == 6, r.stderr
    data = status_json(tmp_path / "out2")
    assert data["state"] == "too_many_errors" and "max_error_fraction" in data["state_text"]


def test_first_moments_never_fail(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = cli("status", out)  # the run has not created its directory yet
    assert r.returncode == 0 and "not started" in r.stdout, r.stderr
    out.mkdir()
    assert "not started" in status(out)
    assert not any(out.iterdir()), "status must never create a lock file"

    # a run holds the lock and is listing the dataset: no _job.json, a listing temp file
    with JobLock(out):
        (out / f".tmp-_listing.parquet~{socket.gethostname()}~{os.getpid()}~0123abcd").write_bytes(b"PAR1")
        text = status(out)
        assert text.startswith(f"{out}: starting (pid {os.getpid()} on {socket.gethostname()}, since "), text
        assert "listing" in text
        data = status_json(out)
        assert data["state"] == "starting" and data["holders"][0]["pid"] == os.getpid()
        assert held_locks(out)[0].pid == os.getpid()
    assert held_locks(out) == []  # released: the probe saw it free and left it free
    assert "stopped before the job was recorded" in status(out)

    (out / "notes.txt").write_text("mine")  # a folder that is not a job output: an error, no traceback
    r = cli("status", out)
    assert r.returncode == 4 and "not an ascend-batch output" in r.stderr and "Traceback" not in r.stderr


def test_status_polled_from_the_first_moment_of_a_run(slow_job: Path, tmp_path: Path) -> None:
    """Status read continuously while a job starts, commits and ends: it never fails, it never
    stops the run from taking its lock, and it says "starting", "running", then "complete"."""
    out = tmp_path / "out"
    seen: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                live = live_status(out)
                if not seen or seen[-1] != live.state:
                    seen.append(live.state)
            except BaseException as exc:  # any failure is the finding
                failures.append(exc)
            time.sleep(0.005)

    slow_job.write_text(slow_job.read_text().replace('"crashy_backend:SlowBackend"', '"onnxruntime"'))
    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        proc = start(slow_job)
        cli_states = set()
        while proc.poll() is None:
            cli_states.add(status_json(out)["state"])
        _, stderr = proc.communicate()
    finally:
        stop.set()
        thread.join(10)
    assert proc.returncode == 0, stderr
    assert not failures, failures[:3]
    assert set(seen) <= set(STATES) and cli_states <= set(STATES)
    assert seen[0] == "not_started" and seen[-1] == "complete", seen
    assert "running" in seen, seen
    assert status_json(out)["state"] == "complete"


# -- _summary.json keeps every run ----------------------------------------------------------------


def summary(out: Path) -> dict:
    return json.loads((out / "_summary.json").read_text())


def test_summary_keeps_every_run(slow_job: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start(slow_job)
    assert wait_for(lambda: parts(out) >= 4, 90)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    first = summary(out)["runs"]
    assert len(first) == 1 and first[0]["outcome"] == "interrupted" and first[0]["exit_code"] == 130

    proc = start(slow_job)  # killed outright: it leaves no record, its committed rows still count
    assert wait_for(lambda: parts(out) >= first[0]["images_committed"] // 5 + 3, 90)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)

    r = cli("run", slow_job, "--no-progress", env=PLUGINS)  # the resume that completes the job
    assert r.returncode == 0, r.stderr
    r = cli("run", slow_job, "--no-progress", env=PLUGINS)  # nothing to do
    assert r.returncode == 0, r.stderr
    s = summary(out)
    runs = s["runs"]
    assert [r["outcome"] for r in runs] == ["interrupted", None, "ok", "ok"], runs
    assert [r["recorded"] for r in runs] == [True, False, True, True]
    assert runs[0]["run_id"] == first[0]["run_id"] and runs[0]["wall_seconds"] == first[0]["wall_seconds"]
    assert runs[3]["images"] == 0 and runs[3]["units_todo"] == 0
    assert sum(r["images_committed"] for r in runs) == 300
    for r in (runs[0], runs[2]):
        assert r["images"] > 0 and r["images_per_second"] > 0 and r["wall_seconds"] > 0
        assert {"read", "decode", "infer", "write"} <= set(r["stage_seconds"])
        assert r["decoded_on"].get("cpu", 0) > 0 and r["worker_deaths"] == 0
        assert r["started"] <= r["ended"] and r["host"] == socket.gethostname()
    assert s["run"]["run_id"] == runs[3]["run_id"]  # the latest run, as before `runs` existed
    t = s["totals"]
    assert t["runs"] == 3 and t["unrecorded_runs"] == 1 and t["outcomes"] == {"interrupted": 1, "ok": 2}
    assert t["images"] == runs[0]["images"] + runs[2]["images"]
    assert s["images"]["processed"] == 300 and s["verified"]["success"] is True

    r = cli("finalize", out)
    assert r.returncode == 0, r.stderr
    after = summary(out)
    assert after["runs"] == runs and after["totals"] == t and after["verified"]["by"] == "finalize"
    assert len(list((out / "_runs").glob("*.json"))) == 3

    # a summary written by an earlier version (one "run", no _runs/) loses nothing either
    shutil.rmtree(out / "_runs")
    legacy = {**after, "runs": [], "run": {k: v for k, v in runs[0].items() if k not in ("recorded",)}}
    (out / "_summary.json").write_text(json.dumps(legacy))
    assert cli("finalize", out).returncode == 0
    assert [r["run_id"] for r in summary(out)["runs"] if r["recorded"]] == [runs[0]["run_id"]]

    r = cli("run", slow_job, "--no-progress", "--restart", env=PLUGINS)  # --restart starts the history over
    assert r.returncode == 0, r.stderr
    assert len(summary(out)["runs"]) == 1


def test_shards_keep_each_others_records(slow_job: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    procs = [start(slow_job, "--shard", f"{k}/2") for k in range(2)]
    try:
        assert wait_for(lambda: parts(out) >= 6, 90)
        data = status_json(out)
        if all(p.poll() is None for p in procs):
            assert data["state"] == "running"
            assert sorted(tuple(h["shard"]) for h in data["holders"]) == [(0, 2), (1, 2)]
            assert "shard 0/2: pid" in data["state_text"] and "shard 1/2: pid" in data["state_text"]
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], results
    assert not (out / "_SUCCESS").exists()
    assert status_json(out)["state"] == "unverified"
    r = cli("finalize", out)
    assert r.returncode == 0, r.stderr
    s = summary(out)
    assert sorted(tuple(r["shard"]) for r in s["runs"]) == [(0, 2), (1, 2)]
    assert all(r["recorded"] and r["outcome"] == "ok" for r in s["runs"])
    assert sum(r["images"] for r in s["runs"]) == 300 == s["totals"]["images"]
    assert s["totals"]["runs"] == 2
