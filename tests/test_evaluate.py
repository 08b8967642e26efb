"""`evaluate` through the CLI on tiny hand-made outputs: labels keyed by image_id or file, classes by
index, wnid, name or label; per-class accuracy, confusions, misclassified images; --json; and typed
errors (exit 2 / 4, never a traceback) for a missing labels file, a folder that is no job output and
a CSV without the expected columns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import cli

from ascend_batch.runner.outdir import commit_part
from ascend_batch.runner.writer import RowBuffer

# ImageNet-1k: 281 tabby (n02123045), 282 tiger cat (n02123159), 285 Egyptian cat (n02124075),
# 967 espresso (n07920052)
TABLE = {281: "tabby", 282: "tiger cat", 285: "Egyptian cat", 967: "espresso"}


def _build(out: Path, rows: list[tuple[str, list[int] | str]], names: dict[int, str] = TABLE) -> Path:
    """An output directory holding one part: (image_id, top-5 indices) rows, or (image_id, error)."""
    out.mkdir(parents=True)
    (out / "_job.json").write_text(json.dumps({"name": "t", "n_items": len(rows), "n_units": 1}))
    buf = RowBuffer("m", "onnxruntime", "cpu:0", "r1")
    labels = [names.get(i, f"c{i}") for i in range(max(names) + 1)]
    for iid, pred in rows:
        if isinstance(pred, str):
            buf.add_error(iid, "src", 0, 1_000, 10, 0.0, pred)
        else:
            probs = np.array([0.6, 0.2, 0.1, 0.05, 0.05][: len(pred)], dtype=np.float32)
            buf.add_ok(iid, "src", 0, 1_000, 10, 0.0, 8, 8, np.array(pred, dtype=np.int16), probs, labels)
    commit_part(out, 0, buf.table())
    return out


ROWS: list[tuple[str, list[int] | str]] = [
    ("cats/a.jpg", [281, 282, 285]),  # tabby, right
    ("cats/b.jpg", [282, 281, 285]),  # tabby -> tiger cat
    ("cats/c.jpg", [282, 285, 281]),  # tabby -> tiger cat
    ("cats/d.jpg", [285, 282, 967]),  # tabby -> Egyptian cat, not in top-5
    ("arch.tar::cups/e.jpg", [967, 281, 282]),  # espresso, right
    ("cups/f.jpg", "decode: image file is truncated"),  # espresso, not classified
]
TRUE = {"a.jpg": 281, "b.jpg": 281, "c.jpg": 281, "d.jpg": 281, "e.jpg": 967, "f.jpg": 967}
WNID = {281: "n02123045", 967: "n07920052"}


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    return _build(tmp_path / "out", ROWS)


def _labels(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n", "utf-8")
    return path


def _check(data: dict, missing: int = 0) -> None:
    assert (data["matched"], data["ok"], data["errors"], data["missing"]) == (6, 5, 1, missing)
    assert data["top1"] == pytest.approx(2 / 6) and data["top5"] == pytest.approx(4 / 6)
    per_class = {c["class"]: c for c in data["per_class"]}
    assert per_class["tabby"]["images"] == 4 and per_class["tabby"]["top1"] == 0.25
    assert per_class["tabby"]["top5"] == 0.75
    assert per_class["espresso"]["images"] == 2 and per_class["espresso"]["top1"] == 0.5
    assert data["per_class"][0]["class"] == "tabby"  # the worst class first
    assert data["confusions"][0] == {
        "true": "tabby",
        "true_index": 281,
        "predicted": "tiger cat",
        "predicted_index": 282,
        "count": 2,
    }
    assert data["confusions"][1]["predicted"] == "Egyptian cat" and data["confusions"][1]["count"] == 1
    wrong = {w["image_id"]: w for w in data["misclassified"]}
    assert set(wrong) == {"cats/b.jpg", "cats/c.jpg", "cats/d.jpg", "cups/f.jpg"}
    assert wrong["cats/d.jpg"]["in_top5"] is False and wrong["cats/b.jpg"]["in_top5"] is True
    assert wrong["cats/b.jpg"]["prob"] == pytest.approx(0.6)
    assert wrong["cups/f.jpg"]["error"].startswith("decode:")
    assert data["misclassified"][-1]["image_id"] == "cups/f.jpg"  # unclassified images last


def test_index_labels_by_file(out: Path, tmp_path: Path) -> None:
    labels = _labels(tmp_path / "l.csv", "file,index", [f"{f},{i}" for f, i in TRUE.items()] + ["gone.jpg,281"])
    r = cli("evaluate", out, "--labels", labels)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("top-1 0.3333  top-5 0.6667  (6 labelled images with results, 5 classified, 1 without")
    assert "tabby -> tiger cat: 2" in r.stdout
    assert "cats/b.jpg: tabby -> tiger cat (0.6)" in r.stdout
    assert "cups/f.jpg: espresso, not classified (decode: image file is truncated)" in r.stdout
    assert re.search(r"^  tabby +top-1 1/4 = 0\.250  top-5 0\.750$", r.stdout, re.M)
    data = json.loads((out / "_evaluation.json").read_text())
    _check(data, missing=1)
    assert (data["key_column"], data["class_column"], data["classes_from"]) == ("file", "index", "imagenet")
    j = cli("evaluate", out, "--labels", labels, "--json")
    assert j.returncode == 0, j.stderr
    assert json.loads(j.stdout) == json.loads((out / "_evaluation.json").read_text())


def test_wnid_labels_as_in_imagenet_sample(out: Path, tmp_path: Path) -> None:
    # the columns of ../shared/data/imagenet-sample/labels.csv: file,index,wnid (index is used)
    rows = [f"{f},{i},{WNID[i]}" for f, i in TRUE.items()]
    r = cli("evaluate", out, "--labels", _labels(tmp_path / "s.csv", "file,index,wnid", rows), "--json")
    assert r.returncode == 0, r.stderr
    _check(json.loads(r.stdout))
    only_wnid = _labels(tmp_path / "w.csv", "file,wnid", [f"{f},{WNID[i].upper()}" for f, i in TRUE.items()])
    r = cli("evaluate", out, "--labels", only_wnid, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    _check(data)
    assert data["class_column"] == "wnid"
    assert {c["class"]: c["wnid"] for c in data["per_class"]} == {"tabby": "n02123045", "espresso": "n07920052"}


def test_name_labels_by_image_id(out: Path, tmp_path: Path) -> None:
    ids = {"a.jpg": "cats/a.jpg", "e.jpg": "arch.tar::cups/e.jpg"}
    spelled = {281: "Tabby", 967: " espresso "}
    rows = [f'{ids.get(f, "cats/" + f if i == 281 else "cups/" + f)},"{spelled[i]}"' for f, i in TRUE.items()]
    r = cli("evaluate", out, "--labels", _labels(tmp_path / "n.csv", "image_id,name", rows), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["labelled"] == 6 and data["class_column"] == "name"
    _check(data)
    # image_id matches the whole id only: a bare file name is not an image_id
    r = cli("evaluate", out, "--labels", _labels(tmp_path / "x.csv", "image_id,name", ["a.jpg,tabby"]), "--json")
    assert json.loads(r.stdout)["matched"] == 0


def test_label_column_of_numbers_is_an_index_and_unknown_names_are_reported(out: Path, tmp_path: Path) -> None:
    r = cli("evaluate", out, "--labels", _labels(tmp_path / "l.csv", "file,label", ["a.jpg,281", "b.jpg,281"]))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("top-1 0.5000  top-5 1.0000  (2 labelled")
    r = cli("evaluate", out, "--labels", _labels(tmp_path / "u.csv", "file,label", ["a.jpg,tabby", "b.jpg,unicorn"]))
    assert r.returncode == 0, r.stderr
    assert "warning: 1 labels are none of the model's classes: 'unicorn' (1)" in r.stdout


def test_custom_model_names_and_wnid_refused(tmp_path: Path) -> None:
    names = {0: "cat", 1: "dog", 2: "bird"}
    out = _build(tmp_path / "out", [("x/1.png", [0, 1, 2]), ("x/2.png", [1, 0, 2]), ("x/3.png", [2, 1, 0])], names)
    labels = _labels(tmp_path / "l.csv", "file,name", ["1.png,cat", "2.png,cat", "3.png,bird"])
    r = cli("evaluate", out, "--labels", labels, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["classes_from"] == "results" and data["top1"] == pytest.approx(2 / 3)
    assert data["confusions"] == [
        {"true": "cat", "true_index": 0, "predicted": "dog", "predicted_index": 1, "count": 1}
    ]
    r = cli("evaluate", out, "--labels", _labels(tmp_path / "w.csv", "file,wnid", ["1.png,n02123045"]))
    assert r.returncode == 2
    assert "[--labels]" in r.stderr and "'wnid'" in r.stderr and "ImageNet" in r.stderr
    assert "Traceback" not in r.stderr


def test_typed_errors_name_the_option_path_and_column(out: Path, tmp_path: Path) -> None:
    good = _labels(tmp_path / "l.csv", "file,index", ["a.jpg,281"])
    cases = [
        ((out, "--labels", tmp_path / "nope.csv"), 2, ["[--labels]", "nope.csv", "no such file"]),
        ((out, "--labels", tmp_path), 2, ["[--labels]", "is a directory"]),
        (
            (out, "--labels", _labels(tmp_path / "c.csv", "path,klass", ["a.jpg,1"])),
            2,
            ["[--labels]", "c.csv", "'path', 'klass'", "image_id or file", "index, wnid, name or label"],
        ),
        (
            (out, "--labels", _labels(tmp_path / "k.csv", "file,size", ["a.jpg,1"])),
            2,
            ["a class column (index, wnid, name or label)"],
        ),
        ((out, "--labels", _labels(tmp_path / "e.csv", "", [])), 2, ["e.csv is empty"]),
        ((out, "--labels", _labels(tmp_path / "v.csv", "file,index", ["a.jpg,tabby"])), 2, ["line 2", "'index'"]),
        ((tmp_path, "--labels", good), 4, ["is not an ascend-batch output directory"]),
        ((tmp_path / "missing", "--labels", good), 4, ["does not exist"]),
    ]
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage")
    cases.append(((out, "--labels", tmp_path / "bin.csv"), 2, ["bin.csv", "UTF-8"]))
    for args, code, words in cases:
        r = cli("evaluate", *args)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr
        for w in words:
            assert w in r.stderr, (args, w, r.stderr)


def test_no_results_yet(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "_job.json").write_text(json.dumps({"name": "t", "n_items": 3, "n_units": 1}))
    labels = _labels(tmp_path / "l.csv", "file,wnid", ["a.jpg,n02123045"])
    r = cli("evaluate", out, "--labels", labels)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("top-1 0.0000  top-5 0.0000  (0 labelled images with results, 0 classified, 1 without")
