"""The executor without Docker: it keeps the graph's order, runs independent actions at once up
to its pool's bound, skips what waits for a failure, and stops starting actions once cancelled."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest

from dockyard.planning import Action, RestartContainer, StartContainer
from dockyard.planning.memory import Failure, Outcome
from dockyard.planning.ordering import ActionGraph, order
from dockyard.runtime.executor import ActionPool, Execution
from tests.planning.builders import c, job
from tests.waiting import async_wait_for


class Recorder:
    """A perform() that notes when actions start and end, and can hold them on a gate."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.log: list[str] = []
        self.fail = fail or set()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, action: Action) -> Outcome:
        name = f"{action.index}:{getattr(action, 'container', action.kind)}"
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.log.append(f"start {name}")
        assert self.gate.wait(timeout=10)
        with self.lock:
            self.running -= 1
            self.log.append(f"end {name}")
        return Outcome(action, Failure.TRANSIENT if name in self.fail else None)


@pytest.fixture
def pool() -> Iterator[ActionPool]:
    made = ActionPool(3, "test")
    yield made
    made.close()


def chain(instances: int) -> tuple[ActionGraph, list[Action]]:
    web = job("web", c("db"), c("api", "db"), c("proxy", "api"), instances=instances)
    actions: list[Action] = []
    for index in range(instances):
        actions.append(StartContainer("web", index, "db", "missing"))
    for name in ("api", "proxy"):
        for index in range(instances):
            actions.append(RestartContainer("web", index, name, "upstream"))
    return order(actions, web), actions


async def test_independent_instances_run_at_once_up_to_the_pool_bound(pool: ActionPool) -> None:
    graph, actions = chain(6)
    recorder = Recorder()
    recorder.gate.clear()  # hold the first ones until the pool is full
    task = asyncio.create_task(Execution(graph, recorder, pool).run())
    await asyncio.wait_for(_until(lambda: recorder.running == 3), timeout=10)
    recorder.gate.set()
    outcomes = await asyncio.wait_for(task, timeout=10)
    assert [o.action for o in outcomes] == actions and all(o.ok for o in outcomes)
    assert recorder.most == 3  # six independent instances, three threads: never more
    for index in range(6):  # within an instance: db, then api, then proxy
        mine = [e for e in recorder.log if e.split()[1].startswith(f"{index}:")]
        order_seen = [e.split(":")[1] for e in mine if e.startswith("end")]
        assert order_seen == ["db", "api", "proxy"]
        assert mine.index(f"end {index}:db") < mine.index(f"start {index}:api")


async def test_a_failure_skips_what_waits_for_it_and_nothing_else(pool: ActionPool) -> None:
    graph, _ = chain(2)
    recorder = Recorder(fail={"0:api"})
    outcomes = await Execution(graph, recorder, pool).run()
    by_name = {f"{o.action.index}:{getattr(o.action, 'container', '')}": o for o in outcomes}
    assert by_name["0:api"].failure is Failure.TRANSIENT
    assert by_name["0:proxy"].failure is Failure.CANCELLED  # never started
    assert "start 0:proxy" not in recorder.log
    assert all(by_name[n].ok for n in ("0:db", "1:db", "1:api", "1:proxy"))


async def test_a_cancelled_run_starts_nothing_more_and_ends_when_in_flight_work_does(
    pool: ActionPool,
) -> None:
    graph, _ = chain(2)
    recorder = Recorder()
    recorder.gate.clear()  # the two db starts block
    execution = Execution(graph, recorder, pool)
    task = asyncio.create_task(execution.run())
    await asyncio.wait_for(_until(lambda: recorder.running == 2), timeout=10)
    execution.cancel()
    recorder.gate.set()
    outcomes = await asyncio.wait_for(task, timeout=10)
    assert [o.ok for o in outcomes[:2]] == [True, True]  # in flight: finished
    assert {o.failure for o in outcomes[2:]} == {Failure.CANCELLED}
    assert not any(e.startswith(("start 0:api", "start 1:api")) for e in recorder.log)


async def test_a_teardown_does_not_wait_for_a_container_stop_in_flight(pool: ActionPool) -> None:
    graph, _ = chain(1)
    recorder = Recorder()
    recorder.gate.clear()  # the db start hangs (a stop with a 5-minute grace, say)
    execution = Execution(graph, recorder, pool)
    task = asyncio.create_task(execution.run())
    await asyncio.wait_for(_until(lambda: recorder.running == 1), timeout=10)
    await asyncio.wait_for(execution.settle(containers_too=False), timeout=1)
    assert execution.cancelled
    recorder.gate.set()
    outcomes = await asyncio.wait_for(task, timeout=10)
    assert [o.failure for o in outcomes[1:]] == [Failure.CANCELLED, Failure.CANCELLED]


async def _until(probe: Callable[[], bool]) -> None:
    async def check() -> bool:
        return probe()

    await async_wait_for(check, timeout=10, interval=0.01, what="the actions in flight")


async def test_an_interrupted_run_ends_without_waiting_for_a_container_action_in_flight(
    pool: ActionPool,
) -> None:
    graph, _ = chain(1)
    recorder = Recorder()
    recorder.gate.clear()  # the db start hangs, as a stop with a 5-minute grace would
    execution = Execution(graph, recorder, pool)
    task = asyncio.create_task(execution.run())
    await _until(lambda: recorder.running == 1)
    execution.interrupt()  # a new spec
    outcomes = await asyncio.wait_for(task, timeout=1)
    assert [o.failure for o in outcomes] == [Failure.CANCELLED] * 3
    assert execution.busy  # its thread goes on; a teardown could still wait for it
    recorder.gate.set()
    await asyncio.wait_for(execution.settle(), timeout=10)
    assert not execution.busy


async def test_an_operator_that_lost_its_lease_starts_no_action_of_a_pass_in_flight() -> None:
    active = threading.Event()
    active.set()
    fenced = ActionPool(3, "fenced", fence=active.is_set)
    try:
        graph, _ = chain(2)
        recorder = Recorder()
        recorder.gate.clear()  # the two db starts are in flight...
        task = asyncio.create_task(Execution(graph, recorder, fenced).run())
        await asyncio.wait_for(_until(lambda: recorder.running == 2), timeout=10)
        active.clear()  # ...when a standby takes over
        recorder.gate.set()
        outcomes = await asyncio.wait_for(task, timeout=10)
    finally:
        fenced.close()
    assert [e for e in recorder.log if e.startswith("start")] == ["start 0:db", "start 1:db"]
    assert all(o.failure is Failure.CANCELLED for o in outcomes[2:])
