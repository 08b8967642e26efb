"""The stall watchdog (runtime.stall_timeout) through the real CLI: a worker that stops answering (here
SIGSTOP, as one stuck in a device call or a hung NFS read) is killed and handled as a crash, so the job
ends (never hangs), every image exactly once, and no image is blamed for a stall without evidence.
Without the watchdog each of these runs hangs until the subprocess timeout."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import PLUGINS, cli, make_images, tiny_manifest, use_test_backend

from ascend_batch.errors import EXIT_OK, EXIT_STARTUP
from ascend_batch.runner import watchdog

# small enough for a quick test; stall_timeout must exceed dataset.decode_timeout
FAST = "stall_timeout = 2"
FAST_DECODE = "decode_timeout = 1.0"
LIMIT = 60  # seconds: far more than any of these runs needs, far less than forever


def run(manifest: Path, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    t0 = time.monotonic()
    r = cli("run", manifest, "--no-progress", env={**PLUGINS, **(env or {})}, timeout=LIMIT)
    return r.returncode, r.stderr, time.monotonic() - t0


def test_a_worker_that_stops_once_is_killed_and_its_unit_redone(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 60, seed=11)
    m = tiny_manifest(
        tmp_path,
        tmp_path / "imgs",
        devices='["cpu:0", "cpu:1"]',
        unit_size=10,
        extra_runtime=FAST,
        extra_dataset=FAST_DECODE,
    )
    use_test_backend(m, "HangOnceBackend")
    marker = tmp_path / "hung-once"
    code, stderr, _ = run(m, {"ASCEND_BATCH_TEST_HANG_MARKER": str(marker)})
    assert marker.exists()  # a worker did stop
    assert code == EXIT_OK, stderr
    assert "sent nothing for 2 s while on unit " in stderr
    assert "(runtime.stall_timeout): killed, handled as a crash" in stderr
    out = tmp_path / "out"
    df = pd.read_parquet(out)
    assert sorted(df["image_id"]) == [f"img{i:05d}.jpg" for i in range(60)] and df["image_id"].is_unique
    assert (df["status"] == "ok").all()  # a stall is never an image's error by itself
    assert (out / "_SUCCESS").exists()
    assert json.loads((out / "_summary.json").read_text())["run"]["worker_deaths"] == 1
    # a runtime setting: another value reruns the same job (nothing left to do), never exit 4
    m.write_text(m.read_text().replace(FAST, "stall_timeout = 30"))
    code, stderr, _ = run(m)
    assert code == EXIT_OK, stderr


def test_a_worker_that_stops_on_every_try_stops_the_job_and_blames_no_image(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 1, seed=12)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", extra_runtime=f"{FAST}\nmax_retries = 1", extra_dataset=FAST_DECODE)
    use_test_backend(m, "HangingBackend")
    code, stderr, _ = run(m)
    # as for a worker dying on every try: nothing says the device works, so no image is blamed
    assert code == EXIT_STARTUP, stderr
    assert stderr.count("sent nothing for 2 s while on unit 0 [0, 1) (runtime.stall_timeout): killed") == 2
    assert "crash: worker on cpu:0 sent nothing for 2 s (runtime.stall_timeout) and was killed" in stderr
    assert "none is blamed" in stderr
    out = tmp_path / "out"
    assert not (out / "_SUCCESS").exists() and not list(out.glob("part-*.parquet"))


def test_a_worker_that_stops_while_loading_its_model_gives_the_device_up(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 4, seed=13)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", extra_runtime=f"{FAST}\nmax_retries = 0", extra_dataset=FAST_DECODE)
    use_test_backend(m, "HangsOnOpenBackend")
    code, stderr, _ = run(m)
    assert code == EXIT_STARTUP, stderr
    assert "its model loading (runtime.stall_timeout): killed, handled as a death while starting" in stderr
    assert "giving up on device cpu:0: worker sent nothing for 2 s (runtime.stall_timeout) and was killed" in stderr
    assert not list((tmp_path / "out").glob("part-*.parquet"))


def test_a_long_run_of_decode_timeouts_is_not_a_stall(tmp_path: Path) -> None:
    # 10 decodes of 0.5 s each and no batch to infer: 5 s without a Progress, more than stall_timeout;
    # the worker's heartbeat says it is busy, so the images become 'timeout' rows, not a crash
    make_images(tmp_path / "imgs", 10, seed=14)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", extra_runtime=FAST, extra_dataset="decode_timeout = 0.5")
    use_test_backend(m, "SlowDecodeBackend")
    code, stderr, _ = run(m)
    assert code == EXIT_OK, stderr
    assert "sent nothing" not in stderr
    df = pd.read_parquet(tmp_path / "out")
    assert len(df) == 10 and (df["status"] == "error").all()
    assert df["error"].str.startswith("timeout").all()


def test_heartbeats_come_at_most_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 1.0, 2.0, 5.5, 6.0, 12.0, 12.1])
    monkeypatch.setattr(watchdog.time, "monotonic", lambda: next(clock))
    beats: list[int] = []
    got = list(watchdog.heartbeats(range(6), lambda: beats.append(len(beats)), every=5.0))
    assert got == list(range(6)) and len(beats) == 2  # at 5.5 and at 12.0
    assert watchdog.heartbeat_interval(600) == 5.0 and watchdog.heartbeat_interval(2) == 0.5
