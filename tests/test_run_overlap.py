"""Runs of one job never work on the same units at once: a whole-job run and any shard run, or shard
runs of different counts that share units, refuse each other (exit 5); disjoint shards run side by side.

Another process holds a run's lock (the runner's own ``JobLock``), as a running ``run`` would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import REPO, cli, make_images, tiny_manifest, wait_for

from ascend_batch.errors import EXIT_LOCKED
from ascend_batch.runner.lock import held_locks


@contextmanager
def holding(out: Path, shard: tuple[int, int] | None) -> Iterator[None]:
    """A process holding the lock a run of ``shard`` (None: the whole job) holds, until the block ends."""
    code = (
        "import sys, time; from pathlib import Path; from ascend_batch.runner.lock import JobLock; "
        f"lock = JobLock(Path({str(out)!r}), {shard!r}).acquire(); print('held', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"held"
        assert wait_for(lambda: any(h.shard == shard for h in held_locks(out)), timeout=10)
        yield
    finally:
        proc.communicate(timeout=30)  # closing stdin ends it


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("overlap")
    make_images(tmp / "img", 12)
    manifest = tiny_manifest(tmp, tmp / "img", output=str(tmp / "out"), unit_size=2)
    r = cli("run", manifest, "--shard", "1/2", "--no-progress")  # makes the job's directory
    assert r.returncode == 0, r.stderr
    return manifest


@pytest.mark.parametrize(
    ("held", "run", "refused"),
    [
        ((0, 2), ["--shard", "0/3"], True),  # units 0, 6, ... in both
        ((0, 2), ["--shard", "1/3"], True),  # units 4, 10, ...
        ((0, 2), [], True),  # the whole job
        ((0, 2), ["--shard", "1/2"], False),  # disjoint: odd units
        ((0, 2), ["--shard", "1/4"], False),  # odd units only
        (None, ["--shard", "1/2"], True),
    ],
)
def test_runs_that_share_units_refuse_each_other(
    job: Path, held: tuple[int, int] | None, run: list[str], refused: bool
) -> None:
    out = job.parent / "out"
    with holding(out, held):
        r = cli("run", job, *run, "--no-progress")
    if refused:
        assert r.returncode == EXIT_LOCKED, r.stderr
        what = f"shard {held[0]}/{held[1]}" if held else "a whole-job run"
        assert f"{what} of this job is running in {out}" in r.stderr and "same units" in r.stderr, r.stderr
    else:
        assert r.returncode == 0, r.stderr
