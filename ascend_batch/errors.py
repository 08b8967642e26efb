"""Typed errors and the process exit codes they map to.

Exit codes (documented in the README):

====  ===========================================================================
0     job complete and verified: every listed image has exactly one row (error rows included);
      ``_SUCCESS`` is written, and only then
1     unexpected internal error (a bug: please report with the traceback)
2     bad manifest or command line (the message names the key or option)
3     the model, backend or device failed: at start-up, or on every batch whatever the images
      (no image is blamed for it); a rerun resumes once the cause is fixed
4     the output directory is not this job's: another job's results (use --restart), or a folder
      this tool did not write (nothing in it is touched)
5     another run holds the job lock (the message names pid, host, start time)
6     the job is complete but more than ``max_error_fraction`` of its images failed (no ``_SUCCESS``)
7     incomplete: units are missing or a committed part failed verification (moved to
      ``_damaged/``); a rerun does them
8     the environment failed: the output is not a writable directory (a file, read-only, permission
      denied), the disk or quota is full, or memory ran out; the message names the path and the
      cause; nothing committed is lost and a rerun resumes once it is fixed
9     ``report --fail-on-drift X``: the class mix drifted from a baseline night by a Jensen-Shannon
      divergence (base 2, 0..1) above X; the report is written all the same
130   interrupted (Ctrl-C / SIGTERM / Slurm preemption): resumable, rerun to continue
====  ===========================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_STARTUP = 3
EXIT_INCOMPATIBLE = 4
EXIT_LOCKED = 5
EXIT_TOO_MANY_ERRORS = 6
EXIT_INCOMPLETE = 7
EXIT_ENVIRONMENT = 8
EXIT_INTERRUPTED = 130
EXIT_DRIFT = 9


class AscendBatchError(Exception):
    """Base class: a failure a user can act on. ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_INTERNAL


class ManifestError(AscendBatchError):
    """A manifest problem; ``key`` is the dotted manifest key (``runtime.devices``)."""

    exit_code = EXIT_USAGE

    def __init__(self, key: str, message: str, manifest: str | None = None) -> None:
        self.key = key
        self.message = message
        self.manifest = manifest
        where = f"{manifest}: " if manifest else ""
        super().__init__(f"{where}[{key}] {message}")


class ManifestErrors(AscendBatchError):
    """Several manifest problems at once (``validate`` reports them all)."""

    exit_code = EXIT_USAGE

    def __init__(self, errors: list[ManifestError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class StartupError(AscendBatchError):
    """Model, backend or device could not be opened."""

    exit_code = EXIT_STARTUP


class BackendError(StartupError):
    """A runtime call failed; the message names the call, the code and the device."""


class IncompatibleOutputError(AscendBatchError):
    exit_code = EXIT_INCOMPATIBLE


class LockedError(AscendBatchError):
    exit_code = EXIT_LOCKED


class IncompleteError(AscendBatchError):
    exit_code = EXIT_INCOMPLETE


class TooManyErrors(AscendBatchError):
    """The job is complete, but its error fraction is above ``max_error_fraction``."""

    exit_code = EXIT_TOO_MANY_ERRORS


class EnvironmentFailure(AscendBatchError):
    """The machine or the output failed (not a writable directory, disk full, out of memory)."""

    exit_code = EXIT_ENVIRONMENT


class DecodeOutOfMemory(MemoryError):
    """Decoding an image ran out of memory: the machine's failure (exit 8), never the image's row.
    The message names the image and the settings that bound decode memory."""


class DeviceFailure(StartupError):
    """The runtime failed on every batch whatever the images; no image was blamed."""


class InterruptedRun(AscendBatchError):
    exit_code = EXIT_INTERRUPTED


class ImageError(Exception):
    """One input could not be turned into a model input. ``kind`` is a short tag (``decode``,
    ``read``, ``too-large``, ...); the row's ``error`` column is ``f"{kind}: {message}"``."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(f"{kind}: {message}")


class DriftError(AscendBatchError):
    """``report --fail-on-drift``: tonight's class mix is further from a baseline night than allowed."""

    exit_code = EXIT_DRIFT


class MissingExtraError(AscendBatchError):
    """An optional extra is not installed; the message names the ``pip install`` that adds it."""

    exit_code = EXIT_USAGE


class MissingMainGuard(AscendBatchError):
    """A script calls ``ascend_batch.run()`` outside ``if __name__ == "__main__":``."""

    exit_code = EXIT_USAGE
