"""``ascend-batch report``: the night's HTML page and JSON summary, drift against earlier nights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .cli_errors import fail


def register(app: typer.Typer) -> None:
    app.command()(report)


def report(
    out: Annotated[Path, typer.Argument(help="A job's output directory (tonight).")],
    baseline: Annotated[
        list[Path] | None,
        typer.Option("--baseline", help="An earlier night's output directory to compare with (repeatable)."),
    ] = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Where to write the page [default: OUT/_report.html].")
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json-file", help="Where to write the JSON summary [default: OUT/_report.json].")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON summary instead of the short text.")] = False,
    fail_on_drift: Annotated[
        float | None,
        typer.Option(
            "--fail-on-drift",
            min=0.0,
            max=1.0,
            help="Exit 9 when the class mix's Jensen-Shannon divergence (base 2, 0..1) from a baseline is above this.",
        ),
    ] = None,
    thumbnails: Annotated[
        int, typer.Option("--thumbnails", min=0, help="At most this many thumbnails on the page (0: none).")
    ] = 48,
) -> None:
    """Write the night's self-contained HTML page and JSON summary (and compare with --baseline nights)."""
    from .report import HTML_FILE, JSON_FILE, build_report, check_drift, write_report

    try:
        baselines = baseline if baseline is not None else series_baselines(out)
        rep = build_report(out, baselines, thumbnails=thumbnails)
        html_path = html or out / HTML_FILE
        json_path = json_file or out / JSON_FILE
        data = write_report(rep, html_path, json_path)
    except Exception as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(
            f"report of {data['name']!r}: {data['images']['processed']} images "
            f"({data['images']['ok']} ok, {data['images']['error']} error), "
            f"{data['classes']['distinct']} classes -> {html_path}, {json_path}"
        )
        for d in data["drift"]:
            mix = d["class_mix"]
            typer.echo(
                f"drift vs {d['baseline']}: JS {mix['js_divergence']:.4f}, PSI {mix['psi']:.4f}, "
                f"error rate {d['error_rate']['baseline']:.2%} -> {d['error_rate']['tonight']:.2%}"
            )
    try:
        check_drift(rep, fail_on_drift)
    except Exception as exc:
        fail(exc)


def series_baselines(out: Path) -> list[Path]:
    """Without ``--baseline``: the earlier nights of an incremental series, i.e. the ``dataset.skip_existing``
    outputs of the manifest recorded in ``OUT/_job.json`` (none when it records none, or cannot be read)."""
    from .incremental import earlier_dirs
    from .manifest import load_manifest
    from .runner.jobdir import read_job

    meta = read_job(out) or {}
    source = meta.get("manifest")
    if not source or not Path(source).is_file():
        return []
    try:
        manifest = load_manifest(source)
        return earlier_dirs(manifest.dataset.skip_existing, own=out)
    except Exception:  # a manifest edited or moved since: report without a baseline, as for a first night
        return []
