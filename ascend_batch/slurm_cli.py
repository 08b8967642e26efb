"""``ascend-batch slurm ...``: submit a job to Slurm as an array plus a dependent finalize job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .slurm.options import DEFAULT_FINALIZE_TIME, DEFAULT_SIGNAL_TIME

slurm_app = typer.Typer(help="Submit a job to Slurm as an array plus a dependent finalize job.", no_args_is_help=True)


@slurm_app.command()
def submit(
    manifest: Annotated[Path, typer.Argument(help="The job's TOML manifest.")],
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
        bool, typer.Option("--dry-run", help="Print the scripts and commands; submit nothing, write nothing.")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Block until the finalize job ends; exit 0 only if the output is complete (_SUCCESS)."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job ids as JSON.")] = False,
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
            typer.echo(
                f"nothing to submit: every unit in {out} is committed (run `ascend-batch finalize {out}` "
                "if _SUCCESS is missing)"
            )
            return
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
        )
        if dry_run:
            array_text = render_array_script(files, opts)
            finalize_text = render_finalize_script(files, opts)
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
        typer.echo(json.dumps(sub.as_dict()))
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
        typer.echo(f"complete: {out / SUCCESS_FILE}")
