"""The figures of one night, read from its output directory: only the columns each figure needs,
one part file at a time, so memory stays bounded whatever the number of rows."""

from __future__ import annotations

import collections
import contextlib
import heapq
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import AscendBatchError, IncompatibleOutputError
from ..evaluate import EVAL_FILE, read_labels
from ..runner.jobdir import read_job
from ..runner.outdir import SUMMARY_FILE, part_files
from ..runner.summary import error_kind

HIST_BINS = 20  # confidence histogram: top1_prob in [0, 1] in bins of 0.05
SCAN_COLUMNS = ["image_id", "unit", "status", "error", "top1_label", "top1_prob", "top5_prob"]
ERROR_EXAMPLES = 3  # example ids per error kind
EVAL_ROWS = 50  # per-class rows and confusions kept from the evaluation


@dataclass
class Uncertain:
    """One of the least confident images: top-1 minus top-2 probability (``margin``)."""

    image_id: str
    unit: int
    margin: float
    top3: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class ErrorKind:
    kind: str
    count: int
    examples: list[tuple[str, int, str]] = field(default_factory=list)  # (image_id, unit, message)


@dataclass
class Night:
    """Everything the report shows about one output directory."""

    out: Path
    name: str
    n_items: int
    n_units: int
    units_done: int = 0
    images: int = 0
    ok: int = 0
    errors: int = 0
    error_kinds: list[ErrorKind] = field(default_factory=list)
    classes: dict[str, int] = field(default_factory=dict)  # top-1 label -> images (ok rows), most first
    hist: list[int] = field(default_factory=lambda: [0] * HIST_BINS)
    mean_confidence: float | None = None
    uncertain: list[Uncertain] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # _summary.json as written (may be empty)
    runs: list[dict] = field(default_factory=list)  # each run or resume of the job
    evaluation: dict | None = None

    @property
    def complete(self) -> bool:
        return self.units_done >= self.n_units

    @property
    def error_rate(self) -> float:
        return self.errors / self.images if self.images else 0.0


def _margins(top5_prob: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(row indices with at least one probability, their top-1 minus top-2 margin)."""
    arr = top5_prob.combine_chunks() if isinstance(top5_prob, pa.ChunkedArray) else top5_prob
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy(zero_copy_only=False)
    lengths = np.diff(offsets)
    rows = np.nonzero(lengths >= 1)[0]
    starts = offsets[:-1][rows]
    first = values[starts].astype(np.float64)
    second = np.zeros(rows.size, np.float64)
    two = lengths[rows] >= 2
    second[two] = values[starts[two] + 1]
    return rows, first - second


def read_night(out: Path, *, uncertain: int = 0, evaluation: bool = True) -> Night:
    """Read ``out``'s figures; ``uncertain``: how many of the least confident images to keep."""
    meta = read_job(out)
    if meta is None:
        raise IncompatibleOutputError(f"{out} is not an ascend-batch output directory (no _job.json)")
    night = Night(out, str(meta.get("name", "")), int(meta["n_items"]), int(meta["n_units"]))
    kinds: collections.Counter[str] = collections.Counter()
    examples: dict[str, list[tuple[str, int, str]]] = {}
    classes: collections.Counter[str] = collections.Counter()
    hist = np.zeros(HIST_BINS, np.int64)
    conf_sum = 0.0
    # the least confident images: a max-heap on -margin of size ``uncertain`` (path, row, margin)
    heap: list[tuple[float, int, int, str]] = []
    paths = part_files(out)
    for p_index, path in enumerate(paths):
        try:
            table = pq.read_table(path, columns=SCAN_COLUMNS)
        except (OSError, ValueError):
            continue  # vanished or being replaced (a run in progress)
        night.units_done += 1
        n = table.num_rows
        is_err = pc.equal(table["status"], "error")
        n_err = pc.sum(is_err).as_py() or 0
        night.images += n
        night.errors += n_err
        night.ok += n - n_err
        if n_err:
            errs = table.filter(is_err).select(["image_id", "unit", "error"]).to_pylist()
            for r in errs:
                kind = error_kind(r["error"])
                kinds[kind] += 1
                ex = examples.setdefault(kind, [])
                if len(ex) < ERROR_EXAMPLES:
                    ex.append((r["image_id"], int(r["unit"]), r["error"] or ""))
        ok = table.filter(pc.invert(is_err)) if n_err else table
        if ok.num_rows == 0:
            continue
        for value in pc.value_counts(ok["top1_label"].combine_chunks()):
            label = value["values"].as_py()
            if label is not None:
                classes[label] += value["counts"].as_py()
        probs = ok["top1_prob"].to_numpy(zero_copy_only=False).astype(np.float64)
        probs = probs[~np.isnan(probs)]
        conf_sum += float(probs.sum())
        hist += np.histogram(np.clip(probs, 0.0, 1.0), bins=HIST_BINS, range=(0.0, 1.0))[0]
        if uncertain > 0:
            rows, margins = _margins(ok["top5_prob"])
            if rows.size > uncertain:
                keep = np.argpartition(margins, uncertain - 1)[:uncertain]
                rows, margins = rows[keep], margins[keep]
            ids = ok["image_id"].take(pa.array(rows)).to_pylist() if rows.size else []
            for row, margin, image_id in zip(rows.tolist(), margins.tolist(), ids, strict=True):
                entry = (-margin, p_index, row, image_id)
                if len(heap) < uncertain:
                    heapq.heappush(heap, entry)
                elif entry > heap[0]:
                    heapq.heapreplace(heap, entry)
    night.error_kinds = [ErrorKind(k, c, examples.get(k, [])) for k, c in kinds.most_common()]
    night.classes = dict(sorted(classes.items(), key=lambda kv: (-kv[1], kv[0])))
    night.hist = hist.tolist()
    counted = int(hist.sum())
    night.mean_confidence = conf_sum / counted if counted else None
    night.uncertain = _uncertain_details(paths, sorted(heap, key=lambda e: (-e[0], e[3])))
    night.summary = _read_json(out / SUMMARY_FILE) or {}
    night.runs = summary_runs(night.summary)
    if evaluation:
        night.evaluation = read_evaluation(out)
    return night


def _uncertain_details(paths: list[Path], picked: list[tuple[float, int, int, str]]) -> list[Uncertain]:
    """The top-3 of the picked rows: a second read of only the parts that hold them."""
    by_part: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
    for _, p_index, row, image_id in picked:
        by_part[p_index].append((row, image_id))
    details: dict[str, Uncertain] = {}
    for p_index, wanted in by_part.items():
        try:
            table = pq.read_table(paths[p_index], columns=["image_id", "unit", "status", "top5_label", "top5_prob"])
        except (OSError, ValueError):
            continue
        ok = table.filter(pc.equal(table["status"], "ok"))
        for row, image_id in wanted:
            if row >= ok.num_rows or ok["image_id"][row].as_py() != image_id:
                continue  # the part changed since the first read
            labels = ok["top5_label"][row].as_py() or []
            probs = ok["top5_prob"][row].as_py() or []
            top3 = [(str(lab), float(pr)) for lab, pr in zip(labels[:3], probs[:3], strict=False)]
            margin = top3[0][1] - (top3[1][1] if len(top3) > 1 else 0.0) if top3 else math.nan
            details[image_id] = Uncertain(image_id, int(ok["unit"][row].as_py()), margin, top3)
    return [details[e[3]] for e in picked if e[3] in details]


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def summary_runs(summary: dict) -> list[dict]:
    """Each run or resume recorded in ``_summary.json``: a ``runs`` list, or a single ``run``."""
    runs = summary.get("runs")
    if isinstance(runs, list):
        return [r for r in runs if isinstance(r, dict)]
    run = summary.get("run")
    return [run] if isinstance(run, dict) else []


def read_evaluation(out: Path) -> dict | None:
    """``_evaluation.json``, with per-class accuracy and the top confusions added when the labels CSV
    it names can still be read."""
    data = _read_json(out / EVAL_FILE)
    if data is None:
        return None
    labels_path = data.get("labels")
    if "per_class" not in data and labels_path:  # an older _evaluation.json: totals only
        with contextlib.suppress(OSError, ValueError, AscendBatchError):  # a moved or edited CSV: totals only
            data.update(per_class_accuracy(out, read_labels(Path(labels_path))))
    per_class = _list(data.get("per_class"))
    confusions = _list(data.get("confusions"))
    data["per_class"] = [c for c in per_class if isinstance(c, dict)][:EVAL_ROWS]
    data["confusions"] = [{**c, "images": c.get("images", c.get("count"))} for c in confusions if isinstance(c, dict)][
        :EVAL_ROWS
    ]
    data.pop("misclassified", None)  # can be long; the evaluation file keeps it
    return data


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def per_class_accuracy(out: Path, labels: dict[str, int], top_confusions: int = 10) -> dict:
    """Top-1 accuracy per true class and the most frequent (true, predicted) mistakes, matching ids
    as ``evaluate`` does (full id, else the file name)."""
    names: dict[int, str] = {}
    right: collections.Counter[int] = collections.Counter()
    total: collections.Counter[int] = collections.Counter()
    confused: collections.Counter[tuple[int, int]] = collections.Counter()
    for path in part_files(out):
        try:
            table = pq.read_table(path, columns=["image_id", "status", "top5_index", "top5_label"])
        except (OSError, ValueError):
            continue
        for r in table.to_pylist():
            iid = r["image_id"]
            want = labels.get(iid)
            if want is None:
                want = labels.get(iid.rsplit("/", 1)[-1].rsplit("::", 1)[-1])
            if want is None:
                continue
            total[want] += 1
            for idx, lab in zip(r["top5_index"] or [], r["top5_label"] or [], strict=False):
                names.setdefault(int(idx), str(lab))
            preds = r["top5_index"] or []
            if r["status"] == "ok" and preds and preds[0] == want:
                right[want] += 1
            elif r["status"] == "ok" and preds:
                confused[(want, int(preds[0]))] += 1

    def name(i: int) -> str:
        return names.get(i, f"#{i}")

    classes = [
        {"class": name(i), "index": i, "images": total[i], "top1": right[i] / total[i]}
        for i in sorted(total, key=lambda i: (-total[i], i))
    ]
    confusions = [
        {"true": name(t), "predicted": name(p), "count": c}
        for (t, p), c in sorted(confused.items(), key=lambda kv: (-kv[1], kv[0]))[:top_confusions]
    ]
    return {"per_class": classes, "confusions": confusions}
