"""Accuracy of a job's results against a labels CSV: top-1/top-5, per class, the most frequent
confusions and the misclassified images.

The CSV has a header. The image is named by an ``image_id`` column (the row's id, exactly) or a
``file`` column (the id, or its file name); the true class by ``index`` (the model's class index),
``wnid`` (an ImageNet WordNet id, for models with the ImageNet-1k labels), ``name`` or ``label`` (a
class name as the model's labels spell it, compared ignoring case, ``_`` and extra spaces; a
``label`` column of whole numbers is read as indices). When several are present the first of
``image_id, file`` and of ``index, wnid, name, label`` is used.

The model's classes are read from the results themselves (each row's ``top5_index``/``top5_label``);
when those agree with the ImageNet-1k table shipped in :mod:`ascend_batch.models`, that table (with its
wnids) completes them.
"""

from __future__ import annotations

import collections
import csv
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .atomic import write_text
from .errors import IncompatibleOutputError, ManifestError
from .runner.jobdir import read_job
from .runner.outdir import EVALUATION_FILE, part_files

EVAL_FILE = EVALUATION_FILE
KEY_COLUMNS = ("image_id", "file")
CLASS_COLUMNS = ("index", "wnid", "name", "label")
OPTION = "--labels"
_SPACES = re.compile(r"\s+")


def _norm(name: str) -> str:
    return _SPACES.sub(" ", name.replace("_", " ")).strip().casefold()


# -- the labels file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Labels:
    path: Path
    key_column: str  # image_id | file
    class_column: str  # index | wnid | name | label
    classes: dict[str, str]  # key -> the class as written
    duplicates: int = 0  # keys listed more than once (the last one counts)

    @property
    def by_index(self) -> bool:
        return self.class_column == "index" or (
            self.class_column == "label" and all(_is_int(v) for v in self.classes.values())
        )


def _is_int(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def read_labels(path: Path) -> dict[str, int]:
    """``{image: class index}`` of a labels CSV (as before ``wnid``/``name`` columns existed): wnids and
    names are resolved through the ImageNet-1k table; use :func:`evaluate` for other models' names."""
    labels = read_label_file(path)
    if labels.by_index:
        return {k: int(v) for k, v in labels.classes.items()}
    table = imagenet_table()
    wnid = labels.class_column == "wnid"
    lookup = {w.lower(): i for i, w in table.wnids.items()} if wnid else {_norm(n): i for i, n in table.names.items()}

    def norm(value: str) -> str:
        return value.lower() if wnid else _norm(value)

    out: dict[str, int] = {}
    for key, value in labels.classes.items():
        if norm(value) not in lookup:
            raise ManifestError(OPTION, f"{path}: {labels.class_column} {value!r} is no ImageNet-1k class")
        out[key] = lookup[norm(value)]
    return out


def read_label_file(path: Path) -> Labels:
    """Read a labels CSV; every problem is a :class:`ManifestError` naming ``--labels``, the path and,
    where it applies, the column and line."""
    try:
        text = path.read_text("utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(OPTION, f"{path}: no such file") from None
    except IsADirectoryError:
        raise ManifestError(OPTION, f"{path} is a directory; give the labels CSV file") from None
    except UnicodeDecodeError:
        raise ManifestError(OPTION, f"{path} is not a UTF-8 text (CSV) file") from None
    except OSError as exc:
        raise ManifestError(OPTION, f"{path}: {exc.strerror or exc}") from None
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if not header or not any(h.strip() for h in header):
        raise ManifestError(OPTION, f"{path} is empty; it needs a header with a key column and a class column")
    cols = [h.strip().lower() for h in header]
    key = next((c for c in KEY_COLUMNS if c in cols), None)
    klass = next((c for c in CLASS_COLUMNS if c in cols), None)
    if key is None or klass is None:
        wanted = []
        if key is None:
            wanted.append("an image column (image_id or file)")
        if klass is None:
            wanted.append("a class column (index, wnid, name or label)")
        shown = ", ".join(repr(h) for h in header)
        raise ManifestError(OPTION, f"{path} has columns {shown}; it needs " + " and ".join(wanted))
    ki, ci = cols.index(key), cols.index(klass)
    classes: dict[str, str] = {}
    duplicates = 0
    for line, row in enumerate(rows, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(ki, ci):
            raise ManifestError(OPTION, f"{path} line {line}: fewer fields than the header")
        k, v = row[ki].strip(), row[ci].strip()
        if not k or not v:
            raise ManifestError(OPTION, f"{path} line {line}: empty {key if not k else klass!r} value")
        if klass == "index" and not _is_int(v):
            raise ManifestError(OPTION, f"{path} line {line}: column 'index' must be a class index, not {v!r}")
        duplicates += k in classes
        classes[k] = v
    return Labels(path, key, klass, classes, duplicates)


# -- the model's classes --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassTable:
    """The model's classes: index -> name (and wnid), complete or only those the rows show."""

    names: dict[int, str]
    wnids: dict[int, str] = field(default_factory=dict)
    complete: bool = False
    source: str = "results"  # "imagenet": the shipped ImageNet-1k table; "results": the rows' labels

    def name(self, index: int) -> str:
        return self.names.get(index, f"class {index}")


def imagenet_table() -> ClassTable:
    text = resources.files("ascend_batch.models").joinpath("imagenet_classes.csv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    names = {int(r["index"]): r["name"] for r in rows}
    wnids = {int(r["index"]): r["wnid"] for r in rows if r.get("wnid")}
    return ClassTable(names, wnids, complete=True, source="imagenet")


def class_table(observed: dict[int, str]) -> ClassTable:
    """The ImageNet-1k table when the rows' labels are its names, else the rows' labels alone."""
    imagenet = imagenet_table()
    if not observed:  # no classified row to tell: ImageNet's names, for display only
        return ClassTable(imagenet.names, imagenet.wnids, complete=False, source="imagenet (unconfirmed)")
    if all(imagenet.names.get(i) == name for i, name in observed.items()):
        return imagenet
    return ClassTable(dict(observed))


# -- evaluation -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Truth:
    index: int | None  # the class index, when the label resolves to one
    name: str  # the class name (for display, and to compare by when there is no index)
    known: bool  # among the model's classes


def _resolve(labels: Labels, table: ClassTable) -> tuple[dict[str, Truth], dict[str, int]]:
    """Each labelled key's true class, and the label values that are none of the model's classes."""
    by_name: dict[str, list[int]] = collections.defaultdict(list)
    for i, n in table.names.items():
        by_name[_norm(n)].append(i)
    by_wnid = {w.lower(): i for i, w in table.wnids.items()}
    if labels.class_column == "wnid" and not by_wnid:
        raise ManifestError(
            OPTION,
            f"{labels.path}: column 'wnid' needs a model with the ImageNet-1k labels, and this job's labels are "
            "others; give an 'index' or 'name' column",
        )
    truths: dict[str, Truth] = {}
    unknown: collections.Counter[str] = collections.Counter()
    for key, value in labels.classes.items():
        if labels.by_index:
            i = int(value)
            known = i in table.names if table.complete else True
            truths[key] = Truth(i, table.name(i), known)
        elif labels.class_column == "wnid":
            j = by_wnid.get(value.lower())
            truths[key] = Truth(j, table.name(j) if j is not None else value, j is not None)
        else:
            hits = by_name.get(_norm(value), [])
            if len(hits) == 1:
                truths[key] = Truth(hits[0], table.names[hits[0]], True)
            else:  # ambiguous, or a class the rows never showed: compared by name
                truths[key] = Truth(None, value, bool(hits) or not table.complete)
        if not truths[key].known:
            unknown[value] += 1
    return truths, dict(unknown)


def _read_rows(out: Path) -> pa.Table:
    columns = ["image_id", "status", "error", "top5_index", "top5_label", "top5_prob"]
    tables = []
    for path in part_files(out):
        try:
            tables.append(pq.read_table(path, columns=columns).replace_schema_metadata(None))
        except (OSError, ValueError, pa.ArrowException):
            continue  # moved aside or being replaced while a run goes on
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in ("image_id",)})
    return pa.concat_tables(tables)


def _observed_classes(rows: pa.Table) -> dict[int, str]:
    if rows.num_rows == 0 or "top5_index" not in rows.column_names:
        return {}
    pairs = (
        pa.table(
            {
                "i": pc.list_flatten(rows["top5_index"]),
                "n": pc.list_flatten(rows["top5_label"]),
            }
        )
        .group_by(["i", "n"])
        .aggregate([])
    )
    return dict(zip(pairs["i"].to_pylist(), pairs["n"].to_pylist(), strict=True))


@dataclass
class Evaluation:
    labels: str
    key_column: str
    class_column: str
    classes_from: str
    labelled: int  # labels in the CSV
    matched: int  # of those, images with a result row
    ok: int  # of those, classified (status ok)
    top1: float  # over matched rows; error rows count as wrong
    top5: float
    missing: int  # labelled images without a result row
    errors: int  # matched images whose row is an error row
    per_class: list[dict]
    confusions: list[dict]
    misclassified: list[dict]
    unknown_classes: dict[str, int]
    duplicate_labels: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _matches(truth: Truth, index: int | None, name: str | None) -> bool:
    if truth.index is not None:
        return index == truth.index
    return name is not None and _norm(name) == _norm(truth.name)


def evaluate(out: Path, labels_csv: Path) -> Evaluation:
    """Evaluate the results in ``out`` against ``labels_csv``."""
    if not out.is_dir():
        what = "is not a directory" if out.exists() else "does not exist"
        raise IncompatibleOutputError(f"{out} {what}; give a job's output directory")
    if read_job(out) is None:
        raise IncompatibleOutputError(f"{out} is not an ascend-batch output directory (no _job.json)")
    labels = read_label_file(labels_csv)
    rows = _read_rows(out)
    table = class_table(_observed_classes(rows))
    truths, unknown = _resolve(labels, table)
    data = rows.to_pydict() if rows.num_rows else {}
    index: dict[str, int] = {}  # key -> row; ids may carry a directory or archive prefix
    names: dict[str, int] = {}
    for pos, iid in enumerate(data.get("image_id", [])):
        index[iid] = pos
        names.setdefault(iid.rsplit("/", 1)[-1].rsplit("::", 1)[-1], pos)
    per_class: dict[tuple[int | None, str], list[int]] = {}  # -> [images, classified, top1, top5]
    confusions: collections.Counter[tuple[int | None, str, int | None, str]] = collections.Counter()
    wrong: list[dict] = []
    matched = ok = errors = top1 = top5 = 0
    for key, truth in truths.items():
        r = index.get(key)
        if r is None and labels.key_column == "file":
            r = names.get(key)
        if r is None:
            continue
        matched += 1
        counts = per_class.setdefault((truth.index, truth.name), [0, 0, 0, 0])
        counts[0] += 1
        iid = data["image_id"][r]
        if data["status"][r] != "ok":
            errors += 1
            wrong.append({"image_id": iid, "true": truth.name, "true_index": truth.index, "error": data["error"][r]})
            continue
        ok += 1
        counts[1] += 1
        idx = list(data["top5_index"][r] or [])
        labs = list(data["top5_label"][r] or [])
        probs = list(data["top5_prob"][r] or [])
        hit5 = any(_matches(truth, i, n) for i, n in zip(idx, labs, strict=False))
        hit1 = bool(idx) and _matches(truth, idx[0], labs[0] if labs else None)
        top1 += hit1
        top5 += hit5
        counts[2] += hit1
        counts[3] += hit5
        if not hit1:
            p_index = idx[0] if idx else None
            p_name = labs[0] if labs else table.name(p_index) if p_index is not None else None
            confusions[(truth.index, truth.name, p_index, p_name or "")] += 1
            wrong.append(
                {
                    "image_id": iid,
                    "true": truth.name,
                    "true_index": truth.index,
                    "predicted": p_name,
                    "predicted_index": p_index,
                    "prob": round(float(probs[0]), 4) if probs else None,
                    "in_top5": hit5,
                }
            )
    classes: list[dict[str, Any]] = [
        {
            "class": name,
            "index": i,
            "wnid": table.wnids.get(i) if i is not None else None,
            "images": n,
            "classified": c,
            "top1": round(t1 / n, 4),
            "top5": round(t5 / n, 4),
            "correct": t1,
        }
        for (i, name), (n, c, t1, t5) in per_class.items()
    ]
    classes.sort(key=lambda c: (c["top1"], c["top5"], -c["images"], c["class"]))
    # the most confident mistakes first, then the images that could not be classified
    wrong.sort(key=lambda w: ("error" in w, -(w.get("prob") or 0.0), str(w["image_id"])))
    return Evaluation(
        labels=str(labels_csv),
        key_column=labels.key_column,
        class_column=labels.class_column,
        classes_from=table.source,
        labelled=len(truths),
        matched=matched,
        ok=ok,
        top1=top1 / matched if matched else 0.0,
        top5=top5 / matched if matched else 0.0,
        missing=len(truths) - matched,
        errors=errors,
        per_class=classes,
        confusions=[
            {"true": tn, "true_index": ti, "predicted": pn, "predicted_index": pi, "count": n}
            for (ti, tn, pi, pn), n in sorted(confusions.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][3]))
        ],
        misclassified=wrong,
        unknown_classes=unknown,
        duplicate_labels=labels.duplicates,
    )


def write_evaluation(out: Path, ev: Evaluation, labels_csv: Path | None = None) -> Path:
    """Write ``OUT/_evaluation.json`` (atomically): the whole evaluation."""
    path = out / EVAL_FILE
    write_text(path, json.dumps(ev.as_dict(), indent=2))
    return path
