"""``ascend-batch status`` and ``evaluate``: what a job's output directory holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .cli_errors import fail


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(evaluate)


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _last_run(out: Path) -> dict | None:
    from .runner.finalize import read_runs, run_id_epoch

    runs = read_runs(out)
    if not runs:
        return None
    return max(runs.values(), key=lambda r: float(r.get("started_epoch") or run_id_epoch(r["run_id"]) or 0))


def status(
    out: Annotated[Path, typer.Argument(help="A job's output directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Progress of a job from its output directory alone (during or after a run, any shell): running
    (which pid on which host, its rate and ETA), stopped, or complete."""
    from .runner.summary import live_status

    try:
        live = live_status(out)
        last = _last_run(out)
    except Exception as exc:
        fail(exc)
    if as_json:
        data = live.as_dict()
        data["last_run"] = last
        typer.echo(json.dumps(data, indent=2))
        return
    st = live.job
    typer.echo(f"job {st.name!r} in {out}: {live.text}" if st is not None else f"{out}: {live.text}")
    if st is None:
        return
    typer.echo(f"units:  {st.units_done}/{st.n_units} committed")
    typer.echo(f"images: {st.images}/{st.n_items} ({st.ok} ok, {st.errors} error)")
    if live.state == "running":
        if live.rate:
            eta = live.eta_seconds
            typer.echo(
                f"rate:   {live.rate:.1f} img/s (this run: {live.run_images} images in {live.run_commits} units "
                "committed since it started)" + (f", eta {_duration(eta)}" if eta else "")
            )
        else:
            typer.echo(f"rate:   not measured yet (this run has committed {live.run_commits} units)")
    if st.errors:
        typer.echo("errors: " + ", ".join(f"{k} ({n})" for k, n in st.top_errors(5)))
    if last is not None and live.state != "running":
        rate = last.get("images_per_second")
        at = f" at {rate} img/s" if rate else ""
        typer.echo(
            f"last run: {last['run_id']} on {last.get('host')}, ended {last.get('ended')}: "
            f"{last.get('images', 0)} images{at}, {last.get('outcome')} (exit {last.get('exit_code')})"
        )


def _evaluation_text(ev: Any, path: Path, show: int) -> list[str]:
    lines = [
        f"top-1 {ev.top1:.4f}  top-5 {ev.top5:.4f}  ({ev.matched} labelled images with results, "
        f"{ev.ok} classified, {ev.missing} without results) -> {path}"
    ]
    source = {
        "imagenet": "the ImageNet-1k table",
        "results": "the results' labels",
    }.get(ev.classes_from, "the ImageNet-1k table (no classified row confirms it)")
    lines.append(f"labels: {ev.labels} ({ev.key_column} -> {ev.class_column}; class names from {source})")
    if ev.unknown_classes:
        shown = ", ".join(f"{k!r} ({n})" for k, n in list(ev.unknown_classes.items())[:5])
        lines.append(f"warning: {sum(ev.unknown_classes.values())} labels are none of the model's classes: {shown}")
    if ev.duplicate_labels:
        lines.append(f"warning: {ev.duplicate_labels} images are labelled more than once (the last label counts)")
    if show <= 0 or not ev.matched:
        return lines
    worst = [c for c in ev.per_class if c["correct"] < c["images"]][:show]
    if worst:
        lines.append(f"classes with the most misses ({len(ev.per_class)} classes in all):")
        width = max(len(c["class"]) for c in worst)
        for c in worst:
            lines.append(
                f"  {c['class']:<{width}}  top-1 {c['correct']}/{c['images']} = {c['top1']:.3f}  top-5 {c['top5']:.3f}"
            )
    if ev.confusions:
        lines.append("most frequent confusions (true -> predicted: images):")
        for c in ev.confusions[:show]:
            lines.append(f"  {c['true']} -> {c['predicted']}: {c['count']}")
    if ev.misclassified:
        lines.append(f"misclassified images ({len(ev.misclassified)}; all of them in {path}):")
        for w in ev.misclassified[:show]:
            if "error" in w:
                lines.append(f"  {w['image_id']}: {w['true']}, not classified ({w['error']})")
            else:
                lines.append(f"  {w['image_id']}: {w['true']} -> {w['predicted']} ({w['prob']})")
    return lines


def evaluate(
    out: Annotated[Path, typer.Argument(help="A job's output directory.")],
    labels: Annotated[
        Path,
        typer.Option(
            help="CSV with a header: image_id or file (the id, or its file name), and index, wnid, name or label."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole evaluation as JSON.")] = False,
    show: Annotated[int, typer.Option(min=0, help="How many classes, confusions and images the text lists.")] = 10,
) -> None:
    """Top-1/top-5 accuracy against a labels CSV, per class, the most frequent confusions and the
    misclassified images; all of it is also written to OUT/_evaluation.json."""
    from .evaluate import EVAL_FILE, write_evaluation
    from .evaluate import evaluate as run_eval

    try:
        ev = run_eval(out, labels)
    except Exception as exc:
        fail(exc)
    path = out / EVAL_FILE
    try:
        write_evaluation(out, ev)
    except OSError as exc:  # a read-only copy of the results: the evaluation is still worth printing
        typer.echo(f"warning: could not write {path}: {exc.strerror or exc}", err=True)
    if as_json:
        typer.echo(json.dumps(ev.as_dict(), indent=2))
        return
    for line in _evaluation_text(ev, path, show):
        typer.echo(line)
