"""Which job an output directory holds: ``_job.json`` (manifest fingerprint, model identity, listing
snapshot), the compatibility check for a resume, and the creation of a new job's directory. File
names come from :mod:`.outdir`."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..atomic import write_text
from ..errors import IncompatibleOutputError
from ..incremental import skip_existing
from ..manifest import Manifest
from ..models.spec import ModelSpec
from ..plan import LISTING_SCHEMA, Snapshot, read_snapshot, write_snapshot
from ..sources import list_items
from .outdir import JOB_FILE, LISTING_FILE, foreign_entries, refuse_stray_data


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
    except NotADirectoryError:
        raise IncompatibleOutputError(f"{out} is a file, not an ascend-batch output directory") from None
    except (OSError, ValueError) as exc:
        raise IncompatibleOutputError(f"{out / JOB_FILE} is unreadable ({exc}); rerun with --restart") from None
    if not isinstance(meta, dict) or "n_units" not in meta or "n_items" not in meta:
        raise IncompatibleOutputError(f"{out / JOB_FILE} is not an ascend-batch job file; choose another job.output")
    for key in ("n_units", "n_items"):
        if type(meta[key]) is not int or meta[key] < 0:
            raise IncompatibleOutputError(
                f"{out / JOB_FILE} is damaged ({key} is {meta[key]!r}, not a count); rerun with --restart"
            )
    return meta


OPTIONAL_LISTING_COLUMNS = ("link",)  # added after the first release: older snapshots lack them


def load_snapshot(listing: Path) -> Snapshot:
    """The job's listing snapshot; exit 4 naming the file when it is missing, unreadable or not one."""
    if not listing.exists():
        raise IncompatibleOutputError(f"{listing} is missing; the results cannot be resumed: rerun with --restart")
    try:
        names = set(pq.ParquetFile(listing).schema_arrow.names)
        missing = [n for n in LISTING_SCHEMA.names if n not in names and n not in OPTIONAL_LISTING_COLUMNS]
        if missing:
            raise ValueError(f"no {', '.join(missing)} column, so not a listing snapshot")
        return read_snapshot(listing)
    except (OSError, ValueError, KeyError, IndexError, pa.ArrowException) as exc:
        raise IncompatibleOutputError(
            f"{listing} is damaged ({exc}); the results cannot be resumed: rerun with --restart"
        ) from None


def job_identity(manifest: Manifest, model: ModelSpec) -> dict:
    return {
        "fingerprint": manifest.fingerprint(),
        "tables": result_tables(manifest),  # what the fingerprint hashes: says which key changed (exit 4)
        "model": model.name,
        "model_identity": model.identity,
        "preprocess": model.preprocess.__dict__
        | {"mean": list(model.preprocess.mean), "std": list(model.preprocess.std)},
        "unit_size": manifest.runtime.unit_size,
        "labels": labels_digest(model.labels),
    }


def labels_digest(labels: tuple[str, ...]) -> str:
    """The class names' content: a labels file edited between runs would mix names in one output."""
    return hashlib.sha256("\n".join(labels).encode()).hexdigest()[:16]


def result_tables(manifest: Manifest) -> dict:
    """The resolved ``[dataset]`` and ``[model]`` tables as :meth:`Manifest.fingerprint` hashes them, as
    JSON values. Recorded in ``_job.json`` (``tables``; outputs written before lack it) only to name the
    keys that changed when a rerun is refused; the refusal itself compares the fingerprint."""
    dataset = {k: v for k, v in asdict(manifest.dataset).items() if k not in ("paths", "skip_existing")}
    model = {k: v for k, v in asdict(manifest.model).items() if not (k == "aipp" and v is None)}
    return json.loads(json.dumps({"dataset": dataset, "model": model}, default=str))


_COMPARED = ("fingerprint", "model_identity", "preprocess", "unit_size")  # what makes it another job
_KEY_NAMES = {"dataset.resolved": "dataset.paths"}  # as the manifest spells them
_PREPROCESS_KEYS = {"size": "model.input_size"}  # the model key each preprocessing value comes from, if any
_UNSET = object()


def _show(value: object) -> str:
    if value is _UNSET or value is None:
        return "(not set)"
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return json.dumps(value)


def _key_changes(old: dict, new: dict, prefix: str) -> list[tuple[str, str]]:
    """(key, 'old → new') for every key whose value differs."""
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, _UNSET), new.get(key, _UNSET)
        if before != after:
            name = f"{prefix}.{key}"
            changes.append((_KEY_NAMES.get(name, name), f"{_show(before)} → {_show(after)}"))
    return changes


def _differences(meta: dict, want: dict) -> list[str]:
    """What differs between the job recorded in ``meta`` and the one wanted now, key by key."""
    lines: list[str] = []
    named: set[str] = set()
    if meta.get("fingerprint") != want["fingerprint"]:
        old_tables = meta.get("tables")
        changes = []
        if isinstance(old_tables, dict):
            for table in ("dataset", "model"):
                changes += _key_changes(old_tables.get(table) or {}, want["tables"][table], table)
        if changes:
            lines += [f"{key}: {change}" for key, change in changes]
            named.update(key for key, _ in changes)
        else:  # an output written before the tables were recorded: only the fingerprints are known
            lines.append(
                f"the manifest's [dataset]/[model] tables: fingerprint {meta.get('fingerprint')} → "
                f"{want['fingerprint']} (this output does not record the tables, so the keys cannot be named)"
            )
    if meta.get("model_identity") != want["model_identity"]:
        lines.append(
            f"the model file ({want.get('model')}): content {_show(meta.get('model_identity'))} → "
            f"{want['model_identity']}"
        )
    if meta.get("preprocess") != want["preprocess"]:
        old = meta.get("preprocess") if isinstance(meta.get("preprocess"), dict) else {}
        for key, change in _key_changes(old or {}, want["preprocess"], "preprocessing"):
            field = key.split(".", 1)[1]
            if _PREPROCESS_KEYS.get(field, f"model.{field}") not in named:  # not said already
                lines.append(f"the model's {key}: {change}")
    if meta.get("unit_size") != want["unit_size"]:
        lines.append(f"runtime.unit_size: {_show(meta.get('unit_size'))} → {want['unit_size']}")
    if not _same_labels(meta, want):
        lines.append(f"the class labels (model.labels): content {meta.get('labels')} → {want['labels']}")
    return lines


def _same_labels(meta: dict, want: dict) -> bool:
    return "labels" not in meta or meta["labels"] == want["labels"]  # older outputs do not record them


def check_same_job(out: Path, meta: dict, want: dict) -> None:
    """Refuse to resume ``out`` when its job differs from ``want`` (:func:`job_identity`): a different
    manifest fingerprint, model file, preprocessing, unit size or class labels' content; the message
    names each changed key."""
    if all(meta.get(k) == want[k] for k in _COMPARED) and _same_labels(meta, want):
        return
    lines = _differences(meta, want) or [f"{k}: {meta.get(k)} → {want[k]}" for k in _COMPARED]
    created = f", created {meta['created']}" if meta.get("created") else ""
    raise IncompatibleOutputError(
        f"{out} holds results of a different job{created}; changed since:\n"
        + "\n".join(f"  {line}" for line in lines)
        + "\nUse another job.output, or rerun with --restart to discard those results."
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
    want = job_identity(manifest, model)
    meta = read_job(out)
    if meta is None:
        refuse_foreign(out)
        listing = out / LISTING_FILE
        snapshot = (
            load_snapshot(listing)
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
    check_same_job(out, meta, want)
    listing = out / LISTING_FILE
    snapshot = load_snapshot(listing)
    if snapshot.digest != meta.get("listing"):
        raise IncompatibleOutputError(f"{listing} does not match {out / JOB_FILE}; rerun with --restart")
    refuse_stray_data(out, len(snapshot.units))
    return JobInfo(out, snapshot, meta)
