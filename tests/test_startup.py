"""Start-up work kept off every run's critical path: the console script imports the command line
only when called (spawned workers re-run it without calling it), and pyarrow's pandas check can be
answered without importing pandas, while pandas stays usable when something asks for it."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from helpers import make_images, tiny_manifest


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_console_script_entry_point_imports_the_cli_only_when_called() -> None:
    [entry] = [e for e in metadata.entry_points(group="console_scripts") if e.name == "ascend-batch"]
    assert entry.value == "ascend_batch.console:main"
    done = run_python(
        "import sys, ascend_batch.console\n"
        "heavy = sorted(m for m in ('typer', 'ascend_batch.cli', 'pyarrow', 'numpy') if m in sys.modules)\n"
        "print(heavy)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_console_script_runs_a_job(tmp_path: Path) -> None:
    """Workers spawned under the console script re-run it as ``__mp_main__``: the job still runs."""
    script = Path(sys.executable).parent / "ascend-batch"
    assert script.exists(), f"no console script beside {sys.executable}: is the package installed?"
    make_images(tmp_path / "imgs", 6)
    manifest = tiny_manifest(tmp_path, tmp_path / "imgs")
    done = subprocess.run([str(script), "run", str(manifest), "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "6/6 images (6 ok, 0 failed)" in done.stdout
    done = subprocess.run([str(script), "no-such-command"], capture_output=True, text=True)
    assert done.returncode != 0 and "no-such-command" in done.stderr


def test_skip_pandas_check_keeps_pandas_out_until_asked_for() -> None:
    done = run_python(
        "import sys, pyarrow as pa\n"
        "from ascend_batch.pyarrow_lean import skip_pandas_check\n"
        "skip_pandas_check()\n"
        "table = pa.table({'a': [1, 2], 'b': ['x', None]})\n"
        "assert 'pandas' not in sys.modules, 'pandas imported by the first arrays'\n"
        "frame = table.to_pandas()\n"
        "assert list(frame['a']) == [1, 2] and frame['b'].isna().tolist() == [False, True]\n"
        "import pandas as pd\n"
        "back = pa.Table.from_pandas(pd.DataFrame({'c': pd.Categorical(['u', 'v', 'u'])}))\n"
        "assert str(back.schema.field('c').type).startswith('dictionary'), back.schema\n"
        "print('ok')"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
