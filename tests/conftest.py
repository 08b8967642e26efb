from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

CACHE_ENV = "ASCEND_BATCH_CACHE"


@pytest.fixture(autouse=True, scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The default model's ONNX cache of the whole session: a pytest temp folder, never the user's
    ``~/.cache/ascend-batch``. Set in ``os.environ``, so the CLI subprocesses inherit it. Under CI
    (``CI`` set) an ``ASCEND_BATCH_CACHE`` that is already set is kept: ``.ci/run`` points it at a folder
    of its fresh venv, reused across the run."""
    kept = os.environ.get(CACHE_ENV)
    if kept and os.environ.get("CI"):
        yield Path(kept)
        return
    path = tmp_path_factory.mktemp("model-cache")
    os.environ[CACHE_ENV] = str(path)
    try:
        yield path
    finally:
        if kept is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = kept
