"""jobs/ascend-batch-cron.sh: flock so nightly runs never overlap (the second exits 75 at once),
a dated log file per run, {date} in the command, the command's exit code passed through."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from helpers import REPO, make_images, tiny_manifest

WRAPPER = REPO / "jobs" / "ascend-batch-cron.sh"
EXIT_LOCKED = 75
EXIT_USAGE = 64


def wrapper(*args: str | os.PathLike, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", str(WRAPPER), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def sleeper(seconds: float, code: int) -> list[str]:
    """A command that runs ``seconds`` and exits ``code`` (130 on SIGTERM, like the runner)."""
    prog = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(130)); "
        f"print('work' + 'ing', flush=True); time.sleep({seconds}); sys.exit({code})"  # 'working' once it runs
    )
    return [sys.executable, "-c", prog]


def test_overlapping_runs_second_exits_at_once(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    first = wrapper("--name", "nightly", "--log-dir", logs, "--", *sleeper(4, 3))
    deadline = time.monotonic() + 30
    while not (logs / "nightly.lock").exists() or "pid" not in (logs / "nightly.lock").read_text():
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.05)
    t0 = time.monotonic()
    second = wrapper("--name", "nightly", "--log-dir", logs, "--", "true")
    out, err = second.communicate(timeout=30)
    took = time.monotonic() - t0
    assert second.returncode == EXIT_LOCKED, (out, err)
    assert took < 2.0, took
    assert "'nightly' is still running" in err and f"pid {first.pid}" in err and "did not start" in err
    assert first.wait(timeout=60) == 3  # the first run's own exit code passes through
    assert "failed with exit code 3" in first.stderr.read()  # type: ignore[union-attr]
    # the lock is free again: the next night runs
    third = wrapper("--name", "nightly", "--log-dir", logs, "--", "true")
    third.communicate(timeout=30)
    assert third.returncode == 0
    names = sorted(p.name for p in logs.glob("nightly-*.log") if not p.is_symlink())
    assert names and all(len(n) == len("nightly-2026-11-24_013000.log") for n in names)
    text = "\n".join(p.read_text() for p in logs.glob("nightly-2*.log"))
    assert "exited with code 3" in text and "working" in text and "did not start (exit 75)" in text
    assert (logs / "nightly-latest.log").resolve().name in names


def test_date_placeholder_log_and_real_run(tmp_path: Path) -> None:
    """The documented crontab line: ascend-batch run into results/date={date}."""
    make_images(tmp_path / "img", 12)
    manifest = tiny_manifest(tmp_path, tmp_path / "img", unit_size=5)
    logs = tmp_path / "logs"
    results = tmp_path / "results"
    p = wrapper("--name", "n", "--log-dir", logs, "--date", "2026-11-24", "--",
                sys.executable, "-m", "ascend_batch", "run", manifest, "--output", f"{results}/date={{date}}",
                "--no-progress")  # fmt: skip
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, (out, err, [x.read_text() for x in logs.glob("n-2*.log")])
    assert out == "" and err == ""  # quiet on success: cron mails nothing
    assert (results / "date=2026-11-24" / "_SUCCESS").exists()
    (log,) = logs.glob("n-2*.log")
    text = log.read_text()
    assert "job done: 12 images" in text and "exited with code 0" in text and "date=2026-11-24" in text
    df = pd.read_parquet(results)
    assert len(df) == 12 and set(df["date"].astype(str)) == {"2026-11-24"}


def test_exit_codes_and_sigterm(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    for args in ([], ["--", ], ["--bogus", "--", "true"]):  # fmt: skip
        p = wrapper("--log-dir", logs, *args)
        p.communicate(timeout=30)
        assert p.returncode == EXIT_USAGE, args
    p = wrapper("--log-dir", logs, "--", "sh", "-c", "exit 6")
    p.communicate(timeout=30)
    assert p.returncode == 6
    # stopping the wrapper stops the run the same way (the runner exits 130, resumable)
    p = wrapper("--log-dir", logs, "--name", "t", "--", *sleeper(60, 0))
    deadline = time.monotonic() + 30
    while "working" not in "".join(x.read_text() for x in logs.glob("t-2*.log")):
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=30)
    assert p.returncode == 130
