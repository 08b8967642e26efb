"""``job.report``: the night's report written at the end of a job, against the earlier nights of an
incremental series, and by the Slurm finalize job."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import cli, make_images, tiny_manifest

pytest.importorskip("jinja2", reason="the report page needs the 'report' extra (jinja2)")


def test_job_report_writes_the_page_against_earlier_nights(tmp_path: Path) -> None:
    make_images(tmp_path / "night1", 12, seed=1)
    m1 = tiny_manifest(tmp_path, tmp_path / "night1", output="out1", extra_job="report = true")
    r = cli("run", m1, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "report: " in r.stderr and (tmp_path / "out1" / "_report.html").exists()
    first = json.loads((tmp_path / "out1" / "_report.json").read_text())
    assert first["drift"] == []  # the first night has nothing to compare with
    # night 2: an incremental run over both folders, skipping what night 1 classified
    make_images(tmp_path / "night2", 8, seed=2, prefix="new")
    body = (tmp_path / "job.toml").read_text()
    body = body.replace('output = "out1"', 'output = "out2"').replace(
        f'paths = ["{tmp_path / "night1"}"]', f'paths = ["{tmp_path / "night1"}", "{tmp_path / "night2"}"]'
    )
    body = body.replace("[dataset]\n", '[dataset]\nskip_existing = ["out1"]\n')
    m2 = tmp_path / "job2.toml"
    m2.write_text(body)
    r2 = cli("run", m2, "--no-progress")
    assert r2.returncode == 0, r2.stderr
    assert "1 earlier night(s) compared" in r2.stderr
    page = (tmp_path / "out2" / "_report.html").read_text()
    assert "out1" in page  # the baseline night is on the page
    data = json.loads((tmp_path / "out2" / "_report.json").read_text())
    assert len(data["drift"]) == 1 and str(tmp_path / "out1") in json.dumps(data["drift"][0])


def test_job_report_is_off_by_default(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 5, seed=3)
    m = tiny_manifest(tmp_path, tmp_path / "imgs")
    assert cli("run", m, "--no-progress").returncode == 0
    assert not (tmp_path / "out" / "_report.html").exists()


def test_slurm_finalize_job_writes_the_report(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 5, seed=4)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", extra_job="report = true")
    r = cli("slurm", "submit", m, "--array", "1", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    text = json.loads(r.stdout)["scripts"]["finalize"]["text"]
    assert '-m ascend_batch report "$OUT"' in text and 'exit "$rc"' in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0  # valid bash
    plain = tiny_manifest(tmp_path / "p", tmp_path / "imgs")
    r = cli("slurm", "submit", plain, "--array", "1", "--dry-run", "--json")
    assert "ascend_batch report" not in json.loads(r.stdout)["scripts"]["finalize"]["text"]


def test_report_command_compares_with_the_series_by_itself(tmp_path: Path) -> None:
    make_images(tmp_path / "night1", 6, seed=5)
    m1 = tiny_manifest(tmp_path, tmp_path / "night1", output="out1")
    assert cli("run", m1, "--no-progress").returncode == 0
    make_images(tmp_path / "night2", 4, seed=6, prefix="new")
    body = (tmp_path / "job.toml").read_text().replace('output = "out1"', 'output = "out2"')
    body = body.replace(f'paths = ["{tmp_path / "night1"}"]', f'paths = ["{tmp_path / "night2"}"]')
    body = body.replace("[dataset]\n", '[dataset]\nskip_existing = ["out1"]\n')
    (tmp_path / "job2.toml").write_text(body)
    assert cli("run", tmp_path / "job2.toml", "--no-progress").returncode == 0
    r = cli("report", tmp_path / "out2", "--json")
    assert r.returncode == 0, r.stderr
    drift = json.loads(r.stdout)["drift"]
    assert len(drift) == 1 and drift[0]["baseline"].endswith("out1")
    none = cli("report", tmp_path / "out1", "--json")  # the first night: nothing to compare with
    assert json.loads(none.stdout)["drift"] == []
