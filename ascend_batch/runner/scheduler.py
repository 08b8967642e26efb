"""The supervisor's decisions, without processes: which task runs next, and what a task's success,
failure or worker death means. Pure bookkeeping, so every decision is tested in-process
(``tests/test_scheduler.py`` drives it with a scripted fake worker).

The rules:

* A task that fails (its worker raised, or died after its model was up) is retried up to
  ``max_retries`` times, then bisected; halves of a unit run before their own halves (breadth
  first), so a failing piece's sibling always speaks before anything deeper runs.
* While a unit fails and nothing says the device works (no piece of that unit, no task on that
  device has succeeded in this run), another whole unit is moved to the front as a probe: its
  success proves the device, its failure says the device fails whatever it is given.
* A task of a single image runs only on a fresh worker (a process whose first task it is: see
  ``take(fresh=...)``), and the image is blamed (a ``crash``/``runtime`` error row) only if it failed
  there, alone, on a device where a fresh worker's first task has succeeded in this run. A fault
  that depends on what the process did before (its nth call, a leak, a stale buffer) therefore never
  blames an image: a fresh process holding one image has done the least any task does, the same for
  every image, and that much is proven to work on the device. Evidence from a worker that had
  already run other tasks (it succeeded on one piece, then failed on the next) is no evidence.
  Without evidence the image is tried again after other work; when nothing else is left, the job
  stops rather than blame it.
* Not the images' fault, so the job stops (:class:`Verdict`) and nothing is blamed:
  - an environmental failure (memory, the output's disk, a dropped input mount) at once;
  - a device failing ``max_retries + 10`` tasks in a row that span more than one unit: it is given up;
    when no device is left the job stops. A cluster of bad images stays inside its unit, so it never
    gives a device up;
  - both halves of a split failing with the same runtime error when there is no other unit to probe.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field

from ..errors import EXIT_ENVIRONMENT, EXIT_STARTUP
from ..plan import Unit
from .messages import Cause, Task

DEVICE_STREAK_MARGIN = 10


@dataclass(frozen=True)
class Verdict:
    """The job must stop: a failure that no image caused. ``exit_code`` is the CLI's."""

    exit_code: int
    message: str


@dataclass(frozen=True)
class CrashRow:
    """Write the error row of the single image of ``task`` (then :class:`Merge` may follow)."""

    task: Task
    message: str


@dataclass(frozen=True)
class Merge:
    """Every piece of ``unit`` is written: merge them into its part."""

    unit: Unit


@dataclass(frozen=True)
class Committed:
    unit: Unit


@dataclass(frozen=True)
class GiveUpDevice:
    device: str
    reason: str


Action = CrashRow | Merge | Committed | GiveUpDevice


@dataclass
class Scheduler:
    units: list[Unit]
    devices: list[str]
    max_retries: int
    queue: collections.deque[Task] = field(default_factory=collections.deque)
    verdict: Verdict | None = None
    dead: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.queue = collections.deque(Task(u, u.start, u.stop) for u in self.units)
        self._pending: dict[int, set[tuple[int, int, int]]] = {}  # bisected unit -> pieces not yet written
        self._sibling: dict[tuple[int, int, int], tuple[int, int, int]] = {}
        self._runtime_failure: dict[tuple[int, int, int], str] = {}
        self._unit_ok: set[int] = set()  # units of which some piece succeeded
        self._proven: set[str] = set()  # devices that completed a task in this run
        self._fresh_proven: set[str] = set()  # devices where a worker completed its first task in this run
        self._streak: collections.Counter[str] = collections.Counter()  # failures in a row, per device
        self._streak_units: collections.defaultdict[str, set[int]] = collections.defaultdict(set)  # ... in units
        self._deferred: set[tuple[int, int, int]] = set()  # single images waiting for evidence
        self._running: set[tuple[int, int, int]] = set()  # tasks handed out and not yet reported

    # -- queue -------------------------------------------------------------------------------
    def take(self, *, fresh: bool, device: str | None = None) -> Task | None:
        """The next task for a worker on ``device``; ``fresh``: the worker has run no task yet. A single
        image is only ever handed to a fresh worker, and one waiting for evidence (deferred) only to a
        fresh worker on a device where a fresh worker's first task has succeeded, so None with a
        non-empty queue means: replace the worker, or let another device take it."""
        if self.verdict is not None:
            return None
        for i, task in enumerate(self.queue):
            if not (fresh or task.size > 1):
                continue
            if task.key in self._deferred and device is not None and device not in self._fresh_proven:
                continue
            del self.queue[i]
            self._running.add(task.key)
            return task
        return None

    def give_back(self, task: Task) -> None:
        """A task whose worker died before it began (model still loading): not the task's fault."""
        self._running.discard(task.key)
        self.queue.appendleft(task)

    # -- outcomes ----------------------------------------------------------------------------
    def done(self, task: Task, device: str, *, fresh: bool) -> list[Action]:
        """``task`` succeeded; ``fresh``: it was the first task of its worker."""
        self._running.discard(task.key)
        self._streak[device] = 0
        self._streak_units[device].clear()
        self._proven.add(device)
        if fresh:
            self._fresh_proven.add(device)
        if not task.piece:
            actions: list[Action] = [Committed(task.unit)]
        else:
            self._unit_ok.add(task.unit.index)
            actions = self._piece_written(task)
        self._stop_if_stuck(f"the last task that could tell succeeded on {device}")
        return actions

    def failed(self, task: Task, device: str, cause: Cause, message: str, *, fresh: bool) -> list[Action]:
        """The worker raised while running ``task``; ``fresh``: it was the worker's first task."""
        self._running.discard(task.key)
        if cause is Cause.ENVIRONMENT:
            self.verdict = Verdict(EXIT_ENVIRONMENT, f"{message} (on {device}, unit {task.unit.index})")
            return []
        return self._charge(task, device, f"runtime: {message}", runtime=True, fresh=fresh)

    def died(self, task: Task, device: str, reason: str, *, fresh: bool) -> list[Action]:
        """The worker died while running ``task`` (its model was up); ``fresh``: its first task."""
        self._running.discard(task.key)
        return self._charge(task, device, f"crash: {reason}", runtime=False, fresh=fresh)

    # -- internals ---------------------------------------------------------------------------
    def _charge(self, task: Task, device: str, reason: str, *, runtime: bool, fresh: bool) -> list[Action]:
        self._streak[device] += 1
        self._streak_units[device].add(task.unit.index)
        task = dataclasses.replace(task, attempt=task.attempt + 1)
        # a streak inside one unit is what a cluster of bad images looks like: only one that spans
        # units says the device fails whatever it is given
        if self._streak[device] >= self.max_retries + DEVICE_STREAK_MARGIN and len(self._streak_units[device]) > 1:
            return self._give_up(device, task, reason)
        if not task.piece and task.attempt <= self.max_retries:
            self.queue.appendleft(task)
            return []
        unsure = task.unit.index not in self._unit_ok and device not in self._proven
        probed = unsure and self._probe(task.unit.index)  # another unit runs next: it tells device from images
        if runtime and task.piece and unsure and not probed:
            sibling = self._sibling.get(task.key)
            self._runtime_failure[task.key] = reason
            if sibling is not None and self._runtime_failure.get(sibling) == reason:
                self.verdict = Verdict(
                    EXIT_STARTUP,
                    f"{reason} (on {device}): both halves of unit {task.unit.index} failed the same way and there is "
                    "no other unit to tell the device from the images, so no image is to blame; check the model, "
                    "runtime.batch_size and the device",
                )
                return []
        if task.size > 1:
            self._split(task)
            return []
        # the image alone, in a process that did nothing before, on a device where that much works
        if fresh and device in self._fresh_proven:
            return [
                CrashRow(task, f"{reason} while processing this image (failed {task.attempt} times)"),
                *self._leaf_written(task),
            ]
        # no evidence yet that a fresh worker works on this device: try the image again after other
        # work, on a device where that evidence exists (take() routes it), or stop if none can come
        self._deferred.add(task.key)
        self.queue.append(task)
        self._stop_if_stuck(f"{reason} (on {device})")
        return []

    def _stop_if_stuck(self, why: str) -> None:
        """Stop the job when only images waiting for evidence are left, nothing running can bring it,
        and no device still in use has it: they cannot be told from a failing runtime."""
        if self.verdict is not None or self._running or not self.queue:
            return
        if not all(t.key in self._deferred for t in self.queue) or self._fresh_proven - self.dead:
            return
        self.verdict = Verdict(
            EXIT_STARTUP,
            f"{why}: every task left fails and no worker has completed its first task on a device still in "
            "use in this run, so the failures cannot be told from bad images and none is blamed; check the "
            "model and the device",
        )

    def _probe(self, unit: int) -> bool:
        """Move the first queued whole unit other than ``unit`` to the front; False if there is none."""
        for i, queued in enumerate(self.queue):
            if queued.unit.index != unit and not queued.piece and queued.key not in self._deferred:
                del self.queue[i]
                self.queue.appendleft(queued)
                return True
        return False

    def _split(self, task: Task) -> None:
        mid = (task.start + task.stop) // 2
        halves = [
            dataclasses.replace(task, start=task.start, stop=mid, depth=task.depth + 1),
            dataclasses.replace(task, start=mid, stop=task.stop, depth=task.depth + 1),
        ]
        a, b = halves[0].key, halves[1].key
        self._sibling[a], self._sibling[b] = b, a
        pending = self._pending.setdefault(task.unit.index, set())
        pending.discard(task.key)
        pending.update((a, b))
        # breadth first: after the pieces of this unit already queued, so siblings run before children
        at = 0
        for i, queued in enumerate(self.queue):
            if queued.unit.index == task.unit.index:
                at = i + 1
        self.queue.insert(at, halves[1])
        self.queue.insert(at, halves[0])

    def _leaf_written(self, task: Task) -> list[Action]:
        if not task.piece:  # a unit of one image: its crash row is the whole unit
            self._pending[task.unit.index] = {task.key}
        return self._piece_written(task)

    def _piece_written(self, task: Task) -> list[Action]:
        pending = self._pending.get(task.unit.index)
        if pending is None:
            return []
        pending.discard(task.key)
        if pending:
            return []
        del self._pending[task.unit.index]
        return [Merge(task.unit)]

    def _give_up(self, device: str, task: Task, reason: str) -> list[Action]:
        self.dead.add(device)
        self.queue.appendleft(task)  # not blamed: another device may take it
        if set(self.devices) <= self.dead:
            self.verdict = Verdict(
                EXIT_STARTUP,
                f"{reason}: {self._streak[device]} tasks in a row failed on {device} and no device is left; this is "
                "not caused by images (a single bad image fails at most a few times before a neighbour succeeds)",
            )
        self._stop_if_stuck(f"{reason} (on {device}, given up)")
        return [GiveUpDevice(device, reason)]

    @property
    def busy_units(self) -> set[int]:
        """Units being bisected (pieces outstanding)."""
        return set(self._pending)
