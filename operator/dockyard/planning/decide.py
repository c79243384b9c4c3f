"""The decision step: (intent, observation, memory, now) -> the actions to run now, the memory
to keep, and what it all means for status. Pure: no I/O, and ``now`` is passed in.

One decision, in order:

1. **Forget** what no longer applies: failures of instances scaled away or of a spec since
   changed (a new spec is tried at once), a halt or a watch of an older generation.
2. **Health**: instances *down* (their VM gone or stopped, or its engine silent for longer than
   the unresponsive timeout) and *deaf* (silent for less: left alone); a **meltdown** (too many
   down at once) pauses resurrection, as BOSH's resurrector does.
3. **Plan** (:func:`~dockyard.planning.plan`) on the observation, with the memory folded in:
   a container failing its health check is restarted when its back-off allows, a grow that
   failed lately waits, a disk its provider would not grow in place is copy-migrated.
4. **Gates**, each a typed cause: a failed action waits out its :class:`Backoff` (with what
   depends on it); a container whose upstream in another job is not settled waits for it, so a
   dependent restarts once per cascade; the **rollout** (spec changes) goes batch by batch —
   canaries first, ``maxInFlight`` at a time, each batch watched for its watch time before the
   next, the whole rollout halted (Stalled) when a batch fails. Repairs run at once everywhere.
5. **Verdict**: the phase (Ready reason), whether it is stalled, the message, when to look
   again, and which of this Job's containers are not settled (for its dependents).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from dockyard.planning.backoff import HEALTHY_RESET, Backoff
from dockyard.planning.conditions import Waiting, readiness, waiting
from dockyard.planning.graph import DependencyGraph, build_graph, external_upstreams
from dockyard.planning.memory import (
    Halt,
    JobMemory,
    RolloutStep,
    Slot,
    Watch,
)
from dockyard.planning.model import (
    ROLLOUT_CAUSES,
    STARTS,
    Action,
    Cause,
    ContainerAction,
    ContainerKey,
    DeleteDisk,
    DeleteVM,
    DesiredJob,
    ObservedContainer,
    ObservedDisk,
    ObservedInstance,
    ObservedVM,
    PlanningError,
    SnapshotDisk,
    StartContainer,
)
from dockyard.planning.observation import (
    ContainerObservation,
    DiskObservation,
    InstanceObservation,
    JobObservation,
    VMPhase,
)
from dockyard.planning.planner import plan
from dockyard.planning.rollout import next_step
from dockyard.planning.summary import describe_actions, describe_waits, ready_instances
from dockyard.planning.verdict import Phase, UpstreamState, Verdict

_PLANNER_STATES = frozenset({"running", "restarting", "paused", "created", "exited"})
UPSTREAM_RECHECK = 5.0  # a Job waiting for an upstream is woken when it settles; this is a net
PAUSED_MESSAGE = "paused (dockyard.dev/paused): nothing is done until it is resumed"
PAUSED_RECHECK = 5.0  # meltdown, resurrection disabled: look again this often
BOOT_RECHECK = 5.0  # a VM booting from user data (its engine not up yet): look again this often
# What runs on the IaaS alone, not on a VM's engine: it need not wait for a booting VM.
# (CreateDisk attaches and mounts the new disk too: it waits.)
IAAS_ONLY = frozenset(
    {"CreateVM", "DeleteVM", "DeleteDisk", "DetachDisk", "OrphanDisk", "AdoptDisk"}
)
WATCH_POLL = 0.25


@dataclass(frozen=True)
class ResurrectionPolicy:
    enabled: bool = True
    meltdown_min_down: int = 5
    meltdown_percent: int = 20
    unresponsive_timeout: float = 5.0


@dataclass(frozen=True)
class JobIntent:
    """What the Job wants, and what it needs to know from outside it."""

    job: DesiredJob
    generation: int = 0
    watch_time: tuple[float, float] = (1.0, 30.0)
    canary_watch_time: tuple[float, float] = (1.0, 30.0)
    resurrection: ResurrectionPolicy = field(default_factory=ResurrectionPolicy)
    #: index -> the VM this Job last reported (a VM gone from the IaaS is then resurrected).
    known_vms: Mapping[int, str] = field(default_factory=dict)
    #: Containers of other jobs this one depends on ("job/name"), as their Jobs report them.
    upstreams: Mapping[ContainerKey, UpstreamState] = field(default_factory=dict)
    #: The provider cannot grow an attached disk: its users stop and it is detached first.
    detach_to_resize: bool = False
    #: index -> the disk its PersistentDisk record names: one gone from the IaaS is *missing*,
    #: never replaced by a blank disk (the user restores it or accepts the loss).
    known_disks: Mapping[int, str] = field(default_factory=dict)
    #: Why the disk's ``restoreFrom`` cannot be used yet ("" : it can, or there is none); a
    #: stalled one names the field. New disks wait meanwhile.
    restore_problem: str = ""
    restore_stalled: bool = False
    #: Epoch seconds of this look (orphan marks are wall-clock times; ``now`` is monotonic).
    wall_clock: float = 0.0
    #: What is wrong with the spec that only the operator can check (a host port published
    #: twice, a dependency cycle), naming the field: nothing is done until it is mended.
    spec_problem: str = ""
    #: Paused by an operator: nothing is done at all (the status says so).
    paused: bool = False
    #: What the namespace's policy level refuses (privileged, a capability, a host path...),
    #: naming the fields: nothing is started until it is mended (Stalled, PolicyViolation).
    policy_problem: str = ""


class NoticeKind(enum.StrEnum):
    MELTDOWN = "Meltdown"
    RESURRECTION_DISABLED = "ResurrectionDisabled"
    ROLLOUT_HALTED = "RolloutHalted"
    DISK_LARGER = "DiskLargerThanAsked"
    DISK_MISSING = "DiskMissing"


@dataclass(frozen=True)
class Notice:
    """Something to tell once (an Event), not an action."""

    kind: NoticeKind
    index: int
    message: str


class Hold(enum.StrEnum):
    """Why a planned action does not run now."""

    BACKOFF = "BackOff"  # it (or what it depends on) failed lately
    STEP_BACKOFF = "StepBackOff"  # a VM or disk action of its instance failed lately
    UPSTREAM = "Upstream"  # an upstream in another job is not settled
    WATCHED = "Watched"  # its instance is in the rollout batch being watched
    ROLLOUT = "Rollout"  # its instance waits for a later rollout batch
    HALTED = "Halted"  # the rollout of this generation halted
    DISK_MISSING = "DiskMissing"  # its recorded disk is gone: no blank one, no users started
    CONDITION = "Condition"  # an upstream is not yet what it waits for (Healthy, Completed)
    RESTORE = "Restore"  # the snapshot a new disk starts from is not usable yet
    BOOTING = "Booting"  # its VM is still booting (the provider says pending): nothing reaches it


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]  # to run now, in plan order
    memory: JobMemory
    verdict: Verdict
    rollout: RolloutStep | None = None  # the batch these actions update, to watch after
    notices: tuple[Notice, ...] = ()
    held: Mapping[Action, Hold] = field(default_factory=dict)
    #: Restarts the engine made on its own since the last look: slot -> (count, OOM-killed).
    engine_restarts: Mapping[Slot, tuple[int, bool]] = field(default_factory=dict)
    crash_looping: Mapping[Slot, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Health:
    down: frozenset[int]
    deaf: frozenset[int]
    meltdown: bool
    paused: str  # why resurrection is paused, "" when it is not


def decide(intent: JobIntent, observed: JobObservation, memory: JobMemory, now: float) -> Decision:
    """See the module doc."""
    memory = _forget(memory, intent)
    health, memory, notices = _health(intent, observed, memory, now)
    memory, restarts = _engine_restarts(observed, memory)
    looping = _crash_looping(observed, intent.job.instances)
    if intent.paused:
        verdict = Verdict(Phase.PAUSED, PAUSED_MESSAGE, ready_instances(intent.job, observed))
        return Decision((), memory, verdict, engine_restarts=restarts, crash_looping=looping)
    if intent.policy_problem:
        verdict = Verdict(Phase.POLICY_VIOLATION, f"refused by policy: {intent.policy_problem}", 0)
        return Decision((), memory, verdict, engine_restarts=restarts, crash_looping=looping)
    problem = intent.spec_problem
    if not problem:
        try:
            planned, memory = _plan(intent, observed, memory, health, now)
        except PlanningError as error:
            problem = str(error)
    if problem:
        verdict = Verdict(Phase.INVALID_SPEC, f"invalid spec: {problem}", 0)
        return Decision((), memory, verdict, engine_restarts=restarts, crash_looping=looping)
    memory, notices = _larger_disks(intent, observed, memory, notices)
    missing = _missing_disks(intent, observed, memory)
    memory, notices = _tell_missing(missing, memory, notices)
    held = _gates(intent, planned, memory, now, missing, booting(observed))
    memory, rollout, held = _rollout(intent, observed, planned, memory, held, now)
    conditions = waiting(intent.job, planned, held, observed, intent.upstreams)
    for action in conditions:
        held.setdefault(action, Hold.CONDITION)
    memory, notices = _tell_halt(memory, notices)
    actions = tuple(a for a in planned if a not in held)
    verdict = _verdict(
        intent, observed, memory, health, planned, actions, held, looping, now, conditions
    )
    return Decision(actions, memory, verdict, rollout, notices, held, restarts, looping)


# --- 1. forget --------------------------------------------------------------------------------


def rollout_key(job: DesiredJob) -> str:
    """What, besides the generation, a rollout is for: the operator's restart and recreate
    requests (a new one starts a new rollout, as a new spec does)."""
    commands = job.commands
    return (
        f"restart={sorted(commands.restart.items())} recreate={sorted(commands.recreate.items())}"
    )


def _forget(memory: JobMemory, intent: JobIntent) -> JobMemory:
    job, generation = intent.job, intent.generation
    hashes = {c.name: c.config_hash for c in job.containers}
    wanted = job.instances
    key = rollout_key(job)
    halted, watch = memory.halted, memory.watch
    return replace(
        memory,
        start_failures={
            slot: failure
            for slot, failure in memory.start_failures.items()
            if slot[0] < wanted and failure.spec_hash == hashes.get(slot[1])
        },
        step_failures={i: f for i, f in memory.step_failures.items() if i < wanted},
        health_restarts={slot: b for slot, b in memory.health_restarts.items() if slot[0] < wanted},
        halted=halted if halted and (halted.generation, halted.key) == (generation, key) else None,
        watch=watch if watch and (watch.generation, watch.key) == (generation, key) else None,
    )


# --- 2. health --------------------------------------------------------------------------------


def _health(
    intent: JobIntent, observed: JobObservation, memory: JobMemory, now: float
) -> tuple[_Health, JobMemory, tuple[Notice, ...]]:
    policy = intent.resurrection
    wanted = intent.job.instances
    down: set[int] = set()
    deaf: set[int] = set()
    seen = {i.vm_id for i in observed.instances.values() if i.vm_id}
    since = {vm: t for vm, t in memory.unresponsive_since.items() if vm in seen}
    commands = intent.job.commands
    left_alone = commands.stopped | commands.detached | commands.ignored
    for index in range(wanted):
        instance = observed.get(index)
        if index in left_alone:
            continue  # down on purpose, or not ours to look after
        if not instance.has_vm or instance.vm_phase is VMPhase.STOPPED:
            if index in intent.known_vms or instance.vm_id is not None:
                down.add(index)
        elif instance.vm_phase is VMPhase.RUNNING and not instance.engine_ok:
            assert instance.vm_id is not None
            first = since.setdefault(instance.vm_id, now)
            (down if now - first >= policy.unresponsive_timeout else deaf).add(index)
        elif instance.vm_id is not None:
            since.pop(instance.vm_id, None)
    meltdown = bool(down) and (
        len(down) >= policy.meltdown_min_down
        and len(down) * 100 >= policy.meltdown_percent * max(wanted, 1)
    )
    which = ", ".join(map(str, sorted(down)))
    paused = ""
    if meltdown:
        paused = f"{len(down)} of {wanted} instances down at once (instances {which}): "
        paused += "resurrection paused"
    elif down and not policy.enabled:
        paused = f"instances {which} down; resurrection is disabled"
    notices: tuple[Notice, ...] = ()
    if paused and paused != memory.paused:  # one Event when it starts, not one per pass
        kind = NoticeKind.MELTDOWN if meltdown else NoticeKind.RESURRECTION_DISABLED
        notices = (Notice(kind, min(down), paused),)
    health = _Health(frozenset(down), frozenset(deaf), meltdown, paused)
    return health, replace(memory, unresponsive_since=since, paused=paused), notices


def _engine_restarts(
    observed: JobObservation, memory: JobMemory
) -> tuple[JobMemory, dict[Slot, tuple[int, bool]]]:
    """Restarts the engine made since the last look, from each container's restart count. A
    container first seen counts from what it shows then; silent engines keep their counts."""
    silent = {i for i, instance in observed.instances.items() if not instance.engine_ok}
    counts = {key: n for key, n in memory.restart_counts.items() if key[0] in silent}
    restarts: dict[Slot, tuple[int, bool]] = {}
    for index, instance in observed.instances.items():
        if index in silent:
            continue
        for name, found in instance.containers.items():
            before = memory.restart_counts.get((index, found.id))
            if before is not None and found.restart_count > before:
                restarts[(index, name)] = (found.restart_count - before, found.oom_killed)
            counts[(index, found.id)] = found.restart_count
    return replace(memory, restart_counts=counts), restarts


def _crash_looping(observed: JobObservation, wanted: int) -> dict[Slot, str]:
    """Containers the engine keeps restarting: Docker holds a crashing container in
    "restarting" while it backs off (doubling from 100 ms, capped at 1 min)."""
    looping: dict[Slot, str] = {}
    for index in range(wanted):
        instance = observed.get(index)
        for name, found in instance.containers.items() if instance.engine_ok else ():
            if found.state == "restarting" and found.restart_count >= 2:
                why = "OOM-killed" if found.oom_killed else f"exit code {found.exit_code}"
                looping[(index, name)] = (
                    f"instance {index}: container {name} is crash-looping "
                    f"({found.restart_count} restarts, {why}); the engine backs off"
                )
    return looping


def _larger_disks(
    intent: JobIntent, observed: JobObservation, memory: JobMemory, notices: tuple[Notice, ...]
) -> tuple[JobMemory, tuple[Notice, ...]]:
    """A disk larger than the spec asks (git holds an older size) is kept as it is: said once."""
    want = intent.job.disk
    said: set[tuple[object, ...]] = set()
    for index in range(intent.job.instances):
        disk = observed.get(index).disk
        if want is None or disk is None or disk.size_mib <= want.size_mib:
            continue
        key = (NoticeKind.DISK_LARGER, index, disk.id, disk.size_mib, want.size_mib)
        said.add(key)
        if key not in memory.told:
            message = (
                f"disk {disk.id} is {disk.size_mib} MiB, more than the {want.size_mib} MiB asked: "
                "kept as it is (disks never shrink)"
            )
            notices += (Notice(NoticeKind.DISK_LARGER, index, message),)
    others = {key for key in memory.told if key[0] is not NoticeKind.DISK_LARGER}
    return replace(memory, told=frozenset(others | said)), notices


def _missing_disks(
    intent: JobIntent, observed: JobObservation, memory: JobMemory
) -> dict[int, str]:
    """Wanted instances whose recorded disk is gone from the IaaS (deleted out of band): BOSH's
    cloud check ``missing_disk``. A disk this Job deleted itself is not missing."""
    if intent.job.disk is None or intent.job.disk.restore_from:
        return {}  # none, or restored from a snapshot instead
    return {
        index: disk_id
        for index, disk_id in intent.known_disks.items()
        if index < intent.job.instances
        and observed.get(index).disk is None
        and disk_id not in memory.deleted_disks
    }


def _tell_missing(
    missing: Mapping[int, str], memory: JobMemory, notices: tuple[Notice, ...]
) -> tuple[JobMemory, tuple[Notice, ...]]:
    told = {key for key in memory.told if key[0] is not NoticeKind.DISK_MISSING}
    for index, disk_id in sorted(missing.items()):
        key = (NoticeKind.DISK_MISSING, index, disk_id)
        if key not in memory.told:
            notices += (Notice(NoticeKind.DISK_MISSING, index, missing_message(index, disk_id)),)
        told.add(key)
    return replace(memory, told=frozenset(told)), notices


def missing_message(index: int, disk_id: str) -> str:
    return (
        f"instance {index}: its disk {disk_id} is gone from the IaaS; it is not replaced by a "
        "blank disk and the containers that use it do not start. Restore it from a snapshot, "
        f"or accept the loss: annotate the Job dockyard.dev/accept-disk-loss={index} (or "
        "delete its PersistentDisk record)"
    )


# --- 3. plan ----------------------------------------------------------------------------------


def _plan(
    intent: JobIntent,
    observed: JobObservation,
    memory: JobMemory,
    health: _Health,
    now: float,
) -> tuple[list[Action], JobMemory]:
    job = replace(intent.job, resurrect=intent.resurrection.enabled and not health.meltdown)
    restarts = dict(memory.health_restarts)
    world: dict[int, ObservedInstance] = {}
    for index, instance in observed.instances.items():
        vm: ObservedVM | None = None
        if instance.has_vm:
            assert instance.vm_id is not None
            healthy = index not in health.down
            vm = ObservedVM(instance.vm_id, healthy, instance.vm_config, instance.made_for)
        elif index in intent.known_vms and index in health.down:
            # Gone from the IaaS although we made it: resurrected, not created anew.
            vm = ObservedVM(intent.known_vms[index], healthy=False)
        containers = {
            name: _planner_container((index, name), found, restarts, now)
            for name, found in (instance.containers.items() if instance.engine_ok else ())
        }
        disk = _planner_disk(index, instance, job, memory, now)
        incoming = None
        if instance.incoming_id is not None:
            incoming = ObservedVM(instance.incoming_id, healthy=instance.incoming_running)
        world[index] = ObservedInstance(vm, disk, containers, incoming)
    for index in health.down - set(world):
        if index in intent.known_vms:
            world[index] = ObservedInstance(ObservedVM(intent.known_vms[index], healthy=False))
    external = {
        key: intent.upstreams[key].latest_start if key in intent.upstreams else None
        for key in external_upstreams([job])
    }
    actions = plan(
        [job],
        {job.name: world},
        external_starts=external,
        detach_to_resize=intent.detach_to_resize,
    )
    duplicates: list[Action] = [
        DeleteVM(job.name, index, vm_id, "duplicate VM for its index", cause=Cause.DUPLICATE_VM)
        for index, vm_id in observed.duplicates
    ]
    kept = [a for a in actions if a.index not in health.deaf]
    expired: list[Action] = [
        DeleteDisk(job.name, index, old.id, cause=Cause.ORPHAN_EXPIRED)
        for index, old in _superseded_expiries(intent, observed)
        if _expires_in(intent, old) <= 0
    ]
    kept = _snapshots_first(intent, observed, kept)
    return duplicates + kept + expired, replace(memory, health_restarts=restarts)


def _snapshots_first(
    intent: JobIntent, observed: JobObservation, actions: list[Action]
) -> list[Action]:
    """With ``snapshotBefore``: a SnapshotDisk ahead of every instance whose rollout actions
    stop its disk's users (a barrier: the rest of the instance waits for it). Same cause as
    those actions, so it is batched, watched and halted with them."""
    job = intent.job
    if not job.update.snapshot_before or job.disk is None:
        return actions
    users = {c.name for c in job.containers if c.uses_disk}
    first: dict[int, int] = {}
    for position, action in enumerate(actions):
        disk = observed.get(action.index).disk
        if disk is None or disk.orphaned_at is not None or action.cause not in ROLLOUT_CAUSES:
            continue
        stops_a_user = (
            isinstance(action, ContainerAction)
            and not isinstance(action, StartContainer)
            and action.container in users
        )
        if stops_a_user or action.kind in _DISK_USERS_STOP:
            first.setdefault(action.index, position)
    out = list(actions)
    for index, position in sorted(first.items(), key=lambda item: -item[1]):
        disk = observed.get(index).disk
        assert disk is not None
        cause = actions[position].cause
        out.insert(position, SnapshotDisk(job.name, index, disk.id, intent.generation, cause=cause))
    return out


#: Disk steps of a rollout during which the disk's users are down.
_DISK_USERS_STOP = frozenset({"DetachDisk", "MigrateDisk"})


def _superseded_expiries(
    intent: JobIntent, observed: JobObservation
) -> list[tuple[int, DiskObservation]]:
    """The old disks of finished copy-migrations, by instance."""
    return [(i, old) for i, found in observed.instances.items() for old in found.superseded]


def _expires_in(intent: JobIntent, old: DiskObservation) -> float:
    """Seconds until an orphaned disk's retention has passed (<= 0: it has)."""
    retention = intent.job.disk.orphan_retention if intent.job.disk else 0.0
    return (old.orphaned_at or 0.0) + retention - intent.wall_clock


def _planner_container(
    slot: Slot, found: ContainerObservation, restarts: dict[Slot, Backoff], now: float
) -> ObservedContainer:
    state = found.state if found.state in _PLANNER_STATES else "dead"  # removing, dead...
    unhealthy = False
    if found.state == "running" and found.health == "unhealthy":
        unhealthy = not restarts.get(slot, Backoff()).waiting(now)
    elif (
        found.health == "healthy"
        and now - restarts.get(slot, Backoff(last=now)).last >= HEALTHY_RESET
    ):
        del restarts[slot]
    return ObservedContainer(
        state,  # type: ignore[arg-type]
        found.config_hash,
        found.started_at,
        found.exit_code,
        unhealthy=unhealthy,
    )


def _planner_disk(
    index: int, instance: InstanceObservation, job: DesiredJob, memory: JobMemory, now: float
) -> ObservedDisk | None:
    disk = instance.disk
    if disk is None:
        return None
    failure = memory.step_failures.get(index)
    return ObservedDisk(
        id=disk.id,
        size_mib=disk.size_mib,
        attached_to=disk.attached_to,
        # An unfinished copy says so even to an operator that just restarted.
        grows_in_place=disk.id not in memory.copy_grow and disk.migration_target is None,
        migration_target=disk.migration_target,
        # Growing it failed lately: its users run on it as it is while the back-off runs.
        grow_waits=failure is not None
        and job.disk is not None
        and failure.holds_grow(disk.id, job.disk.size_mib, now),
        orphaned=disk.orphaned_at is not None,
    )


# --- 4. gates ---------------------------------------------------------------------------------


def _graph(job: DesiredJob) -> DependencyGraph:
    return build_graph([job], external=external_upstreams([job]))


def _gates(
    intent: JobIntent,
    actions: Sequence[Action],
    memory: JobMemory,
    now: float,
    missing: Mapping[int, str],
    booting: frozenset[int] = frozenset(),
) -> dict[Action, Hold]:
    """Actions held by a back-off, a missing disk, a VM still booting, or an upstream of
    another job that is not settled."""
    job = intent.job
    users = {c.name for c in job.containers if c.uses_disk}
    graph = _graph(job)
    failing = {s for s, f in memory.start_failures.items() if f.backoff.waiting(now)}
    behind_failing = {
        (index, key.container)
        for index, name in failing
        for key in graph.dependents_of(ContainerKey(job.name, name))
        if key.job == job.name
    }
    unsettled = {key for key, state in intent.upstreams.items() if not state.settled}
    waiting = {
        key
        for key in graph.keys
        if any(up in unsettled for up in graph.upstreams_of(key, transitive=True))
    }
    disk_held: set[int] = set()
    held: dict[Action, Hold] = {}
    restoring = (
        {a.index for a in actions if a.kind == "CreateDisk"} if intent.restore_problem else set()
    )
    for action in actions:
        failure = memory.step_failures.get(action.index)
        if failure and failure.action == action and failure.backoff.waiting(now):
            disk_held.add(action.index)  # it, and the rest of its instance, wait
        if action.index in disk_held:
            held[action] = Hold.STEP_BACKOFF
            continue
        if action.index in booting and action.kind not in IAAS_ONLY:
            held[action] = Hold.BOOTING  # tried now, it would fail and back off for minutes
            continue
        if action.index in missing and _needs_the_disk(action, users):
            held[action] = Hold.DISK_MISSING
            continue
        if action.index in restoring and _needs_the_disk(action, users):
            held[action] = Hold.RESTORE  # what its disk restores from is not there (yet)
            continue
        if not isinstance(action, ContainerAction):
            continue
        slot = (action.index, action.container)
        starts = isinstance(action, STARTS)
        if slot in failing or (starts and slot in behind_failing):
            held[action] = Hold.BACKOFF
        elif starts and action.key in waiting:
            held[action] = Hold.UPSTREAM
    return held


def booting(observed: JobObservation) -> frozenset[int]:
    """Instances whose VM is still booting: the provider reports it pending (a cloud VM until
    its engine answered, within the provider's boot timeout)."""
    return frozenset(
        index
        for index, instance in observed.instances.items()
        if instance.has_vm and instance.vm_phase is VMPhase.PENDING
    )


def _needs_the_disk(action: Action, users: set[str]) -> bool:
    if isinstance(action, ContainerAction):
        return isinstance(action, STARTS) and action.container in users
    return action.kind in ("CreateDisk", "AttachDisk", "ResizeDisk", "MigrateDisk")


def _rollout(
    intent: JobIntent,
    observed: JobObservation,
    actions: Sequence[Action],
    memory: JobMemory,
    held: dict[Action, Hold],
    now: float,
) -> tuple[JobMemory, RolloutStep | None, dict[Action, Hold]]:
    """Which spec changes run now: none while a batch is watched or after a halt; else the
    next batch (:func:`~dockyard.planning.next_step`) of the instances whose actions all may run.
    """
    updating = {a.index for a in actions if a.cause in ROLLOUT_CAUSES}
    watch = memory.watch
    if watch is not None:
        failure = _watch_failure(intent, observed, watch, now)
        # A watched VM still booting is not judged yet (its boot is bounded by the provider).
        still_booting = bool(set(watch.indices) & booting(observed))
        if failure is None:
            watch = None  # watched long enough, and well: the next batch
        elif now >= watch.since + watch.window[1] and not still_booting:
            kind = "canary" if watch.canary else "batch"
            reason = f"rollout halted: {kind} {failure}"
            halt = Halt(intent.generation, reason, rollout_key(intent.job), watch.indices[0])
            memory = replace(memory, halted=halt, watch=None)
            watch = None
        else:
            deferred = _deferred_starts(intent.job)
            for action in actions:
                finishing = action.index in watch.indices and _in(action, deferred)
                if not finishing and (action.index in watch.indices or action.index in updating):
                    held.setdefault(action, Hold.WATCHED)
            return replace(memory, watch=watch), None, held
    memory = replace(memory, watch=None)
    if memory.halted is not None:
        for action in actions:
            if action.index in updating:
                held[action] = Hold.HALTED
        return memory, None, held
    blocked = {a.index for a in held if a.index in updating}
    candidates = [a for a in actions if a.index in updating and a.index not in blocked]
    step = next_step(candidates, [intent.job])
    chosen = set(step.actions)
    for action in actions:
        if action.index in updating and action not in chosen:
            held.setdefault(action, Hold.ROLLOUT)
    if step.done:
        return memory, None, held
    indices = tuple(dict.fromkeys(ref.index for ref in step.instances))
    window = intent.canary_watch_time if step.canary else intent.watch_time
    baseline = {
        (index, name): (found.id, found.restart_count)
        for index in indices
        for name, found in observed.get(index).containers.items()
    }
    key = rollout_key(intent.job)
    step_memory = RolloutStep(intent.generation, indices, step.canary, window, baseline, key)
    return memory, step_memory, held


def _tell_halt(
    memory: JobMemory, notices: tuple[Notice, ...]
) -> tuple[JobMemory, tuple[Notice, ...]]:
    """A halted rollout is said once (an Event), however it halted."""
    halted = memory.halted
    if halted is None:
        return memory, notices
    told = (NoticeKind.ROLLOUT_HALTED, halted.generation, halted.key)
    if told in memory.told:
        return memory, notices
    notice = Notice(NoticeKind.ROLLOUT_HALTED, halted.index, halted.reason)
    return replace(memory, told=memory.told | {told}), (*notices, notice)


def _deferred_starts(job: DesiredJob) -> frozenset[str]:
    """Containers whose start waits for a condition (or is behind one that does): the batch
    being watched finishes them while it is watched."""
    graph = _graph(job)
    waiting = {c.name for c in job.containers if c.waits_for}
    return frozenset(
        c.name
        for c in job.containers
        if c.name in waiting
        or any(
            u.job == job.name and u.container in waiting
            for u in graph.upstreams_of(ContainerKey(job.name, c.name), transitive=True)
        )
    )


def _in(action: Action, containers: frozenset[str]) -> bool:
    return isinstance(action, STARTS) and action.container in containers


def _watch_failure(
    intent: JobIntent, observed: JobObservation, watch: Watch, now: float
) -> str | None:
    """Why the watched batch is not well yet ("" while its low watch time runs), or None."""
    if now < watch.since + watch.window[0]:
        return ""
    for index in watch.indices:
        instance = observed.get(index)
        if not instance.has_vm:
            return f"instance {index}: VM is gone"
        if not instance.engine_ok:
            return f"instance {index}: its engine does not answer"
        for spec in intent.job.containers:
            found = instance.containers.get(spec.name)
            if found is None or found.config_hash != spec.config_hash:
                return f"instance {index}: container {spec.name} was not updated"
            completed = found.state == "exited" and found.exit_code == 0
            if completed and spec.restart_policy != "Always":
                continue  # a one-shot container that did its work
            if found.state != "running" or found.health in ("unhealthy", "starting"):
                health = f" ({found.health})" if found.health else ""
                return (
                    f"instance {index}: container {spec.name} is {found.state}{health}, "
                    f"exit code {found.exit_code}, restarts {found.restart_count}"
                )
            before_id, before = watch.baseline.get((index, spec.name), (found.id, 0))
            restarts = found.restart_count - (before if before_id == found.id else 0)
            if restarts > 0:
                return (
                    f"instance {index}: container {spec.name} restarted {restarts} times, "
                    f"exit code {found.exit_code}"
                )
    return None


# --- 5. verdict -------------------------------------------------------------------------------


def _verdict(
    intent: JobIntent,
    observed: JobObservation,
    memory: JobMemory,
    health: _Health,
    planned: Sequence[Action],
    actions: Sequence[Action],
    held: Mapping[Action, Hold],
    looping: Mapping[Slot, str],
    now: float,
    conditions: Mapping[Action, Waiting],
) -> Verdict:
    job = intent.job
    ready = ready_instances(job, observed)
    progress = f"{ready}/{job.instances} instances ready" + _commanded(job)
    # An upstream in another job that (re)starts may restart containers here: not Ready yet.
    upstreams = sorted(str(key) for key, state in intent.upstreams.items() if not state.settled)
    situation = _Situation(
        refused=_refused(memory),
        waits=describe_waits(memory, now),
        looping=looping,
        actions=actions,
        upstreams=upstreams,
        restore=(intent.restore_problem, intent.restore_stalled),
        conditions=sorted({str(w) for w in conditions.values()}),
        blocked=sorted({str(w) for w in conditions.values() if w.failed}),
    )
    outstanding = [a for a in planned if held.get(a) is not Hold.HALTED]
    converged = not outstanding and not situation.waits and memory.watch is None
    converged = converged and not upstreams and not memory.halted and _matches(job, observed)
    phase, message = _phase(memory, health, situation, converged)
    if phase in (Phase.RECONCILING, Phase.ROLLING_OUT, Phase.CONVERGED):
        message = f"{progress}; {message}" if message else progress
    return Verdict(
        phase=phase,
        message=message,
        ready_instances=ready,
        converged=converged and not actions,
        requeue_after=_requeue(
            intent, memory, health, actions, held, converged, now, upstreams, observed
        ),
        unsettled=_unsettled(planned, held),
        latest_starts=_latest_starts(job, observed),
        readiness=readiness(job, observed),
        endpoints=endpoints(job, observed),
    )


@dataclass(frozen=True)
class _Situation:
    """What a verdict is made of, besides memory and health."""

    refused: str
    waits: str
    looping: Mapping[Slot, str]
    actions: Sequence[Action]
    upstreams: Sequence[str]
    restore: tuple[str, bool]
    conditions: Sequence[str]  # starts that wait for an upstream's condition
    blocked: Sequence[str]  # ...for one that failed for good


def _phase(
    memory: JobMemory, health: _Health, now: _Situation, converged: bool
) -> tuple[Phase, str]:
    """The Ready reason, most specific first: stalled causes, then what runs or waits."""
    if memory.halted is not None:
        return Phase.ROLLOUT_HALTED, memory.halted.reason
    if health.meltdown:
        return Phase.MELTDOWN, health.paused
    if health.paused:
        return Phase.RESURRECTION_DISABLED, health.paused
    if now.refused:
        return Phase.REFUSED, now.refused
    if now.restore[1]:
        return Phase.INVALID_SPEC, now.restore[0]
    if now.blocked:
        return Phase.UPSTREAM_FAILED, "; ".join(now.blocked)
    missing = [key for key in memory.told if key[0] is NoticeKind.DISK_MISSING]
    if missing:
        return Phase.DISK_MISSING, "; ".join(
            missing_message(int(str(k[1])), str(k[2])) for k in sorted(missing, key=str)
        )
    if now.actions:
        return Phase.RECONCILING, describe_actions(now.actions)
    if converged:
        return Phase.CONVERGED, ""
    if now.looping:
        return Phase.CRASH_LOOP, "; ".join(now.looping[slot] for slot in sorted(now.looping))
    if now.waits:
        return Phase.BACK_OFF, now.waits
    if memory.watch is not None:
        kind = "canary" if memory.watch.canary else "batch"
        watched = ", ".join(map(str, memory.watch.indices))
        return Phase.ROLLING_OUT, f"rollout: {kind} (instances {watched}) watched"
    if now.conditions:
        return Phase.RECONCILING, "; ".join(now.conditions)
    if now.upstreams:
        return Phase.RECONCILING, f"waiting for upstream {', '.join(now.upstreams)} to settle"
    return Phase.RECONCILING, now.restore[0]


def _commanded(job: DesiredJob) -> str:
    """The instances an operator stopped, detached or ignored, for the status message."""
    commands = job.commands
    parts = [
        f"{'instance' if len(which) == 1 else 'instances'} {', '.join(map(str, sorted(which)))} "
        f"{what}"
        for which, what in (
            (commands.stopped, "stopped"),
            (commands.detached, "stopped --hard"),
            (commands.ignored, "ignored"),
        )
        if which
    ]
    return "".join(f"; {part}" for part in parts)


def _refused(memory: JobMemory) -> str:
    """What the engine or IaaS refused (a request it will not take as it is: a missing image, a
    value the engine does not accept), in its own words: it will not heal by itself. Still
    retried, with a back-off."""
    parts = [
        f"instance {index}: container {name}: the engine refused it: {failure.message} "
        f"({_times(failure.refusals)}; tried again {failure.backoff.delay:.0f} s after the last)"
        for (index, name), failure in sorted(memory.start_failures.items())
        if failure.refused
    ]
    parts += [
        f"instance {index}: {failure.action.kind} refused: {failure.message} "
        f"({_times(failure.refusals)}; tried again {failure.backoff.delay:.0f} s after the last)"
        for index, failure in sorted(memory.step_failures.items())
        if failure.refused
    ]
    return "; ".join(parts)


def _times(refusals: int) -> str:
    return "once" if refusals == 1 else f"{refusals} times in a row"


def _matches(job: DesiredJob, observed: JobObservation) -> bool:
    """Every wanted instance runs every container with its spec (a stopped one has them
    stopped, a detached one has no VM, an ignored one is not looked at); nothing beyond them."""
    commands = job.commands
    if any(
        i >= job.instances and o.has_vm and i not in commands.ignored
        for i, o in observed.instances.items()
    ):
        return False
    for index in range(job.instances):
        instance = observed.get(index)
        if index in commands.ignored:
            continue
        if index in commands.detached:
            if instance.has_vm:
                return False
            continue
        if not instance.has_vm or not instance.engine_ok:
            return False
        if index in commands.stopped:
            if any(c.state in ("running", "restarting") for c in instance.containers.values()):
                return False
            continue
        for spec in job.containers:
            found = instance.containers.get(spec.name)
            if found is None or found.config_hash != spec.config_hash:
                return False
            if found.state not in ("running", "exited"):
                return False
    return True


def _requeue(
    intent: JobIntent,
    memory: JobMemory,
    health: _Health,
    actions: Sequence[Action],
    held: Mapping[Action, Hold],
    converged: bool,
    now: float,
    upstreams: Sequence[str],
    observed: JobObservation,
) -> float | None:
    """When something may change without an event: the end of a back-off, of a watch time,
    of an unresponsive timeout. None: nothing to wait for (converged, or stalled for good)."""
    if actions:
        return 0.0
    expiries = [_expires_in(intent, old) for _, old in _superseded_expiries(intent, observed)]
    if converged or memory.halted is not None:
        return min(expiries, default=None)  # an orphaned old disk to delete then
    waits: list[float] = [1.0]
    if health.paused:
        waits = [PAUSED_RECHECK]
    backoffs = [f.backoff for f in memory.start_failures.values()]
    backoffs += [f.backoff for f in memory.step_failures.values()]
    pending = [b.remaining(now) for b in backoffs if b.waiting(now)]
    reasons = set(held.values())
    if pending and reasons <= {Hold.BACKOFF, Hold.STEP_BACKOFF}:
        waits = [min(pending)]
    if reasons and reasons <= {Hold.DISK_MISSING, Hold.UPSTREAM, Hold.RESTORE}:
        waits = [PAUSED_RECHECK]  # someone has to act (restore, accept the loss)
    if upstreams and reasons <= {Hold.UPSTREAM}:
        waits = [UPSTREAM_RECHECK]  # the board wakes this Job when they settle
    if reasons == {Hold.BOOTING}:
        waits = [BOOT_RECHECK]  # each look asks the provider, which asks the VM's engine
    if memory.watch is not None:
        low = memory.watch.since + memory.watch.window[0] - now
        waits = [max(low, WATCH_POLL)]
    if health.deaf:
        timeout = intent.resurrection.unresponsive_timeout
        silent = [now - t for t in memory.unresponsive_since.values()]
        waits.append(max(min((timeout - s for s in silent), default=timeout), WATCH_POLL))
    return min(waits)


def _unsettled(planned: Sequence[Action], held: Mapping[Action, Hold]) -> frozenset[ContainerKey]:
    """Containers this Job (re)starts now or will once what it waits for is done. One whose
    start waits for a back-off is not: its dependents need not wait minutes for it."""
    failed = {Hold.BACKOFF, Hold.STEP_BACKOFF, Hold.HALTED, Hold.DISK_MISSING, Hold.RESTORE}
    return frozenset(a.key for a in planned if isinstance(a, STARTS) and held.get(a) not in failed)


def endpoints(job: DesiredJob, observed: JobObservation) -> dict[ContainerKey, tuple[str, ...]]:
    """Where each container of the job is reached, for its dependents' links: address:port for
    each port it publishes (the address alone when none), on every wanted instance with a VM,
    in index order. Container restarts do not change it; a VM replaced or a scale does."""
    addresses = [
        address
        for index in range(job.instances)
        if (address := observed.get(index).address) and observed.get(index).has_vm
    ]
    return {
        ContainerKey(job.name, spec.name): tuple(
            f"{address}:{port}" if spec.published else address
            for address in addresses
            for port in (spec.published or (0,))
        )
        for spec in job.containers
    }


def _latest_starts(job: DesiredJob, observed: JobObservation) -> dict[ContainerKey, float | None]:
    latest: dict[ContainerKey, float | None] = {}
    for spec in job.containers:
        starts = [
            found.started_at
            for index in range(job.instances)
            if (found := observed.get(index).containers.get(spec.name)) is not None
            and found.started_at is not None
        ]
        latest[ContainerKey(job.name, spec.name)] = max(starts, default=None)
    return latest


__all__ = [
    "Decision",
    "Hold",
    "JobIntent",
    "Notice",
    "NoticeKind",
    "ResurrectionPolicy",
    "decide",
]
