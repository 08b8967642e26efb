"""``ascend-batch status`` and ``evaluate``: what a job's output directory holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .cli_errors import fail


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(evaluate)


def status(
    out: Annotated[Path, typer.Argument(help="A job's output directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Progress of a job from its output directory alone (during or after a run, any shell)."""
    from .runner.summary import job_status, summary_dict

    try:
        st = job_status(out)
    except Exception as exc:
        fail(exc)
    if as_json:
        data = summary_dict(st)
        data["images_per_second_recent"] = st.recent_rate
        data["eta_seconds"] = st.eta_seconds
        typer.echo(json.dumps(data, indent=2))
        return
    state = "complete" if st.complete else "in progress or stopped"
    typer.echo(f"job {st.name!r} in {st.out}: {state}")
    typer.echo(f"units:  {st.units_done}/{st.n_units} committed")
    typer.echo(f"images: {st.images}/{st.n_items} ({st.ok} ok, {st.errors} error)")
    if st.recent_rate:
        eta = st.eta_seconds
        typer.echo(
            f"rate:   {st.recent_rate:.1f} img/s (latest commits)"
            + (f", eta {eta:.0f} s" if eta and not st.complete else "")
        )
    if st.errors:
        typer.echo("errors: " + ", ".join(f"{k} ({n})" for k, n in st.top_errors(5)))


def evaluate(
    out: Annotated[Path, typer.Argument(help="A job's output directory.")],
    labels: Annotated[Path, typer.Option(help="CSV with columns file,index (file = image_id or its file name).")],
) -> None:
    """Top-1 / top-5 accuracy against a labels CSV; also written to OUT/_evaluation.json."""
    from .evaluate import evaluate as run_eval
    from .evaluate import write_evaluation

    try:
        acc = run_eval(out, labels)
        path = write_evaluation(out, acc, labels)
    except Exception as exc:
        fail(exc)
    typer.echo(
        f"top-1 {acc.top1:.4f}  top-5 {acc.top5:.4f}  ({acc.matched} labelled images with results, "
        f"{acc.ok} classified, {acc.missing} without results) -> {path}"
    )
