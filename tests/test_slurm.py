"""Slurm: generated sbatch scripts (quoting, the USR1 -> drain -> requeue logic) and, on a real
single-node Slurm (tests/slurm/slurm-up.sh), array jobs end to end: every image exactly once,
_SUCCESS from the finalize job, a failed task cancelling the finalize job and a resubmission of
only the missing shares, and a preempted task that requeues and completes.

Tests marked ``slurm`` skip when no cluster answers (a laptop), but fail under CI=true.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import cli, make_images, tiny_manifest
from PIL import Image

from ascend_batch.slurm import (
    JobFiles,
    SlurmOptions,
    SlurmUsageError,
    array_spec,
    missing_tasks,
    render_array_script,
    render_finalize_script,
    sbatch_quote,
)

REPO = Path(__file__).resolve().parents[1]
WAIT = 120.0  # seconds allowed for any one Slurm wait
# shell metacharacters for names and paths; the commands would touch $ASCEND_TEST_PWNED if ever run
EVIL = "$(touch $ASCEND_TEST_PWNED) 'single' \"double\" #hash 100% `touch $ASCEND_TEST_PWNED` ;x"


# -- helpers -----------------------------------------------------------------------------------
def slurm_problem() -> str | None:
    """Why no Slurm cluster can run jobs here, or None."""
    for tool in ("sbatch", "squeue", "scontrol", "scancel"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"scontrol/sinfo failed: {exc}"
    if "is UP" not in ping.stdout:
        answer = (ping.stdout + ping.stderr).strip().splitlines()
        return f"slurmctld does not answer: {answer[0] if answer else 'no output'}"
    states = nodes.stdout.split()
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states):
        return f"no usable node (sinfo: {states})"
    return None


@pytest.fixture(scope="module")
def slurm() -> Iterator[list[str]]:
    """Skips (or fails under CI=true) without a cluster; yields a list the test adds its job ids to,
    all of which are cancelled afterwards."""
    problem = slurm_problem()
    if problem is not None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"CI=true but no Slurm cluster: {problem}; start it with: bash tests/slurm/slurm-up.sh")
        pytest.skip(f"no Slurm cluster ({problem}); start one with: sudo bash tests/slurm/slurm-up.sh")
    jobs: list[str] = []
    yield jobs
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=60)


def states(*jobs: str) -> dict[str, str]:
    """``{job id or array task id: STATE}`` (finished jobs too)."""
    proc = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", ",".join(jobs), "-o", "%i %T"], capture_output=True, text=True, timeout=60
    )
    return dict(line.split() for line in proc.stdout.splitlines() if len(line.split()) == 2)


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "PREEMPTED"}


def wait_final(*jobs: str, timeout: float = WAIT) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        st = states(*jobs)
        if st and all(s in FINAL for s in st.values()) and all(any(k.split("_")[0] == j for k in st) for j in jobs):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs {jobs} not finished after {timeout:.0f} s: {st}")
        time.sleep(0.3)


def show_job(job: str) -> dict[str, str]:
    text = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=60).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def submit(manifest: Path, out: Path, jobs: list[str], *args: str) -> dict:
    r = cli("slurm", "submit", manifest, "--output", out, "--json", *args, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    sub = json.loads(r.stdout.splitlines()[0])
    jobs += [sub["array_job"], sub["finalize_job"]]
    return sub


def logs(out: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')}" for p in sorted((out / "_slurm/logs").glob("*")))


def parts(out: Path) -> dict[int, tuple[int, int]]:
    """unit -> (inode, mtime_ns) of its committed part file."""
    found = {}
    for p in out.glob("part-*.parquet"):
        st = p.stat()
        found[int(p.stem.split("-")[1])] = (st.st_ino, st.st_mtime_ns)
    return found


def assert_exactly_once(out: Path, expected_ids: set[str]) -> pd.DataFrame:
    df = pd.read_parquet(out)
    assert df["image_id"].is_unique, df["image_id"][df["image_id"].duplicated()].tolist()[:5]
    assert set(df["image_id"]) == expected_ids
    assert (df["status"] == "ok").all()
    return df


def heavy_images(folder: Path, n: int, distinct: int = 16, side: int = 384) -> set[str]:
    """``n`` files that take ~10 ms each to decode (noise PNGs), made fast as hard links of a few."""
    rng = np.random.default_rng(1)
    base = folder.parent / f"{folder.name}-base"
    base.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    srcs = []
    for i in range(distinct):
        p = base / f"b{i}.png"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(p, compress_level=1)
        srcs.append(p)
    for j in range(n):
        os.link(srcs[j % distinct], folder / f"h{j:05d}.png")
    return {f"h{j:05d}.png" for j in range(n)}


def sbatch_args(line: str) -> list[str]:
    """The arguments sbatch reads from an ``#SBATCH`` line (Slurm 22.05 rules, checked against the
    real sbatch in test_array_job_every_image_once): blanks separate, double or single quotes group,
    a backslash inside double quotes escapes the next character, an unquoted ``#`` ends the line."""
    args: list[str] = []
    cur: str | None = None
    quote = ""
    escape = False
    for ch in line[len("#SBATCH") :]:
        if escape:
            cur, escape = (cur or "") + ch, False
        elif quote:
            if ch == "\\" and quote == '"':
                escape = True
            elif ch == quote:
                quote = ""
            else:
                cur = (cur or "") + ch
        elif ch.isspace():
            if cur is not None:
                args.append(cur)
            cur = None
        elif ch == "#":
            break
        elif ch in "\"'":
            quote, cur = ch, cur or ""
        else:
            cur = (cur or "") + ch
    assert not quote and not escape, f"unbalanced quotes in {line!r}"
    return args + ([cur] if cur is not None else [])


def files_for(tmp: Path, out: Path | None = None, manifest: Path | None = None) -> JobFiles:
    return JobFiles(out=out or tmp / "out", manifest=manifest or tmp / "job.toml", python=sys.executable)


# -- scripts (no Slurm needed) -------------------------------------------------------------------
def test_sbatch_quote() -> None:
    assert sbatch_quote("gpu:2", "x") == "gpu:2"
    assert sbatch_quote('a "b" \\c #d', "x") == '"a \\"b\\" \\\\c #d"'
    with pytest.raises(SlurmUsageError, match="control character"):
        sbatch_quote("a\nb", "x")


def test_scripts_quote_hostile_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Names and paths with $(...), backticks, quotes, spaces, # and % reach the scripts as data:
    bash parses them, the shell variables hold them unchanged and nothing is executed."""
    marker = tmp_path / "pwned"
    monkeypatch.setenv("ASCEND_TEST_PWNED", str(marker))
    evil = EVIL
    out = tmp_path / f"out {evil}" / "res"
    manifest = tmp_path / f"m {evil}" / "job.toml"
    files = files_for(tmp_path, out, manifest)
    opts = SlurmOptions(shards=3, job_name=f"n {evil}", partition="debug", extra=(shlex.quote(f"--comment=c {evil}"),))
    for text in (render_array_script(files, opts), render_finalize_script(files, opts)):
        script = tmp_path / "s.sh"
        script.write_text(text)
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        # run only the variable assignments and print them back
        assigns = "\n".join(line for line in text.splitlines() if re.match(r"^(PYTHON|MANIFEST|OUT|SHARDS)=", line))
        shown = subprocess.run(
            ["bash", "-c", assigns + '\nprintf "%s\\n" "$OUT" "${MANIFEST:-}"'], capture_output=True, text=True
        )
        lines = shown.stdout.splitlines()
        assert lines[0] == str(out)
        if "MANIFEST=" in assigns:
            assert lines[1] == str(manifest)
        options = [a for line in text.splitlines() if line.startswith("#SBATCH ") for a in sbatch_args(line)]
        assert f"--job-name=n {evil}" in options or f"--job-name=n {evil}-finalize" in options, options
        if "MANIFEST=" in assigns:
            assert f"--comment=c {evil}" in options
            assert f"--output={str(out).replace('%', '%%')}/_slurm/logs/array-%A_%a.out" in options
    assert not marker.exists()
    assert "%%" in render_array_script(files, opts)  # '%' in the log directory is escaped for Slurm
    with pytest.raises(SlurmUsageError, match="backslash"):
        render_array_script(files_for(tmp_path, tmp_path / "a\\b"), opts)


def test_array_spec_and_options(tmp_path: Path) -> None:
    files = files_for(tmp_path)
    opts = SlurmOptions(
        shards=4, job_name="j", time="1:00:00", gres="gpu:2", cpus_per_task=8, mem="16G", account="acct",
        max_parallel=2, signal_time=90, extra=("--qos=high", "--constraint 'a100|h100'"),
    )  # fmt: skip
    text = render_array_script(files, opts)
    for line in (
        "#SBATCH --array=0-3%2", "#SBATCH --time=1:00:00", "#SBATCH --gres=gpu:2", "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=16G", "#SBATCH --account=acct", "#SBATCH --signal=B:USR1@90", "#SBATCH --requeue",
        "#SBATCH --qos=high", '#SBATCH --constraint "a100|h100"',
    ):  # fmt: skip
        assert line in text.splitlines(), line
    assert f"PYTHON={sys.executable}" in text
    assert '--shard "$TASK/$SHARDS"' in text
    assert array_spec(SlurmOptions(shards=5, job_name="j", tasks=(1, 3))) == "1,3"
    final = render_finalize_script(files, opts)
    assert "#SBATCH --kill-on-invalid-dep=yes" in final and "--gres" not in final and "#SBATCH --account=acct" in final
    no_rq = render_array_script(files, SlurmOptions(shards=2, job_name="j", requeue=False))
    assert "#SBATCH --requeue" not in no_rq and "#SBATCH --signal" not in no_rq
    with pytest.raises(SlurmUsageError):
        render_array_script(files, SlurmOptions(shards=2, job_name="j", extra=("qos=high",)))
    with pytest.raises(SlurmUsageError):
        render_array_script(files, SlurmOptions(shards=2, job_name="j", tasks=(2,)))


def test_dry_run_prints_and_writes_nothing(tmp_path: Path) -> None:
    make_images(tmp_path / "img", 3)
    manifest = tiny_manifest(tmp_path, tmp_path / "img")
    out = tmp_path / "never"
    r = cli("slurm", "submit", manifest, "--array", "3", "--output", out, "--dry-run", "--gres", "gpu:1")
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --array=0-2" in r.stdout and "#SBATCH --gres=gpu:1" in r.stdout
    assert "ascend_batch finalize" in r.stdout and "--dependency=afterok:" in r.stdout
    assert not out.exists()
    bad = cli("slurm", "submit", manifest, "--array", "3", "--dry-run", "--extra", "--comment=a\nb")
    assert bad.returncode == 2 and "control character" in bad.stderr


def test_submit_without_slurm_says_so(tmp_path: Path) -> None:
    make_images(tmp_path / "img", 3)
    manifest = tiny_manifest(tmp_path, tmp_path / "img")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    r = cli("slurm", "submit", manifest, "--array", "2", env={"PATH": str(empty)})
    assert r.returncode == 3 and "sbatch not found on PATH" in r.stderr
    assert not (tmp_path / "out" / "_slurm").exists()


def test_missing_tasks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert missing_tasks(out, 3) == (0, 1, 2)  # new job
    out.mkdir()
    (out / "_job.json").write_text(json.dumps({"n_units": 7, "n_items": 70}))
    for u in (0, 1, 3, 4, 6):  # unit % 3: 0,1,0,1,0 -> task 2 owns 2 and 5 (missing)
        (out / f"part-{u:06d}.parquet").write_bytes(b"")
    assert missing_tasks(out, 3) == (2,)
    (out / "part-000002.parquet").write_bytes(b"")
    (out / "part-000005.parquet").write_bytes(b"")
    assert missing_tasks(out, 3) == ()


def test_array_script_drains_and_requeues_on_usr1(tmp_path: Path) -> None:
    """The generated array script, run by bash as slurmstepd would (array env, fake scontrol):
    USR1 -> forwarded to the runner, which commits in-flight units and exits 130 -> the script
    requeues its own task; the 'requeued' run finishes the rest."""
    ids = heavy_images(tmp_path / "img", 360)
    manifest = tiny_manifest(tmp_path, tmp_path / "img", unit_size=10, batch_size=10)
    out = tmp_path / "out"
    files = files_for(tmp_path, out, manifest)
    from ascend_batch.slurm import write_scripts

    write_scripts(files, SlurmOptions(shards=2, job_name="t"))
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "scontrol.calls"
    (fake / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (fake / "scontrol").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "SLURM_ARRAY_JOB_ID": "99",
           "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "100"}  # fmt: skip
    log = tmp_path / "task.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(["bash", str(files.array_script)], stdout=f, stderr=subprocess.STDOUT, env=env)
    mine = {u for u in range(36) if u % 2 == 1}
    deadline = time.monotonic() + WAIT
    while not (set(parts(out)) & mine):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=WAIT) == 0, log.read_text()
    text = log.read_text()
    assert "USR1 received" in text and "runner exited with code 130" in text, text
    assert calls.read_text().split() == ["requeue", "99_1"]
    done = set(parts(out))
    assert done <= mine and mine - done, "the drain should stop the shard early"
    # the requeued task resumes: only the missing units run, nothing is redone
    before = parts(out)
    env["SLURM_RESTART_COUNT"] = "1"
    with open(log, "a") as f:
        assert subprocess.run(["bash", str(files.array_script)], stdout=f, stderr=subprocess.STDOUT, env=env,
                              timeout=WAIT).returncode == 0  # fmt: skip
    after = parts(out)
    assert set(after) == mine
    assert all(after[u] == before[u] for u in before)
    assert calls.read_text().split() == ["requeue", "99_1"]  # no second requeue
    df = pd.read_parquet(out)
    assert df["image_id"].is_unique and set(df["image_id"]) == {i for i in ids if int(i[1:6]) // 10 % 2 == 1}


# -- on a real Slurm ---------------------------------------------------------------------------
@pytest.mark.slurm
def test_array_job_every_image_once(tmp_path: Path, slurm: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """3-task array + finalize through `ascend-batch slurm submit --wait`, with a job name, manifest
    path and output path full of shell metacharacters: every image exactly once, _SUCCESS from the
    finalize job, nothing injected."""
    marker = tmp_path / "pwned"
    monkeypatch.setenv("ASCEND_TEST_PWNED", str(marker))
    evil = EVIL
    paths = make_images(tmp_path / "img", 95)
    base = tiny_manifest(tmp_path, tmp_path / "img", unit_size=8, batch_size=4)
    mdir = tmp_path / f"m {evil}"
    mdir.mkdir()
    manifest = mdir / "job.toml"
    shutil.copy(base, manifest)
    out = tmp_path / f"out {evil}" / "results"
    t0 = time.monotonic()
    r = cli("slurm", "submit", manifest, "--array", "3", "--output", out, "--job-name", f"n {evil}",
            "--extra", shlex.quote(f"--comment=c {evil}"), "--json", "--wait", timeout=WAIT + 60)  # fmt: skip
    sub = json.loads(r.stdout.splitlines()[0]) if r.stdout.startswith("{") else {}
    slurm += [sub.get("array_job", ""), sub.get("finalize_job", "")]
    assert r.returncode == 0, r.stdout + r.stderr + (logs(out) if out.exists() else "")
    st = states(sub["array_job"], sub["finalize_job"])
    assert st == {f"{sub['array_job']}_{k}": "COMPLETED" for k in range(3)} | {sub["finalize_job"]: "COMPLETED"}
    assert (out / "_SUCCESS").exists()
    assert_exactly_once(out, {p.name for p in paths})
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["complete"] is True and summary["images"]["processed"] == 95
    text = logs(out)
    assert "complete: 12/12 units" in text, text  # written by the finalize job
    assert {f"shard {k}/3" for k in range(3)} <= set(re.findall(r"shard \d/3", text))
    assert (out / "_slurm/array.sbatch").exists() and (out / "_slurm/finalize.sbatch").exists()

    # what Slurm recorded is exactly what was asked for (and what sbatch_args reads from the scripts)
    def recorded(job: str, field: str) -> str:
        cmd = ["squeue", "-h", "-t", "all", "-j", job, "-o", field]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.splitlines()[0]

    assert recorded(sub["array_job"], "%j") == f"n {evil}"
    assert recorded(sub["array_job"], "%k") == f"c {evil}"
    assert recorded(sub["finalize_job"], "%j") == f"n {evil}-finalize"
    script_args = [a for line in (out / "_slurm/array.sbatch").read_text().splitlines()
                   if line.startswith("#SBATCH ") for a in sbatch_args(line)]  # fmt: skip
    assert f"--job-name=n {evil}" in script_args and f"--comment=c {evil}" in script_args
    assert not marker.exists()
    print(f"array(3)+finalize end to end: {time.monotonic() - t0:.1f} s")


@pytest.mark.slurm
def test_failed_task_cancels_finalize_and_resubmit_completes_missing(tmp_path: Path, slurm: list[str]) -> None:
    """Task 1 fails (another process holds its shard's lock: the runner exits 5). The finalize job is
    cancelled, not left pending; --only-missing resubmits task 1 alone, which completes only its
    units, and the new finalize job writes _SUCCESS."""
    paths = make_images(tmp_path / "img", 60)
    manifest = tiny_manifest(tmp_path, tmp_path / "img", unit_size=5, batch_size=5)
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / ".lock-shard-1-of-3", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b'{"pid": "the test", "host": "here", "started": "now"}')
        r = cli("slurm", "submit", manifest, "--array", "3", "--output", out, "--json", "--wait", timeout=WAIT + 60)
        sub = json.loads(r.stdout.splitlines()[0])
        slurm += [sub["array_job"], sub["finalize_job"]]
        st = wait_final(sub["array_job"], sub["finalize_job"])
    finally:
        os.close(fd)
    a, f = sub["array_job"], sub["finalize_job"]
    assert r.returncode == 7, r.stdout + r.stderr  # --wait: incomplete
    assert f"array tasks not completed: {a}_1" in r.stderr and "--only-missing" in r.stderr
    assert st[f"{a}_0"] == "COMPLETED" and st[f"{a}_2"] == "COMPLETED", st
    assert st[f"{a}_1"] == "FAILED", st
    assert st[f] == "CANCELLED", st  # --kill-on-invalid-dep: never stuck in PENDING
    assert show_job(f).get("Reason") == "DependencyNeverSatisfied"
    assert "another run is already working" in logs(out)
    assert not (out / "_SUCCESS").exists()
    first = parts(out)
    assert set(first) == {u for u in range(12) if u % 3 != 1}

    sub2 = submit(manifest, out, slurm, "--array", "3", "--only-missing")
    assert sub2["tasks"] == [1]
    st2 = wait_final(sub2["array_job"], sub2["finalize_job"])
    assert st2 == {f"{sub2['array_job']}_1": "COMPLETED", sub2["finalize_job"]: "COMPLETED"}, st2
    assert (out / "_SUCCESS").exists()
    second = parts(out)
    assert set(second) == set(range(12))
    assert all(second[u] == first[u] for u in first), "committed units must not be redone"
    df = assert_exactly_once(out, {p.name for p in paths})
    assert df.groupby(df["unit"] % 3 == 1)["run_id"].nunique().to_dict() == {False: 2, True: 1}
    assert len((out / "_slurm/submissions.jsonl").read_text().splitlines()) == 2
    nothing = cli("slurm", "submit", manifest, "--array", "3", "--output", out, "--only-missing")
    assert nothing.returncode == 0 and "nothing to submit" in nothing.stdout


@pytest.mark.slurm
def test_preempted_task_requeues_and_completes(tmp_path: Path, slurm: list[str]) -> None:
    """`scancel --signal=USR1 --batch` (what --signal=B:USR1@s does near the time limit) on a running
    task: it drains, requeues itself, resumes after the requeue and the job completes exactly once."""
    ids = heavy_images(tmp_path / "img", 720)
    manifest = tiny_manifest(tmp_path, tmp_path / "img", unit_size=12, batch_size=12)
    out = tmp_path / "out"
    # ASCEND_BATCH_TEST_UNIT_DELAY slows each unit where the runner supports it (a test hook);
    # without it the noise PNGs keep each task busy for several seconds
    sub = submit(manifest, out, slurm, "--array", "3", "--extra=--export=ALL,ASCEND_BATCH_TEST_UNIT_DELAY=0.2")
    a, f = sub["array_job"], sub["finalize_job"]
    task = f"{a}_1"
    mine = {u for u in range(60) if u % 3 == 1}
    deadline = time.monotonic() + WAIT
    while not (set(parts(out)) & mine):
        assert time.monotonic() < deadline, logs(out)
        assert states(task).get(task) in ("PENDING", "RUNNING", "CONFIGURING"), (states(task), logs(out))
        time.sleep(0.05)
    assert set(parts(out)) & mine != mine, "task 1 finished before it could be signalled; make the data bigger"
    subprocess.run(["scancel", "--signal=USR1", "--batch", task], check=True, timeout=60)
    # the task drains and requeues itself; Slurm holds a requeued job ~2 minutes (BeginTime)
    # before it is eligible again, so the node has dropped the old run: shorten that to 3 s (a start
    # in the same second as the requeue is refused by slurmd: "Job N already killed")
    deadline = time.monotonic() + WAIT
    while True:
        info = show_job(task)
        if info.get("Restarts") == "1" and info.get("JobState") == "PENDING":
            break
        assert info.get("JobState") in ("RUNNING", "COMPLETING", "REQUEUED", "PENDING"), (info, logs(out))
        assert time.monotonic() < deadline, (info, logs(out))
        time.sleep(0.1)
    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now+3"], check=True, timeout=60)
    st = wait_final(a, f)
    text = logs(out)
    assert st == {f"{a}_{k}": "COMPLETED" for k in range(3)} | {f: "COMPLETED"}, (st, text)
    assert (out / "_SUCCESS").exists()
    assert "USR1 received" in text and "runner exited with code 130" in text and f"requeueing {task}" in text, text
    assert "restart 1" in text, text
    df = assert_exactly_once(out, ids)
    # the shard's units were written by two runs: before the preemption and after the requeue
    assert df[df["unit"] % 3 == 1]["run_id"].nunique() == 2


def test_jobs_scripts_parse() -> None:
    for script in (REPO / "jobs").iterdir():
        if script.suffix in (".sh", ".sbatch"):
            assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
    assert "ascend-batch-cron.sh" in (REPO / "jobs" / "crontab.example").read_text()


@pytest.mark.slurm
def test_hand_written_template_runs(tmp_path: Path, slurm: list[str]) -> None:
    """jobs/ascend-batch-array.sbatch, filled in as its header says, submitted as its header says."""
    paths = make_images(tmp_path / "img", 30)
    manifest = tiny_manifest(tmp_path, tmp_path / "img", unit_size=5)
    out = tmp_path / "out"
    text = (REPO / "jobs" / "ascend-batch-array.sbatch").read_text()
    for old, new in (
        ("/data/results/nightly", str(out)), ("/opt/ascend-batch/venv/bin/python", sys.executable),
        ("/etc/ascend-batch/slurm_nightly.toml", str(manifest)), ("--array=0-7", "--array=0-1"),
        ("SHARDS=8", "SHARDS=2"), ("--cpus-per-task=8", "--cpus-per-task=1"), ("#SBATCH --gres=gpu:1\n", ""),
    ):  # fmt: skip
        assert old in text, old
        text = text.replace(old, new)
    script = tmp_path / "array.sbatch"
    script.write_text(text)
    (out / "_slurm" / "logs").mkdir(parents=True)

    def sbatch(*args: str) -> str:
        r = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        slurm.append(r.stdout.strip().split(";")[0])
        return slurm[-1]

    a = sbatch("--hold", str(script))
    f = sbatch(f"--dependency=afterok:{a}", "--kill-on-invalid-dep=yes", "-o", f"{out}/_slurm/logs/finalize-%j.out",
               "--wrap", f"{shlex.quote(sys.executable)} -m ascend_batch finalize {shlex.quote(str(out))}")  # fmt: skip
    subprocess.run(["scontrol", "release", a], check=True, timeout=60)
    st = wait_final(a, f)
    assert set(st.values()) == {"COMPLETED"} and len(st) == 3, (st, logs(out))
    assert (out / "_SUCCESS").exists()
    assert_exactly_once(out, {p.name for p in paths})
