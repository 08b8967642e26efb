"""How every CLI command reports a failure. Shared by ``cli``, ``cli_results``, ``cli_validate`` and
``slurm_cli`` (none imports another's internals).

- A typed error (:mod:`.errors`) is one line (or one per manifest key) and its documented exit code.
- A command-line usage error (typer/click ``BadParameter`` and the like, raised inside a command) is
  exit 2 with its message, naming the option.
- Any other exception whose cause is a path given on the command line (it does not exist, it is a
  file where a folder is needed or the other way round, or an output directory argument that is
  not a job's output) is blamed on that path, named by its option or argument: exit 2 (4 for an
  output directory argument that is missing or not an ascend-batch output, as ``finalize`` says). A user's mistake never
  shows a traceback.
- The machine failing (disk full, read-only file system, out of memory) is exit 8, naming the path.
- Anything else is a bug: its traceback, ``internal error``, exit 1.
"""

from __future__ import annotations

import errno
import os
import traceback
from pathlib import Path
from typing import Any, NoReturn

import typer

from .errors import (
    EXIT_ENVIRONMENT,
    EXIT_INCOMPATIBLE,
    EXIT_INTERNAL,
    EXIT_USAGE,
    AscendBatchError,
    ImageError,
    ManifestErrors,
)
from .sources.item import ENVIRONMENT_ERRNOS

try:  # typer >= 0.2x carries its own copy of click
    from typer._click.exceptions import ClickException
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - typer on click itself
    from click import ClickException, get_current_context  # type: ignore[no-redef,assignment,unused-ignore]

OUTPUT_DIR_PARAMS = ("out",)  # arguments that name a job's output directory (status, evaluate, finalize)


def explain(exc: BaseException) -> tuple[int, list[str]]:
    """The exit code of ``exc`` and the lines that say what went wrong (``internal error`` for a bug)."""
    if isinstance(exc, ManifestErrors):
        return exc.exit_code, [str(e) for e in exc.errors]
    if isinstance(exc, AscendBatchError):
        return exc.exit_code, [str(exc)]
    if isinstance(exc, ClickException):  # BadParameter, UsageError, ... raised inside a command
        return EXIT_USAGE, [exc.format_message()]
    if isinstance(exc, ImageError):  # a job makes it a row; outside one (bench), an input given is unusable
        inputs = [hint for _name, hint, _value, is_argument in _command_line_paths() if is_argument]
        return EXIT_USAGE, [f"{inputs[0] + ': ' if inputs else ''}an input cannot be used: {exc}"]
    blamed = _blame_command_line(exc)
    if blamed is not None:
        return blamed
    machine = _machine_failure(exc)
    if machine is not None:
        return EXIT_ENVIRONMENT, [machine]
    return EXIT_INTERNAL, [f"internal error: {type(exc).__name__}: {exc} (please report this with the traceback)"]


def fail(exc: BaseException) -> NoReturn:
    """Report ``exc`` on stderr and exit with its code (see :func:`explain`)."""
    if isinstance(exc, typer.Exit):
        raise exc
    code, lines = explain(exc)
    if code == EXIT_INTERNAL:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    for line in lines:
        typer.echo(line if code == EXIT_INTERNAL else f"error: {line}", err=True)
    raise typer.Exit(code)


# errors of the machine (disk full, read-only, no memory or descriptors left), whichever command
# meets them: exit 8 with the path, never a traceback
_MACHINE_ERRNOS = ENVIRONMENT_ERRNOS | frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EFBIG", "EIO") if hasattr(errno, name)
)


def _machine_failure(exc: BaseException) -> str | None:
    """The message of an environment failure (exit 8) that no command turned into one, or None."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "ArrowMemoryError":
        return f"out of memory ({type(exc).__name__}: {exc}); free memory or raise this process's limit"
    if isinstance(exc, OSError) and exc.errno in _MACHINE_ERRNOS:
        where = f": {os.fsdecode(exc.filename)}" if exc.filename is not None else ""
        return f"{os.strerror(exc.errno or 0)}{where}; nothing was lost: rerun once it is fixed"
    return None


# -- blaming a path given on the command line -------------------------------------------------------


def _command_line_paths() -> list[tuple[str, str, Path, bool]]:
    """(name, hint, value, is_argument) of every path the current command was given."""
    ctx = get_current_context(silent=True)
    if ctx is None:
        return []
    params = {p.name: p for p in ctx.command.params}
    found = []
    for name, value in ctx.params.items():
        param = params.get(name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if param is None or not values or not all(isinstance(v, Path) for v in values):
            continue
        is_argument = param.param_type_name == "argument"
        hint = name.upper() if is_argument else max(param.opts, key=len)
        found += [(name, hint, v, is_argument) for v in values]
    return found


def _same_or_under(path: Path, base: Path) -> bool:
    p, b = os.path.abspath(path), os.path.abspath(base)
    return p == b or p.startswith(b.rstrip(os.sep) + os.sep)


def _what_is_wrong(value: Path, exc: OSError | None) -> tuple[int, str]:
    """Why ``value`` (a command-line path) could not be used."""
    if not os.path.lexists(value):
        parent = value.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if parent.exists() and not parent.is_dir():
            return EXIT_USAGE, f"{value}: {parent} is a file, not a folder"
        return EXIT_USAGE, f"{value} does not exist"
    if isinstance(exc, NotADirectoryError) or (exc is not None and value.exists() and not value.is_dir()):
        return EXIT_USAGE, f"{value} is a file, not a folder"
    if isinstance(exc, IsADirectoryError):
        return EXIT_USAGE, f"{value} is a folder, not a file"
    if isinstance(exc, PermissionError):
        return EXIT_ENVIRONMENT, f"{value}: permission denied ({exc.filename})"
    if exc is not None:
        return EXIT_USAGE, f"{value}: {exc.strerror or exc}"
    return EXIT_USAGE, f"{value} cannot be used"


def _blame(name: str, hint: str, value: Path, exc: OSError | None) -> tuple[int, list[str]]:
    code, why = _what_is_wrong(value, exc)
    if name in OUTPUT_DIR_PARAMS and not value.exists() and code == EXIT_USAGE:
        code, why = EXIT_INCOMPATIBLE, f"{why}: not an ascend-batch output directory"  # as status says
    return code, [f"{hint}: {why}"]


def _error_path(exc: BaseException) -> str | None:
    """The file an OSError is about (pandas and pyarrow raise ``FileNotFoundError(path)``)."""
    if not isinstance(exc, OSError):
        return None
    if exc.filename is not None:
        return os.fsdecode(exc.filename)
    if isinstance(exc, FileNotFoundError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return None


def _blame_command_line(exc: BaseException) -> tuple[int, list[str]] | None:
    from .runner.outdir import JOB_FILE

    paths = _command_line_paths()
    target = _error_path(exc)
    oserror: Any = exc if isinstance(exc, OSError) else None
    if target is not None:
        for name, hint, value, _arg in paths:
            # the path itself; something under it when it is missing or a file (not a folder's content);
            # a file beside it (a temporary file) when its folder is missing or a file
            if (
                os.path.abspath(target) == os.path.abspath(value)
                or (_same_or_under(Path(target), value) and not value.is_dir())
                or (_same_or_under(Path(target), value.parent) and not value.parent.is_dir())
            ):
                return _blame(name, hint, value, oserror)
    # not about one file: the command's input paths as they stand explain it, or nothing does
    for name, hint, value, is_argument in paths:
        if not is_argument:
            continue  # an option may name something to be created (--output, --json)
        if not value.exists():
            return _blame(name, hint, value, None)
        if name in OUTPUT_DIR_PARAMS:
            if not value.is_dir():
                return EXIT_USAGE, [f"{hint}: {value} is a file, not a job's output directory"]
            if not (value / JOB_FILE).exists():
                return EXIT_INCOMPATIBLE, [f"{hint}: {value} is not an ascend-batch output directory (no {JOB_FILE})"]
    return None
