"""``ascend-batch slurm ...`` commands (filled in by the Slurm work)."""

from __future__ import annotations

import typer

slurm_app = typer.Typer(help="Submit a job to Slurm as an array plus a dependent finalize job.", no_args_is_help=True)
