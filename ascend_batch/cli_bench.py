"""``ascend-batch bench``: the seed-style loop, a batched script, the inference ceiling and the runner,
on the same images and model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .cli_errors import fail


def register(app: typer.Typer) -> None:
    app.command()(bench)


def bench(
    images: Annotated[
        Path, typer.Argument(exists=True, help="A folder (or archive, list file) of images.", metavar="IMAGES")
    ],
    backend: Annotated[str, typer.Option(help="onnxruntime | acl | torch")] = "onnxruntime",
    devices: Annotated[str, typer.Option(help="Devices for the runner, comma separated.")] = "cpu:0",
    batch_size: Annotated[int | None, typer.Option(min=1, help="Default: the runner's (runtime.batch_size).")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Repeats; medians are reported.")] = 3,
    model_path: Annotated[
        Path | None, typer.Option(exists=True, help="A model file instead of the default model.")
    ] = None,
    arch: Annotated[
        str | None, typer.Option(help="torch: architecture of a state-dict --model-path (model.arch), e.g. resnet50.")
    ] = None,
    unit_size: Annotated[int | None, typer.Option(min=1, help="Default: the runner's (runtime.unit_size).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Use only the first N images.")] = None,
    scaling: Annotated[
        str | None, typer.Option(help="Also measure the runner with these CPU worker counts, e.g. '1,2'.")
    ] = None,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the figures.")] = Path("bench.json"),
    png_out: Annotated[Path, typer.Option("--png", help="Bar chart (needs matplotlib).")] = Path("bench.png"),
    no_chart: Annotated[bool, typer.Option("--no-chart", help="Skip the bar chart.")] = False,
) -> None:
    """Seed-style loop vs batched script vs inference ceiling vs the runner, same images and model."""
    from .bench import format_report, run_bench, run_scaling, write_chart
    from .pyarrow_lean import skip_pandas_check

    skip_pandas_check()  # as `run` does: the runner's start is timed as a user's run would see it
    if arch and not model_path:
        raise typer.BadParameter("needs --model-path (the weights file)", param_hint="--arch")
    model = {"path": str(model_path.resolve())} if model_path else None
    if model is not None and arch:
        model["arch"] = arch
    counts = _counts(scaling) if scaling else None
    _check_writable(json_out, "--json")  # before minutes of measurements, not after
    _check_writable(png_out, "--png")
    try:
        report = run_bench(
            images.resolve(),
            backend=backend,
            devices=[d.strip() for d in devices.split(",")],
            batch_size=batch_size,
            repeats=repeats,
            model=model,
            unit_size=unit_size,
            limit=limit,
            log=lambda s: typer.echo(s, err=True),
        )
        if counts:
            report["scaling"] = run_scaling(
                images.resolve(),
                counts,
                backend=backend,
                batch_size=batch_size,
                repeats=repeats,
                model=model,
                unit_size=unit_size,
                log=lambda s: typer.echo(s, err=True),
            )
    except Exception as exc:
        fail(exc)
    json_out.write_text(json.dumps(report, indent=2))
    typer.echo(format_report(report))
    if "scaling" in report:
        sc = report["scaling"]
        typer.echo(
            "scaling: "
            + ", ".join(f"{k} worker(s) {v} img/s (x{sc['speedup'][k]})" for k, v in sc["img_per_s"].items())
        )
    typer.echo(f"wrote {json_out}")
    if not no_chart:
        if write_chart(report, png_out):
            typer.echo(f"wrote {png_out}")
        else:
            typer.echo("no chart: pip install matplotlib (or '.[bench]')", err=True)


def _check_writable(path: Path, hint: str) -> None:
    """Refuse an output file that cannot be written: a folder, or in a folder that does not exist."""
    if path.is_dir():
        raise typer.BadParameter(f"{path} is a folder; give a file name", param_hint=hint)
    if not path.parent.is_dir():
        what = "is a file" if path.parent.exists() else "does not exist"
        raise typer.BadParameter(f"{path}: the folder {path.parent} {what}", param_hint=hint)


def _counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"expected worker counts like 1,2,4, got {text!r}", param_hint="--scaling") from None
    if any(c < 1 for c in counts):
        raise typer.BadParameter(f"worker counts must be at least 1, got {text!r}", param_hint="--scaling")
    return counts
