"""Operating a job the BOSH way, in the pure planner and decision step: VMs replaced when their
stemcell or VM type changes (delete-create or create-swap-delete, through canaries), recreate
and restart requests, stopped / hard-stopped / ignored instances, paused jobs, and rollouts
halted by a failed canary."""

from __future__ import annotations

from dataclasses import replace

from dockyard.planning import (
    Cause,
    CreateVM,
    DesiredDisk,
    DesiredJob,
    InstanceCommands,
    ObservedDisk,
    UpdatePolicy,
    plan,
)
from dockyard.planning.decide import JobIntent, NoticeKind, decide
from dockyard.planning.memory import Failure, JobMemory, Outcome, record
from dockyard.planning.observation import (
    ContainerObservation,
    DiskObservation,
    InstanceObservation,
    JobObservation,
    VMPhase,
)
from dockyard.planning.verdict import Phase
from tests.planning.builders import brief, c, converged, job

OLD, NEW = "stemcell-1", "stemcell-2"


def made_from(desired: DesiredJob, config: str, **changes: object) -> dict[int, object]:
    """``desired`` converged, every VM made from ``config``."""
    world = converged(desired)
    return {
        i: replace(found, vm=replace(found.vm, config=config, **changes))  # type: ignore[arg-type]
        for i, found in world.items()
    }


def db_app(**update: object) -> DesiredJob:
    base = job("web", c("db", disk=True), c("app", "db"), instances=2, disk=DesiredDisk(64))
    return replace(base, vm_config=NEW, update=replace(UpdatePolicy(), **update))


def test_a_vm_made_from_another_stemcell_is_replaced_delete_then_create() -> None:
    web = db_app()
    actions = plan([web], {"web": made_from(web, OLD)})
    first = [a for a in actions if a.index == 0]
    assert brief(first) == [
        "StopContainer web/0 app",  # dependents first, each drained
        "StopContainer web/0 db",
        "DetachDisk web/0",
        "DeleteVM web/0",
        "CreateVM web/0",
        "AttachDisk web/0",  # the same disk, its data kept
        "StartContainer web/0 db",
        "StartContainer web/0 app",
    ]
    assert {a.cause for a in first if a.kind in ("DeleteVM", "CreateVM")} == {Cause.VM_CHANGED}


def test_create_swap_delete_makes_the_new_vm_before_the_old_one_stops() -> None:
    web = db_app(vm_strategy="CreateSwapDelete")
    actions = [a for a in plan([web], {"web": made_from(web, OLD)}) if a.index == 0]
    assert brief(actions)[:3] == [
        "CreateVM web/0",
        "StopContainer web/0 app",
        "StopContainer web/0 db",
    ]
    create = actions[0]
    assert isinstance(create, CreateVM) and create.replaces == "vm-web-0"
    assert brief(actions)[3:6] == ["DetachDisk web/0", "DeleteVM web/0", "AttachDisk web/0"]


def test_a_swap_half_done_goes_on_with_the_replacement_it_made() -> None:
    web = db_app(vm_strategy="CreateSwapDelete")
    world = made_from(web, OLD)
    world[0] = replace(world[0], incoming=replace(world[0].vm, id="vm-new", config=NEW))  # type: ignore[arg-type]
    actions = [a for a in plan([web], {"web": world}) if a.index == 0]
    assert "CreateVM web/0" not in brief(actions)
    assert brief(actions)[:2] == ["StopContainer web/0 app", "StopContainer web/0 db"]


def test_a_replacement_no_longer_needed_is_deleted() -> None:
    web = db_app(vm_strategy="CreateSwapDelete")
    world = made_from(web, NEW)  # the spec went back: the old VM is right again
    world[0] = replace(world[0], incoming=replace(world[0].vm, id="vm-new"))  # type: ignore[arg-type]
    actions = plan([web], {"web": world})
    assert brief(actions) == ["DeleteVM web/0"] and actions[0].cause is Cause.SWAP_NOT_WANTED


def test_vms_without_a_recorded_stemcell_are_taken_as_current() -> None:
    web = db_app()
    assert plan([web], {"web": converged(web)}) == []


def test_a_recreate_request_replaces_vms_made_before_it_once() -> None:
    web = replace(db_app(), commands=InstanceCommands(recreate={1: 500.0}))
    before = made_from(web, NEW, made_for=0.0)
    assert {a.index for a in plan([web], {"web": before})} == {1}
    assert plan([web], {"web": made_from(web, NEW, made_for=500.0)}) == []


def test_a_restart_request_restarts_containers_started_before_it_upstream_first() -> None:
    web = replace(db_app(), commands=InstanceCommands(restart={0: 100.0}))
    actions = plan([web], {"web": made_from(web, NEW)})  # started at 10, 11
    assert brief(actions) == ["RestartContainer web/0 db", "RestartContainer web/0 app"]
    assert {a.cause for a in actions} == {Cause.RESTART_REQUESTED}


def test_a_stopped_instance_stops_its_containers_and_starts_none() -> None:
    web = replace(db_app(), commands=InstanceCommands(stopped=frozenset({1})))
    assert brief(plan([web], {"web": made_from(web, NEW)})) == [
        "StopContainer web/1 app",
        "StopContainer web/1 db",
    ]
    world = made_from(web, NEW)
    world[1] = replace(world[1], vm=replace(world[1].vm, healthy=False))  # type: ignore[arg-type]
    assert [a for a in plan([web], {"web": world}) if a.index == 1] == []  # not resurrected


def test_a_hard_stopped_instance_loses_its_vm_and_keeps_its_disk() -> None:
    web = replace(db_app(), commands=InstanceCommands(detached=frozenset({0})))
    actions = plan([web], {"web": made_from(web, NEW)})
    assert brief(actions) == [
        "StopContainer web/0 app",
        "StopContainer web/0 db",
        "DetachDisk web/0",
        "DeleteVM web/0",
    ]
    gone = {0: replace(made_from(web, NEW)[0], vm=None, containers={})}  # type: ignore[arg-type]
    gone[0] = replace(gone[0], disk=ObservedDisk("d-web-0", 64))
    gone[1] = made_from(web, NEW)[1]
    assert plan([web], {"web": gone}) == []  # stays down, the disk stays


def test_an_ignored_instance_is_left_out_of_repairs_rollouts_and_scale_down() -> None:
    web = replace(db_app(), commands=InstanceCommands(ignored=frozenset({1})))
    world = made_from(web, OLD)
    actions = plan([web], {"web": world})
    assert {a.index for a in actions} == {0}
    smaller = replace(web, instances=1)
    assert plan([smaller], {"web": made_from(web, NEW)}) == []


# --- the decision step ------------------------------------------------------------------------


def observed(desired: DesiredJob, config: str) -> JobObservation:
    instances = {}
    for index in range(desired.instances):
        containers = {
            spec.name: ContainerObservation(
                f"{spec.name}-{index}", "running", spec.config_hash, 10.0
            )
            for spec in desired.containers
        }
        instances[index] = InstanceObservation(
            f"vm-{index}",
            VMPhase.RUNNING,
            True,
            DiskObservation(f"d-{index}", 64, f"vm-{index}"),
            containers,
            vm_config=config,
        )
    return JobObservation(instances)


def intent(desired: DesiredJob, **changes: object) -> JobIntent:
    base = JobIntent(desired, generation=2, watch_time=(1.0, 3.0), canary_watch_time=(1.0, 3.0))
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_stemcell_rollout_goes_canary_first_one_instance_at_a_time() -> None:
    web = db_app()
    first = decide(intent(web), observed(web, OLD), JobMemory(), now=0.0)
    assert {a.index for a in first.actions} == {0}
    assert first.rollout is not None and first.rollout.canary
    assert first.verdict.phase is Phase.RECONCILING


def test_a_canary_whose_vm_cannot_be_made_halts_the_rollout_and_says_so_once() -> None:
    web = db_app()
    world = observed(web, OLD)
    first = decide(intent(web), world, JobMemory(), now=0.0)
    outcomes = [
        Outcome(a, Failure.REFUSED, "stemcell: image 'nope' does not exist")
        if a.kind == "CreateVM"
        else Outcome(a)
        for a in first.actions
    ]
    memory = record(first.memory, web, outcomes, first.rollout, 1.0)
    gone = JobObservation({**world.instances, 0: InstanceObservation(disk=world.get(0).disk)})
    halted = decide(intent(web, known_vms={0: "vm-0", 1: "vm-1"}), gone, memory, now=2.0)
    assert halted.verdict.phase is Phase.ROLLOUT_HALTED and halted.verdict.stalled
    assert "canary instance 0: CreateVM failed: stemcell" in halted.verdict.message
    assert 1 not in {a.index for a in halted.actions}  # instance 1 keeps its old VM
    assert [n.kind for n in halted.notices] == [NoticeKind.ROLLOUT_HALTED]
    again = decide(intent(web, known_vms={0: "vm-0", 1: "vm-1"}), gone, halted.memory, now=3.0)
    assert again.notices == ()
    fixed = replace(web, vm_config="stemcell-3")
    assert decide(intent(fixed, generation=3), gone, again.memory, 4.0).verdict.phase is not (
        Phase.ROLLOUT_HALTED
    )


def test_a_failed_post_start_on_a_canary_halts_the_rollout() -> None:
    web = db_app()
    first = decide(intent(web), observed(web, OLD), JobMemory(), now=0.0)
    outcomes = [
        Outcome(a, Failure.HOOK, "postStart of db failed")
        if a.kind == "StartContainer"
        else Outcome(a)
        for a in first.actions
    ]
    memory = record(first.memory, web, outcomes, first.rollout, 1.0)
    assert memory.halted is not None and "postStart of db failed" in memory.halted.reason


def test_a_new_restart_request_starts_a_new_rollout_after_a_halt() -> None:
    web = replace(db_app(), vm_config="", commands=InstanceCommands(restart={0: 100.0, 1: 100.0}))
    first = decide(intent(web), observed(web, ""), JobMemory(), now=0.0)
    failed = [Outcome(a, Failure.HOOK, "drain failed") for a in first.actions]
    memory = record(first.memory, web, failed, first.rollout, 1.0)
    assert decide(intent(web), observed(web, ""), memory, 2.0).verdict.phase is Phase.ROLLOUT_HALTED
    again = replace(web, commands=InstanceCommands(restart={0: 200.0, 1: 200.0}))
    assert decide(intent(again), observed(web, ""), memory, 3.0).actions


def test_a_paused_job_does_nothing_and_says_so() -> None:
    web = db_app()
    decision = decide(intent(web, paused=True), observed(web, OLD), JobMemory(), now=0.0)
    assert decision.actions == ()
    assert decision.verdict.phase is Phase.PAUSED and not decision.verdict.stalled


def test_stopped_instances_are_not_down_and_a_job_with_them_converges() -> None:
    web = replace(db_app(), vm_config="", commands=InstanceCommands(stopped=frozenset({1})))
    world = observed(web, "")
    stopped = {
        n: replace(found, state="exited", exit_code=137)
        for n, found in world.get(1).containers.items()
    }
    world = JobObservation({**world.instances, 1: replace(world.get(1), containers=stopped)})
    decision = decide(intent(web), world, JobMemory(), now=0.0)
    assert decision.actions == () and decision.verdict.phase is Phase.CONVERGED
    assert "instance 1 stopped" in decision.verdict.message
