"""The ``ascend-batch`` command line: thin commands over the library, typed errors -> exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__
from .cli_errors import fail
from .errors import EXIT_OK

app = typer.Typer(
    name="ascend-batch",
    help="Classify image archives in resumable batch jobs into a Parquet dataset.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    import os

    if text:
        try:
            k, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise typer.BadParameter(f"expected k/K like 0/4, got {text!r}") from None
        if not 0 <= k < n:
            raise typer.BadParameter(f"shard {k}/{n}: k must be in 0..K-1")
        return (k, n)
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if task is None:
        return None
    shards = os.environ.get("ASCEND_BATCH_SHARDS")
    if shards:  # explicit: task ids are the shard numbers 0..K-1 (any subset may be submitted)
        return (int(task), int(shards))
    count = int(os.environ.get("SLURM_ARRAY_TASK_COUNT", "1"))
    lo = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    hi = int(os.environ.get("SLURM_ARRAY_TASK_MAX", str(lo + count - 1)))
    if hi - lo + 1 != count:
        raise typer.BadParameter(
            f"this Slurm array ({os.environ.get('SLURM_ARRAY_JOB_ID')}) is not a contiguous range, so its shards "
            "cannot be derived: pass --shard k/K, or set ASCEND_BATCH_SHARDS=K"
        )
    return (int(task) - lo, count)


@app.command()
def run(
    manifest: Annotated[Path, typer.Argument(help="The job's TOML manifest.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Override job.output.")] = None,
    devices: Annotated[str | None, typer.Option(help="Override runtime.devices, e.g. 'cpu:0,cpu:1' or '0,1'.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Override runtime.batch_size.")] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard existing results in the output and start over.")
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(help="Process only units with unit % K == k ('k/K'); default from SLURM_ARRAY_TASK_ID/COUNT."),
    ] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Log lines instead of a progress bar.")] = False,
    log_interval: Annotated[float, typer.Option(help="Seconds between progress log lines without a bar.")] = 30.0,
    max_error_fraction: Annotated[
        float | None,
        typer.Option(help="Exit 6 if more than this fraction of images failed (overrides job.max_error_fraction)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check everything `validate` checks, with these options; run nothing.")
    ] = False,
) -> None:
    """Run a job, or resume it where it stopped."""
    from .runner.supervisor import install_early_drain

    install_early_drain()  # a Slurm warning signal during start-up must not kill us
    from .manifest import load_manifest, parse_manifest
    from .pyarrow_lean import skip_pandas_check
    from .runner.job import run_job

    skip_pandas_check()  # this command never uses pandas: its import would delay the start of every run

    try:
        m = load_manifest(manifest)
        if devices is not None or batch_size is not None:
            raw = {k: dict(v) if isinstance(v, dict) else v for k, v in m.raw.items()}
            rt = raw.setdefault("runtime", {})
            if devices is not None:
                rt["devices"] = [int(d) if d.strip().isdigit() else d.strip() for d in devices.split(",") if d.strip()]
            if batch_size is not None:
                rt["batch_size"] = batch_size
            assert m.source is not None
            m = parse_manifest(raw, m.source.parent, m.source)
        if output is not None:
            m = m.with_output(output.resolve())
        if dry_run:
            from .cli_validate import describe

            typer.echo(describe(m))
            return
        bar = not no_progress and sys.stdout.isatty() and sys.stderr.isatty()
        report = run_job(
            m,
            restart_job=restart,
            shard=_parse_shard(shard),
            progress_bar=bar,
            log_interval=log_interval,
            max_error_fraction=max_error_fraction,
        )
    except Exception as exc:
        done = getattr(exc, "report", None)  # a run that ended with a documented non-zero code
        if done is not None:
            _print_report(done)
        fail(exc)
    _print_report(report)


def _print_report(report: Any) -> None:
    st = report.status
    scope = f"shard {report.shard[0]}/{report.shard[1]}" if report.shard else "job"
    typer.echo(
        f"{scope} done: {report.outcome.images} images this run; output {st.out}: "
        f"{st.images}/{st.n_items} images ({st.ok} ok, {st.errors} failed), units {st.units_done}/{st.n_units}"
    )
    rate = report.summary.get("images_per_second")
    if rate:
        typer.echo(f"throughput: {rate} img/s over {report.summary['wall_seconds']} s")
    if st.errors:
        kinds = ", ".join(f"{k} ({n})" for k, n in st.top_errors(5))
        typer.echo(f"most common errors: {kinds}")


@app.command()
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Where to write the photos, manifest and results.")] = Path(
        "demo"
    ),
) -> None:
    """Classify real photos (from scikit-image) offline: writes a folder, a tar and a manifest, then runs it."""
    from .api import load_results
    from .demo import materialise
    from .manifest import load_manifest
    from .runner.job import run_job

    try:
        manifest = materialise(folder)
        typer.echo(f"wrote demo photos and {manifest}")
        report = run_job(load_manifest(manifest), progress_bar=sys.stderr.isatty())
        df = load_results(report.out)
    except Exception as exc:
        fail(exc)
    for row in df.itertuples():
        if row.status == "ok":
            top = ", ".join(f"{lab} {p:.2f}" for lab, p in zip(row.top5_label[:3], row.top5_prob[:3], strict=False))
            typer.echo(f"{row.image_id:32s} {top}")
        else:
            typer.echo(f"{row.image_id:32s} ERROR {row.error}")
    typer.echo(f"results: {report.out} (pandas.read_parquet('{report.out}'))")


@app.command()
def finalize(
    out: Annotated[Path, typer.Argument(help="A job's output directory.")],
    max_error_fraction: Annotated[
        float | None,
        typer.Option(help="Exit 6 (no _SUCCESS) above this error fraction; default: the manifest's, from _job.json."),
    ] = None,
) -> None:
    """Verify every part in full; write _summary.json, and _SUCCESS only when all is well (else exit 6 or 7)."""
    from .runner.finalize import finalize as finalize_job

    try:
        fin = finalize_job(out, max_error_fraction=max_error_fraction)
        fin.raise_for_status()
    except Exception as exc:
        fail(exc)
    st = fin.status
    typer.echo(
        f"complete: {st.units_done}/{st.n_units} units verified, {st.images} images ({st.errors} errors); "
        f"wrote {out / '_SUCCESS'}"
    )


@app.command()
def bench(
    images: Annotated[Path, typer.Argument(help="A folder (or archive, list file) of images.")],
    backend: Annotated[str, typer.Option(help="onnxruntime | acl | torch")] = "onnxruntime",
    devices: Annotated[str, typer.Option(help="Devices for the runner, comma separated.")] = "cpu:0",
    batch_size: Annotated[int | None, typer.Option(min=1, help="Default: the runner's (runtime.batch_size).")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Repeats; medians are reported.")] = 3,
    model_path: Annotated[Path | None, typer.Option(help="A model file instead of the default model.")] = None,
    arch: Annotated[
        str | None, typer.Option(help="torch: architecture of a state-dict --model-path (model.arch), e.g. resnet50.")
    ] = None,
    unit_size: Annotated[int | None, typer.Option(min=1, help="Default: the runner's (runtime.unit_size).")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N images.")] = None,
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
        if scaling:
            counts = [int(x) for x in scaling.split(",")]
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


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def _register_subcommands() -> None:
    from . import cli_results, cli_validate
    from .slurm_cli import slurm_app

    cli_validate.register(app)
    cli_results.register(app)
    app.add_typer(slurm_app, name="slurm")


_register_subcommands()


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        raise SystemExit(exc.code if exc.code is not None else EXIT_OK) from None
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
