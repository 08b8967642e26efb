"""Accuracy of a finished job against a labels CSV (columns ``file,index``; file = image_id)."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .errors import ManifestError, ManifestErrors

EVAL_FILE = "_evaluation.json"


@dataclass(frozen=True)
class Accuracy:
    labelled: int  # labels in the CSV
    matched: int  # of those, images with a result row
    ok: int  # of those, classified (status ok)
    top1: float  # over matched rows; error rows count as wrong
    top5: float
    missing: int

    def as_dict(self) -> dict:
        return asdict(self)


def read_labels(path: Path) -> dict[str, int]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "file" not in reader.fieldnames or "index" not in reader.fieldnames:
            raise ManifestErrors([ManifestError("--labels", f"{path} needs columns 'file' and 'index'")])
        return {row["file"]: int(row["index"]) for row in reader}


def evaluate(out: Path, labels_csv: Path) -> Accuracy:
    labels = read_labels(labels_csv)
    df = pd.read_parquet(out, columns=["image_id", "status", "top5_index"])
    # ids may carry a directory or archive prefix: match on the full id, else on the file name
    by_id = {iid: row for iid, row in zip(df["image_id"], df.itertuples(index=False), strict=True)}
    by_name = {iid.rsplit("/", 1)[-1].rsplit("::", 1)[-1]: row for iid, row in by_id.items()}
    top1 = top5 = matched = ok = 0
    for name, want in labels.items():
        row = by_id.get(name) or by_name.get(name)
        if row is None:
            continue
        matched += 1
        if row.status != "ok":
            continue
        ok += 1
        preds = list(row.top5_index)
        top1 += int(bool(preds) and preds[0] == want)
        top5 += int(want in preds)
    return Accuracy(
        len(labels),
        matched,
        ok,
        top1 / matched if matched else 0.0,
        top5 / matched if matched else 0.0,
        len(labels) - matched,
    )


def write_evaluation(out: Path, acc: Accuracy, labels_csv: Path) -> Path:
    path = out / EVAL_FILE
    path.write_text(json.dumps({**acc.as_dict(), "labels": str(labels_csv)}, indent=2), "utf-8")
    return path
