"""`ascend-batch bench` runs all four paths on the same images and reports consistent figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cli, make_images, tiny_onnx


def test_bench_reports_four_paths_and_ratios(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 24)
    model = tiny_onnx(tmp_path / "tiny.onnx", classes=10, size=224)
    out = tmp_path / "bench.json"
    r = cli(
        "bench",
        tmp_path / "imgs",
        "--model-path",
        model,
        "--repeats",
        "1",
        "--batch-size",
        "8",
        "--unit-size",
        "12",
        "--limit",
        "20",
        "--scaling",
        "1,2",
        "--json",
        out,
        "--no-chart",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["images"] == 20
    rates = {k: v["median"] for k, v in data["img_per_s"].items()}
    paths = {"a_seed_loop", "b_batched_script", "c_inference_ceiling", "d_runner", "b_batched_runner_decode"}
    assert set(rates) == paths
    assert data["batch_size"] == 8
    # the ratio comes from the unrounded medians, the printed rates are rounded to 0.01 img/s
    assert data["ratios"]["d/b"] == pytest.approx(rates["d_runner"] / rates["b_batched_script"], abs=1e-3)
    assert all(v > 0 for v in rates.values())
    assert abs(data["ratios"]["d/c"] - rates["d_runner"] / rates["c_inference_ceiling"]) < 0.01
    (d,) = data["img_per_s"]["d_runner"]["all"]
    (c,) = data["img_per_s"]["c_inference_ceiling"]["all"]
    assert data["ratios_per_repeat"]["d/c"] == [round(d / c, 3)]
    assert set(data["scaling"]["img_per_s"]) == {"1", "2"}
    assert "d/a" in r.stdout and "scaling:" in r.stdout


def test_bench_torch_state_dict_with_arch(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from ascend_batch.models.efficientnet_lite0 import default_weights_path

    make_images(tmp_path / "imgs", 6)
    out = tmp_path / "bench.json"
    args = ["--backend", "torch", "--arch", "efficientnet_lite0", "--model-path", default_weights_path()]
    r = cli("bench", tmp_path / "imgs", *args, "--repeats", "1", "--json", out, "--no-chart", timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["backend"] == "torch" and data["images"] == 6
    assert all(v["median"] > 0 for v in data["img_per_s"].values())


def test_bench_arch_needs_a_model_path(tmp_path: Path) -> None:
    r = cli("bench", tmp_path, "--arch", "resnet50")
    assert r.returncode == 2 and "--model-path" in r.stderr
