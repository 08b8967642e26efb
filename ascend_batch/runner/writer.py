"""Result rows: the Parquet schema (declared once), a unit's rows as columns, top-k, and the per-unit
statistics kept in a part's footer. Committing them is :mod:`.outdir`'s job."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("source", pa.string()),
        ("unit", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("top5_index", pa.list_(pa.int16())),
        ("top5_label", pa.list_(pa.string())),
        ("top5_prob", pa.list_(pa.float32())),
        ("top1_label", pa.string()),
        ("top1_prob", pa.float32()),
        ("model", pa.string()),
        ("backend", pa.string()),
        ("device", pa.string()),
        ("run_id", pa.string()),
        ("processed_at", pa.timestamp("ms", tz="UTC")),
        ("file_size", pa.int64()),
        ("file_mtime", pa.timestamp("ms", tz="UTC")),
    ]
)
STATS_KEY = b"ascend_batch.stats"


@dataclass
class RowBuffer:
    """Columns of one unit's rows, appended in listing order."""

    model: str
    backend: str
    device: str
    run_id: str
    cols: dict[str, list] = field(default_factory=lambda: {n: [] for n in SCHEMA.names})

    def __len__(self) -> int:
        return len(self.cols["image_id"])

    def _common(self, image_id: str, source: str, unit: int, now_ms: int, size: int, mtime: float) -> None:
        c = self.cols
        c["image_id"].append(image_id)
        c["source"].append(source)
        c["unit"].append(unit)
        c["model"].append(self.model)
        c["backend"].append(self.backend)
        c["device"].append(self.device)
        c["run_id"].append(self.run_id)
        c["processed_at"].append(now_ms)
        c["file_size"].append(size if size >= 0 else None)
        c["file_mtime"].append(int(mtime * 1000) if mtime else None)

    def add_ok(
        self,
        image_id: str,
        source: str,
        unit: int,
        now_ms: int,
        size: int,
        mtime: float,
        width: int,
        height: int,
        index: np.ndarray,
        prob: np.ndarray,
        labels: Sequence[str],
    ) -> None:
        self._common(image_id, source, unit, now_ms, size, mtime)
        c = self.cols
        names = [labels[i] if 0 <= i < len(labels) else str(i) for i in index.tolist()]
        c["status"].append("ok")
        c["error"].append(None)
        c["width"].append(width)
        c["height"].append(height)
        c["top5_index"].append(index.tolist())
        c["top5_label"].append(names)
        c["top5_prob"].append(prob.tolist())
        c["top1_label"].append(names[0] if names else None)
        c["top1_prob"].append(float(prob[0]) if len(prob) else None)

    def add_error(
        self, image_id: str, source: str, unit: int, now_ms: int, size: int, mtime: float, error: str
    ) -> None:
        self._common(image_id, source, unit, now_ms, size, mtime)
        c = self.cols
        c["status"].append("error")
        c["error"].append(error)
        c["width"].append(None)
        c["height"].append(None)
        c["top5_index"].append([])
        c["top5_label"].append([])
        c["top5_prob"].append([])
        c["top1_label"].append(None)
        c["top1_prob"].append(None)

    def table(self) -> pa.Table:
        return pa.table(self.cols, schema=SCHEMA)


def topk(logits: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and indices of the ``k`` best classes per row, best first."""
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    k = min(k, x.shape[1])
    idx = np.argpartition(-x, k - 1, axis=1)[:, :k]
    p = np.take_along_axis(x, idx, axis=1)
    order = np.argsort(-p, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    p = np.take_along_axis(p, order, axis=1)
    return idx.astype(np.int16), p.astype(np.float32)


def part_stats(table: pa.Table) -> dict:
    """The per-unit statistics stored in a part file's footer (kept in the schema of a table read
    from it, whichever columns were read)."""
    raw = (table.schema.metadata or {}).get(STATS_KEY)
    return json.loads(raw) if raw else {}


def sum_into(total: dict, part: dict) -> None:
    """Add the numbers of ``part`` into ``total`` key by key (stage seconds, error kinds)."""
    for k, v in part.items():
        total[k] = total.get(k, 0) + v
