"""The supervisor's decisions, in-process: a scripted fake worker plays each task against the
:class:`Scheduler` (succeeds, raises, or dies, depending on which images the task holds), and the
tests check what the scheduler decided: retries, bisection, which image gets a row, when the job
stops and with which code, and that no image is ever blamed for a failure it did not cause."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ascend_batch.errors import EXIT_ENVIRONMENT, EXIT_STARTUP
from ascend_batch.plan import make_units
from ascend_batch.runner.messages import Cause, Task
from ascend_batch.runner.scheduler import Committed, CrashRow, GiveUpDevice, Merge, Scheduler

OK = ("ok",)


@dataclass
class Played:
    crash_rows: dict[int, str] = field(default_factory=dict)  # listing position -> message
    committed: list[int] = field(default_factory=list)
    merged: list[int] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    tasks: list[tuple[str, Task]] = field(default_factory=list)


def play(s: Scheduler, outcome: Callable[..., tuple], devices: list[str] | None = None, limit: int = 10_000) -> Played:
    """Run every task the scheduler hands out, round robin over ``devices``, until it has nothing
    left or stops the job. One worker process per device, as the supervisor keeps them: a worker that
    failed is replaced by a fresh one, and an idle one the scheduler gives nothing (only single images
    are left, which run on fresh workers) is replaced too. ``outcome(task, device, before)`` is ("ok",),
    ("die", reason) or ("raise", cause, msg); ``before`` lists the tasks this worker process ran first."""
    devices = devices or ["cpu:0"]
    played = Played()
    history: dict[str, list[Task]] = {d: [] for d in devices}  # tasks of the device's current worker
    idle = 0  # devices in a row that got nothing
    for turn in range(limit):
        alive = [d for d in devices if d not in s.dead]
        if not alive:
            return played
        device = alive[turn % len(alive)]
        task = s.take(fresh=not history[device], device=device)
        if task is None and s.queue and s.verdict is None:
            history[device] = []  # retired, replaced by a fresh worker
            task = s.take(fresh=True, device=device)
        if task is None:
            idle += 1
            if idle >= len(alive):  # no device can take what is left (or nothing is left)
                return played
            continue
        idle = 0
        played.tasks.append((device, task))
        before, fresh = list(history[device]), not history[device]
        result = outcome(task, device, before)
        if result[0] == "ok":
            history[device].append(task)
            actions = s.done(task, device, fresh=fresh)
        else:
            history[device] = []  # the worker exits after a failure: the next one is fresh
            if result[0] == "die":
                actions = s.died(task, device, result[1], fresh=fresh)
            else:
                actions = s.failed(task, device, result[1], result[2], fresh=fresh)
        for a in actions:
            if isinstance(a, CrashRow):
                assert a.task.size == 1
                played.crash_rows[a.task.start] = a.message
            elif isinstance(a, Merge):
                played.merged.append(a.unit.index)
            elif isinstance(a, Committed):
                played.committed.append(a.unit.index)
            elif isinstance(a, GiveUpDevice):
                played.given_up.append(a.device)
    raise AssertionError("the scheduler never finished")


def poison(*positions: int) -> Callable[[Task, str], tuple]:
    def outcome(task: Task, device: str, before: list[Task]) -> tuple:
        if any(task.start <= p < task.stop for p in positions):
            return ("die", "worker on cpu:0 killed by SIGSEGV")
        return OK

    return outcome


def every_unit_done(s: Scheduler, played: Played, n_units: int) -> None:
    assert s.verdict is None
    assert sorted(played.committed + played.merged) == list(range(n_units))


def test_healthy_job_commits_every_unit_once() -> None:
    s = Scheduler(make_units(95, 10), ["cpu:0", "cpu:1"], max_retries=2)
    played = play(s, lambda t, d, b: OK, ["cpu:0", "cpu:1"])
    every_unit_done(s, played, 10)
    assert not played.crash_rows and not played.merged and len(played.tasks) == 10


def test_poison_image_is_isolated_with_its_failure_count() -> None:
    s = Scheduler(make_units(40, 20), ["cpu:0"], max_retries=2)
    played = play(s, poison(27))
    every_unit_done(s, played, 2)
    # unit 1 = [20, 40): its 3 tries, then each halving that holds position 27 failed once more
    assert list(played.crash_rows) == [27]
    holding = [t for _, t in played.tasks if t.start <= 27 < t.stop and t.unit.index == 1]
    assert played.crash_rows[27].endswith(f"(failed {len(holding)} times)")
    assert played.merged == [1] and played.committed == [0]


def test_siblings_run_before_deeper_pieces() -> None:
    s = Scheduler(make_units(16, 16), ["cpu:0"], max_retries=0)
    played = play(s, poison(3))
    depths = [t.depth for _, t in played.tasks]
    assert depths == sorted(depths)  # breadth first: no piece runs before a shallower one
    assert list(played.crash_rows) == [3]


def test_several_poison_images_each_get_a_row() -> None:
    s = Scheduler(make_units(64, 32), ["cpu:0"], max_retries=1)
    played = play(s, poison(0, 17, 31, 40))
    every_unit_done(s, played, 2)
    assert sorted(played.crash_rows) == [0, 17, 31, 40]


def test_single_image_unit_gets_its_crash_row_and_its_unit() -> None:
    s = Scheduler(make_units(11, 10), ["cpu:0"], max_retries=2)
    played = play(s, poison(10))
    every_unit_done(s, played, 2)
    assert played.crash_rows[10].endswith("(failed 3 times)")
    assert played.merged == [1]


def test_transient_failure_is_retried_and_blames_nobody() -> None:
    failed: set[tuple[int, int, int]] = set()

    def once(task: Task, device: str, before: list[Task]) -> tuple:
        if task.key not in failed:
            failed.add(task.key)
            return ("raise", Cause.RUNTIME, "copy failed (transient)")
        return OK

    s = Scheduler(make_units(30, 10), ["cpu:0"], max_retries=1)
    played = play(s, once)
    every_unit_done(s, played, 3)
    assert not played.crash_rows


def test_runtime_error_on_every_batch_stops_the_job_without_rows() -> None:
    s = Scheduler(make_units(1000, 100), ["cpu:0"], max_retries=2)
    played = play(s, lambda t, d, b: ("raise", Cause.RUNTIME, "device lost"))
    assert s.verdict is not None and s.verdict.exit_code == EXIT_STARTUP
    assert "12 tasks in a row failed on cpu:0" in s.verdict.message  # max_retries + 10, over several units
    assert not played.crash_rows and not played.merged
    assert len(played.tasks) == 2 + 10
    assert len({t.unit.index for _, t in played.tasks}) > 1  # a probe of another unit spoke before the verdict


def test_runtime_error_in_a_one_unit_job_stops_at_its_halves() -> None:
    s = Scheduler(make_units(100, 100), ["cpu:0"], max_retries=2)
    played = play(s, lambda t, d, b: ("raise", Cause.RUNTIME, "device lost"))
    assert s.verdict is not None and "both halves of unit 0 failed the same way" in s.verdict.message
    assert not played.crash_rows and len(played.tasks) == 3 + 2


def test_worker_dying_on_every_batch_stops_the_job_without_rows() -> None:
    s = Scheduler(make_units(1000, 100), ["cpu:0"], max_retries=2)
    played = play(s, lambda t, d, b: ("die", "worker on cpu:0 killed by SIGKILL"))
    assert s.verdict is not None and s.verdict.exit_code == EXIT_STARTUP
    assert "tasks in a row failed on cpu:0" in s.verdict.message
    assert not played.crash_rows and played.given_up == ["cpu:0"]
    assert len(played.tasks) == 2 + 10


def test_a_cluster_of_bad_images_never_gives_the_device_up() -> None:
    # three crashing images close together in one unit: every halving fails for a while
    s = Scheduler(make_units(32, 32), ["cpu:0"], max_retries=2)
    played = play(s, poison(0, 8, 16))
    every_unit_done(s, played, 1)
    assert sorted(played.crash_rows) == [0, 8, 16]
    # the same cluster after the device proved itself on earlier units
    s = Scheduler(make_units(320, 32), ["cpu:0"], max_retries=2)
    played = play(s, poison(96, 104, 112))
    every_unit_done(s, played, 10)
    assert sorted(played.crash_rows) == [96, 104, 112]


def test_bad_images_in_every_unit_are_each_isolated() -> None:
    s = Scheduler(make_units(64, 32), ["cpu:0"], max_retries=1)
    played = play(s, poison(0, 17, 31, 40))
    every_unit_done(s, played, 2)
    assert sorted(played.crash_rows) == [0, 17, 31, 40]


def test_two_images_raising_in_both_halves_are_each_isolated() -> None:
    def raising(task: Task, device: str, before: list[Task]) -> tuple:
        if any(task.start <= p < task.stop for p in (10, 60)):
            return ("raise", Cause.RUNTIME, "bad input tensor")
        return OK

    s = Scheduler(make_units(300, 100), ["cpu:0"], max_retries=1)
    played = play(s, raising)
    every_unit_done(s, played, 3)
    assert sorted(played.crash_rows) == [10, 60]


def test_tiny_units_are_never_blamed_without_evidence() -> None:
    # units of two images: halves are single images at once; a device that never worked blames none
    s = Scheduler(make_units(6, 2), ["cpu:0"], max_retries=1)
    played = play(s, lambda t, d, b: ("die", "worker on cpu:0 killed by SIGBUS"))
    assert s.verdict is not None and not played.crash_rows


def test_environment_failure_stops_at_once() -> None:
    s = Scheduler(make_units(100, 10), ["cpu:0"], max_retries=3)
    played = play(s, lambda t, d, b: ("raise", Cause.ENVIRONMENT, "No space left on device (/out/part-000000.parquet)"))
    assert s.verdict is not None and s.verdict.exit_code == EXIT_ENVIRONMENT
    assert "No space left on device" in s.verdict.message
    assert len(played.tasks) == 1 and not played.crash_rows and s.take(fresh=True) is None


def test_broken_device_is_given_up_while_the_other_finishes_the_job() -> None:
    def broken_gpu1(task: Task, device: str, before: list[Task]) -> tuple:
        return ("die", "worker on cuda:1 killed by SIGSEGV") if device == "cuda:1" else OK

    s = Scheduler(make_units(200, 10), ["cuda:0", "cuda:1"], max_retries=2)
    played = play(s, broken_gpu1, ["cuda:0", "cuda:1"])
    every_unit_done(s, played, 20)
    assert played.given_up == ["cuda:1"]
    # pieces that failed on the broken device succeeded elsewhere: no image was blamed
    assert not played.crash_rows


def test_death_before_the_model_is_up_is_given_back_uncharged() -> None:
    s = Scheduler(make_units(10, 10), ["cpu:0"], max_retries=0)
    task = s.take(fresh=True)
    assert task is not None
    s.give_back(task)
    again = s.take(fresh=True)
    assert again == task and again.attempt == 0


# -- faults of the worker process, not of any image ---------------------------------------------


def nth_execute_fails(nth: int, batch: int) -> Callable[[Task, str, list[Task]], tuple]:
    """The emulator's ``mdl.execute_async:<nth>``: the nth inference call of each worker process
    fails, whatever the images (a task of k images makes ceil(k / batch) calls)."""

    def calls(task: Task) -> int:
        return -(-task.size // batch)

    def outcome(task: Task, device: str, before: list[Task]) -> tuple:
        if sum(calls(t) for t in before) + calls(task) >= nth:
            return ("raise", Cause.RUNTIME, "acl.mdl.execute_async returned 507011 (ACL_ERROR_RT_MODEL_EXECUTE)")
        return OK

    return outcome


def test_a_worker_that_fails_after_succeeding_is_no_evidence_against_an_image() -> None:
    # one device, units of 10, one call per unit, the 2nd call of every process fails: each piece
    # that runs second on a worker fails after its sibling succeeded on the same worker, all the
    # way down to image 19, which the old rule blamed (the device "worked": its sibling succeeded)
    s = Scheduler(make_units(20, 10), ["npu:0"], max_retries=0)
    played = play(s, nth_execute_fails(2, batch=10))
    assert not played.crash_rows
    every_unit_done(s, played, 2)
    # every single image ran on a fresh worker: the first task of its process
    singles = [t for _, t in played.tasks if t.size == 1]
    assert singles


def test_the_nth_call_of_each_process_failing_never_blames_an_image() -> None:
    # the tester's job (600 images, units of 50, batch 10, the 3rd call of each process fails, two
    # devices) and its neighbours: the job may finish (every row ok) or stop with exit 3, never blame
    for n, unit, batch, nth, devices, retries in [
        (600, 50, 10, 3, ["npu:0", "npu:1"], 2),
        (60, 10, 10, 2, ["npu:0"], 0),
        (60, 50, 4, 3, ["npu:0"], 2),
        (60, 50, 10, 2, ["npu:0"], 1),
        (600, 50, 6, 3, ["npu:0", "npu:1"], 2),
        (200, 20, 1, 4, ["npu:0", "npu:1"], 1),
    ]:
        s = Scheduler(make_units(n, unit), devices, max_retries=retries)
        played = play(s, nth_execute_fails(nth, batch), devices)
        assert not played.crash_rows, (n, unit, batch, nth, devices, retries, played.crash_rows)
        assert s.verdict is None or s.verdict.exit_code == EXIT_STARTUP


def test_a_bad_image_is_still_blamed_among_used_workers_on_two_devices() -> None:
    # the poison image's pieces land on whichever worker is free; its single-image tasks wait for a
    # fresh one, and it is blamed exactly as on one device
    s = Scheduler(make_units(200, 50), ["npu:0", "npu:1"], max_retries=2)
    played = play(s, poison(27, 160), ["npu:0", "npu:1"])
    every_unit_done(s, played, 4)
    assert sorted(played.crash_rows) == [27, 160]
    for p in (27, 160):
        holding = [t for _, t in played.tasks if t.start <= p < t.stop]
        assert played.crash_rows[p].endswith(f"(failed {len(holding)} times)")


def test_a_single_image_failing_on_a_used_worker_is_not_blamed() -> None:
    # a caller that hands a single image to a worker that already ran a task: that failure says
    # nothing about the image, even on a device that has proven itself
    s = Scheduler(make_units(2, 1), ["npu:0"], max_retries=0)
    first = s.take(fresh=True)
    assert first is not None and s.done(first, "npu:0", fresh=True) == [Committed(first.unit)]
    task = s.take(fresh=True)
    assert task is not None
    assert s.failed(task, "npu:0", Cause.RUNTIME, "execute failed", fresh=False) == []
    assert s.verdict is None  # not blamed, not the end: npu:0 has proven that a fresh worker works
    assert s.take(fresh=False, device="npu:0") is None  # never again on a used worker
    again = s.take(fresh=True, device="npu:0")
    assert again is not None and again.key == task.key
    assert s.done(again, "npu:0", fresh=True) == [Committed(task.unit)]


def test_an_image_deferred_on_an_unproven_device_waits_for_a_proven_one_while_others_run() -> None:
    # two devices, one unit: the poison image dies on a fresh npu:0 worker before npu:0 has proven
    # anything, while another piece still runs on npu:1; the job must not stop, and the image goes to
    # npu:1 (proven) and is blamed there
    s = Scheduler(make_units(4, 4), ["npu:0", "npu:1"], max_retries=0)
    unit = s.take(fresh=True, device="npu:0")
    assert unit is not None and s.died(unit, "npu:0", "killed by SIGSEGV", fresh=True) == []
    left = s.take(fresh=True, device="npu:1")  # [0, 2)
    assert left is not None and s.done(left, "npu:1", fresh=True) == []
    right = s.take(fresh=True, device="npu:0")  # [2, 4)
    assert right is not None and s.died(right, "npu:0", "killed by SIGSEGV", fresh=True) == []
    a = s.take(fresh=True, device="npu:0")  # [2, 3): the poison image
    b = s.take(fresh=True, device="npu:1")  # [3, 4)
    assert a is not None and b is not None and (a.start, b.start) == (2, 3)
    # it dies on a fresh worker of npu:0, which has proven nothing yet: no evidence
    assert s.died(a, "npu:0", "killed by SIGSEGV", fresh=True) == []
    assert s.verdict is None  # [3, 4) still runs, and npu:1 has proven a fresh worker
    assert s.take(fresh=True, device="npu:0") is None  # npu:0 cannot tell
    assert s.done(b, "npu:1", fresh=True) == []
    poison = s.take(fresh=True, device="npu:1")
    assert poison is not None and poison.start == 2
    actions = s.died(poison, "npu:1", "killed by SIGSEGV", fresh=True)
    assert isinstance(actions[0], CrashRow) and actions[-1] == Merge(poison.unit)
    assert s.verdict is None


def test_only_deferred_images_and_no_proven_device_stop_the_job() -> None:
    s = Scheduler(make_units(1, 1), ["npu:0"], max_retries=0)
    task = s.take(fresh=True, device="npu:0")
    assert task is not None and s.died(task, "npu:0", "killed by SIGSEGV", fresh=True) == []
    assert s.verdict is not None and s.verdict.exit_code == EXIT_STARTUP


def test_single_images_go_only_to_fresh_workers() -> None:
    s = Scheduler(make_units(2, 1), ["npu:0"], max_retries=0)
    assert s.take(fresh=False) is None and len(s.queue) == 2
    task = s.take(fresh=True)
    assert task is not None and task.size == 1
