"""The supervisor: one spawned worker process per device, tasks handed out as workers free up, the
:class:`~.scheduler.Scheduler`'s decisions carried out (retries, bisection, crash rows, merges, giving
up a device, stopping the job), signals turned into a clean, resumable stop.

Each worker talks to the supervisor over its own pipe (no shared queue whose lock a killed worker
could take with it), in the typed messages of :mod:`.messages`. The supervisor knows at every moment
which task each worker holds, so a worker's death is charged to exactly that task, and only once the
worker's model was up: a death before that is a start-up failure of the device, except the first one
that happened while a unit was decoding beside the loading model, which is ambiguous: the
replacement then opens its model before touching an image, and the next death says which it was.
A worker that holds a task and sends nothing for ``stall_timeout`` seconds is killed and counts as
such a death (:mod:`.watchdog`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import multiprocessing as mp
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from ..backends.base import Device
from ..errors import MissingMainGuard, StartupError
from ..manifest.config import DEFAULT_STALL_TIMEOUT
from ..plan import Unit
from .main_guard import MAIN_GUARD_EXIT, exit_if_bootstrapping, main_guard_message
from .messages import Message, Progress, Ready, StartupFailed, Task, TaskDone, TaskFailed, WorkerConfig
from .outdir import merge_pieces, write_crash_row
from .progress import Progress as ProgressDisplay
from .scheduler import Action, Committed, CrashRow, GiveUpDevice, Merge, Scheduler, Verdict
from .signals import EarlyDrain
from .watchdog import death_message, overdue, stall_log
from .worker import worker_main
from .writer import sum_into

RETIRE_GRACE = 30.0  # seconds a worker that reported a failure may take to release its session and exit


class WorkerStatus(enum.Enum):
    STARTING = "starting"  # spawned; its model is loading (it may already hold a task)
    READY = "ready"  # model up: a death now is charged to its task
    RETIRING = "retiring"  # reported a failure and is exiting: no new task; replaced when reaped
    FAILED_START = "failed-start"  # said why it could not start
    STOPPING = "stopping"  # being shut down: not replaced


@dataclass
class _Worker:
    device: Device
    process: Any
    conn: Connection
    status: WorkerStatus = WorkerStatus.STARTING
    task: Task | None = None
    retiring_since: float = 0.0
    last_heard: float = field(default_factory=time.monotonic)  # its last message, or the task sent to it
    stalled: bool = False  # killed by the watchdog
    tasks_done: int = 0  # none yet: the worker is fresh (what it holds is its first task)

    @property
    def fresh(self) -> bool:
        return self.tasks_done == 0


class StopMode(enum.Enum):
    ABORT = "abort"  # Ctrl-C, SIGTERM: stop now, in-flight units are redone next time
    DRAIN = "drain"  # SIGUSR1 (Slurm), or a verdict: finish the units in flight, then stop


@dataclass
class Outcome:
    """What one supervisor run achieved."""

    images: int = 0
    ok: int = 0
    errors: int = 0
    units_done: int = 0
    interrupted: str | None = None
    verdict: Verdict | None = None
    per_device: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    decoded: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0
    worker_deaths: int = 0


class Supervisor:
    def __init__(
        self,
        template: WorkerConfig,
        devices: tuple[Device, ...],
        units: list[Unit],
        *,
        max_retries: int,
        progress: ProgressDisplay | None,
        drain_timeout: float = 45.0,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    ) -> None:
        self.template = template
        self.devices = devices
        self.max_retries = max_retries
        self.progress = progress or ProgressDisplay(0, 0, 0, 0, bar=False)
        self.drain_timeout = drain_timeout
        self.stall_timeout = stall_timeout
        self.started = False
        self.set_units(units)
        self.workers: list[_Worker] = []
        self.startup_failures: dict[Device, list[str]] = collections.defaultdict(list)
        self.open_first: set[Device] = set()
        self.dead_devices: set[Device] = set()
        self.outcome = Outcome()
        self.stop_mode: StopMode | None = None
        self.stop_signal: str | None = None
        self.drain_deadline = 0.0
        self._abandoned = False  # tasks were in flight when the workers were stopped
        self.ctx = mp.get_context("spawn")

    def set_units(self, units: list[Unit]) -> None:
        """The units to run (may come after :meth:`start_workers`)."""
        self.scheduler = Scheduler(units, [str(d) for d in self.devices], self.max_retries)

    def start_workers(self) -> None:
        """Spawn one worker per device now: they import and load their models while the caller
        is still listing the dataset."""
        if not self.started:
            exit_if_bootstrapping()  # a job started by a script that a worker is importing: see MAIN_GUARD_EXIT
            self.started = True
            for d in self.devices:
                self._start(d)

    def stop_workers(self) -> None:
        """Stop workers started early when the job will not run after all."""
        self._shutdown()

    # -- signals -----------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum == getattr(signal, "SIGUSR1", None):
            if self.stop_mode is None:
                self._drain(name)
            return
        self.stop_mode, self.stop_signal = StopMode.ABORT, name
        # a second Ctrl-C goes straight to Python's default: immediate KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _drain(self, why: str) -> None:
        self.stop_mode, self.stop_signal = StopMode.DRAIN, why
        self.drain_deadline = time.monotonic() + self.drain_timeout

    def _install_signals(self) -> dict[int, Any]:
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    # -- workers -----------------------------------------------------------------------------
    def _start(self, device: Device) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        cfg = dataclasses.replace(self.template, device=device, open_first=device in self.open_first)
        proc = self.ctx.Process(target=worker_main, args=(cfg, child), name=f"ascend-batch-{device}", daemon=True)
        proc.start()
        child.close()
        self.workers.append(_Worker(device, proc, parent))

    def _dispatch(self) -> None:
        if self.stop_mode is not None:
            return
        stale: list[_Worker] = []
        for w in self.workers:
            # a worker takes its first task before its model is loaded: it decodes while loading
            if w.task is None and w.status in (WorkerStatus.STARTING, WorkerStatus.READY):
                w.task = self.scheduler.take(fresh=w.fresh, device=str(w.device))
                if w.task is None:
                    if not w.fresh:
                        stale.append(w)
                    continue
                w.last_heard = time.monotonic()
                try:
                    w.conn.send(w.task)
                except (BrokenPipeError, OSError):  # it died before it could receive the task: not the task's fault
                    self.scheduler.give_back(w.task)
                    w.task = None
        queue = self.scheduler.queue
        if queue and self.scheduler.verdict is None and all(t.size == 1 for t in queue):
            # what is left are single images, which run only on fresh workers: replace idle used ones
            for w in stale:
                self._retire(w)

    def _retire(self, w: _Worker) -> None:
        """Ask an idle worker to exit; it is replaced by a fresh one when reaped."""
        w.status = WorkerStatus.RETIRING
        w.retiring_since = time.monotonic()
        with contextlib.suppress(BrokenPipeError, OSError):
            w.conn.send(None)

    def _handle(self, w: _Worker, msg: Message) -> None:
        device = str(w.device)
        w.last_heard = time.monotonic()
        if isinstance(msg, Ready):
            w.status = WorkerStatus.READY
            self.startup_failures.pop(w.device, None)
        elif isinstance(msg, Progress):
            self.progress.advance(device, msg.images)
        elif isinstance(msg, TaskDone):
            task, w.task = w.task, None
            if task is not None and task.key == msg.key:
                fresh = w.fresh
                w.tasks_done += 1
                self._count(msg.stats.__dict__, device)
                self._apply(self.scheduler.done(task, device, fresh=fresh), device)
        elif isinstance(msg, TaskFailed):
            task, w.task = w.task, None
            w.status = WorkerStatus.RETIRING  # it exits after reporting; never hand it another task
            w.retiring_since = time.monotonic()
            if task is not None:
                self.progress.log(
                    f"unit {task.unit.index} [{task.start}, {task.stop}) failed on {device}: {msg.message}"
                )
                self._apply(self.scheduler.failed(task, device, msg.cause, msg.message, fresh=w.fresh), device)
        elif isinstance(msg, StartupFailed):
            w.status = WorkerStatus.FAILED_START
            self.startup_failures[w.device].append(msg.message)
            self.progress.log(f"worker {w.device} failed to start: {msg.message}")

    def _count(self, stats: dict, device: str) -> None:
        o = self.outcome
        o.images += stats["images"]
        o.ok += stats["ok"]
        o.errors += stats["errors"]
        o.per_device[device] = o.per_device.get(device, 0) + stats["images"]
        sum_into(o.seconds, stats["seconds"])
        sum_into(o.decoded, stats.get("decoded", {}))
        sum_into(o.error_kinds, stats["error_kinds"])
        # images that errored before a batch reached the device are not in the progress feed
        self.progress.advance(device, stats["images"] - stats["ok"])

    def _apply(self, actions: list[Action], device: str) -> None:
        t = self.template
        for a in actions:
            if isinstance(a, Committed):
                self.outcome.units_done += 1
                self.progress.unit_done()
            elif isinstance(a, CrashRow):
                task = a.task
                write_crash_row(
                    t.out, t.listing, task.unit, task.start, a.message,
                    model=t.model.name, backend=t.backend, device=device, run_id=t.run_id,
                )  # fmt: skip
                kind = a.message.split(":", 1)[0]
                self._count({"images": 1, "ok": 0, "errors": 1, "seconds": {}, "error_kinds": {kind: 1}}, device)
                self.progress.log(f"unit {task.unit.index}: image {task.start} isolated: {a.message}")
            elif isinstance(a, Merge):
                merge_pieces(t.out, a.unit)
                self.outcome.units_done += 1
                self.progress.unit_done()
            elif isinstance(a, GiveUpDevice):
                self.progress.log(f"giving up on device {a.device}: {a.reason}")
                for w in self.workers:
                    if str(w.device) == a.device:
                        self.dead_devices.add(w.device)
        if self.scheduler.verdict is not None and self.stop_mode is None:
            self.progress.log(f"stopping: {self.scheduler.verdict.message}")
            self._drain("verdict")

    def _reap(self, w: _Worker) -> None:
        with contextlib.suppress(EOFError, OSError):
            while w.conn.poll():  # messages it sent before dying still count
                self._handle(w, w.conn.recv())
        w.process.join(timeout=5)
        if w.process.exitcode == MAIN_GUARD_EXIT and w.status is WorkerStatus.STARTING:
            raise MissingMainGuard(main_guard_message())  # every worker would do the same: stop the job
        self.workers.remove(w)
        w.conn.close()
        death = death_message(w.process.exitcode, self.stall_timeout if w.stalled else None)
        reason = f"worker on {w.device} {death}"
        task, w.task = w.task, None
        if task is not None and w.status is WorkerStatus.READY:
            self.outcome.worker_deaths += 1
            if not w.stalled:  # the watchdog said it when it killed the worker
                self.progress.log(f"{reason} during unit {task.unit.index} [{task.start}, {task.stop})")
            self._apply(self.scheduler.died(task, str(w.device), reason, fresh=w.fresh), str(w.device))
        elif task is not None:
            self.scheduler.give_back(task)
            if w.status is WorkerStatus.STARTING and w.device not in self.open_first:
                # died while its model loaded and a unit decoded: either could be to blame; the
                # replacement loads first, so the next death is the model's or the image's alone
                self.open_first.add(w.device)
                self.progress.log(f"{reason} while starting; restarting it with the model loaded first")
                self._restart(w)
                return
        if w.status in (WorkerStatus.STARTING, WorkerStatus.FAILED_START):
            if w.status is WorkerStatus.STARTING:  # died without a word: count the death itself
                self.startup_failures[w.device].append(f"worker {death} while starting")
            failures = self.startup_failures[w.device]
            if len(failures) > self.max_retries:
                self.dead_devices.add(w.device)
                self.progress.log(f"giving up on device {w.device}: {failures[-1]}")
                return
        self._restart(w)

    def _restart(self, w: _Worker) -> None:
        if w.status is WorkerStatus.STOPPING or self.stop_mode is not None or w.device in self.dead_devices:
            return
        if self.scheduler.queue or self._busy():
            self._start(w.device)

    def _busy(self) -> bool:
        return any(w.task is not None for w in self.workers)

    # -- main loop ---------------------------------------------------------------------------
    def run(self) -> Outcome:
        t0 = time.monotonic()
        previous = self._install_signals()
        if EarlyDrain.received.is_set():
            self._on_signal(signal.SIGUSR1, None)
        try:
            self.start_workers()
            self._loop()
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.outcome.wall = time.monotonic() - t0
        self.outcome.verdict = self.scheduler.verdict
        unfinished = self._abandoned or bool(self.scheduler.queue) or bool(self.scheduler.busy_units)
        if self.stop_mode is not None and self.outcome.verdict is None and unfinished:
            self.outcome.interrupted = self.stop_signal  # a stop that came after the last commit stops nothing
        return self.outcome

    def _loop(self) -> None:
        while True:
            if self.stop_mode is StopMode.ABORT:
                return
            if self.stop_mode is StopMode.DRAIN and (not self._busy() or time.monotonic() > self.drain_deadline):
                return
            if not self.scheduler.queue and not self._busy():
                return
            now = time.monotonic()
            for w in self.workers:  # a given-up device's worker goes now (its task was requeued)
                if w.device in self.dead_devices and w.status is not WorkerStatus.STOPPING:
                    w.status = WorkerStatus.STOPPING
                    w.process.terminate()
                elif w.status is WorkerStatus.RETIRING and now - w.retiring_since > RETIRE_GRACE:
                    w.process.kill()  # stuck releasing a failed device: its replacement must not wait for it
            self._watch()
            if not self.workers:
                failures = "; ".join(f"{d}: {m[-1]}" for d, m in self.startup_failures.items() if m)
                raise StartupError(f"no device could start a worker ({failures or 'every device was given up'})")
            self._dispatch()
            objs: list[Any] = [w.conn for w in self.workers] + [w.process.sentinel for w in self.workers]
            ready = wait(objs, timeout=0.5)
            for w in list(self.workers):
                if w.conn in ready:
                    with contextlib.suppress(EOFError, OSError):
                        while w.conn.poll():
                            self._handle(w, w.conn.recv())
                if w.process.sentinel in ready or not w.process.is_alive():
                    self._reap(w)
            self.progress.refresh()

    def _watch(self) -> None:
        """Kill (SIGKILL: it may be stopped) each worker that holds a task and has sent nothing for
        ``stall_timeout`` seconds; it is reaped as a worker that died during its task."""
        for w in self.workers:
            if w.task is None or w.stalled or w.status not in (WorkerStatus.STARTING, WorkerStatus.READY):
                continue
            with contextlib.suppress(OSError):
                if w.conn.poll():  # it spoke while we were busy: read that first
                    continue
            if overdue(w.last_heard, self.stall_timeout):
                w.stalled = True
                self.progress.log(stall_log(w.device, self.stall_timeout, w.task, w.status is WorkerStatus.STARTING))
                w.process.kill()

    def _shutdown(self) -> None:
        self._abandoned = self._abandoned or self._busy()
        for w in self.workers:
            w.status = WorkerStatus.STOPPING
            try:
                if w.task is None:
                    w.conn.send(None)
                else:
                    w.process.terminate()  # abandons its unit; nothing is committed
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 10
        for w in self.workers:
            w.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=5)
            w.conn.close()
        self.workers.clear()
