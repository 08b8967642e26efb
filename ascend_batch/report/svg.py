"""Charts as inline SVG in HTML5 (no ``xmlns`` URL needed, no script, no external resource): bars of
the class mix, a histogram of the confidence, optionally with the baseline night's beside it."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

TONIGHT = "#2f6db5"
BASELINE = "#b0b7c3"


def _text(x: float, y: float, s: str, *, anchor: str = "start", size: int = 12, fill: str = "#222") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}">{escape(s)}</text>'


def class_bars(rows: Sequence[tuple[str, int, float]], *, width: int = 760, label_width: int = 230) -> str:
    """Horizontal bars: (label, images, share) per row, longest first as given."""
    row_h, top = 20, 4
    height = top + row_h * max(len(rows), 1) + 4
    biggest = max((n for _, n, _ in rows), default=1) or 1
    room = width - label_width - 110
    parts = [
        f'<svg role="img" aria-label="class mix" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
    ]
    for i, (label, n, share) in enumerate(rows):
        y = top + i * row_h
        w = max(room * n / biggest, 1.0)
        shown = label if len(label) <= 34 else label[:33] + "…"
        parts.append(_text(label_width - 6, y + 14, shown, anchor="end"))
        parts.append(
            f'<rect x="{label_width}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{TONIGHT}">'
            f"<title>{escape(label)}: {n} ({share:.1%})</title></rect>"
        )
        parts.append(_text(label_width + w + 6, y + 14, f"{n:,} ({share:.1%})"))
    parts.append("</svg>")
    return "".join(parts)


def histogram(
    tonight: Sequence[int],
    baseline: Sequence[int] | None = None,
    *,
    width: int = 760,
    height: int = 220,
    label: str = "confidence histogram",
) -> str:
    """Vertical bars over [0, 1] (one per bin), as shares of each night's images so nights of
    different sizes compare; a baseline's bars stand to the left of tonight's."""
    left, bottom, top, right = 40, 30, 10, 10
    plot_w, plot_h = width - left - right, height - top - bottom
    bins = len(tonight)
    series = [(list(baseline), BASELINE)] if baseline is not None else []
    series.append((list(tonight), TONIGHT))
    norm = []
    for values, colour in series:
        total = sum(values) or 1
        norm.append(([v / total for v in values], values, colour))
    peak = max((max(s) for s, _, _ in norm if s), default=0) or 1
    slot = plot_w / max(bins, 1)
    bar_w = (slot - 2) / len(norm)
    parts = [
        f'<svg role="img" aria-label="{escape(label)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
    ]
    for k, (shares, counts, colour) in enumerate(norm):
        for i, (share, count) in enumerate(zip(shares, counts, strict=True)):
            h = plot_h * share / peak
            x = left + i * slot + 1 + k * bar_w
            lo, hi = i / bins, (i + 1) / bins
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{lo:.2f}–{hi:.2f}: {count:,} ({share:.1%})</title></rect>'
            )
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(_text(left + tick * plot_w, top + plot_h + 18, f"{tick:g}", anchor="middle", size=11))
    parts.append(_text(left - 4, top + 10, f"{peak:.0%}", anchor="end", size=11))
    parts.append("</svg>")
    return "".join(parts)
