"""A manifest file or parsed TOML -> :class:`~.config.Manifest`, or every problem at once."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..errors import ManifestError, ManifestErrors
from .config import Manifest
from .reader import TableReader
from .tables import check_backend_runs_model, check_stall_timeout, read_dataset, read_job, read_model, read_runtime

TABLES = ("job", "dataset", "model", "runtime")


def parse_manifest(data: Mapping[str, Any], base: Path, source: Path | None = None) -> Manifest:
    """Build a :class:`Manifest` from parsed TOML; relative paths resolve against ``base``.
    Raises :class:`ManifestErrors` listing every problem."""
    errors: list[ManifestError] = []
    where = str(source) if source else None
    expected = ", ".join(f"[{t}]" for t in TABLES)
    for table in data:
        if table not in TABLES:
            errors.append(ManifestError(table, f"unknown table; expected {expected}", where))

    def reader(table: str) -> TableReader:
        return TableReader(table, data.get(table), errors, where)

    job = read_job(reader("job"), base)
    dataset = read_dataset(reader("dataset"), base)
    model = read_model(reader("model"), base)
    runtime_reader = reader("runtime")
    runtime = read_runtime(runtime_reader)
    check_backend_runs_model(runtime_reader, runtime, model)
    runtime = check_stall_timeout(runtime_reader, runtime, dataset)
    if errors:
        raise ManifestErrors(errors)
    return Manifest(job, dataset, model, runtime, source, dict(data))


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file."""
    p = Path(path)
    if not p.is_file():
        raise ManifestErrors([ManifestError("manifest", f"no such manifest file: {p}")])
    try:
        data = tomllib.loads(p.read_text("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ManifestErrors([ManifestError("toml", f"not valid TOML: {exc}", str(p))]) from None
    except UnicodeDecodeError:
        raise ManifestErrors([ManifestError("toml", "not a UTF-8 text file", str(p))]) from None
    return parse_manifest(data, p.resolve().parent, p.resolve())
