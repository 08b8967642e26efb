"""End to end with the default model through the real CLI: the demo's real photos, the Parquet
schema read back with pandas, the Python API and `evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import cli

import ascend_batch
from ascend_batch.runner.writer import SCHEMA

pytest.importorskip("skimage")

DOCUMENTED = [
    "image_id", "source", "unit", "status", "error", "width", "height", "top5_index", "top5_label",
    "top5_prob", "top1_label", "top1_prob", "model", "backend", "device", "run_id", "processed_at",
    "file_size", "file_mtime",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    r = cli("demo", "--dir", folder)
    assert r.returncode == 0, r.stderr
    assert "tiger cat" in r.stdout or "tabby" in r.stdout
    return folder


def test_demo_classifies_real_photos(demo: Path) -> None:
    df = pd.read_parquet(demo / "results").set_index("image_id")
    assert len(df) == 5 and (df["status"] == "ok").all()
    cat = list(df.loc["cat-chelsea.jpg", "top5_label"])
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(cat), cat
    assert df.loc["coffee.jpg", "top1_label"] in ("espresso", "cup")
    assert "photos.tar::space/rocket.jpg" in df.index  # archive members keep their archive in the id


def test_parquet_schema_and_predictions(demo: Path) -> None:
    out = demo / "results"
    schema = pq.read_schema(next(out.glob("part-*.parquet")))
    assert schema.names == DOCUMENTED
    assert schema.field("top5_prob").type == pa.list_(pa.float32())
    assert schema.field("processed_at").type == pa.timestamp("ms", tz="UTC")
    df = pd.read_parquet(out)
    assert list(df.columns) == DOCUMENTED
    for probs, labels, idx in zip(df["top5_prob"], df["top5_label"], df["top5_index"], strict=True):
        p = np.asarray(probs)
        assert len(p) == 5 and np.all(np.diff(p) <= 0) and p.sum() <= 1.0 + 1e-6
        assert len(labels) == 5 and len(set(idx)) == 5
    assert (df["top1_label"] == df["top5_label"].map(lambda x: x[0])).all()
    assert df["width"].gt(0).all() and df["height"].gt(0).all()
    assert (df["model"] == "efficientnet_lite0").all() and (df["backend"] == "onnxruntime").all()
    for name in ("_job.json", "_summary.json", "_SUCCESS", "_listing.parquet"):
        assert (out / name).exists()
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["images"]["ok"] == 5 and summary["complete"] is True


def test_python_api_load_results_categoricals(demo: Path) -> None:
    df = ascend_batch.load_results(demo / "results")
    assert isinstance(df["top1_label"].dtype, pd.CategoricalDtype)
    assert isinstance(df["device"].dtype, pd.CategoricalDtype)
    assert len(df) == 5


def test_python_api_run_resumes_complete_job(demo: Path) -> None:
    report = ascend_batch.run(demo / "demo.toml")
    assert report.outcome.images == 0  # everything was committed already
    assert report.status.complete and report.status.ok == 5


def test_evaluate_writes_accuracy(demo: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    # ImageNet indices: 281 tabby, 967 espresso
    labels.write_text("file,index\ncat-chelsea.jpg,281\ncoffee.jpg,967\nmissing.jpg,1\n")
    r = cli("evaluate", demo / "results", "--labels", labels)
    assert r.returncode == 0, r.stderr
    data = json.loads((demo / "results" / "_evaluation.json").read_text())
    assert data["matched"] == 2 and data["missing"] == 1
    assert data["top5"] == 1.0 and data["top1"] >= 0.5
    assert "top-1" in r.stdout


def test_schema_declared_once() -> None:
    assert SCHEMA.names == DOCUMENTED
