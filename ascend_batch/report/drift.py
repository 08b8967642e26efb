"""Drift between tonight and an earlier night (a baseline).

- **Class mix**: the share of each top-1 class among the ok images, compared by
  the *Jensen-Shannon divergence* in base 2: ``JS(P, Q) = ½ KL(P‖M) + ½ KL(Q‖M)`` with ``M = ½(P + Q)``
  and ``KL(P‖M) = Σ p log2(p / m)`` (terms with p = 0 count 0). 0 means the same mix, 1 two mixes with
  no class in common; it is symmetric and defined when a class is new or vanished.
  Also the *population stability index* ``PSI = Σ (p - q) ln(p / q)`` (natural log), with each share
  floored at :data:`PSI_FLOOR` so a new or vanished class counts as large but finite (rule of thumb:
  under 0.1 stable, 0.1 to 0.25 a moderate shift, over 0.25 a large one).
- **Confidence**: the mean top-1 probability of both nights and the JS divergence of their
  histograms (:data:`~ascend_batch.report.data.HIST_BINS` bins over [0, 1]).
- **Errors**: the error rate of both nights (errors / images) and its change.

``--fail-on-drift X`` fails (exit 9) when the class-mix JS divergence from any baseline is above X.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .data import Night

PSI_FLOOR = 1e-4
TOP_CHANGES = 15  # classes listed by how much their share moved


def shares(counts: Mapping[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence, base 2, of two distributions on the same support (each sums to 1,
    or is all zeros: an empty night has divergence 0 from another empty night, 1 from any other)."""
    sp, sq = sum(p), sum(q)
    if sp == 0 or sq == 0:
        return 0.0 if sp == sq else 1.0
    total = 0.0
    for a, b in zip(p, q, strict=True):
        a, b = a / sp, b / sq
        m = (a + b) / 2
        if a > 0:
            total += 0.5 * a * math.log2(a / m)
        if b > 0:
            total += 0.5 * b * math.log2(b / m)
    return min(max(total, 0.0), 1.0)


def psi(p: Sequence[float], q: Sequence[float], floor: float = PSI_FLOOR) -> float:
    """Population stability index of ``p`` (tonight) against ``q`` (the baseline)."""
    total = 0.0
    for a, b in zip(p, q, strict=True):
        a, b = max(a, floor), max(b, floor)
        total += (a - b) * math.log(a / b)
    return total


@dataclass
class ShareChange:
    label: str
    baseline: float  # share among the baseline's ok images
    tonight: float

    @property
    def delta(self) -> float:
        return self.tonight - self.baseline


@dataclass
class Drift:
    baseline: str  # the baseline's output directory
    baseline_name: str
    js: float
    psi: float
    new_classes: list[str] = field(default_factory=list)
    vanished_classes: list[str] = field(default_factory=list)
    changes: list[ShareChange] = field(default_factory=list)
    confidence_js: float = 0.0
    confidence_mean: tuple[float | None, float | None] = (None, None)  # (baseline, tonight)
    hist: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))
    error_rate: tuple[float, float] = (0.0, 0.0)  # (baseline, tonight)
    images: tuple[int, int] = (0, 0)

    def as_dict(self) -> dict:
        return {
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "class_mix": {
                "js_divergence": round(self.js, 6),
                "psi": round(self.psi, 6),
                "new_classes": self.new_classes,
                "vanished_classes": self.vanished_classes,
                "share_changes": [
                    {
                        "class": c.label,
                        "baseline": round(c.baseline, 6),
                        "tonight": round(c.tonight, 6),
                        "change": round(c.delta, 6),
                    }
                    for c in self.changes
                ],
            },
            "confidence": {
                "mean_baseline": _round(self.confidence_mean[0]),
                "mean_tonight": _round(self.confidence_mean[1]),
                "histogram_js_divergence": round(self.confidence_js, 6),
                "histogram_baseline": list(self.hist[0]),
                "histogram_tonight": list(self.hist[1]),
            },
            "error_rate": {
                "baseline": round(self.error_rate[0], 6),
                "tonight": round(self.error_rate[1], 6),
                "change": round(self.error_rate[1] - self.error_rate[0], 6),
            },
            "images": {"baseline": self.images[0], "tonight": self.images[1]},
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def drift(tonight: Night, baseline: Night) -> Drift:
    p, q = shares(tonight.classes), shares(baseline.classes)
    labels = sorted(set(p) | set(q))
    pv = [p.get(k, 0.0) for k in labels]
    qv = [q.get(k, 0.0) for k in labels]
    changes = [ShareChange(k, q.get(k, 0.0), p.get(k, 0.0)) for k in labels]
    changes.sort(key=lambda c: (-abs(c.delta), c.label))
    return Drift(
        baseline=str(baseline.out.resolve()),
        baseline_name=baseline.name,
        js=js_divergence(pv, qv) if labels else 0.0,
        psi=psi(pv, qv) if p and q else 0.0,
        new_classes=[k for k in labels if k not in q],
        vanished_classes=[k for k in labels if k not in p],
        changes=changes[:TOP_CHANGES],
        confidence_js=js_divergence(tonight.hist, baseline.hist),
        confidence_mean=(baseline.mean_confidence, tonight.mean_confidence),
        hist=(list(baseline.hist), list(tonight.hist)),
        error_rate=(baseline.error_rate, tonight.error_rate),
        images=(baseline.images, tonight.images),
    )
