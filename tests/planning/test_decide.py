"""The decision step on a fake clock: back-offs, refusals that stall, meltdown, unresponsive
engines, rollouts (watched, halted, batched), cross-job settling and convergence. No I/O and no
real time: every timestamp is passed in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from dockyard.planning import (
    STARTS,
    Cause,
    ContainerAction,
    ContainerKey,
    CreateDisk,
    DeleteDisk,
    DesiredDisk,
    DesiredJob,
    SnapshotDisk,
)
from dockyard.planning.decide import (
    Decision,
    Hold,
    JobIntent,
    NoticeKind,
    ResurrectionPolicy,
    decide,
)
from dockyard.planning.memory import Failure, JobMemory, Outcome, record
from dockyard.planning.observation import (
    ContainerObservation,
    DiskObservation,
    InstanceObservation,
    JobObservation,
    VMPhase,
)
from dockyard.planning.verdict import Phase, UpstreamState
from tests.planning.builders import brief, c, job


def up(name: str, at: float, hash: str = "h1", **extra: object) -> ContainerObservation:
    return ContainerObservation(f"id-{name}", "running", hash, at, **extra)  # type: ignore[arg-type]


def world(
    desired: DesiredJob,
    *,
    at: float = 10.0,
    skip: Mapping[int, Sequence[str]] | None = None,
    **per_container: ContainerObservation,
) -> JobObservation:
    """Every instance of ``desired`` running its containers (started from ``at`` in order);
    ``per_container`` replaces a container everywhere, ``skip`` leaves some out."""
    instances = {}
    for index in range(desired.instances):
        containers = {
            spec.name: per_container.get(spec.name, up(spec.name, at + n, spec.config_hash))
            for n, spec in enumerate(desired.containers)
            if spec.name not in (skip or {}).get(index, ())
        }
        instances[index] = InstanceObservation(
            f"vm-{index}", VMPhase.RUNNING, True, None, containers
        )
    return JobObservation(instances)


def intent(desired: DesiredJob, **changes: object) -> JobIntent:
    return replace(
        JobIntent(desired, generation=1, watch_time=(1.0, 3.0), canary_watch_time=(1.0, 3.0)),
        **changes,
    )  # type: ignore[arg-type]


def ran(
    decision: Decision,
    memory: JobMemory,
    desired: DesiredJob,
    now: float,
    fail: Failure | None = None,
) -> JobMemory:
    """The memory after ``decision``'s actions ran at ``now`` (all failing with ``fail``)."""
    outcomes = [Outcome(a, fail, "boom" if fail else "") for a in decision.actions]
    return record(memory, desired, outcomes, decision.rollout, now)


def test_a_converged_job_does_nothing_and_is_ready() -> None:
    web = job("web", c("db"), c("app", "db"), instances=2)
    decision = decide(intent(web), world(web), JobMemory(), now=100.0)
    assert decision.actions == ()
    assert decision.verdict.phase is Phase.CONVERGED
    assert decision.verdict.converged and decision.verdict.ready_instances == 2
    assert decision.verdict.requeue_after is None
    assert decision.verdict.unsettled == frozenset()


def test_a_failed_start_backs_off_10_then_20_seconds_and_a_success_forgets_it() -> None:
    web = job("web", c("db"), c("app", "db"))
    observed = world(web, skip={0: ["db", "app"]})
    first = decide(intent(web), observed, JobMemory(), now=0.0)
    assert brief(first.actions) == ["StartContainer web/0 db", "StartContainer web/0 app"]
    memory = ran(first, first.memory, web, now=0.0, fail=Failure.TRANSIENT)

    waiting = decide(intent(web), observed, memory, now=5.0)
    assert waiting.actions == ()  # db waits, and app (behind it) with it
    assert set(waiting.held.values()) == {Hold.BACKOFF}
    assert waiting.verdict.phase is Phase.BACK_OFF
    assert "failed to start 1 time(s) in a row (boom)" in waiting.verdict.message
    assert waiting.verdict.requeue_after == 5.0
    assert not waiting.verdict.stalled  # transient: it may heal by itself

    again = decide(intent(web), observed, waiting.memory, now=10.0)
    assert brief(again.actions) == brief(first.actions)
    memory = ran(again, again.memory, web, now=10.0, fail=Failure.TRANSIENT)
    assert decide(intent(web), observed, memory, now=29.0).actions == ()
    third = decide(intent(web), observed, memory, now=30.0)
    assert third.actions
    memory = ran(third, third.memory, web, now=30.0)  # it worked
    assert memory.start_failures == {}


def test_a_new_spec_is_tried_at_once_despite_the_back_off() -> None:
    web = job("web", c("db"))
    observed = world(web, skip={0: ["db"]})
    first = decide(intent(web), observed, JobMemory(), now=0.0)
    memory = ran(first, first.memory, web, now=0.0, fail=Failure.TRANSIENT)
    changed = job("web", c("db", hash="h2"))
    assert brief(decide(intent(changed), observed, memory, now=1.0).actions) == [
        "StartContainer web/0 db"
    ]


def test_a_start_the_engine_refuses_is_stalled_at_once_in_its_words_and_still_retried() -> None:
    web = job("web", c("db"))
    observed = world(web, skip={0: ["db"]})
    decision = decide(intent(web), observed, JobMemory(), 0.0)
    memory = ran(decision, decision.memory, web, 0.0, fail=Failure.REFUSED)
    stalled = decide(intent(web), observed, memory, now=1.0)
    assert stalled.actions == ()  # its back-off runs
    assert stalled.verdict.phase is Phase.REFUSED and stalled.verdict.stalled
    assert "container db: the engine refused it: boom (once;" in stalled.verdict.message
    again = decide(intent(web), observed, memory, now=1000.0)
    assert again.actions  # the back-off goes on
    memory = ran(again, again.memory, web, 1000.0, fail=Failure.REFUSED)
    assert (
        "boom (2 times in a row;" in decide(intent(web), observed, memory, 1001.0).verdict.message
    )
    mended = job("web", c("db", hash="h2"))  # a new spec clears it and is tried at once
    fresh = decide(intent(mended), observed, memory, now=1002.0)
    assert fresh.actions and not fresh.verdict.stalled


def test_a_transient_failure_is_not_stalled() -> None:
    web = job("web", c("db"))
    observed = world(web, skip={0: ["db"]})
    decision = decide(intent(web), observed, JobMemory(), 0.0)
    memory = ran(decision, decision.memory, web, 0.0, fail=Failure.TRANSIENT)
    waiting = decide(intent(web), observed, memory, now=1.0)
    assert waiting.verdict.phase is Phase.BACK_OFF and not waiting.verdict.stalled


def test_meltdown_pauses_resurrection_and_says_so_once() -> None:
    web = job("web", c("app"), instances=10)
    observed = world(web)
    gone = {i: replace(observed.instances[i], vm_phase=VMPhase.STOPPED) for i in range(5)}
    broken = JobObservation({**observed.instances, **gone})
    first = decide(intent(web), broken, JobMemory(), now=0.0)
    assert first.actions == ()
    assert [n.kind for n in first.notices] == [NoticeKind.MELTDOWN]
    assert first.verdict.phase is Phase.MELTDOWN and first.verdict.stalled
    assert "5 of 10 instances down at once" in first.verdict.message
    assert decide(intent(web), broken, first.memory, now=1.0).notices == ()

    four = JobObservation({**observed.instances, **{i: gone[i] for i in range(4)}})
    healing = decide(intent(web), four, first.memory, now=2.0)
    assert brief(healing.actions).count("CreateVM web/0") == 1  # below the threshold: resurrect
    assert healing.verdict.phase is Phase.RECONCILING


def test_a_silent_engine_is_left_alone_until_the_unresponsive_timeout() -> None:
    web = job("web", c("app"), instances=2)
    observed = world(web)
    deaf = replace(observed.instances[0], engine_ok=False, containers={})
    silent = JobObservation({**observed.instances, 0: deaf})
    policy = ResurrectionPolicy(unresponsive_timeout=5.0)
    first = decide(intent(web, resurrection=policy), silent, JobMemory(), now=0.0)
    assert first.actions == ()
    assert 0 < (first.verdict.requeue_after or 0) <= 5.0
    later = decide(intent(web, resurrection=policy), silent, first.memory, now=5.0)
    assert brief(later.actions)[:2] == ["DeleteVM web/0", "CreateVM web/0"]
    assert all(a.cause is Cause.VM_UNHEALTHY for a in later.actions[:2])


def rollout_job(instances: int = 3, hash: str = "h1", max_in_flight: int = 1) -> DesiredJob:
    return job("web", c("app", hash=hash), instances=instances, max_in_flight=max_in_flight)


def test_a_rollout_runs_the_canary_watches_it_then_the_next_batch_at_once() -> None:
    old, new = rollout_job(3, "h1", 2), rollout_job(3, "h2", 2)
    canary = decide(intent(new), world(old), JobMemory(), now=0.0)
    assert brief(canary.actions) == ["RecreateContainer web/0 app"]
    assert canary.rollout is not None and canary.rollout.canary
    memory = ran(canary, canary.memory, new, now=1.0)
    assert memory.watch is not None and memory.watch.indices == (0,)

    after_canary = world(old, app=up("app", 50.0, "h1"))
    updated = {0: replace(after_canary.instances[0], containers={"app": up("app", 60.0, "h2")})}
    observed = JobObservation({**after_canary.instances, **updated})
    watching = decide(intent(new), observed, memory, now=1.5)  # inside the low watch time
    assert watching.actions == () and watching.verdict.phase is Phase.ROLLING_OUT
    assert watching.verdict.requeue_after == 0.5
    batch = decide(intent(new), observed, watching.memory, now=2.1)
    assert brief(batch.actions) == ["RecreateContainer web/1 app", "RecreateContainer web/2 app"]
    assert batch.rollout is not None and not batch.rollout.canary


def test_a_failing_canary_halts_the_rollout_and_leaves_the_rest_on_the_old_spec() -> None:
    old, new = rollout_job(3, "h1"), rollout_job(3, "h2")
    canary = decide(intent(new), world(old), JobMemory(), now=0.0)
    memory = ran(canary, canary.memory, new, now=0.0)
    crashed = ContainerObservation("id-app", "exited", "h2", 5.0, exit_code=3)
    observed = JobObservation(
        {**world(old).instances, 0: replace(world(old).instances[0], containers={"app": crashed})}
    )
    still = decide(intent(new), observed, memory, now=2.0)  # failing, but before the high time
    assert still.actions == () and still.notices == ()
    halted = decide(intent(new), observed, still.memory, now=3.0)
    assert [n.kind for n in halted.notices] == [NoticeKind.ROLLOUT_HALTED]
    assert halted.verdict.phase is Phase.ROLLOUT_HALTED and halted.verdict.stalled
    assert "canary instance 0: container app is exited" in halted.verdict.message
    # the halt lasts for this generation; repairs run again (the canary's crash is repaired),
    # the instances not reached stay on the old spec
    assert brief(halted.actions) == ["StartContainer web/0 app"]
    after = decide(intent(new), observed, halted.memory, now=10.0)
    assert brief(after.actions) == ["StartContainer web/0 app"]
    assert after.verdict.phase is Phase.ROLLOUT_HALTED
    retry = decide(intent(new, generation=2), observed, after.memory, now=11.0)
    assert retry.verdict.phase is not Phase.ROLLOUT_HALTED


def test_repairs_run_on_every_instance_at_once_while_a_rollout_goes_batch_by_batch() -> None:
    old, new = rollout_job(4, "h1"), rollout_job(4, "h2")
    observed = world(old, skip={3: ["app"]})
    decision = decide(intent(new), observed, JobMemory(), now=0.0)
    # instance 3 lost its container: a repair, at once (with the spec of now); the rollout
    # begins with its canary
    assert brief(decision.actions) == ["RecreateContainer web/0 app", "StartContainer web/3 app"]
    restart = world(old, app=ContainerObservation("x", "exited", "h1", 1.0, exit_code=1))
    repair = decide(intent(old), restart, JobMemory(), now=0.0)
    assert len(repair.actions) == 4 and repair.rollout is None


def test_an_upstream_in_another_job_that_is_not_settled_holds_its_dependents() -> None:
    web = job("web", c("api", "cache/cache"), c("proxy", "api"), c("side"), instances=2)
    cache = ContainerKey("cache", "cache")
    observed = world(web)
    busy = decide(
        intent(web, upstreams={cache: UpstreamState(100.0, settled=False)}),
        observed,
        JobMemory(),
        now=0.0,
    )
    assert busy.actions == ()
    assert {a.kind for a in busy.held} == {"RestartContainer"}
    assert set(busy.held.values()) == {Hold.UPSTREAM}
    assert not busy.verdict.converged and busy.verdict.phase is Phase.RECONCILING
    assert ContainerKey("web", "api") in busy.verdict.unsettled  # its dependents wait too

    settled = decide(
        intent(web, upstreams={cache: UpstreamState(100.0, settled=True)}),
        observed,
        busy.memory,
        now=1.0,
    )
    assert brief(settled.actions) == [
        "RestartContainer web/0 api",
        "RestartContainer web/1 api",
        "RestartContainer web/0 proxy",
        "RestartContainer web/1 proxy",
    ]
    assert all(
        isinstance(a, ContainerAction) and a.cause is Cause.UPSTREAM for a in settled.actions
    )


def test_an_unhealthy_container_is_restarted_then_waits_its_back_off() -> None:
    web = job("web", c("db"), c("app", "db"))
    sick = world(web, db=up("db", 10.0, health="unhealthy"))
    first = decide(intent(web), sick, JobMemory(), now=0.0)
    assert brief(first.actions) == ["RestartContainer web/0 db", "RestartContainer web/0 app"]
    assert first.actions[0].cause is Cause.UNHEALTHY
    memory = ran(first, first.memory, web, now=0.0)
    still_sick = world(web, db=up("db", 20.0, health="unhealthy"), app=up("app", 21.0))
    assert decide(intent(web), still_sick, memory, now=5.0).actions == ()
    assert decide(intent(web), still_sick, memory, now=10.0).actions


def test_a_failed_disk_step_holds_the_rest_of_its_instance_only() -> None:
    web = job("web", c("app"), instances=2)
    observed = JobObservation({1: world(web).instances[1]})  # instance 0 has nothing yet
    first = decide(intent(web), observed, JobMemory(), now=0.0)
    assert brief(first.actions) == ["CreateVM web/0", "StartContainer web/0 app"]
    outcomes = [Outcome(first.actions[0], Failure.TRANSIENT, "quota")]
    memory = record(first.memory, web, outcomes, None, now=0.0)
    later = decide(intent(web), observed, memory, now=1.0)
    assert later.actions == ()
    assert set(later.held.values()) == {Hold.STEP_BACKOFF}
    assert "instance 0: CreateVM failed 1 time(s) in a row (quota)" in later.verdict.message


def test_duplicate_vms_are_deleted() -> None:
    web = job("web", c("app"))
    observed = replace(world(web), duplicates=((0, "vm-extra"),))
    decision = decide(intent(web), observed, JobMemory(), now=0.0)
    assert brief(decision.actions) == ["DeleteVM web/0"]
    assert decision.actions[0].cause is Cause.DUPLICATE_VM


def test_a_job_whose_upstream_elsewhere_is_not_settled_is_not_ready_before_it_has_a_plan() -> None:
    """The upstream's Job is restarting it and has not reported a new start yet: nothing is
    planned here, but the Job is not Ready either (its dependents will restart)."""
    web = job("web", c("api", "cache/cache"))
    cache = ContainerKey("cache", "cache")
    quiet = decide(
        intent(web, upstreams={cache: UpstreamState(1.0, settled=False)}),
        world(web),
        JobMemory(),
        now=0.0,
    )
    assert quiet.actions == () and quiet.held == {}
    assert not quiet.verdict.converged
    assert quiet.verdict.phase is Phase.RECONCILING
    assert "waiting for upstream cache/cache to settle" in quiet.verdict.message
    assert quiet.verdict.requeue_after == 5.0


def test_a_recorded_disk_gone_from_the_iaas_is_not_replaced_by_a_blank_one() -> None:
    web = job("web", c("db", disk=True), c("side"), disk=DesiredDisk(64))
    observed = world(web)  # the VM and its containers, but no disk at all
    lost = decide(intent(web, known_disks={0: "disk-7"}), observed, JobMemory(), now=0.0)
    assert "CreateDisk web/0" not in brief(lost.actions)
    assert not any(isinstance(a, STARTS) and a.container == "db" for a in lost.actions)
    assert lost.verdict.phase is Phase.DISK_MISSING and lost.verdict.stalled
    assert "its disk disk-7 is gone from the IaaS" in lost.verdict.message
    assert [n.kind for n in lost.notices] == [NoticeKind.DISK_MISSING]
    again = decide(intent(web, known_disks={0: "disk-7"}), observed, lost.memory, now=1.0)
    assert again.notices == () and again.verdict.phase is Phase.DISK_MISSING

    accepted = decide(intent(web), observed, again.memory, now=2.0)  # the loss accepted
    assert "CreateDisk web/0" in brief(accepted.actions)
    assert accepted.verdict.phase is Phase.RECONCILING


def test_a_disk_the_job_deleted_itself_is_not_missing() -> None:
    web = job("web", c("db", disk=True), disk=DesiredDisk(64))
    memory = replace(JobMemory(), deleted_disks=frozenset({"disk-7"}))
    decision = decide(intent(web, known_disks={0: "disk-7"}), world(web), memory, now=0.0)
    assert "CreateDisk web/0" in brief(decision.actions)


def test_a_lost_disk_with_a_snapshot_to_restore_from_is_restored_not_left_missing() -> None:
    web = job("web", c("db", disk=True), disk=DesiredDisk(64, restore_from="snap-1"))
    restored = decide(intent(web, known_disks={0: "disk-7"}), world(web), JobMemory(), now=0.0)
    (create,) = [a for a in restored.actions if isinstance(a, CreateDisk)]
    assert create.snapshot == "snap-1" and restored.verdict.phase is Phase.RECONCILING


def test_a_snapshot_not_ready_holds_the_new_disk_and_one_too_big_stalls() -> None:
    web = job("web", c("db", disk=True), disk=DesiredDisk(64, restore_from="snap-1"))
    observed = JobObservation({})
    waiting = decide(
        intent(web, restore_problem="waiting for DiskSnapshot 'x'"), observed, JobMemory(), 0.0
    )
    assert "CreateDisk web/0" not in brief(waiting.actions)
    assert "StartContainer web/0 db" not in brief(waiting.actions)
    assert set(waiting.held.values()) == {Hold.RESTORE} and not waiting.verdict.stalled
    stuck = decide(
        intent(web, restore_problem="spec.persistentDisk.size: too small", restore_stalled=True),
        observed,
        JobMemory(),
        0.0,
    )
    assert (
        stuck.verdict.phase is Phase.INVALID_SPEC
        and "spec.persistentDisk.size" in stuck.verdict.message
    )


def test_a_migrated_disks_old_one_is_kept_for_its_retention_then_deleted() -> None:
    web = job("web", c("db", disk=True), disk=DesiredDisk(128, orphan_retention=20.0))
    base = world(web)
    disk = DiskObservation("new", 128, "vm-0")
    old = DiskObservation("old", 64, orphaned_at=1000.0)
    instance = replace(base.instances[0], disk=disk, superseded=(old,))
    observed = JobObservation({0: instance})

    kept = decide(intent(web, wall_clock=1005.0), observed, JobMemory(), now=50.0)
    assert kept.actions == () and kept.verdict.phase is Phase.CONVERGED
    assert kept.verdict.requeue_after == 15.0  # woken at expiry, without any event

    expired = decide(intent(web, wall_clock=1020.0), observed, JobMemory(), now=65.0)
    (delete,) = expired.actions
    assert isinstance(delete, DeleteDisk) and delete.disk_id == "old"
    assert delete.cause is Cause.ORPHAN_EXPIRED


def test_snapshot_before_goes_ahead_of_a_rollout_that_stops_the_disks_users() -> None:
    old = job("web", c("db", disk=True), c("side"), disk=DesiredDisk(64), instances=2)
    base = world(old)
    observed = JobObservation(
        {
            i: replace(found, disk=DiskObservation(f"disk-{i}", 64, f"vm-{i}"))
            for i, found in base.instances.items()
        }
    )
    changed = job(
        "web", c("db", hash="h2", disk=True), c("side"), disk=DesiredDisk(64), instances=2
    )
    snapping = replace(changed, update=replace(changed.update, snapshot_before=True))

    first = decide(intent(snapping, generation=4), observed, JobMemory(), now=0.0)
    assert brief(first.actions)[:2] == ["SnapshotDisk web/0", "RecreateContainer web/0 db"]
    (snap,) = [a for a in first.actions if isinstance(a, SnapshotDisk)]
    assert (snap.disk_id, snap.generation) == ("disk-0", 4)
    assert "SnapshotDisk web/1" not in brief(first.actions), "the canary goes first, alone"

    # Only a change that stops the disk's users is worth a snapshot; without the flag, none.
    side_only = job("web", c("db", disk=True), c("side", hash="h2"), disk=DesiredDisk(64))
    flagged = replace(side_only, update=replace(side_only.update, snapshot_before=True))
    assert not any(
        isinstance(a, SnapshotDisk)
        for a in decide(intent(flagged), observed, JobMemory(), now=0.0).actions
    )
    plain = decide(intent(changed), observed, JobMemory(), now=0.0)
    assert not any(isinstance(a, SnapshotDisk) for a in plain.actions)


def booting_instance(observed: JobObservation, index: int) -> JobObservation:
    """Instance ``index``'s VM is still booting: the provider says pending, nothing inside seen."""
    pending = replace(
        observed.instances[index], vm_phase=VMPhase.PENDING, engine_ok=False, containers={}
    )
    return JobObservation({**observed.instances, index: pending})


def test_a_booting_vm_holds_what_needs_its_engine_and_is_looked_at_again_soon() -> None:
    web = job("web", c("db"), c("app", "db"), instances=2)
    observed = booting_instance(world(web), 0)
    decision = decide(intent(web), observed, JobMemory(), now=0.0)
    assert decision.actions == ()  # no start tried (it would fail and back off for minutes)
    assert set(decision.held.values()) == {Hold.BOOTING}
    assert {a.index for a in decision.held} == {0}
    assert decision.verdict.requeue_after == 5.0
    assert not decision.verdict.converged and not decision.verdict.stalled
    assert decision.memory.unresponsive_since == {}  # booting is not silence
    booted = decide(intent(web), world(web, skip={0: ["db", "app"]}), decision.memory, now=90.0)
    assert brief(booted.actions) == ["StartContainer web/0 db", "StartContainer web/0 app"]


def test_a_watched_canary_still_booting_does_not_halt_the_rollout() -> None:
    old, new = rollout_job(3, "h1"), rollout_job(3, "h2")
    canary = decide(intent(new), world(old), JobMemory(), now=0.0)
    memory = ran(canary, canary.memory, new, now=0.0)
    observed = booting_instance(world(old), 0)  # say its VM was replaced and boots
    long_after = decide(intent(new), observed, memory, now=60.0)  # past the high watch time
    assert long_after.notices == () and long_after.verdict.phase is not Phase.ROLLOUT_HALTED
    assert long_after.memory.watch is not None
    # booted, and still not well at the end of the watch: halted as before
    crashed = ContainerObservation("id-app", "exited", "h2", 5.0, exit_code=3)
    broken = JobObservation(
        {**world(old).instances, 0: replace(world(old).instances[0], containers={"app": crashed})}
    )
    halted = decide(intent(new), broken, long_after.memory, now=61.0)
    assert halted.verdict.phase is Phase.ROLLOUT_HALTED
