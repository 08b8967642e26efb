"""Manifest parsing and `ascend-batch validate`: every error names its key, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import cli, make_images

from ascend_batch.errors import ManifestErrors
from ascend_batch.manifest import load_manifest


def write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "m.toml"
    p.write_text(body, "utf-8")
    return p


@pytest.fixture
def images(tmp_path: Path) -> Path:
    make_images(tmp_path / "imgs", 3)
    return tmp_path / "imgs"


GOOD = """
[job]
name = "nightly"
output = "out"
[dataset]
paths = ["imgs"]
[runtime]
devices = ["cpu:0", "cpu:1"]
batch_size = 8
"""


def test_good_manifest_resolves_relative_paths(tmp_path: Path, images: Path) -> None:
    m = load_manifest(write(tmp_path, GOOD))
    assert m.job.output == tmp_path / "out"
    assert m.dataset.resolved == (tmp_path / "imgs",)
    assert [str(d) for d in m.runtime.devices] == ["cpu:0", "cpu:1"]
    assert m.model.name == "efficientnet_lite0"


def test_validate_cli_ok(tmp_path: Path, images: Path) -> None:
    r = cli("validate", write(tmp_path, GOOD))
    assert r.returncode == 0, r.stderr
    assert "ok:" in r.stdout


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        (GOOD.replace("batch_size = 8", "batch_size = 8\nbatchsize = 3"), "runtime.batchsize", "unknown key"),
        (GOOD.replace("batch_size = 8", 'batch_size = "8"'), "runtime.batch_size", "expected an integer"),
        (GOOD.replace("batch_size = 8", "batch_size = 0"), "runtime.batch_size", "expected an integer >= 1"),
        (GOOD.replace('paths = ["imgs"]', 'paths = ["missing-dir"]'), "dataset.paths[0]", "no such file"),
        (GOOD.replace('"cpu:0", "cpu:1"', '"gpu:0"'), "runtime.devices[0]", "expected a device"),
        (GOOD.replace('"cpu:0", "cpu:1"', '"cpu:0", "cpu:0"'), "runtime.devices", "listed twice"),
        (GOOD.replace('output = "out"', ""), "job.output", "missing"),
        (GOOD.replace("[runtime]", '[model]\npath = "nope.onnx"\n[runtime]'), "model.path", "no such file"),
        (GOOD.replace("[runtime]", '[model]\nlayout = "CHW"\n[runtime]'), "model.layout", "NCHW"),
        (GOOD.replace("[runtime]", "[model]\nmean = [1, 2]\n[runtime]"), "model.mean", "3 numbers"),
        (
            GOOD.replace("[runtime]", '[model]\nname = "resnet9000"\n[runtime]'),
            "model.name",
            "unknown built-in",
        ),
        (
            GOOD.replace('devices = ["cpu:0", "cpu:1"]', 'backend = "tensorflow"'),
            "runtime.backend",
            "expected one",
        ),
        (GOOD + "\n[extra]\nx = 1\n", "extra", "unknown table"),
        (
            GOOD.replace('name = "nightly"', 'name = "nightly"\nmax_error_fraction = 2'),
            "job.max_error_fraction",
            "between 0 and 1",
        ),
        (GOOD.replace("[runtime]", '[runtime]\nbackend = "acl"'), "model.path", ".om"),
        ('[job\nname = "x"', "toml", "not valid TOML"),
        (GOOD.replace("batch_size = 8", 'batch_size = 8\nprecision = "fp16"'), "runtime.precision", "only the torch"),
        (
            GOOD.replace("batch_size = 8", 'batch_size = 8\nbackend = "torch"\nprecision = "fp8"'),
            "runtime.precision",
            "fp32, fp16, bf16",
        ),
    ],
)
def test_each_error_names_its_key(tmp_path: Path, images: Path, body: str, key: str, words: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ManifestErrors) as info:
        load_manifest(path)
    messages = [str(e) for e in info.value.errors]
    assert any(f"[{key}]" in m and words in m for m in messages), messages


def test_validate_reports_all_errors_exit_2_no_traceback(tmp_path: Path, images: Path) -> None:
    body = GOOD.replace("batch_size = 8", "batch_size = -1\nbogus = true").replace('"cpu:0", "cpu:1"', '"tpu"')
    r = cli("validate", write(tmp_path, body))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    for key in ("runtime.batch_size", "runtime.bogus", "runtime.devices[0]"):
        assert f"[{key}]" in r.stderr, r.stderr


def test_validate_missing_manifest_file(tmp_path: Path) -> None:
    r = cli("validate", tmp_path / "none.toml")
    assert r.returncode == 2
    assert "no such manifest file" in r.stderr
    assert "Traceback" not in r.stderr


def test_fingerprint_ignores_runtime_knobs(tmp_path: Path, images: Path) -> None:
    a = load_manifest(write(tmp_path, GOOD))
    b = load_manifest(write(tmp_path, GOOD.replace("batch_size = 8", "batch_size = 16")))
    c = load_manifest(write(tmp_path, GOOD.replace("[runtime]", "[model]\nresize = 300\n[runtime]")))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


@pytest.mark.parametrize(
    ("runtime", "want"),
    [
        ('devices = ["cpu:0"]', 8),  # CPU default (README, Performance)
        ('devices = ["cpu:0", "cpu:1"]', 8),
        ('devices = ["cuda:0"]', 32),
        ('backend = "acl"\ndevices = [0]', 32),
        ('devices = ["cpu:0"]\nbatch_size = 64', 64),  # an explicit value always wins
    ],
)
def test_default_batch_size_depends_on_the_devices(tmp_path: Path, images: Path, runtime: str, want: int) -> None:
    body = f'[job]\nname = "n"\noutput = "out"\n[dataset]\npaths = ["imgs"]\n[runtime]\n{runtime}\n'
    if "acl" in runtime:
        (tmp_path / "m.om").write_bytes(b"om")
        body += '[model]\npath = "m.om"\n'
    assert load_manifest(write(tmp_path, body)).runtime.batch_size == want
