"""How every CLI command reports a failure: a typed error is one line (or one per manifest key) and its
documented exit code; anything else is a bug, shown with its traceback, exit 1. Shared by ``cli`` and
``slurm_cli`` (neither imports the other's internals)."""

from __future__ import annotations

import traceback
from typing import NoReturn

import typer

from .errors import EXIT_INTERNAL, AscendBatchError, ManifestErrors


def fail(exc: BaseException) -> NoReturn:
    if isinstance(exc, ManifestErrors):
        for e in exc.errors:
            typer.echo(f"error: {e}", err=True)
        raise typer.Exit(exc.exit_code)
    if isinstance(exc, AscendBatchError):
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code)
    traceback.print_exc()
    typer.echo(f"internal error: {type(exc).__name__}: {exc} (please report this with the traceback)", err=True)
    raise typer.Exit(EXIT_INTERNAL)
