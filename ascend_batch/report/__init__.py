"""``ascend-batch report``: the night's page (self-contained HTML) and JSON summary, and drift between
nights. ``data`` reads an output directory (only the columns it needs, one part at a time), ``drift``
compares two nights, ``thumbs`` makes bounded thumbnails through the runner's reader, ``html`` renders
the page (Jinja2: the ``report`` extra, imported only to write the page)."""

from __future__ import annotations

from .build import HTML_FILE, JSON_FILE, Report, build_report, check_drift, write_report
from .drift import js_divergence, psi

__all__ = [
    "HTML_FILE",
    "JSON_FILE",
    "Report",
    "build_report",
    "check_drift",
    "js_divergence",
    "psi",
    "write_report",
]
