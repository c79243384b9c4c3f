"""Rollout batching: canaries, max_in_flight, serial jobs, and stepping through a plan."""

from __future__ import annotations

import pytest

from dockyard.planning import (
    Batch,
    DesiredJob,
    InstanceRef,
    PlanningError,
    World,
    job_stages,
    next_step,
    plan,
    rollout_batches,
    schedule,
)
from tests.planning.builders import brief, c, converged, job
from tests.planning.simulator import Simulator


def indices(batches: list[Batch]) -> list[tuple[int, ...]]:
    return [b.indices for b in batches]


def test_one_canary_then_max_in_flight() -> None:
    batches = rollout_batches(range(5), canaries=1, max_in_flight=2)
    assert indices(batches) == [(0,), (1, 2), (3, 4)]
    assert [b.canary for b in batches] == [True, False, False]


def test_canaries_go_max_in_flight_at_a_time() -> None:
    """BOSH hands canaries to the same max_in_flight pool and waits for all of them."""
    batches = rollout_batches([0, 1, 2, 3, 4, 5], canaries=3, max_in_flight=2)
    assert indices(batches) == [(0, 1), (2,), (3, 4), (5,)]
    assert [b.canary for b in batches] == [True, True, False, False]
    assert indices(rollout_batches([0, 1, 2], canaries=2, max_in_flight=1)) == [(0,), (1,), (2,)]


def test_edge_cases() -> None:
    assert rollout_batches([], canaries=1, max_in_flight=1) == []
    # More canaries than instances: every instance is a canary.
    assert rollout_batches([0, 1], canaries=5, max_in_flight=4) == [Batch((0, 1), canary=True)]
    # No canaries.
    assert rollout_batches([0, 1, 2], canaries=0, max_in_flight=2) == [
        Batch((0, 1), canary=False),
        Batch((2,), canary=False),
    ]
    # A resolved "100%".
    assert indices(rollout_batches([3, 7, 9], canaries=1, max_in_flight=3)) == [(3,), (7, 9)]


def test_instances_already_updated_count_against_the_canaries() -> None:
    assert rollout_batches([2, 3, 4], canaries=2, max_in_flight=2, already_updated=1) == [
        Batch((2,), canary=True),
        Batch((3, 4), canary=False),
    ]
    assert (
        rollout_batches([2, 3], canaries=1, max_in_flight=1, already_updated=2)[0].canary is False
    )


def test_bad_policy_names_the_field() -> None:
    with pytest.raises(PlanningError, match=r"^update\.maxInFlight: must be at least 1"):
        rollout_batches([0], canaries=1, max_in_flight=0)
    with pytest.raises(PlanningError, match=r"^update\.canaries"):
        rollout_batches([0], canaries=-1, max_in_flight=1)


def test_serial_jobs_roll_one_after_another_others_together() -> None:
    jobs = [
        job("a", c("x")),
        job("b", c("x"), serial=False),
        job("c", c("x"), serial=False),
        job("d", c("x")),
        job("e", c("x"), serial=False),
    ]
    assert job_stages(jobs) == [("a",), ("b", "c"), ("d",), ("e",)]


def test_a_job_rolls_after_the_jobs_it_depends_on() -> None:
    jobs = [job("web", c("app", "db/pg")), job("cache", c("redis")), job("db", c("pg"))]
    assert job_stages(jobs) == [("cache",), ("db",), ("web",)]
    # Jobs that depend on each other keep deployment order.
    loop = [job("a", c("x", "b/y")), job("b", c("y"), c("z", "a/x"))]
    assert job_stages(loop) == [("a",), ("b",)]


def drive(desired: list[DesiredJob], world: World, limit: int = 50) -> list[list[str]]:
    """Run a plan step by step as the reconciler does; return what each step did."""
    simulator = Simulator(desired)
    steps: list[list[str]] = []
    for _ in range(limit):
        step = next_step(plan(desired, world), desired)
        if step.done:
            return steps
        steps.append(brief(step.actions) + (["(canary)"] if step.canary else []))
        world = simulator.apply(step.actions, world)
    raise AssertionError(f"no convergence after {limit} steps: {steps}")


def test_an_image_change_rolls_canary_first_then_max_in_flight() -> None:
    old = job("web", c("app"), instances=5, canaries=1, max_in_flight=2)
    new = job("web", c("app", hash="h2"), instances=5, canaries=1, max_in_flight=2)
    assert drive([new], {"web": converged(old)}) == [
        ["RecreateContainer web/0 app", "(canary)"],
        ["RecreateContainer web/1 app", "RecreateContainer web/2 app"],
        ["RecreateContainer web/3 app", "RecreateContainer web/4 app"],
    ]


def test_removals_come_first_in_a_step_of_their_own() -> None:
    old = job("web", c("app"), instances=3)
    new = job("web", c("app", hash="h2"), instances=2, max_in_flight=2)
    assert drive([new], {"web": converged(old)}) == [
        ["StopContainer web/2 app", "DeleteVM web/2"],
        ["RecreateContainer web/0 app", "(canary)"],
        ["RecreateContainer web/1 app"],
    ]


def test_step_reports_the_instances_to_watch() -> None:
    web = job("web", c("db"), c("app", "db"), instances=3, canaries=1, max_in_flight=2)
    step = next_step(plan([web], {}), [web])
    assert step.instances == (InstanceRef("web", 0),)
    assert step.canary
    assert brief(step.actions) == [
        "CreateVM web/0",
        "StartContainer web/0 db",
        "StartContainer web/0 app",
    ]


def test_serial_jobs_are_rolled_whole_one_after_another() -> None:
    a = job("a", c("x"), instances=2, max_in_flight=2)
    b = job("b", c("y"), instances=1)
    steps = drive([a, b], {})
    assert steps == [
        ["CreateVM a/0", "StartContainer a/0 x", "(canary)"],
        ["CreateVM a/1", "StartContainer a/1 x"],
        ["CreateVM b/0", "StartContainer b/0 y", "(canary)"],
    ]


def test_non_serial_jobs_roll_together() -> None:
    a = job("a", c("x"), instances=2, serial=False)
    b = job("b", c("y"), instances=2, serial=False)
    steps = drive([a, b], {})
    assert steps == [
        [
            "CreateVM a/0",
            "CreateVM b/0",
            "StartContainer a/0 x",
            "StartContainer b/0 y",
            "(canary)",
        ],
        ["CreateVM a/1", "CreateVM b/1", "StartContainer a/1 x", "StartContainer b/1 y"],
    ]


def test_cross_job_dependents_wait_for_their_upstream_to_finish_rolling() -> None:
    """Non-serial jobs: web's app restarts once per instance, after db rolled everywhere, not
    after each of db's batches."""
    db = job("db", c("pg"), instances=3, serial=False)
    web = job("web", c("app", "db/pg"), instances=2, serial=False, max_in_flight=2)
    world: World = {"db": converged(db, at=1), "web": converged(web, at=10)}
    new_db = job("db", c("pg", hash="h2"), instances=3, serial=False)
    assert drive([new_db, web], world) == [
        ["RecreateContainer db/0 pg", "(canary)"],
        ["RecreateContainer db/1 pg"],
        ["RecreateContainer db/2 pg"],
        ["RestartContainer web/0 app", "(canary)"],
        ["RestartContainer web/1 app"],
    ]


def test_jobs_depending_on_each_other_still_converge_without_useless_restarts() -> None:
    """a/w needs b/y and b/y needs a/x: nobody can wait for the other. No step restarts a
    container for an upstream start that is not part of it (that would repeat forever)."""
    a = job("a", c("x"), c("w", "b/y"), instances=2)
    b = job("b", c("y", "a/x"), instances=2)
    assert drive([a, b], {}) == [
        ["CreateVM a/0", "StartContainer a/0 x", "StartContainer a/0 w", "(canary)"],
        ["CreateVM a/1", "StartContainer a/1 x", "StartContainer a/1 w", "(canary)"],
        ["CreateVM b/0", "StartContainer b/0 y", "(canary)"],
        ["CreateVM b/1", "StartContainer b/1 y"],
        ["RestartContainer a/0 w", "(canary)"],
        ["RestartContainer a/1 w"],
    ]
    together = [
        job("a", c("x"), c("w", "b/y"), serial=False),
        job("b", c("y", "a/x"), serial=False),
    ]
    assert drive(together, {}) == [
        [
            "CreateVM a/0",
            "CreateVM b/0",
            "StartContainer a/0 x",
            "StartContainer b/0 y",
            "StartContainer a/0 w",
            "(canary)",
        ]
    ]


def test_schedule_shows_the_whole_rollout_as_waves() -> None:
    jobs = [
        job("db", c("pg"), instances=3, canaries=1, max_in_flight=2),
        job("web", c("app"), instances=4, canaries=1, max_in_flight=2, serial=False),
        job("worker", c("w"), instances=2, canaries=0, max_in_flight=1, serial=False),
    ]
    waves = schedule(jobs, {"db": [0, 1, 2], "web": [1, 2, 3], "worker": [0, 1]})
    assert [[(name, b.indices, b.canary) for name, b in wave] for wave in waves] == [
        [("db", (0,), True)],
        [("db", (1, 2), False)],
        # web's instance 0 is up to date already: it counts as the canary.
        [("web", (1, 2), False), ("worker", (0,), False)],
        [("web", (3,), False), ("worker", (1,), False)],
    ]
    assert schedule(jobs, {}) == []
