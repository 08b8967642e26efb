"""What ``run`` prints at its end: the human summary, and with ``--json`` one JSON object on the real
stdout while everything else goes to stderr."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer


def stdout_to_stderr() -> Any:
    """Send everything written to stdout from now on (by this process, its workers, native libraries)
    to stderr; return a stream on the real stdout, for ``run --json``'s report alone."""
    import os

    sys.stdout.flush()
    real = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return real


def run_json(report: Any, out: Path | None, exit_code: int, error: str | None) -> dict:
    """``run --json``: the final report, the same keys whether the run succeeded, failed or never started
    (then the counts are null)."""
    from .runner.outdir import SUCCESS_FILE

    data: dict[str, Any] = {
        "exit_code": exit_code,
        "error": error,
        "output": str(out) if out is not None else None,
        "shard": None,
        "run_id": None,
        "success": None,
        "images_this_run": None,
        "images_per_second": None,
        "wall_seconds": None,
        "n_items": None,
        "n_units": None,
        "units_done": None,
        "images": None,
        "ok": None,
        "errors": None,
        "top_errors": None,
    }
    if report is None:
        return data
    st = report.status
    summary = report.summary
    data.update(
        output=str(report.out),
        shard=list(report.shard) if report.shard else None,
        run_id=report.run_id,
        success=(Path(report.out) / SUCCESS_FILE).exists(),
        images_this_run=report.outcome.images,
        images_per_second=summary.get("images_per_second"),
        wall_seconds=summary.get("wall_seconds"),
        n_items=st.n_items,
        n_units=st.n_units,
        units_done=st.units_done,
        images=st.images,
        ok=st.ok,
        errors=st.errors,
        top_errors=dict(st.top_errors(5)),
    )
    return data


def print_report(report: Any, *, err: bool = False) -> None:
    st = report.status
    scope = f"shard {report.shard[0]}/{report.shard[1]}" if report.shard else "job"
    typer.echo(
        f"{scope} done: {report.outcome.images} images this run; output {st.out}: "
        f"{st.images}/{st.n_items} images ({st.ok} ok, {st.errors} failed), units {st.units_done}/{st.n_units}",
        err=err,
    )
    rate = report.summary.get("images_per_second")
    if rate:
        typer.echo(f"throughput: {rate} img/s over {report.summary['wall_seconds']} s", err=err)
    if st.errors:
        kinds = ", ".join(f"{k} ({n})" for k, n in st.top_errors(5))
        typer.echo(f"most common errors: {kinds}", err=err)
