"""``ascend-batch validate`` (and ``run --dry-run``): check a job before it runs, writing nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .cli_errors import fail


def register(app: typer.Typer) -> None:
    app.command()(validate)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def describe(m: Any, *, restart: bool = False, shard: tuple[int, int] | None = None) -> str:
    """What ``validate`` says of a good manifest (``m`` a loaded Manifest): everything ``run`` (with
    ``restart``/``shard``) checks before it starts (:func:`ascend_batch.preflight.preflight`), several
    lines: ok, the counts, the warnings. Raises the typed errors ``run`` would raise."""
    from .preflight import preflight

    p = preflight(m, restart=restart, shard=shard)
    spec = p.model
    scope = f"shard {shard[0]}/{shard[1]}: " if shard else ""
    units = f"{_plural(p.images, 'image')} in {_plural(p.units, 'unit')} (unit_size {p.unit_size})"
    if p.resumes:
        state = "complete" if p.complete else f"{p.units - p.committed} to do"
        listing = (
            f"{scope}{units}, from the listing snapshot already in the output: a rerun resumes it; "
            f"{p.committed}/{p.units} units committed ({state})"
        )
    else:
        listing = f"{scope}{units} from {_plural(len(m.dataset.paths), 'dataset path')} (listed now, not saved)"
        if p.listing_errors:
            listing += f"; {_plural(p.listing_errors, 'input')} will be error rows"
    model = (
        f"{spec.name} ({spec.format}, {spec.preprocess.size}px {spec.preprocess.layout} {spec.preprocess.dtype}, "
        f"{len(spec.labels)} classes)" + (f"; {p.model_note}" if p.model_note else "")
    )
    lines = [
        f"ok: job {m.job.name!r} -> {p.out}",
        f"  output: {p.output}",
        f"  listing: {listing}",
        f"  model: {model}",
        f"  backend: {m.runtime.backend} on {', '.join(str(d) for d in m.runtime.devices)}",
        *(f"warning: {w}" for w in p.warnings),
        f"checked: {', '.join(p.checked)}; nothing was written",
    ]
    return "\n".join(lines)


def validate(manifest: Annotated[Path, typer.Argument(help="The TOML manifest to check.")]) -> None:
    """Check a job as `run` would before it starts (manifest, output directory, listing, model, backend),
    writing nothing; exit 0 (warnings printed), or the exit code `run` would give, with its message."""
    from .manifest import load_manifest

    try:
        text = describe(load_manifest(manifest))
    except Exception as exc:
        fail(exc)
    typer.echo(text)


def describe_dict(m: Any, *, restart: bool = False, shard: tuple[int, int] | None = None) -> dict:
    """:func:`describe` as data (``run --dry-run --json``)."""
    from .preflight import preflight

    p = preflight(m, restart=restart, shard=shard)
    return {
        "ok": True,
        "output": str(p.out),
        "output_state": p.output,
        "images": p.images,
        "units": p.units,
        "unit_size": p.unit_size,
        "units_committed": p.committed,
        "resumes": p.resumes,
        "complete": p.complete,
        "listing_errors": p.listing_errors,
        "model": p.model.name,
        "model_note": p.model_note,
        "backend": m.runtime.backend,
        "devices": [str(d) for d in m.runtime.devices],
        "warnings": p.warnings,
        "checked": p.checked,
    }
