"""A script that calls ``ascend_batch.run()`` without ``if __name__ == "__main__":``: every spawned
worker imports that script again and would start a job of its own. The worker exits at once, quietly,
with :data:`MAIN_GUARD_EXIT`; the supervisor turns that into one
:class:`~ascend_batch.errors.MissingMainGuard`."""

from __future__ import annotations

import multiprocessing as mp
import sys

# The exit code of a spawned worker that, while importing its parent's main script (as multiprocessing
# does), found that script calling ascend_batch.run() again: a script without the main guard.
MAIN_GUARD_EXIT = 87


def bootstrapping() -> bool:
    """True while this process is a spawned worker importing its parent's main script."""
    return bool(getattr(mp.current_process(), "_inheriting", False))


def exit_if_bootstrapping() -> None:
    """Called where a job starts (``ascend_batch.run``, ``ascend-batch run``): in a worker that is only
    importing its parent's script, exit at once, quietly, with :data:`MAIN_GUARD_EXIT`; the supervisor
    turns that into one :class:`MissingMainGuard` instead of every worker's traceback."""
    if bootstrapping():
        raise SystemExit(MAIN_GUARD_EXIT)


def main_guard_message() -> str:
    script = getattr(sys.modules.get("__main__"), "__file__", None) or "the main script"
    return (
        f'{script} calls ascend_batch.run() outside `if __name__ == "__main__":`; every worker process '
        "imports that script again, so the call (and anything else a worker must not run) has to sit under "
        "that guard"
    )
