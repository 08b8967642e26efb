"""Test-side view of the emulated pyACL (not part of the pyACL API)."""

from __future__ import annotations

from typing import Any

from ._state import STATE, Call, parse_fail

__all__ = ["Call", "calls", "clear_log", "executions", "live", "misuse", "parse_fail", "report", "reset"]


def reset() -> None:
    """Forget everything: a fresh process, as far as the fake is concerned."""
    STATE.reset()


def live() -> dict[str, int]:
    """Live handles by kind (``initialized`` is 1 between init and finalize)."""
    return STATE.live()


def report() -> dict[str, Any]:
    """What ``ACL_FAKE_REPORT_DIR`` would get now."""
    return STATE.report()


def calls() -> list[Call]:
    """Every API call of this process in order (name, device, return code, injected)."""
    with STATE.lock:
        return list(STATE.log)


def clear_log() -> None:
    with STATE.lock:
        STATE.log.clear()


def misuse() -> list[dict[str, Any]]:
    """Calls that returned an error because they were used wrongly (not injected failures)."""
    with STATE.lock:
        return list(STATE.misuse)


def executions() -> list[tuple[int, int]]:
    """``(device, batch)`` of every model run so far: the batch is the static batch or the gear."""
    with STATE.lock:
        return list(STATE.executions)
