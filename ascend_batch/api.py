"""The Python API for notebooks and scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .manifest import Manifest, load_manifest

LABEL_COLUMNS = ("top1_label", "source", "status", "model", "backend", "device", "run_id")


def run(
    manifest: str | Path | Manifest,
    *,
    output: str | Path | None = None,
    progress: bool = False,
    **options: Any,
) -> Any:
    """Run or resume the job of ``manifest`` (a path or a :class:`Manifest`); returns a RunReport.

    Raises the same typed errors the CLI maps to exit codes (``ascend_batch.errors``). Workers are spawned
    processes that import the calling script again: a script must call this under
    ``if __name__ == "__main__":`` (without it, :class:`~.errors.MissingMainGuard` says so)."""
    from .errors import MissingMainGuard
    from .runner.main_guard import exit_if_bootstrapping

    exit_if_bootstrapping()  # we are a worker importing a script without the main guard: stop, quietly
    from .runner.job import run_job

    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    if output is not None:
        m = m.with_output(Path(output).resolve())
    try:
        return run_job(m, progress_bar=progress, **options)
    except MissingMainGuard as exc:
        raise MissingMainGuard(str(exc)) from None  # the script's mistake: no traceback through the runner


def load_results(out: str | Path, *, columns: list[str] | None = None) -> pd.DataFrame:
    """All result rows of an output directory as a DataFrame (label-like columns categorical)."""
    df = pd.read_parquet(Path(out), columns=columns)
    for col in LABEL_COLUMNS:
        if col in df.columns:
            df[col] = df[col].astype("category")
    return df.sort_values(["unit", "image_id"], kind="stable").reset_index(drop=True) if "unit" in df else df
