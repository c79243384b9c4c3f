"""The planner on the situations an operator meets: what it plans, in which order, and that the
plan, once executed (by the simulator), leaves nothing more to do."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dockyard.planning import (
    AdoptDisk,
    AttachDisk,
    ContainerKey,
    CreateDisk,
    CycleError,
    DeleteDisk,
    DesiredDisk,
    DesiredJob,
    DetachDisk,
    MigrateDisk,
    ObservedDisk,
    PlanningError,
    ResizeDisk,
    RestartContainer,
    StartContainer,
    World,
    plan,
)
from tests.planning.builders import brief, c, converged, exited, instance, job, running
from tests.planning.simulator import Simulator


def settle(desired: list[DesiredJob], world: World, **options: bool) -> World:
    """Execute the plan and check that planning again finds nothing to do."""
    after = Simulator(desired, detach_to_resize=options.get("detach_to_resize", False)).apply(
        plan(desired, world, **options), world
    )
    assert plan(desired, after, **options) == []
    return after


def test_fresh_create_makes_vms_disks_then_containers_in_dependency_order() -> None:
    web = job("web", c("nginx", "app"), c("app"), instances=2, disk=DesiredDisk(1024))
    actions = plan([web], {})
    assert brief(actions) == [
        "CreateVM web/0",
        "CreateDisk web/0",
        "CreateVM web/1",
        "CreateDisk web/1",
        "StartContainer web/0 app",
        "StartContainer web/1 app",
        "StartContainer web/0 nginx",
        "StartContainer web/1 nginx",
    ]
    assert actions[1] == CreateDisk("web", 0, 1024, None)
    settle([web], {})


def test_a_converged_world_needs_nothing() -> None:
    web = job("web", c("app"), c("nginx", "app"), instances=3, disk=DesiredDisk(100))
    assert plan([web], {"web": converged(web)}) == []


def test_scale_up_touches_only_the_new_instances() -> None:
    web = job("web", c("app"), instances=2)
    world: World = {"web": converged(web)}
    bigger = job("web", c("app"), instances=4)
    assert brief(plan([bigger], world)) == [
        "CreateVM web/2",
        "CreateVM web/3",
        "StartContainer web/2 app",
        "StartContainer web/3 app",
    ]
    settle([bigger], world)


def test_scale_down_removes_the_highest_indices_dependents_stopped_first() -> None:
    web = job("web", c("db"), c("app", "db"), instances=3, disk=DesiredDisk(100))
    world: World = {"web": converged(web)}
    smaller = job("web", c("db"), c("app", "db"), instances=1, disk=DesiredDisk(100))
    assert brief(plan([smaller], world)) == [
        "StopContainer web/1 app",
        "StopContainer web/1 db",
        "DetachDisk web/1",
        "DeleteVM web/1",
        "DeleteDisk web/1",
        "StopContainer web/2 app",
        "StopContainer web/2 db",
        "DetachDisk web/2",
        "DeleteVM web/2",
        "DeleteDisk web/2",
    ]
    after = settle([smaller], world)
    assert set(after["web"][0].containers) == {"db", "app"}


def test_scale_down_under_retain_keeps_the_disk_and_a_scale_up_reattaches_it() -> None:
    keep = DesiredDisk(100, reclaim_policy="Retain")
    two = job("web", c("db", disk=True), instances=2, disk=keep)
    world: World = {"web": converged(two)}
    one = job("web", c("db", disk=True), instances=1, disk=keep)
    actions = plan([one], world)
    assert not any(isinstance(a, DeleteDisk) for a in actions)
    shrunk = settle([one], world)
    assert shrunk["web"][1].disk == ObservedDisk("d-web-1", 100, None)
    again = plan([two], shrunk)
    assert brief(again) == ["CreateVM web/1", "AttachDisk web/1", "StartContainer web/1 db"]
    assert again[1] == AttachDisk("web", 1, "d-web-1")


def test_removed_job_is_torn_down_with_the_recorded_reclaim_policy() -> None:
    world: World = {
        "old": {
            0: instance("vm-a", {"x": running(1)}, disk=ObservedDisk("d-a", 10, "vm-a", "Delete")),
            1: instance("vm-b", disk=ObservedDisk("d-b", 10, "vm-b")),  # no policy: keep it
        }
    }
    assert brief(plan([], world)) == [
        "StopContainer old/0 x",
        "DetachDisk old/0",
        "DeleteVM old/0",
        "DeleteDisk old/0",
        "DetachDisk old/1",
        "DeleteVM old/1",
    ]
    settle([], world)


def test_image_change_recreates_then_restarts_dependents_in_order_and_spares_the_rest() -> None:
    old = job("web", c("db"), c("app", "db"), c("nginx", "app"), c("metrics"), c("cron", "nginx"))
    world: World = {"web": converged(old)}
    new = job(
        "web",
        c("db", hash="h2"),
        c("app", "db"),
        c("nginx", "app"),
        c("metrics"),
        c("cron", "nginx"),
    )
    actions = plan([new], world)
    assert brief(actions) == [
        "RecreateContainer web/0 db",
        "RestartContainer web/0 app",
        "RestartContainer web/0 nginx",
        "RestartContainer web/0 cron",
    ]
    assert [a.because_of for a in actions if isinstance(a, RestartContainer)] == [
        ContainerKey("web", "db"),
        ContainerKey("web", "app"),
        ContainerKey("web", "nginx"),
    ]
    assert str(actions[1]) == "RestartContainer web/0 app: upstream web/db is recreated before it"
    settle([new], world)


def test_a_cross_job_dependent_restarts_on_every_instance_of_its_job() -> None:
    db = job("db", c("pg"), instances=1)
    web = job("web", c("app", "db/pg"), c("static"), instances=3)
    world: World = {"db": converged(db, at=1), "web": converged(web, at=10)}
    new_db = job("db", c("pg", hash="h2"))
    assert brief(plan([new_db, web], world)) == [
        "RecreateContainer db/0 pg",
        "RestartContainer web/0 app",
        "RestartContainer web/1 app",
        "RestartContainer web/2 app",
    ]
    settle([new_db, web], world)


def test_a_change_on_any_upstream_instance_restarts_cross_job_dependents() -> None:
    db = job("db", c("pg"), instances=2)
    web = job("web", c("app", "db/pg"), instances=2)
    world: World = {"db": converged(db, at=1), "web": converged(web, at=10)}
    world = {**world, "db": {**world["db"], 1: instance("vm-db-1", {"pg": running(20)})}}
    assert brief(plan([db, web], world)) == [
        "RestartContainer web/0 app",
        "RestartContainer web/1 app",
    ]
    settle([db, web], world)


def test_upstream_died_and_restarted_by_the_engine_restarts_its_dependents() -> None:
    web = job("web", c("db"), c("app", "db"), c("nginx", "app"), c("other"))
    world: World = {"web": converged(web)}  # db 10, app 11, nginx 12, other 13
    world = {"web": {0: instance("vm-web-0", {**world["web"][0].containers, "db": running(50)})}}
    actions = plan([web], world)
    assert brief(actions) == ["RestartContainer web/0 app", "RestartContainer web/0 nginx"]
    assert str(actions[0]) == "RestartContainer web/0 app: upstream web/db restarted after it"
    settle([web], world)


def test_a_dead_upstream_is_started_per_its_restart_policy_and_dependents_follow() -> None:
    web = job("web", c("db"), c("app", "db"), c("migrate", "db", restart="OnFailure"))
    base = converged(web)[0].containers
    world: World = {
        "web": {0: instance("vm-web-0", {**base, "db": exited(10, 137), "migrate": exited(12, 0)})}
    }
    actions = plan([web], world)
    # migrate completed (exit 0, OnFailure): it is not brought back for its upstream.
    assert brief(actions) == ["StartContainer web/0 db", "RestartContainer web/0 app"]
    assert str(actions[0]) == "StartContainer web/0 db: exited (exit code 137)"
    settle([web], world)


def test_restart_policy_never_leaves_an_exited_container_alone() -> None:
    web = job("web", c("once", restart="Never"))
    world: World = {"web": {0: instance("vm", {"once": exited(5, 1)})}}
    assert plan([web], world) == []


def test_a_container_no_longer_in_the_spec_is_removed() -> None:
    web = job("web", c("app"))
    world: World = {"web": {0: instance("vm", {"app": running(1), "legacy": running(2)})}}
    assert brief(plan([web], world)) == ["RemoveContainer web/0 legacy"]
    settle([web], world)


def test_disk_grows_but_never_shrinks() -> None:
    web = job("web", c("db", disk=True), disk=DesiredDisk(2048))
    world: World = {
        "web": {0: instance("vm", {"db": running(1)}, disk=ObservedDisk("d", 1024, "vm"))}
    }
    assert plan([web], world) == [ResizeDisk("web", 0, "d", 2048)]
    settle([web], world)
    bigger: World = {
        "web": {0: instance("vm", {"db": running(1)}, disk=ObservedDisk("d", 4096, "vm"))}
    }
    assert plan([web], bigger) == []


def test_disk_grows_detached_when_the_provider_needs_it_users_stopped_around_it() -> None:
    web = job(
        "web",
        c("db", disk=True),
        c("app", "db"),
        c("files", disk=True),
        disk=DesiredDisk(2048),
    )
    containers = {"db": running(1), "app": running(2), "files": running(3)}
    world: World = {"web": {0: instance("vm", containers, disk=ObservedDisk("d", 1024, "vm"))}}
    actions = plan([web], world, detach_to_resize=True)
    assert brief(actions) == [
        "StopContainer web/0 files",
        "StopContainer web/0 db",
        "DetachDisk web/0",
        "ResizeDisk web/0",
        "AttachDisk web/0",
        "StartContainer web/0 db",
        "RestartContainer web/0 app",
        "StartContainer web/0 files",
    ]
    settle([web], world, detach_to_resize=True)


def test_disk_the_provider_cannot_grow_is_copy_migrated_with_its_users_run_again() -> None:
    web = job(
        "web",
        c("db", disk=True),
        c("app", "db"),
        c("files", disk=True),
        disk=DesiredDisk(2048, "ssd"),
    )
    # files had stopped: it still mounts the old disk, so it is removed too.
    containers = {"db": running(1), "app": running(2), "files": exited(3, 0)}
    disk = ObservedDisk("d", 1024, "vm", grows_in_place=False)
    world: World = {"web": {0: instance("vm", containers, disk=disk)}}
    actions = plan([web], world, detach_to_resize=True)
    assert brief(actions) == [
        "RemoveContainer web/0 files",
        "RemoveContainer web/0 db",
        "MigrateDisk web/0",
        "StartContainer web/0 db",
        "RestartContainer web/0 app",
        "StartContainer web/0 files",
    ]
    assert actions[2] == MigrateDisk("web", 0, "d", 2048, "ssd")
    assert actions[3] == StartContainer("web", 0, "db", "disk migrated")
    after = settle([web], world, detach_to_resize=True)
    assert after["web"][0].disk is not None and after["web"][0].disk.size_mib == 2048


def test_an_unfinished_migration_resumes_on_a_new_vm_after_reattaching_the_old_disk() -> None:
    web = job("web", c("db", disk=True), disk=DesiredDisk(2048))
    # The VM died mid-copy: the old disk is still the instance's, the new one unfinished.
    disk = ObservedDisk("d", 1024, "vm", grows_in_place=False, migration_target="d-new")
    world: World = {"web": {0: instance("vm", {"db": running(1)}, healthy=False, disk=disk)}}
    assert brief(plan([web], world)) == [
        "DetachDisk web/0",
        "DeleteVM web/0",
        "CreateVM web/0",
        "AttachDisk web/0",
        "MigrateDisk web/0",
        "StartContainer web/0 db",
    ]
    settle([web], world)


def test_a_migration_no_longer_wanted_loses_its_new_disk_and_keeps_the_old() -> None:
    web = job("web", c("db", disk=True), disk=DesiredDisk(1024))
    # The size went back before the copy finished.
    disk = ObservedDisk("d", 1024, "vm", grows_in_place=False, migration_target="d-new")
    world: World = {"web": {0: instance("vm", {"db": running(1)}, disk=disk)}}
    assert plan([web], world) == [DeleteDisk("web", 0, "d-new")]
    settle([web], world)
    # Scaled down under Retain: the old disk stays, the unfinished copy goes.
    keep = job("web", c("db", disk=True), instances=0, disk=DesiredDisk(1024, None, "Retain"))
    assert brief(plan([keep], world)) == [
        "StopContainer web/0 db",
        "DetachDisk web/0",
        "DeleteVM web/0",
        "DeleteDisk web/0",
    ]
    assert plan([keep], world)[-1] == DeleteDisk("web", 0, "d-new")


def test_a_grow_that_failed_lately_waits_with_the_users_back_on_the_disk_as_it_is() -> None:
    web = job("web", c("db", disk=True), c("app", "db"), disk=DesiredDisk(2048))
    # The copy failed after db was removed; the back-off runs.
    disk = ObservedDisk("d", 1024, "vm", grows_in_place=False, migration_target="d-new")
    waiting = replace(disk, grow_waits=True)
    world: World = {"web": {0: instance("vm", {"app": running(2)}, disk=waiting)}}
    assert brief(plan([web], world)) == [
        "DeleteDisk web/0",
        "StartContainer web/0 db",
        "RestartContainer web/0 app",
    ]
    settle([web], world)
    # The back-off over, the grow is planned again.
    again: World = {"web": {0: instance("vm", {"db": running(3), "app": running(4)}, disk=disk)}}
    assert "MigrateDisk web/0" in brief(plan([web], again))


def test_an_existing_disk_is_reattached_to_a_new_vm_never_recreated() -> None:
    web = job("web", c("db", disk=True), disk=DesiredDisk(100))
    # The VM vanished; the IaaS still shows the disk on it.
    world: World = {"web": {0: instance(None, disk=ObservedDisk("d", 100, "vm-gone"))}}
    actions = plan([web], world)
    assert brief(actions) == [
        "DetachDisk web/0",
        "CreateVM web/0",
        "AttachDisk web/0",
        "StartContainer web/0 db",
    ]
    assert actions[0] == DetachDisk("web", 0, "d", "vm-gone", "not on the instance's VM")
    after = settle([web], world)
    assert after["web"][0].disk is not None and after["web"][0].disk.id == "d"


def test_a_disk_found_detached_is_attached_with_its_users_stopped_around_it() -> None:
    """Containers started while the disk was not mounted see the VM's directory, not the disk:
    they are stopped before it is attached and started again after."""
    web = job("web", c("db", disk=True), c("app", "db"), c("cache"), disk=DesiredDisk(100))
    containers = {"db": running(1), "app": running(2), "cache": running(3)}
    world: World = {"web": {0: instance("vm", containers, disk=ObservedDisk("d", 100, None))}}
    actions = plan([web], world)
    assert [str(a) for a in actions] == [
        "StopContainer web/0 db: disk attached: stopped first",
        "AttachDisk web/0 d",
        "StartContainer web/0 db: disk attached",
        "RestartContainer web/0 app: upstream web/db starts before it",
    ]
    settle([web], world)


def test_an_unhealthy_vm_is_replaced_keeping_its_disk() -> None:
    web = job("web", c("db", disk=True), disk=DesiredDisk(100))
    world: World = {
        "web": {
            0: instance(
                "vm-1", {"db": running(1)}, healthy=False, disk=ObservedDisk("d", 50, "vm-1")
            )
        }
    }
    assert brief(plan([web], world)) == [
        "DetachDisk web/0",
        "DeleteVM web/0",
        "CreateVM web/0",
        "ResizeDisk web/0",
        "AttachDisk web/0",
        "StartContainer web/0 db",
    ]
    settle([web], world)


def test_without_resurrection_an_unhealthy_instance_is_left_alone() -> None:
    web = job("web", c("app", hash="h2"), instances=2, resurrect=False)
    world: World = {
        "web": {
            0: instance("vm-0", {"app": running(1)}, healthy=False),
            1: instance("vm-1", {"app": running(1)}),
        }
    }
    assert brief(plan([web], world)) == ["RecreateContainer web/1 app"]


def test_external_upstream_start_restarts_the_dependent() -> None:
    web = job("web", c("app", "db/pg"))
    world: World = {"web": {0: instance("vm", {"app": running(100)})}}
    pg = ContainerKey("db", "pg")
    assert plan([web], world, external_starts={pg: 90.0}) == []
    actions = plan([web], world, external_starts={pg: 120.0})
    assert actions == [RestartContainer("web", 0, "app", "upstream db/pg restarted after it", pg)]
    assert plan([web], world, external_starts={pg: None}) == []


def test_bad_input_is_refused_naming_the_field() -> None:
    with pytest.raises(PlanningError, match=r"jobs\[web\]\.containers\[app\]\.dependsOn: 'db/pg'"):
        plan([job("web", c("app", "db/pg"))], {})
    with pytest.raises(CycleError, match="web/a -> web/b -> web/a"):
        plan([job("web", c("a", "b"), c("b", "a"))], {})
    with pytest.raises(PlanningError, match=r"jobs\[web\]\.instances"):
        plan([job("web", c("a"), instances=-1)], {})


def test_the_plan_is_deterministic() -> None:
    web = job("web", c("b", "a"), c("a"), instances=3, disk=DesiredDisk(10))
    assert plan([web], {}) == plan([web], {})


def test_a_disk_no_longer_wanted_is_orphaned_then_adopted_again_by_a_scale_up() -> None:
    two = job("web", c("db", disk=True), instances=2, disk=DesiredDisk(64, orphan_retention=20.0))
    one = replace(two, instances=1)
    world = {"web": converged(two)}
    actions = plan([one], world)
    assert brief(actions) == [
        "StopContainer web/1 db",
        "DetachDisk web/1",
        "DeleteVM web/1",
        "OrphanDisk web/1",
    ]
    after = settle([one], world)
    assert after["web"][1].disk is not None and after["web"][1].disk.orphaned  # kept, marked
    assert plan([one], after) == []  # an orphan is left alone (the reaper deletes it later)
    back = plan([two], after)
    assert brief(back)[:3] == ["CreateVM web/1", "AdoptDisk web/1", "AttachDisk web/1"]
    assert next(a for a in back if isinstance(a, AdoptDisk)).disk_id == after["web"][1].disk.id
    settle([two], after)


def test_a_retention_of_zero_deletes_the_disk_at_once() -> None:
    two = job("web", c("db", disk=True), instances=2, disk=DesiredDisk(64))
    assert "DeleteDisk web/1" in brief(plan([replace(two, instances=1)], {"web": converged(two)}))
