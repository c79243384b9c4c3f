"""The action graph: a cascade over N instances is as deep as the dependency graph, not as N;
VM and disk steps are barriers within their instance; unrelated containers run side by side."""

from __future__ import annotations

import pytest

from dockyard.planning import ContainerKey, DesiredDisk, plan
from dockyard.planning.cascade import ContainerReport, upstream_states
from dockyard.planning.ordering import order
from tests.planning.builders import brief, c, converged, job, running


@pytest.mark.parametrize("instances", [1, 4, 16])
def test_a_cascade_costs_one_step_per_level_whatever_the_instances(instances: int) -> None:
    web = job("web", c("db"), c("api", "db"), c("proxy", "api"), c("side"), instances=instances)
    world = converged(web)
    for index in range(instances):
        world[index] = world[index].__class__(
            world[index].vm, None, {**world[index].containers, "db": running(1000.0)}
        )
    actions = plan([web], {"web": world})
    assert len(actions) == 2 * instances  # api and proxy, on every instance; side untouched
    graph = order(actions, web)
    assert graph.depth() == 2
    for position, action in enumerate(actions):
        waits = {actions[p].index for p in graph.after[position]}
        assert waits <= {action.index}, "instances never wait for each other"


def test_vm_and_disk_steps_are_barriers_and_unrelated_containers_do_not_wait() -> None:
    web = job("web", c("a"), c("b"), c("c", "a"), instances=1, disk=DesiredDisk(64))
    actions = plan([web], {})
    assert brief(actions) == [
        "CreateVM web/0",
        "CreateDisk web/0",
        "StartContainer web/0 a",
        "StartContainer web/0 b",
        "StartContainer web/0 c",
    ]
    graph = order(actions, web)
    assert graph.after[1] == {0}
    assert graph.after[2] == {0, 1}
    assert graph.after[3] == {0, 1}  # b is related to nothing: it does not wait for a
    assert graph.after[4] == {0, 1, 2}  # c waits for a, not for b
    assert graph.depth() == 4


def test_an_upstream_is_settled_only_when_its_job_planned_against_its_own_upstreams() -> None:
    db, cache = ContainerKey("db", "store"), ContainerKey("cache", "cache")
    board = {
        db: ContainerReport(latest_start=200.0),
        cache: ContainerReport(latest_start=150.0, settled=True, upstreams={db: 100.0}),
    }
    # db restarted (200) after cache's Job last decided (against 100): cache will restart
    assert upstream_states(board, [cache])[cache].settled is False
    board[cache] = ContainerReport(latest_start=150.0, settled=True, upstreams={db: 200.0})
    assert upstream_states(board, [cache])[cache].settled is True
    board[db] = ContainerReport(latest_start=200.0, settled=False)
    assert upstream_states(board, [cache])[cache].settled is False  # transitively
    assert upstream_states(board, [ContainerKey("x", "y")]) == {}  # unknown: not waited for
