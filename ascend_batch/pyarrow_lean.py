"""pyarrow without its pandas import, for processes that never hand pyarrow a pandas object.

pyarrow imports pandas at its first array, only to check whether the input is a pandas object.
That import costs about 0.25 s of CPU (measured on 2 cores), taken from decoding in a worker and
from the start of every ``ascend-batch run``. :func:`skip_pandas_check` lets that one check find
no pandas; pyarrow remembers the answer for such checks, while anything that needs pandas
(``Table.to_pandas``, an explicit ``import pandas``) still imports it when asked.
"""

from __future__ import annotations

import sys
from typing import Any

import pyarrow as pa


def skip_pandas_check() -> None:
    """Make pyarrow's "is this a pandas object?" check answer no without importing pandas. Call it
    before the process's first pyarrow array; it does nothing where pandas is already imported."""
    if "pandas" in sys.modules:
        return
    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(finder)


class _NoPandas:
    """An import finder under which ``import pandas`` fails."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
