"""ascend-batch: resumable batch image classification into Parquet.

``ascend_batch.run(manifest)`` runs (or resumes) a job; ``ascend_batch.load_results(out)`` loads
its results as a pandas DataFrame.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_results", "run"]


def __getattr__(name: str) -> Any:  # keep `import ascend_batch` light for worker processes
    if name in ("run", "load_results"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
