"""Reading one manifest table: typed values, every problem collected (not just the first) and named
by its dotted key."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ManifestError

T = TypeVar("T")


class TableReader:
    """Reads one table, collecting errors instead of stopping at the first. A value that is absent or
    wrong comes back as ``None``: the caller leaves it out and the dataclass default applies."""

    def __init__(self, table: str, data: Any, errors: list[ManifestError], manifest: str | None) -> None:
        self.table = table
        self.errors = errors
        self.manifest = manifest
        self.present = data is not None  # the manifest has this table
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(table, f"expected a table [{table}], got {type(data).__name__}")
            data = {}
        self.data: dict[str, Any] = data
        self.seen: list[str] = []  # the keys read, in order: the allowed keys
        self.refused: set[str] = set()  # known keys not allowed here (not in the allowed list)

    def fail(self, key: str, message: str) -> None:
        self.errors.append(ManifestError(key, message, self.manifest))

    def key(self, name: str) -> str:
        return f"{self.table}.{name}"

    def has(self, name: str) -> bool:
        return name in self.data

    def get(self, name: str, kind: type | tuple[type, ...], expected: str) -> Any:
        """The value of ``name`` if it is one of ``kind`` (an int passes as a float, a bool never as a
        number), else None (with an error naming the key when it is there but of another type)."""
        if name not in self.seen:
            self.seen.append(name)
        if name not in self.data:
            return None
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        elif float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        else:
            ok = isinstance(value, kinds)
        if not ok:
            self.fail(self.key(name), f"expected {expected}, got {type(value).__name__} {value!r}")
            return None
        return value

    def check(self, name: str, value: T | None, ok: Callable[[T], bool], message: str) -> T | None:
        """``value`` if it is None or passes ``ok``; else None, with ``message`` for the key."""
        if value is not None and not ok(value):
            self.fail(self.key(name), message)
            return None
        return value

    def choice(self, name: str, choices: tuple[str, ...] | dict[str, Any]) -> str | None:
        """A string that must be one of ``choices``."""
        expected = f"one of {', '.join(choices)}"
        return self.check(name, self.get(name, str, expected), lambda v: v in choices, f"expected {expected}")

    def integer(self, name: str, minimum: int, expected: str | None = None) -> int | None:
        """An integer ``>= minimum``."""
        expected = expected or f"an integer >= {minimum}"
        value: int | None = self.get(name, int, expected)
        if value is not None and value < minimum:
            self.fail(self.key(name), f"expected {expected}, got {value}")
            return None
        return value

    def refuse(self, name: str, message: str) -> None:
        """``name`` is a known key not allowed here: an error if the manifest sets it."""
        self.seen.append(name)
        self.refused.add(name)
        if name in self.data:
            self.fail(self.key(name), message)

    def finish(self) -> None:
        """An error for every key that was never read."""
        allowed = [name for name in self.seen if name not in self.refused]
        for name in self.data:
            if name not in self.seen:
                self.fail(self.key(name), f"unknown key; allowed keys: {', '.join(allowed)}")


def resolve_path(base: Path, value: str) -> Path:
    """``value`` (``~`` expanded) against the manifest's folder, normalised."""
    p = Path(value).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else (base / p)))


def read_triple(r: TableReader, name: str) -> tuple[float, float, float] | None:
    """One number for all three channels, or a list of 3 (R, G, B)."""
    value = r.get(name, (list, int, float), "a number or a list of 3 numbers")
    if value is None:
        return None
    if isinstance(value, (int, float)):
        f = float(value)
        return (f, f, f)
    if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        r.fail(r.key(name), f"expected a list of 3 numbers (R, G, B), got {value!r}")
        return None
    return (float(value[0]), float(value[1]), float(value[2]))
