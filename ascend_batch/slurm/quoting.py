"""Quoting for generated sbatch scripts: values in ``#SBATCH`` lines (Slurm's double-quote syntax), log
file names (Slurm's ``%`` expansions) and comment lines. Shell lines use ``shlex.quote``. What Slurm
cannot express there (control characters, backslashes in log paths) is refused with a message."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from .options import SlurmUsageError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLAIN = re.compile(r"[A-Za-z0-9_.,:=+/@%-]+")  # needs no quotes in an #SBATCH line


def sbatch_quote(value: str, what: str) -> str:
    """``value`` as one argument of an ``#SBATCH`` line: sbatch splits those lines on blanks, honours
    double quotes and backslash escapes inside them, and treats an unquoted ``#`` as a comment.
    Control characters cannot be expressed: refused."""
    if _CONTROL.search(value):
        raise SlurmUsageError(f"{what} {value!r} contains a control character (a new line?); Slurm cannot take it")
    if _PLAIN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def slurm_filename(path: Path, pattern: str, what: str) -> str:
    """A ``--output`` file name: ``%`` in the directory doubled (Slurm expands ``%j``, ``%A`` ...), then
    ``pattern`` (which uses those expansions) appended. A backslash anywhere turns Slurm's expansion
    off and is dropped by it: refused."""
    text = str(path)
    if "\\" in text:
        raise SlurmUsageError(
            f"{what} {text!r} contains a backslash, which Slurm's --output file names cannot hold; "
            "choose another job.output"
        )
    return text.replace("%", "%%") + "/" + pattern


def comment_safe(text: str) -> str:
    """``text`` for a ``#`` comment line: control characters (new lines) shown as ``?``."""
    return _CONTROL.sub("?", text)


def option_lines(options: Sequence[str], what: str) -> list[str]:
    """``--extra 'SBATCH-OPTION'`` values as ``#SBATCH`` lines (each split like a shell would)."""
    lines = []
    for raw in options:
        if _CONTROL.search(raw):
            raise SlurmUsageError(f"{what} {raw!r} contains a control character")
        try:
            words = shlex.split(raw)
        except ValueError as exc:
            raise SlurmUsageError(f"{what} {raw!r}: {exc}") from None
        if not words or not words[0].startswith("-"):
            raise SlurmUsageError(f"{what} {raw!r}: expected an sbatch option such as '--qos=high'")
        lines.append("#SBATCH " + " ".join(sbatch_quote(w, what) for w in words))
    return lines
