"""``ascend-batch validate`` (and ``run --dry-run``): check a job before it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .cli_errors import fail


def register(app: typer.Typer) -> None:
    app.command()(validate)


def describe(m: Any) -> str:
    """What ``validate`` says of a good manifest (``m`` a loaded Manifest); raises the typed errors."""
    from .models.resolve import resolve_model

    spec = resolve_model(m.model, m.runtime.backend, build=False)
    return (
        f"ok: job {m.job.name!r} -> {m.job.output}; {len(m.dataset.paths)} dataset path(s); model {spec.name} "
        f"({spec.format}, {spec.preprocess.size}px {spec.preprocess.layout} {spec.preprocess.dtype}); "
        f"{m.runtime.backend} on {', '.join(str(d) for d in m.runtime.devices)}"
    )


def validate(manifest: Annotated[Path, typer.Argument(help="The TOML manifest to check.")]) -> None:
    """Check a manifest; exit 0 if it is good, 2 with every problem named by its key."""
    from .manifest import load_manifest

    try:
        text = describe(load_manifest(manifest))
    except Exception as exc:
        fail(exc)
    typer.echo(text)
