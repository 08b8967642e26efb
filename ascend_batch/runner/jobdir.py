"""Which job an output directory holds: ``_job.json`` (manifest fingerprint, model identity, listing
snapshot), the compatibility check for a resume, and the creation of a new job's directory. File
names come from :mod:`.outdir`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..atomic import write_text
from ..errors import IncompatibleOutputError
from ..incremental import skip_existing
from ..manifest import Manifest
from ..models.spec import ModelSpec
from ..plan import Snapshot, read_snapshot, write_snapshot
from ..sources import list_items
from .outdir import JOB_FILE, LISTING_FILE, foreign_entries


@dataclass(frozen=True)
class JobInfo:
    out: Path
    snapshot: Snapshot
    meta: dict


def read_job(out: Path) -> dict | None:
    try:
        meta = json.loads((out / JOB_FILE).read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IncompatibleOutputError(f"{out / JOB_FILE} is unreadable ({exc}); rerun with --restart") from None
    if not isinstance(meta, dict) or "n_units" not in meta or "n_items" not in meta:
        raise IncompatibleOutputError(f"{out / JOB_FILE} is not an ascend-batch job file; choose another job.output")
    return meta


def _identity(manifest: Manifest, model: ModelSpec) -> dict:
    return {
        "fingerprint": manifest.fingerprint(),
        "model": model.name,
        "model_identity": model.identity,
        "preprocess": model.preprocess.__dict__
        | {"mean": list(model.preprocess.mean), "std": list(model.preprocess.std)},
        "unit_size": manifest.runtime.unit_size,
    }


def _check(out: Path, meta: dict, want: dict) -> None:
    names = {
        "fingerprint": "the manifest's [dataset]/[model] tables",
        "model_identity": "the model file",
        "preprocess": "the preprocessing",
        "unit_size": "runtime.unit_size",
    }
    diffs = [f"{names[k]} ({meta.get(k)!r} there, {want[k]!r} now)" for k in names if meta.get(k) != want[k]]
    if diffs:
        raise IncompatibleOutputError(
            f"{out} holds results of a different job: "
            + "; ".join(diffs)
            + ". Use another job.output, or rerun with --restart to discard those results."
        )


def refuse_foreign(out: Path) -> None:
    """Refuse a directory that is neither empty nor an ascend-batch output (before writing anything)."""
    if (out / JOB_FILE).exists():
        return
    strangers = foreign_entries(out)
    if strangers:
        raise IncompatibleOutputError(
            f"{out} is not empty and is not an ascend-batch output directory (found {strangers[:3]}); "
            "choose another job.output"
        )


def prepare(manifest: Manifest, model: ModelSpec, out: Path) -> JobInfo:
    """Create or reopen the job in ``out``; refuse an incompatible one. Call under the job lock."""
    out.mkdir(parents=True, exist_ok=True)
    want = _identity(manifest, model)
    meta = read_job(out)
    if meta is None:
        refuse_foreign(out)
        listing = out / LISTING_FILE
        snapshot = (
            read_snapshot(listing)
            if listing.exists()
            else write_snapshot(
                skip_existing(list_items(manifest.dataset), manifest.dataset.skip_existing, own=out),
                listing,
                manifest.runtime.unit_size,
            )
        )
        meta = {
            "version": __version__,
            "name": manifest.job.name,
            **want,
            "listing": snapshot.digest,
            "n_items": snapshot.n_items,
            "n_units": len(snapshot.units),
            "max_error_fraction": manifest.job.max_error_fraction,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "manifest": str(manifest.source) if manifest.source else None,
        }
        if write_text(out / JOB_FILE, json.dumps(meta, indent=2), exclusive=True):
            return JobInfo(out, snapshot, meta)
        meta = read_job(out) or {}  # another shard created it first: verify below
    _check(out, meta, want)
    listing = out / LISTING_FILE
    if not listing.exists():
        raise IncompatibleOutputError(f"{listing} is missing; the results cannot be resumed: rerun with --restart")
    snapshot = read_snapshot(listing)
    if snapshot.digest != meta.get("listing"):
        raise IncompatibleOutputError(f"{listing} does not match {out / JOB_FILE}; rerun with --restart")
    return JobInfo(out, snapshot, meta)
