"""What ``run`` checks before it starts, checked without writing anything: ``validate`` and ``run --dry-run``.

:func:`preflight` raises the typed errors (:mod:`.errors`) ``run`` would raise for the same manifest and
output, so the exit codes match, and otherwise returns a :class:`Preflight` report (counts, warnings, what
was checked). It creates no output directory, takes no lock, writes no listing snapshot and converts no
model; it reads the dataset (the listing), the output directory, the model files, and imports the backend.

The checks, in the order ``run`` meets them (the first problem is the one ``run`` would report):

1. the model: resolved as ``run`` resolves it (labels, weights, built-in name); the default model's weights
   through the restricted unpickler and its ONNX cache (cached, or a writable cache folder);
2. the output directory: a directory or creatable (the nearest existing parent is a writable directory), no
   file in the way (exit 8), not a foreign folder (exit 4), its lock held by a running job (a warning:
   ``run`` would exit 5 now; probed as ``status`` probes it, never taken);
3. the job: the same job as the results already there (the comparison ``run`` makes, exit 4); the listing
   (images, units, duplicate ids: exit 2; globs that match nothing: a warning), or, when the output has a
   listing snapshot, that snapshot (a rerun resumes it) and the units already committed;
4. the backend: imported in this process with its runtime (onnxruntime, pyACL, torch and the devices torch
   sees); a missing runtime is the ``StartupError`` ``run`` gives (exit 3); a torch state dict through
   ``torch.load(weights_only=True)``, as the worker loads it.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .backends.base import get_backend, is_plugin
from .errors import IncompatibleOutputError, IncompleteError, StartupError
from .incremental import skip_existing
from .manifest import Manifest
from .models.resolve import resolve_model
from .models.spec import ModelSpec
from .plan import Unit, make_units, shard_units
from .runner.job import environment_error

# the comparison prepare() makes: one definition, not a copy
from .runner.jobdir import check_same_job, job_identity, load_snapshot, read_job, refuse_foreign
from .runner.lock import held_locks
from .runner.outdir import JOB_FILE, LISTING_FILE, SUCCESS_FILE, committed_units, foreign_entries, lock_name
from .sources import Item, has_magic, list_items


@dataclass
class Preflight:
    """What a run of the manifest would find. ``units``/``images`` are those of the shard when one is given."""

    out: Path
    output: str  # what the output directory is now, in words
    images: int
    units: int
    unit_size: int
    committed: int  # units already committed (a rerun resumes after them)
    resumes: bool  # the output holds a listing snapshot: the rerun uses it, not a new listing
    complete: bool  # _SUCCESS is there and every unit is committed
    listing_errors: int  # listed inputs that will be error rows (unreadable, corrupt archives)
    model: ModelSpec
    model_note: str
    warnings: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)


def preflight(manifest: Manifest, *, restart: bool = False, shard: tuple[int, int] | None = None) -> Preflight:
    """Check ``manifest``'s job as ``run`` (with ``--restart``, ``--shard``) would, writing nothing."""
    warnings: list[str] = []
    checked: list[str] = []
    rt = manifest.runtime
    out = manifest.job.output

    model = resolve_model(manifest.model, rt.backend, build=False)
    model_note = _check_builtin_conversion(manifest, model)
    checked.append("model files" + (" and weights (restricted unpickler)" if model_note else ""))

    output = _check_output(out, shard)
    for holder in held_locks(out):  # probed with a shared flock, released at once (as `status` does)
        if holder.path.name == lock_name(shard):
            warnings.append(
                f"another run is working on {out} now ({holder.describe()}): run would exit 5 until it ends"
            )
        else:
            warnings.append(f"another run is working on {out} now ({holder.describe()})")
    if restart:
        if shard is not None:
            raise IncompleteError("--restart cannot be combined with a shard; restart the whole job once")
        _check_restart(out)
        if out.is_dir():
            output += "; --restart discards this job's results in it"
    checked.append("output directory")

    fresh = restart or not out.is_dir()
    units, n_items, resumes, listing_errors = _job_listing(manifest, model, out, fresh, warnings)
    mine = shard_units(units, *shard) if shard else units
    done = set() if fresh else committed_units(out) & {u.index for u in mine}
    complete = not fresh and (out / SUCCESS_FILE).exists() and len(done) == len(mine)
    checked.append("listing (not saved)" if not resumes else "listing snapshot")
    if not mine:
        warnings.append("the job has no images: run would finish at once with an empty result")

    _check_backend(manifest)
    checked.append(f"backend {rt.backend}")
    if _check_state_dict(model):
        checked.append("state dict (torch.load, weights_only)")
    images = sum(u.size for u in mine) if shard else n_items
    return Preflight(
        out=out,
        output=output,
        images=images,
        units=len(mine),
        unit_size=rt.unit_size,
        committed=len(done),
        resumes=resumes,
        complete=complete,
        listing_errors=listing_errors,
        model=model,
        model_note=model_note,
        warnings=warnings,
        checked=checked,
    )


# -- model ----------------------------------------------------------------------------------------


def _check_builtin_conversion(manifest: Manifest, model: ModelSpec) -> str:
    """The default model under a backend that runs its ONNX conversion: what ``run`` converts first
    (its weights through the restricted unpickler) and where the result is cached."""
    if manifest.model.path is not None or model.format != "onnx" or model.weights is None:
        return ""
    from .models import efficientnet_lite0 as lite0
    from .models.spec import file_sha256
    from .models.torch_pickle import load_legacy_state_dict

    weights = model.weights
    try:
        sha = file_sha256(weights)
        lite0.block_specs(load_legacy_state_dict(weights))  # refuses any global a state dict never needs
    except (OSError, ValueError) as exc:
        raise StartupError(f"[model.weights] cannot convert {weights} to ONNX: {exc}") from exc
    cached = lite0.cached_onnx(sha)
    if cached is not None:
        return f"its ONNX conversion is cached: {cached}"
    cache = lite0.cache_path(sha).parent
    problem = _unwritable(cache)
    if problem is not None:
        raise StartupError(
            f"cannot write the model cache in {cache}: {problem} (set ASCEND_BATCH_CACHE to a writable directory)"
        )
    return f"converted to ONNX by the first run, cached in {cache}"


def _check_state_dict(model: ModelSpec) -> bool:
    """A state dict the torch worker would load: through ``torch.load(weights_only=True)`` as it does."""
    if model.format != "state-dict":
        return False
    if not Path(model.path).is_file():
        raise StartupError(f"[model.path] no such model file: {model.path}")
    from .models import lite0_torch

    lite0_torch.load_state_dict_file(Path(model.path))
    return True


# -- output directory -----------------------------------------------------------------------------


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` (existing or to be created) could not be written, or None."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing}: {_denied(existing)}"
    return None


def _denied(path: Path) -> str:
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        pass
    return "permission denied"


def _check_output(out: Path, shard: tuple[int, int] | None) -> str:
    """``out`` is a directory run can use, or can be created; raises what run raises. Returns its state."""
    if out.exists() and not out.is_dir():
        raise environment_error(FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(out)), out)
    if out.is_dir():
        refuse_foreign(out)
        if not os.access(out, os.W_OK | os.X_OK):
            code = errno.EROFS if _denied(out).startswith("read-only") else errno.EACCES
            raise environment_error(PermissionError(code, os.strerror(code), str(out / lock_name(shard))), out)
        if (out / JOB_FILE).exists():
            return "an ascend-batch output directory"
        return "exists, empty" if not any(out.iterdir()) else "exists (only files this tool writes)"
    parent = out.parent
    first_missing = out
    while not parent.exists() and parent.parent != parent:
        first_missing, parent = parent, parent.parent
    if not parent.is_dir():
        raise environment_error(NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(out)), out)
    if not os.access(parent, os.W_OK | os.X_OK):
        code = errno.EROFS if _denied(parent).startswith("read-only") else errno.EACCES
        raise environment_error(PermissionError(code, os.strerror(code), str(first_missing)), out)
    return f"new: run creates it (in {parent})"


def _check_restart(out: Path) -> None:
    """What ``--restart`` refuses: a folder holding anything this tool did not write."""
    strangers = foreign_entries(out) if out.is_dir() else []
    if strangers:
        shown = ", ".join(strangers[:5]) + (", ..." if len(strangers) > 5 else "")
        raise IncompatibleOutputError(
            f"--restart refused: {out} is not (only) an ascend-batch output directory; it holds {shown}. "
            "Nothing was deleted; choose another job.output"
        )


# -- job and listing ------------------------------------------------------------------------------


def _job_listing(
    manifest: Manifest, model: ModelSpec, out: Path, fresh: bool, warnings: list[str]
) -> tuple[list[Unit], int, bool, int]:
    """(units, images, whether an existing snapshot is resumed, listing errors), as prepare() decides."""
    listing = out / LISTING_FILE
    if not fresh:
        meta = read_job(out)
        if meta is None:
            refuse_foreign(out)
        else:
            check_same_job(out, meta, job_identity(manifest, model))
            if not listing.exists():
                raise IncompatibleOutputError(
                    f"{listing} is missing; the results cannot be resumed: rerun with --restart"
                )
        if listing.exists():
            snapshot = load_snapshot(listing)
            if meta is not None and snapshot.digest != meta.get("listing"):
                raise IncompatibleOutputError(f"{listing} does not match {out / JOB_FILE}; rerun with --restart")
            return snapshot.units, snapshot.n_items, True, 0
    return _list(manifest, out, warnings)


def _list(manifest: Manifest, out: Path, warnings: list[str]) -> tuple[list[Unit], int, bool, int]:
    ds = manifest.dataset
    per_source: Counter[str] = Counter()
    errors: list[Item] = []

    def counted() -> Iterator[Item]:
        for item in list_items(ds):
            per_source[item.source] += 1
            if item.kind == "error":
                errors.append(item)
            yield item

    n = sum(1 for _ in skip_existing(counted(), ds.skip_existing, own=out))
    for i, (written, path) in enumerate(zip(ds.paths, ds.resolved, strict=True)):
        if per_source[written]:
            continue
        if has_magic(written) and not os.path.lexists(path):
            warnings.append(f"dataset.paths[{i}] {written!r} matches nothing now (a quiet night?)")
        else:
            warnings.append(f"dataset.paths[{i}] {written!r} holds no file with the dataset's extensions")
    if errors:
        warnings.append(
            f"{len(errors)} listed input(s) cannot be read and will be error rows, e.g. {errors[0].id!r}: "
            f"{errors[0].error}"
        )
    return make_units(n, manifest.runtime.unit_size), n, False, len(errors)


# -- backend --------------------------------------------------------------------------------------


def _check_backend(manifest: Manifest) -> None:
    """Import the backend and its runtime in this process, as each worker does before opening a session."""
    rt = manifest.runtime
    get_backend(rt.backend, rt.backend_options())
    if is_plugin(rt.backend):
        return
    if rt.backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise StartupError(f"backend 'onnxruntime' is not available: {exc}") from exc
    elif rt.backend == "acl":
        from .backends.acl_runtime import import_acl

        import_acl()
    elif rt.backend == "torch":
        from .backends.torch_setup import torch_device

        for device in rt.devices:
            torch_device(device)
