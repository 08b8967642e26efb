"""The report of one night: its figures, drift against baseline nights, thumbnails; as one JSON
document (:meth:`Report.as_dict`), which the HTML page renders."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_text
from ..errors import DriftError
from ..runner.jobdir import read_job
from ..runner.outdir import REPORT_HTML, REPORT_JSON
from .data import HIST_BINS, Night, read_night
from .drift import Drift, drift, shares
from .thumbs import MAX_THUMBS, make_thumbnails

HTML_FILE = REPORT_HTML  # in the output directory; names with "_" are not read as results
JSON_FILE = REPORT_JSON
TOP_CLASSES = 25  # bars on the page (the JSON lists up to TOP_CLASSES_JSON)
TOP_CLASSES_JSON = 100
UNCERTAIN = 24  # least confident images shown


@dataclass
class Report:
    night: Night
    drifts: list[Drift] = field(default_factory=list)
    thumbs: dict[str, str] = field(default_factory=dict)  # image_id -> data URI
    refused: dict[str, str] = field(default_factory=dict)  # image_id -> why no thumbnail
    generated: str = ""

    @property
    def max_js(self) -> float:
        return max((d.js for d in self.drifts), default=0.0)

    def glance(self) -> dict:
        s = self.night.summary
        runs = self.night.runs
        wall = sum(float(r.get("wall_seconds") or 0.0) for r in runs)
        run_images = sum(int(r.get("images") or 0) for r in runs)
        devices = dict(s.get("per_device_images") or {})
        if not devices:
            for r in runs:
                for dev, n in (r.get("per_device_images") or {}).items():
                    devices[dev] = devices.get(dev, 0) + int(n)
        return {
            "wall_seconds": round(wall, 3),
            "images_per_second": round(run_images / wall, 2) if wall > 0 else None,
            "devices": devices,
            "stage_seconds": dict(s.get("stage_seconds") or {}),
            "runs": [
                {
                    "run_id": r.get("run_id"),
                    "shard": r.get("shard"),
                    "images": r.get("images"),
                    "wall_seconds": r.get("wall_seconds"),
                    "images_per_second": r.get("images_per_second"),
                    "backend": r.get("backend"),
                    "devices": r.get("devices"),
                    "batch_size": r.get("batch_size"),
                    "worker_deaths": r.get("worker_deaths"),
                }
                for r in runs
            ],
        }

    def as_dict(self) -> dict:
        n = self.night
        class_shares = shares(n.classes)
        top = list(n.classes.items())[:TOP_CLASSES_JSON]
        return {
            "name": n.name,
            "out": str(n.out.resolve()),
            "generated": self.generated,
            "complete": n.complete,
            "units": {"done": n.units_done, "total": n.n_units},
            "images": {"listed": n.n_items, "processed": n.images, "ok": n.ok, "error": n.errors},
            "error_rate": round(n.error_rate, 6),
            "errors_by_kind": [
                {
                    "kind": e.kind,
                    "count": e.count,
                    "examples": [
                        {"image_id": i, "message": m, "thumbnail": i in self.thumbs} for i, _, m in e.examples
                    ],
                }
                for e in n.error_kinds
            ],
            "glance": self.glance(),
            "classes": {
                "distinct": len(n.classes),
                "top": [{"class": k, "images": v, "share": round(class_shares[k], 6)} for k, v in top],
            },
            "confidence": {
                "bin_edges": [round(i / HIST_BINS, 4) for i in range(HIST_BINS + 1)],
                "histogram": n.hist,
                "mean": None if n.mean_confidence is None else round(n.mean_confidence, 6),
            },
            "least_confident": [
                {
                    "image_id": u.image_id,
                    "margin": round(u.margin, 6),
                    "top3": [{"class": lab, "prob": round(p, 6)} for lab, p in u.top3],
                    "thumbnail": u.image_id in self.thumbs,
                }
                for u in n.uncertain
            ],
            "evaluation": n.evaluation,
            "drift": [d.as_dict() for d in self.drifts],
            "max_js_divergence": round(self.max_js, 6),
            "thumbnails": {"shown": len(self.thumbs), "refused": self.refused},
        }


def build_report(
    out: Path, baselines: Sequence[Path] = (), *, thumbnails: int = MAX_THUMBS, uncertain: int = UNCERTAIN
) -> Report:
    """Read ``out`` (and each baseline) and make its thumbnails; writes nothing."""
    night = read_night(out, uncertain=uncertain)
    report = Report(night, generated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    for base in baselines:
        report.drifts.append(drift(night, read_night(base, uncertain=0, evaluation=False)))
    if thumbnails > 0:
        wanted = [(u.image_id, u.unit) for u in night.uncertain]
        wanted += [(i, unit) for e in night.error_kinds for i, unit, _ in e.examples]
        meta = read_job(out) or {}
        unit_size = int(meta.get("unit_size") or 0)
        if unit_size > 0:
            report.thumbs, report.refused = make_thumbnails(
                out, wanted, n_items=night.n_items, unit_size=unit_size, limit=thumbnails, **_job_limits(meta)
            )
    return report


def _job_limits(meta: dict) -> dict[str, int]:
    """The job's own ``dataset.max_pixels`` / ``max_member_bytes``, as ``_job.json`` records them (a job
    written before they were recorded gets the defaults): a thumbnail never reads more than the job did."""
    tables = meta.get("tables")
    dataset = tables.get("dataset") if isinstance(tables, dict) else None
    if not isinstance(dataset, dict):
        return {}
    return {
        key: int(value)
        for key in ("max_pixels", "max_member_bytes")
        if isinstance(value := dataset.get(key), int) and not isinstance(value, bool) and value > 0
    }


def write_report(report: Report, html_path: Path | None, json_path: Path | None) -> dict:
    """Write the page and the JSON summary (each atomically); returns the JSON document."""
    data = report.as_dict()
    if json_path is not None:
        write_text(json_path, json.dumps(data, indent=2) + "\n")
    if html_path is not None:
        from .html import render  # needs the "report" extra (jinja2)

        write_text(html_path, render(report, data))
    return data


def check_drift(report: Report, threshold: float | None) -> None:
    """:class:`DriftError` when the class-mix divergence from a baseline passes ``threshold``."""
    if threshold is None:
        return
    over = [d for d in report.drifts if d.js > threshold]
    if over:
        worst = max(over, key=lambda d: d.js)
        raise DriftError(
            f"class mix drifted: Jensen-Shannon divergence {worst.js:.4f} from {worst.baseline} "
            f"is over --fail-on-drift {threshold:g} (report written)"
        )
