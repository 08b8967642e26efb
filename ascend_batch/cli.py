"""The ``ascend-batch`` command line: thin commands over the library, typed errors -> exit codes.

Conventions (tests/test_cli_usage.py holds every command to them): ``-h`` is ``--help``; every help
ends with an example; a user's mistake exits 2 (or its documented code) with a message naming the
option, key or path, never with a traceback (:mod:`.cli_errors`); the main help lists the exit codes
(from :mod:`.errors`, the one place they are written)."""

from __future__ import annotations

import json
import re
import signal
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__, errors
from .cli_errors import explain, fail
from .cli_output import print_report, run_json, stdout_to_stderr
from .errors import EXIT_OK


def exit_codes() -> dict[int, str]:
    """The exit codes and their meaning, from the table in :mod:`.errors`' docstring."""
    table = (errors.__doc__ or "").split("====", 2)[-1]
    codes: dict[int, str] = {}
    current = None
    for line in table.splitlines():
        m = re.match(r"^(\d+)\s+(.*)$", line)
        if m:
            current = int(m.group(1))
            codes[current] = m.group(2).strip()
        elif current is not None and line.startswith(" ") and line.strip():
            codes[current] += " " + line.strip()
    return {code: text.replace("``", "") for code, text in codes.items()}


def _exit_codes_help() -> str:
    lines = []
    for code, text in exit_codes().items():
        lines += textwrap.wrap(text, 72, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
    return "Exit codes:\n\n\b\n" + "\n".join(lines)


def example(*lines: str) -> str:
    """An ``Example:`` epilog, its lines kept as written."""
    return "Example:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)


EXAMPLES = {  # every command's help ends with one of these (tests/test_cli_usage.py checks it)
    "run": example(
        "ascend-batch run job.toml",
        "ascend-batch run job.toml --devices cpu:0,cpu:1 --batch-size 64 -o /tmp/out",
        "ascend-batch run job.toml --json > report.json   # progress on stderr",
    ),
    "demo": example("ascend-batch demo --dir /tmp/demo"),
    "finalize": example("ascend-batch finalize results/nightly"),
    "bench": example("ascend-batch bench photos/ --repeats 3 --scaling 1,2 --json bench.json"),
    "version": example("ascend-batch version"),
    "validate": example("ascend-batch validate job.toml"),
    "status": example("ascend-batch status results/nightly --json"),
    "evaluate": example("ascend-batch evaluate results/nightly --labels labels.csv"),
    "report": example("ascend-batch report results/nightly --baseline results/last-night"),
    "slurm": example("ascend-batch slurm submit job.toml --array 8 --dry-run"),
    "submit": example(
        "ascend-batch slurm submit job.toml --array 8 --partition gpu --gres gpu:2 --time 4:00:00",
        "ascend-batch slurm submit job.toml --array 8 --dry-run --json",
    ),
}

CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="ascend-batch",
    help="Classify image archives in resumable batch jobs into a Parquet dataset.",
    epilog=_exit_codes_help(),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags shown as flags, examples kept as written
    context_settings=CONTEXT,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ascend-batch {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Classify image archives in resumable batch jobs into a Parquet dataset."""


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    """``--shard k/K``, else the shard of this Slurm array task (from its environment), else None."""
    import os

    if text:
        try:
            k, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise typer.BadParameter(f"expected k/K like 0/4, got {text!r}", param_hint="--shard") from None
        if not 0 <= k < n:
            raise typer.BadParameter(f"{k}/{n}: k must be in 0..K-1 (0..{n - 1})", param_hint="--shard")
        return (k, n)
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if task is None:
        return None

    def number(name: str, default: str | None = None) -> int:
        value = os.environ.get(name, default)
        try:
            return int(value or "")
        except ValueError:
            raise typer.BadParameter(f"expected a whole number, got {value!r}", param_hint=name) from None

    shards = os.environ.get("ASCEND_BATCH_SHARDS")
    if shards:  # explicit: task ids are the shard numbers 0..K-1 (any subset may be submitted)
        k, n = number("SLURM_ARRAY_TASK_ID"), number("ASCEND_BATCH_SHARDS")
        if not 0 <= k < n:
            raise typer.BadParameter(
                f"array task {k} is not a shard of ASCEND_BATCH_SHARDS={n} (0..{n - 1})", param_hint="--shard"
            )
        return (k, n)
    count = number("SLURM_ARRAY_TASK_COUNT", "1")
    lo = number("SLURM_ARRAY_TASK_MIN", "0")
    hi = number("SLURM_ARRAY_TASK_MAX", str(lo + count - 1))
    if hi - lo + 1 != count:
        raise typer.BadParameter(
            f"this Slurm array ({os.environ.get('SLURM_ARRAY_JOB_ID')}) is not a contiguous range, so its shards "
            "cannot be derived: pass --shard k/K, or set ASCEND_BATCH_SHARDS=K",
            param_hint="--shard",
        )
    k = number("SLURM_ARRAY_TASK_ID") - lo
    if not 0 <= k < count:
        raise typer.BadParameter(f"SLURM_ARRAY_TASK_ID={task} is outside the array {lo}..{hi}", param_hint="--shard")
    return (k, count)


class Stopped(BaseException):
    """A stop signal outside the supervisor. A BaseException, as KeyboardInterrupt is, so that no
    ``except Exception`` on the way swallows it; :func:`main` makes it exit 130."""

    def message(self) -> str:
        return f"interrupted by {self.args[0]}: committed units are kept; rerun the same command to resume"


def _interrupted(signum: int, frame: Any) -> None:
    raise Stopped(signal.Signals(signum).name)


def stop_on_signals() -> None:
    """SIGINT and SIGTERM stop ``run`` with exit 130 at any moment; the supervisor handles them
    itself (draining workers) while it runs, and gives them back to these handlers afterwards."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupted)


@app.command(epilog=EXAMPLES["run"])
def run(
    manifest: Annotated[Path, typer.Argument(help="The job's TOML manifest.", metavar="MANIFEST")],
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
    log_interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between progress log lines without a bar.")
    ] = 30.0,
    max_error_fraction: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Exit 6 if more than this fraction of images failed (overrides job.max_error_fraction).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check everything `validate` checks, with these options; run nothing.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print a machine-readable report on stdout at the end (counts, img/s, exit code, error); "
            "progress and messages go to stderr.",
        ),
    ] = False,
) -> None:
    """Run a job, or resume it where it stopped."""
    from .runner.main_guard import exit_if_bootstrapping
    from .runner.signals import install_early_drain

    exit_if_bootstrapping()  # a script without the main guard, re-run by a spawned worker: stop quietly
    install_early_drain()  # a Slurm warning signal during start-up must not kill us
    stop_on_signals()  # Ctrl-C or SIGTERM outside the supervisor (listing, finalize): exit 130, as inside it
    from .manifest import load_manifest, parse_manifest
    from .pyarrow_lean import skip_pandas_check
    from .runner.job import run_job

    skip_pandas_check()  # this command never uses pandas: its import would delay the start of every run

    out: Path | None = output.resolve() if output is not None else None
    json_stream: Any = sys.stdout  # with --json, the report's stream: the real stdout once that is redirected
    try:
        m = load_manifest(manifest)
        out = out or m.job.output
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
        if dry_run:  # what validate checks, with this command's options
            from .cli_validate import describe, describe_dict

            shard_k = _parse_shard(shard)
            if as_json:
                typer.echo(json.dumps(describe_dict(m, restart=restart, shard=shard_k), indent=2))
            else:
                typer.echo(describe(m, restart=restart, shard=shard_k))
            return
        if as_json:
            json_stream = stdout_to_stderr()
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
            print_report(done, err=as_json)
        if as_json:
            code, lines = explain(exc)
            typer.echo(json.dumps(run_json(done, out, code, "\n".join(lines))), file=json_stream)
        fail(exc)
    print_report(report, err=as_json)
    if as_json:
        typer.echo(json.dumps(run_json(report, report.out, EXIT_OK, None)), file=json_stream)


@app.command(epilog=EXAMPLES["demo"])
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


@app.command(epilog=EXAMPLES["finalize"])
def finalize(
    out: Annotated[Path, typer.Argument(help="A job's output directory.", metavar="OUT")],
    max_error_fraction: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Exit 6 (no _SUCCESS) above this error fraction; default: the manifest's, from _job.json.",
        ),
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


@app.command(epilog=EXAMPLES["version"])
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def _register_subcommands() -> None:
    from . import cli_bench, cli_report, cli_results, cli_validate
    from .slurm_cli import slurm_app

    cli_bench.register(app)
    cli_validate.register(app)
    cli_results.register(app)
    cli_report.register(app)
    app.add_typer(slurm_app, name="slurm")
    _add_examples(app)


def _add_examples(typer_app: typer.Typer) -> None:
    """Give every command (registered here or by another module) its example, unless it has an epilog."""
    for info in typer_app.registered_commands:
        name = info.name or (info.callback.__name__.replace("_", "-") if info.callback else "")
        if info.epilog is None and name in EXAMPLES:
            info.epilog = EXAMPLES[name]
    for group in typer_app.registered_groups:
        sub = group.typer_instance
        if sub is None:
            continue
        name = _unset(group.name) or _unset(sub.info.name) or ""
        if _unset(group.epilog) is None and _unset(sub.info.epilog) is None and name in EXAMPLES:
            group.epilog = EXAMPLES[name]
        _add_examples(sub)


def _unset(value: Any) -> Any:
    """A typer setting's value, None for one left at its default (typer's ``Default(None)`` placeholder)."""
    return getattr(value, "value", value)


_register_subcommands()


def main() -> None:
    try:
        app(prog_name="ascend-batch")
    except Stopped as stop:
        typer.echo(f"error: {stop.message()}", err=True)
        sys.exit(errors.EXIT_INTERRUPTED)
    except SystemExit as exc:
        raise SystemExit(exc.code if exc.code is not None else EXIT_OK) from None
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
