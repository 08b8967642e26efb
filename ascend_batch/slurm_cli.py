"""``ascend-batch slurm ...``: submit a job to Slurm as an array plus a dependent finalize job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .slurm.options import DEFAULT_FINALIZE_TIME, DEFAULT_SIGNAL_TIME

slurm_app = typer.Typer(
    help="Submit a job to Slurm as an array plus a dependent finalize job.",
    no_args_is_help=True,
    rich_markup_mode=None,  # as the main command: plain help, flags shown as flags
)


@slurm_app.command()
def submit(
    manifest: Annotated[Path, typer.Argument(help="The job's TOML manifest.", metavar="MANIFEST")],
    array: Annotated[
        int,
        typer.Option(
            "--array", min=1, help="Number of array tasks K (shards): task k classifies the units with unit % K == k."
        ),
    ],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Override job.output.")] = None,
    partition: Annotated[str | None, typer.Option(help="sbatch --partition (array and finalize job).")] = None,
    account: Annotated[str | None, typer.Option(help="sbatch --account (array and finalize job).")] = None,
    time_limit: Annotated[
        str | None, typer.Option("--time", help="sbatch --time per array task, e.g. 4:00:00.")
    ] = None,
    gres: Annotated[str | None, typer.Option(help="sbatch --gres per array task, e.g. gpu:2.")] = None,
    cpus_per_task: Annotated[int | None, typer.Option(min=1, help="sbatch --cpus-per-task per array task.")] = None,
    mem: Annotated[str | None, typer.Option(help="sbatch --mem per array task, e.g. 16G.")] = None,
    job_name: Annotated[str | None, typer.Option(help="Slurm job name (default: job.name).")] = None,
    max_parallel: Annotated[
        int | None, typer.Option(min=1, help="Run at most N array tasks at once (--array=...%N).")
    ] = None,
    signal_time: Annotated[
        int,
        typer.Option(
            min=1,
            help="Seconds before the time limit at which Slurm sends USR1 (the task drains, commits and requeues).",
        ),
    ] = DEFAULT_SIGNAL_TIME,
    no_requeue: Annotated[bool, typer.Option("--no-requeue", help="No USR1 signal, no requeue.")] = False,
    finalize_time: Annotated[str, typer.Option(help="sbatch --time of the finalize job.")] = DEFAULT_FINALIZE_TIME,
    extra: Annotated[
        list[str] | None,
        typer.Option("--extra", help="Extra sbatch option for the array job, e.g. --extra=--qos=high (repeatable)."),
    ] = None,
    finalize_extra: Annotated[
        list[str] | None,
        typer.Option("--finalize-extra", help="Extra sbatch option for the finalize job (repeatable)."),
    ] = None,
    only_missing: Annotated[
        bool,
        typer.Option(
            "--only-missing",
            help="Submit only the array tasks whose units are not all committed yet (after a failed task).",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print the scripts and commands (as JSON with --json); submit nothing, write nothing."
        ),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Block until the finalize job ends; exit 0 only if the output is complete (_SUCCESS)."
        ),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the job ids (with --dry-run: the scripts and commands) as JSON on stdout; "
            "other messages go to stderr.",
        ),
    ] = False,
) -> None:
    """Write OUT/_slurm/array.sbatch + finalize.sbatch and submit them: K array tasks, then a finalize job
    (afterok) that checks every unit is committed and writes _summary.json and _SUCCESS."""
    from .cli_errors import fail
    from .errors import IncompleteError
    from .manifest import load_manifest
    from .runner.outdir import SUCCESS_FILE
    from .slurm import (
        JobFiles,
        SlurmOptions,
        missing_tasks,
        render_array_script,
        render_finalize_script,
        sbatch_commands,
        wait_for,
    )
    from .slurm import submit as submit_jobs

    try:
        m = load_manifest(manifest)
        out = (output if output is not None else m.job.output).resolve()
        files = JobFiles(out=out, manifest=(m.source or manifest).resolve())
        tasks = missing_tasks(out, array) if only_missing else None
        if tasks == ():
            message = (
                f"nothing to submit: every unit in {out} is committed (run `ascend-batch finalize {out}` "
                "if _SUCCESS is missing)"
            )
            if as_json:
                typer.echo(message, err=True)
                typer.echo(json.dumps({"submitted": False, "tasks": [], "output": str(out), "reason": message}))
            else:
                typer.echo(message)
            return
        check_output(out)
        units, warnings = check_array(m, out, array)
        for warning in warnings:
            typer.echo(f"warning: {warning}", err=True)
        opts = SlurmOptions(
            shards=array,
            job_name=job_name or m.job.name,
            partition=partition,
            account=account,
            time=time_limit,
            gres=gres,
            cpus_per_task=cpus_per_task,
            mem=mem,
            max_parallel=max_parallel,
            signal_time=signal_time,
            requeue=not no_requeue,
            finalize_time=finalize_time,
            extra=tuple(extra or ()),
            finalize_extra=tuple(finalize_extra or ()),
            tasks=tasks,
            report_baselines=_report_baselines(m),
        )
        if dry_run:
            array_text = render_array_script(files, opts)
            finalize_text = render_finalize_script(files, opts)
            if as_json:
                typer.echo(
                    json.dumps(
                        {
                            "dry_run": True,
                            "output": str(out),
                            "array": array,
                            "tasks": list(tasks if tasks is not None else range(array)),
                            "units": units,
                            "warnings": warnings,
                            "scripts": {
                                "array": {"path": str(files.array_script), "text": array_text},
                                "finalize": {"path": str(files.finalize_script), "text": finalize_text},
                            },
                            "commands": [list(cmd) for cmd in sbatch_commands(files)],
                            "workdir": str(files.dir),
                            "logs": str(files.logs),
                        },
                        indent=2,
                    )
                )
                return
            typer.echo(f"# ---- {files.array_script} ----\n{array_text}")
            typer.echo(f"# ---- {files.finalize_script} ----\n{finalize_text}")
            typer.echo("# ---- would run (from " + str(files.dir) + ") ----")
            for cmd in sbatch_commands(files):
                typer.echo(" ".join(cmd))
            return
        sub = submit_jobs(files, opts)
    except Exception as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps({**sub.as_dict(), "units": units, "warnings": warnings}))
    else:
        shown = f"tasks {','.join(map(str, sub.tasks))} of {array}" if tasks is not None else f"{array} tasks"
        typer.echo(
            f"submitted array job {sub.array_job} ({shown}) and finalize job {sub.finalize_job} "
            f"(afterok:{sub.array_job})"
        )
        typer.echo(f"scripts: {files.array_script}, {files.finalize_script}")
        typer.echo(f"logs:    {files.logs}/")
        typer.echo(f"watch:   squeue -j {sub.array_job},{sub.finalize_job}   |   ascend-batch status {out}")
    if wait:
        try:
            states = wait_for(sub)
            final = states.get(sub.finalize_job, "gone")
            if not (out / SUCCESS_FILE).exists():
                failed = sorted(j for j, s in states.items() if j != sub.finalize_job and s != "COMPLETED")
                raise IncompleteError(
                    f"finalize job {sub.finalize_job} ended {final}; array tasks not completed: "
                    f"{', '.join(failed) or 'none'}; see {files.logs}/ and resubmit with --only-missing"
                )
        except Exception as exc:
            fail(exc)
        typer.echo(f"complete: {out / SUCCESS_FILE}", err=as_json)


def unit_count(m: Any, out: Path) -> int:
    """The job's number of units: from ``OUT/_job.json`` when the job was started, else counted from a
    listing of the dataset (as the first array task will list it; nothing is written)."""
    from .incremental import skip_existing
    from .plan import make_units
    from .runner.jobdir import read_job
    from .sources import list_items

    meta = read_job(out) if out.is_dir() else None
    if meta is not None:
        return int(meta["n_units"])
    items = skip_existing(list_items(m.dataset), m.dataset.skip_existing, own=out)
    return len(make_units(sum(1 for _ in items), m.runtime.unit_size))


def check_output(out: Path) -> None:
    """Refuse an output that can never be a directory (a file in the way), as ``run`` would (exit 8),
    before anything is submitted: with ``--dry-run`` too."""
    from .errors import EnvironmentFailure

    nearest = out
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise EnvironmentFailure(
            f"cannot write the job's output: {nearest}: a file is in the way (job.output must be a directory) "
            f"(job.output = {out})"
        )


def check_array(m: Any, out: Path, array: int) -> tuple[int, list[str]]:
    """The job's unit count, and warnings about an array that does not fit it."""
    units = unit_count(m, out)
    warnings = []
    if units == 0:
        warnings.append(f"the job has no images (0 units in {out}): every array task will have nothing to do")
    elif array > units:
        idle = f"task {units}" if array - units == 1 else f"tasks {units}..{array - 1}"
        warnings.append(
            f"--array {array} asks for more tasks than the job has units ({units}; runtime.unit_size is "
            f"{m.runtime.unit_size}): {idle} will have nothing to do; use --array {units} or a smaller "
            "runtime.unit_size"
        )
    return units, warnings


def _report_baselines(m: Any) -> tuple[str, ...] | None:
    """``job.report``: the earlier nights of an incremental series (``dataset.skip_existing``), else None."""
    if not m.job.report:
        return None
    from .incremental import earlier_dirs

    return tuple(str(d) for d in earlier_dirs(m.dataset.skip_existing, own=m.job.output))
