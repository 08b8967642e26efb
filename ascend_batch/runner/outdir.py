"""The output directory's bookkeeping: ``_job.json`` (what this directory holds), the listing
snapshot, compatibility checks for resume, and ``--restart``.

Every non-result file starts with ``_`` or ``.`` so ``pandas.read_parquet(out)`` reads results only.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import IncompatibleOutputError
from ..incremental import skip_existing
from ..manifest import Manifest
from ..models.spec import ModelSpec
from ..plan import LISTING_FILE, Snapshot, fsync_dir, read_snapshot, write_snapshot
from ..sources import list_items
from .writer import PART_RE

JOB_FILE = "_job.json"
SUMMARY_FILE = "_summary.json"
SUCCESS_FILE = "_SUCCESS"


@dataclass(frozen=True)
class JobInfo:
    out: Path
    snapshot: Snapshot
    meta: dict


def write_exclusive(path: Path, text: str) -> bool:
    """Create ``path`` with ``text`` atomically; False if it already exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def write_replace(path: Path, text: str) -> None:
    """Write ``path`` atomically, replacing any previous version."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_job(out: Path) -> dict | None:
    try:
        return json.loads((out / JOB_FILE).read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IncompatibleOutputError(f"{out / JOB_FILE} is unreadable ({exc}); rerun with --restart") from None


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


def restart(out: Path) -> None:
    """Delete this tool's files in ``out`` (results included); leaves anything else alone."""
    if not out.exists():
        return
    for entry in out.iterdir():
        name = entry.name
        ours = (
            PART_RE.match(name)
            or name in (JOB_FILE, SUMMARY_FILE, SUCCESS_FILE, LISTING_FILE, "_pieces", "_evaluation.json")
            or name.startswith(".tmp-")
        )
        if not ours:
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


def prepare(manifest: Manifest, model: ModelSpec, out: Path) -> JobInfo:
    """Create or reopen the job in ``out``; refuse an incompatible one. Call under the job lock."""
    out.mkdir(parents=True, exist_ok=True)
    want = _identity(manifest, model)
    meta = read_job(out)
    if meta is None:
        strangers = [p.name for p in out.iterdir() if not p.name.startswith((".", "_"))]
        if strangers:
            raise IncompatibleOutputError(
                f"{out} is not empty and is not an ascend-batch output directory (found {strangers[:3]}); "
                "choose another job.output"
            )
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
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "manifest": str(manifest.source) if manifest.source else None,
        }
        if write_exclusive(out / JOB_FILE, json.dumps(meta, indent=2)):
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
