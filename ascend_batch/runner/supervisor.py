"""The supervisor: one spawned worker process per device, units handed out on request, crashes
requeued, poison images isolated by bisection, signals turned into a clean, resumable stop.

Each worker talks to the supervisor over its own pipe (no shared queue whose lock a killed worker
could take with it). The supervisor knows at every moment which task each worker holds, so a
worker's death requeues exactly that task.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing as mp
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..backends.base import Device
from ..errors import StartupError
from ..plan import Unit, read_unit_items
from .progress import Progress
from .worker import PIECES_DIR, Task, WorkerConfig, piece_name, worker_main
from .writer import RowBuffer, commit_table, part_name, part_stats, sum_into

_SIGNAL_NAMES = {-s.value: s.name for s in signal.Signals}


class _EarlyDrain:
    """Remembers a SIGUSR1 that arrives before the supervisor runs (Slurm's warning signal can come
    while the job is still listing), so it is honoured instead of killing the process."""

    received = threading.Event()

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        cls.received.set()


def install_early_drain() -> None:
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, _EarlyDrain.handler)


def death_message(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        return f"killed by {_SIGNAL_NAMES.get(exitcode, f'signal {-exitcode}')}"
    return f"exited with code {exitcode}"


@dataclass
class _Worker:
    device: Device
    process: Any
    conn: Connection
    ready: bool = False
    task: Task | None = None
    stopping: bool = False  # being shut down: not replaced
    retired: bool = False  # reported a failure and is exiting: no new tasks, replaced when reaped
    reported_fatal: bool = False  # said why it could not start (counted in startup_failures)


@dataclass
class Outcome:
    """What one supervisor run achieved."""

    images: int = 0
    ok: int = 0
    errors: int = 0
    units_done: int = 0
    units_failed: dict[int, str] = field(default_factory=dict)
    interrupted: str | None = None
    per_device: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
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
        progress: Progress | None,
        drain_timeout: float = 45.0,
    ) -> None:
        self.template = template
        self.devices = devices
        self.max_retries = max_retries
        self.progress = progress or Progress(0, 0, 0, 0, bar=False)
        self.drain_timeout = drain_timeout
        self.queue: collections.deque[Task] = collections.deque()
        self.started = False
        self.attempts: dict[tuple[int, int, int], int] = collections.defaultdict(int)
        self.pieces: dict[int, set[tuple[int, int, int]]] = {}
        self.set_units(units)
        self.workers: list[_Worker] = []
        self.startup_failures: dict[Device, list[str]] = collections.defaultdict(list)
        self.dead_devices: set[Device] = set()
        self.outcome = Outcome()
        self.stop_mode: str | None = None  # "abort" | "drain"
        self.stop_signal: str | None = None
        self.drain_deadline = 0.0
        self.ctx = mp.get_context("spawn")

    def set_units(self, units: list[Unit]) -> None:
        """The units to run (may come after :meth:`start_workers`)."""
        self.queue = collections.deque(Task(u, u.start, u.stop) for u in units)

    def start_workers(self) -> None:
        """Spawn one worker per device now: they import and load their models while the caller
        is still listing the dataset."""
        if not self.started:
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
                self.stop_mode, self.stop_signal = "drain", name
                self.drain_deadline = time.monotonic() + self.drain_timeout
            return
        self.stop_mode, self.stop_signal = "abort", name
        # a second Ctrl-C goes straight to Python's default: immediate KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _install_signals(self) -> dict[int, Any]:
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    # -- workers -----------------------------------------------------------------------------
    def _start(self, device: Device) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        cfg = WorkerConfig(**{**self.template.__dict__, "device": device})
        proc = self.ctx.Process(target=worker_main, args=(cfg, child), name=f"ascend-batch-{device}", daemon=True)
        proc.start()
        child.close()
        self.workers.append(_Worker(device, proc, parent))

    def _dispatch(self) -> None:
        if self.stop_mode is not None:
            return
        for w in self.workers:
            # a worker takes its first task before its model is loaded: it decodes while loading
            if w.task is None and not w.stopping and not w.retired and self.queue:
                w.task = self.queue.popleft()
                with contextlib.suppress(BrokenPipeError, OSError):
                    w.conn.send(w.task)  # if it died, its sentinel fires and the task is requeued

    def _handle(self, w: _Worker, msg: tuple) -> None:
        kind = msg[0]
        if kind == "ready":
            w.ready = True
            self.startup_failures.pop(w.device, None)
        elif kind == "progress":
            self.progress.advance(str(w.device), msg[1])
        elif kind == "done":
            task = w.task
            w.task = None
            if task is not None and task.key == msg[1]:
                self._task_done(task, msg[2], str(w.device))
        elif kind == "failed":
            task = w.task
            w.task = None
            w.retired = True  # it exits after reporting; never hand it another task
            if task is not None:
                self._task_failed(task, msg[2], str(w.device))
        elif kind == "fatal":
            w.reported_fatal = True
            self.startup_failures[w.device].append(msg[1])
            self.progress.log(f"worker {w.device} failed to start: {msg[1]}")

    def _task_done(self, task: Task, stats: dict, device: str) -> None:
        o = self.outcome
        o.images += stats["images"]
        o.ok += stats["ok"]
        o.errors += stats["errors"]
        o.per_device[device] = o.per_device.get(device, 0) + stats["images"]
        sum_into(o.seconds, stats["seconds"])
        sum_into(o.error_kinds, stats["error_kinds"])
        # images that errored before a batch reached the device are not in the progress feed
        self.progress.advance(device, stats["images"] - stats["ok"])
        if task.piece:
            self._piece_done(task)
        else:
            o.units_done += 1
            self.progress.unit_done()

    def _task_failed(self, task: Task, message: str, device: str) -> None:
        self.attempts[task.key] += 1
        if self.attempts[task.key] <= self.max_retries:
            self.progress.log(f"unit {task.unit.index} failed on {device} ({message}); retrying")
            self.queue.appendleft(dataclasses.replace(task, attempt=self.attempts[task.key]))
        else:
            self.progress.log(f"unit {task.unit.index} failed {self.attempts[task.key]} times; giving up: {message}")
            self.outcome.units_failed[task.unit.index] = message
            self.pieces.pop(task.unit.index, None)
            self.queue = collections.deque(t for t in self.queue if t.unit.index != task.unit.index)

    def _crashed(self, w: _Worker) -> None:
        """A worker died while holding ``w.task``: retry, then bisect to the image that does it."""
        task = w.task
        w.task = None
        if task is None:
            return
        reason = f"worker on {w.device} {death_message(w.process.exitcode)}"
        self.outcome.worker_deaths += 1
        self.attempts[task.key] += 1
        if not task.piece and self.attempts[task.key] <= self.max_retries:
            self.progress.log(f"{reason} during unit {task.unit.index}; requeued")
            self.queue.appendleft(dataclasses.replace(task, attempt=self.attempts[task.key]))
            return
        if task.size > 1:
            mid = (task.start + task.stop) // 2
            again = self.attempts[task.key]
            halves = [Task(task.unit, task.start, mid, True, again), Task(task.unit, mid, task.stop, True, again)]
            outstanding = self.pieces.setdefault(task.unit.index, set())
            outstanding.discard(task.key)
            outstanding.update(h.key for h in halves)
            self.progress.log(f"{reason} during unit {task.unit.index} [{task.start}, {task.stop}); bisecting")
            self.queue.extendleft(reversed(halves))
            return
        # one image kills workers: record it as an error row
        self._write_crash_row(task, reason, str(w.device))
        self._piece_done(task)

    def _write_crash_row(self, task: Task, reason: str, device: str) -> None:
        listing = pq.ParquetFile(self.template.listing)
        (item,) = read_unit_items(listing, task.unit, task.start, task.stop)
        rows = RowBuffer(self.template.model.name, self.template.backend, device, self.template.run_id)
        message = f"crash: {reason} while processing this image ({self.attempts[task.key]} attempts)"
        rows.add_error(item.id, item.source, task.unit.index, int(time.time() * 1000), item.size, item.mtime, message)
        pieces = self.template.out / PIECES_DIR
        pieces.mkdir(exist_ok=True)
        stats = {"images": 1, "ok": 0, "errors": 1, "error_kinds": {"crash": 1}, "seconds": {}}
        commit_table(pieces, piece_name(task), rows.table(), stats)
        self.outcome.images += 1
        self.outcome.errors += 1
        self.outcome.error_kinds["crash"] = self.outcome.error_kinds.get("crash", 0) + 1
        self.progress.advance("crash", 1)

    def _piece_done(self, task: Task) -> None:
        outstanding = self.pieces.get(task.unit.index)
        if outstanding is None:
            return
        outstanding.discard(task.key)
        if outstanding:
            return
        del self.pieces[task.unit.index]
        merge_pieces(self.template.out, task.unit)
        self.outcome.units_done += 1
        self.progress.unit_done()

    def _reap(self, w: _Worker) -> None:
        while True:  # messages it sent before dying still count
            try:
                if not w.conn.poll():
                    break
                self._handle(w, w.conn.recv())
            except (EOFError, OSError):
                break
        w.process.join(timeout=5)
        self.workers.remove(w)
        w.conn.close()
        if w.task is not None and not w.ready:
            self.queue.appendleft(w.task)  # died before its session opened: not the unit's fault
            w.task = None
        elif w.task is not None:
            self._crashed(w)
        if not w.ready and not w.stopping:
            if not w.reported_fatal:  # died without a word: count the death itself
                self.startup_failures[w.device].append(f"worker {death_message(w.process.exitcode)} while starting")
            failures = self.startup_failures[w.device]
            if len(failures) > self.max_retries:
                self.dead_devices.add(w.device)
                self.progress.log(f"giving up on device {w.device}: {failures[-1]}")
                return
        if not w.stopping and self.stop_mode is None and (self.queue or self._busy()):
            self._start(w.device)

    def _busy(self) -> bool:
        return any(w.task is not None for w in self.workers)

    # -- main loop ---------------------------------------------------------------------------
    def run(self) -> Outcome:
        t0 = time.monotonic()
        previous = self._install_signals()
        if _EarlyDrain.received.is_set():
            self._on_signal(signal.SIGUSR1, None)
        try:
            self.start_workers()
            self._loop()
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.outcome.wall = time.monotonic() - t0
        if self.stop_mode is not None:
            self.outcome.interrupted = self.stop_signal
        return self.outcome

    def _loop(self) -> None:
        while True:
            if self.stop_mode == "abort":
                return
            if self.stop_mode == "drain" and (not self._busy() or time.monotonic() > self.drain_deadline):
                return
            if not self.queue and not self._busy():
                return
            if not self.workers:
                failures = "; ".join(f"{d}: {m[-1]}" for d, m in self.startup_failures.items() if m)
                raise StartupError(f"no device could start a worker ({failures or 'no devices'})")
            self._dispatch()
            objs: list[Any] = [w.conn for w in self.workers] + [w.process.sentinel for w in self.workers]
            ready = wait(objs, timeout=0.5)
            for w in list(self.workers):
                if w.conn in ready:
                    try:
                        while w.conn.poll():
                            self._handle(w, w.conn.recv())
                    except (EOFError, OSError):
                        pass
                if w.process.sentinel in ready or not w.process.is_alive():
                    self._reap(w)
            self.progress.refresh()

    def _shutdown(self) -> None:
        for w in self.workers:
            w.stopping = True
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


def merge_pieces(out: Path, unit: Unit) -> bool:
    """Merge a bisected unit's piece files into its part file (listing order), then drop them."""
    pieces_dir = out / PIECES_DIR
    prefix = f"u{unit.index:06d}-"
    files = sorted(p for p in pieces_dir.glob(f"{prefix}*.parquet"))
    tables = [pq.read_table(p) for p in files]
    stats: dict = {"images": 0, "ok": 0, "errors": 0, "error_kinds": {}, "seconds": {}, "bisected": True}
    for t in tables:
        part = part_stats(t)
        for k in ("images", "ok", "errors"):
            stats[k] += part.get(k, 0)
        sum_into(stats["error_kinds"], part.get("error_kinds", {}))
        sum_into(stats["seconds"], part.get("seconds", {}))
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    committed = commit_table(out, part_name(unit.index), table, stats)
    for p in files:
        p.unlink(missing_ok=True)
    return committed


def clear_pieces(out: Path, units: list[Unit]) -> None:
    """Drop leftover pieces of uncommitted units (a bisection interrupted by a crash restarts)."""
    pieces_dir = out / PIECES_DIR
    if not pieces_dir.exists():
        return
    wanted = {f"u{u.index:06d}-" for u in units}
    for p in pieces_dir.iterdir():
        if p.name[:8] in wanted:
            p.unlink(missing_ok=True)
