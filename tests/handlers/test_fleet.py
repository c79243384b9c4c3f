"""The fleet's board without kopf: a Job's report wakes the Jobs that depend on what changed,
an upstream counts as settled only once its Job decided against its own upstreams' starts, and
a Deployment hears when its jobs are all settled again."""

from __future__ import annotations

import asyncio

from dockyard.handlers.fleet import Fleet
from dockyard.planning import ContainerKey
from dockyard.planning.cascade import ContainerReport
from tests.waiting import async_wait_for

GROUP = ("ns", "shop")
DB, CACHE = ContainerKey("db", "store"), ContainerKey("cache", "cache")


async def test_a_report_wakes_the_dependents_of_what_changed_and_no_one_else() -> None:
    fleet = Fleet()
    woken: list[str] = []
    for job in ("shop-db", "shop-cache", "shop-web", "shop-other"):
        fleet.register(("ns", job), lambda job=job: woken.append(job))  # type: ignore[misc]
    assert fleet.upstreams(GROUP, ("ns", "shop-cache"), [DB]) == {}  # nobody reported yet
    fleet.upstreams(GROUP, ("ns", "shop-web"), [CACHE])
    fleet.upstreams(GROUP, ("ns", "shop-other"), [])

    fleet.report(GROUP, ("ns", "shop-db"), {DB: ContainerReport(100.0)})
    assert woken == ["shop-cache"]
    fleet.report(GROUP, ("ns", "shop-db"), {DB: ContainerReport(100.0)})  # nothing changed
    assert woken == ["shop-cache"]

    fleet.report(GROUP, ("ns", "shop-cache"), {CACHE: ContainerReport(50.0, upstreams={DB: 100.0})})
    assert woken[-1] == "shop-web"
    assert fleet.upstreams(GROUP, ("ns", "shop-web"), [CACHE])[CACHE].settled

    woken.clear()
    fleet.report(GROUP, ("ns", "shop-db"), {DB: ContainerReport(200.0)})  # store restarted
    assert sorted(woken) == ["shop-cache", "shop-web"]  # web: cache is about to restart
    assert not fleet.upstreams(GROUP, ("ns", "shop-web"), [CACHE])[CACHE].settled
    assert fleet.unsettled(GROUP) == [CACHE]


async def test_a_deployment_hears_when_its_jobs_are_all_settled_again() -> None:
    fleet = Fleet()
    heard: list[tuple[str, str]] = []

    async def listener(_: Fleet, group: tuple[str, str]) -> None:
        heard.append(group)

    fleet.on_settled(listener)
    fleet.on_settled(listener)  # idempotent
    fleet.report(GROUP, ("ns", "shop-db"), {DB: ContainerReport(1.0, settled=False)})
    fleet.report(GROUP, ("ns", "shop-db"), {DB: ContainerReport(2.0, settled=True)})

    async def told() -> bool:
        return heard == [GROUP]  # the listener runs as a task of the loop

    await async_wait_for(told, timeout=5, what="the listener told")
    fleet.withdraw(GROUP, [DB])
    assert fleet.unsettled(GROUP) == []


async def test_a_wake_from_a_thread_goes_through_the_event_loop() -> None:
    fleet = Fleet()
    woken = asyncio.Event()
    fleet.register(("ns", "job"), woken.set)
    await asyncio.to_thread(fleet.wake, ("ns", "job"))
    await asyncio.wait_for(woken.wait(), timeout=5)
