"""One Job's reconcile pass: observe → decide → execute → observe → decide → report.

* **observe**: the Job's VMs, disks and containers (``world.py``), per-VM looks at once;
* **decide** (pure, ``planning.decide``): the actions to run now, the memory to keep, the
  verdict for status;
* **execute** (``executor.py``): the actions as a graph on the provider's pool — independent
  instances at once, dependency order within one; before it starts, the caller is told (so the
  status says Reconciling while the work runs, not after);
* **observe and decide again**: the verdict after the work, which the caller publishes.

Nothing here talks to the Kubernetes API: a repair never waits for it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from dockyard import planning
from dockyard.planning.decide import (
    Decision,
    JobIntent,
    Notice,
    NoticeKind,
    ResurrectionPolicy,
    decide,
)
from dockyard.planning.memory import JobMemory, Outcome, record
from dockyard.planning.observation import (
    DiskObservation,
    InstanceObservation,
    JobObservation,
    VMPhase,
)
from dockyard.planning.ordering import order
from dockyard.planning.verdict import UpstreamState, Verdict
from dockyard.providers import Disk, ProviderError, VMState
from dockyard.providers.base import TAG_INDEX, TAG_MADE_FOR, TAG_ORPHANED_AT, TAG_VM_CONFIG
from dockyard.runtime.executor import ActionPool, Execution
from dockyard.runtime.perform import ActionRecord, Performer, container_observation
from dockyard.runtime.world import (
    ENGINE_ERRORS,
    ContainerWant,
    InstanceWorld,
    JobWorld,
    orphan_stamp,
    vm_fingerprint,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class DiskWant:
    size_mib: int
    disk_type: str = ""
    reclaim_policy: str = "Delete"  # Delete | Retain
    orphan_retention: float = 0.0  # seconds a disk no longer wanted is kept (policy Delete)
    restore_snapshot: str = ""  # a provider snapshot new disks start from


@dataclass(frozen=True)
class JobDesired:
    instances: int
    containers: tuple[ContainerWant, ...]
    stemcell: str = ""
    machine_type: str = ""
    disk: DiskWant | None = None
    canaries: int = 1
    max_in_flight: int = 1
    watch_time: tuple[float, float] = (1.0, 30.0)
    canary_watch_time: tuple[float, float] = (1.0, 30.0)
    generation: int = 0
    name: str = "job"  # the job's name inside its deployment ("job/name" references use it)
    snapshot_before: bool = False  # a disk snapshot before a rollout stops its users
    vm_strategy: planning.VMStrategy = "DeleteCreate"
    skip_drain: bool = False  # stops do not run the containers' preStop hooks
    commands: planning.InstanceCommands = field(default_factory=planning.InstanceCommands)
    paused: bool = False  # an operator paused the Job: nothing is done


@dataclass(frozen=True)
class PassInputs:
    """What a pass needs from outside the Job's world (the caller reads it from the API's
    watch cache and from the other Jobs of this operator, never with a request)."""

    resurrection: ResurrectionPolicy = field(default_factory=ResurrectionPolicy)
    known_vms: Mapping[int, str] = field(default_factory=dict)
    upstreams: Mapping[planning.ContainerKey, UpstreamState] = field(default_factory=dict)
    known_disks: Mapping[int, str] = field(default_factory=dict)
    restore_problem: str = ""  # why persistentDisk.restoreFrom cannot be used (yet)
    restore_stalled: bool = False  # ...and only a change of spec mends it
    spec_problem: str = ""  # what is wrong with the spec, naming the field (nothing is done)
    policy_problem: str = ""  # what the namespace's policy level refuses (nothing is done)


@dataclass
class JobReport:
    """One look at the Job and what it means. ``acting``: actions are about to run (the
    verdict is the one before them)."""

    observation: JobObservation
    verdict: Verdict
    records: list[ActionRecord] = field(default_factory=list)
    engine_restarts: dict[tuple[int, str], tuple[int, bool]] = field(default_factory=dict)
    crash_looping: dict[tuple[int, str], str] = field(default_factory=dict)
    acting: bool = False
    upstreams_seen: Mapping[planning.ContainerKey, float | None] = field(default_factory=dict)
    commands: planning.InstanceCommands = field(default_factory=planning.InstanceCommands)
    vm_config: str = ""  # what the spec's VMs are made from now (a fingerprint); "" unknown

    @property
    def failed(self) -> list[ActionRecord]:
        return [r for r in self.records if not r.ok and r.kind not in NOTICE_KINDS]


NOTICE_KINDS = frozenset(kind.value for kind in NoticeKind)
Announce = Callable[[JobReport], None]


class JobReconciler:
    """Keeps one Job's instances converged; remembers what observation cannot tell."""

    def __init__(self, world: JobWorld, pool: ActionPool, clock: Clock = time.monotonic) -> None:
        self.world = world
        self.pool = pool
        self.clock = clock
        self.memory = JobMemory()
        self.execution: Execution | None = None
        self.closed = False

    async def reconcile(
        self, desired: JobDesired, inputs: PassInputs, announce: Announce | None = None
    ) -> JobReport:
        intent = job_intent(
            desired,
            inputs,
            not self.world.provider.resizes_attached_disks,
            self.world.vm_config_salt,
        )
        began = self.clock()
        # The instances wanted, and those with a disk record (an orphan of a scale-down).
        indices = sorted(set(range(desired.instances)) | set(inputs.known_disks))
        seen, observation = await self._observe(indices)
        looked = self.clock()
        decision = self._decide(intent, observation)
        report = _report(observation, decision, intent)
        if not decision.actions or self.closed:
            return report
        if announce is not None:
            announce(
                JobReport(
                    observation,
                    decision.verdict,
                    [],
                    acting=True,
                    commands=intent.job.commands,
                    vm_config=intent.job.vm_config,
                )
            )
        performer = self._performer(desired, seen)
        graph = order(decision.actions, intent.job)
        self.execution = Execution(graph, performer.perform, self.pool)  # kept: cancel() finds it
        decided = self.clock()
        outcomes = await self.execution.run()
        executed = self.clock()
        self.memory = record(self.memory, intent.job, outcomes, decision.rollout, executed)
        _, observation = await self._observe(indices)
        after = self._decide(intent, observation)
        log.debug(
            "pass of %s: observe %.3fs, decide %.3fs, execute %.3fs (%d actions, depth %d), "
            "observe and decide again %.3fs",
            desired.name,
            looked - began,
            decided - looked,
            executed - decided,
            len(graph.actions),
            graph.depth(),
            self.clock() - executed,
        )
        return _after_acting(report, performer.records, _report(observation, after, intent))

    def _performer(self, desired: JobDesired, seen: dict[int, InstanceWorld]) -> Performer:
        return Performer(
            self.world,
            seen,
            {want.name: want for want in desired.containers},
            desired.stemcell,
            desired.machine_type,
            desired.commands.recreate,
            desired.skip_drain,
        )

    def _decide(self, intent: JobIntent, observation: JobObservation) -> Decision:
        decision = decide(intent, observation, self.memory, self.clock())
        self.memory = decision.memory
        return decision

    async def _observe(self, indices: list[int]) -> tuple[dict[int, InstanceWorld], JobObservation]:
        seen = await self.pool.look(lambda: self.world.observe(indices, self.pool.map_looks))
        duplicates = tuple(
            (int(vm.tags.get(TAG_INDEX, "-1")), vm.id) for vm in self.world.duplicates
        )
        return seen, observation_of(seen, duplicates)

    def interrupt(self) -> None:
        """A new spec: the pass in flight starts nothing more and ends without waiting for its
        container actions in flight (the next pass plans against the new spec)."""
        if self.execution is not None:
            self.execution.interrupt()

    async def cancel(self, containers_too: bool = True) -> None:
        """Start nothing more; wait for what is in flight (VM and disk actions only, unless
        ``containers_too``: a container stop may take its whole grace period)."""
        execution = self.execution
        if execution is not None:
            await execution.settle(containers_too)

    async def teardown(
        self, disks: DiskFate, indices: list[int] | None = None, desired: JobDesired | None = None
    ) -> None:
        """Delete the Job's VMs — their containers drained and stopped first, dependents
        first, when ``desired`` says how; its disks (of ``indices`` too: those with a record)
        are kept, orphaned or deleted (kept and orphaned ones are detached)."""
        self.closed = True
        await self.cancel(containers_too=False)
        stops = _stop_order(desired) if desired is not None else []
        skip = desired is not None and desired.skip_drain
        await self.pool.act(lambda: _teardown(self.world, disks, indices or [], stops, skip))


DiskFate = Literal["keep", "orphan", "delete"]


def _drain_and_delete(
    world: JobWorld, instance: InstanceWorld, stops: list[ContainerWant], skip_drain: bool
) -> None:
    """The VM's running containers drained (dependents first), then the VM deleted (which ends
    them: no graceful stop to wait for, whatever their PID 1 does with SIGTERM)."""
    assert instance.vm is not None
    for want in stops if instance.engine_ok and not skip_drain else ():
        running = instance.containers.get(want.name)
        if want.pre_stop is None or running is None or running.state != "running":
            continue
        try:
            problem = world.run_hook(instance.vm, want.name, want.pre_stop)
        except ENGINE_ERRORS as error:
            problem = str(error)
        if problem:  # the VM goes anyway
            log.warning("preStop (drain) of %s failed: %s", want.name, problem)
    world.delete_vm(instance.vm, instance.disk)
    if instance.incoming is not None:  # a create-swap-delete's replacement, not swapped in
        world.delete_vm_id(instance.incoming.id)


def _stop_order(desired: JobDesired) -> list[ContainerWant]:
    """The Job's containers, dependents before their upstreams."""
    job = planning_job(desired)
    graph = planning.build_graph([job], external=planning.external_upstreams([job]))
    wants = {want.name: want for want in desired.containers}
    return [wants[key.container] for key in reversed(graph.topological_order())]


def _teardown(
    world: JobWorld,
    disks: DiskFate,
    indices: list[int],
    stops: list[ContainerWant],
    skip_drain: bool,
) -> None:
    found = world.observe(indices)
    vms = [i for i in found.values() if i.vm is not None]
    for lone in (i for i in found.values() if i.vm is None and i.incoming is not None):
        assert lone.incoming is not None
        world.delete_vm_id(lone.incoming.id)
    if vms:
        with concurrent.futures.ThreadPoolExecutor(min(len(vms), 16), "teardown") as threads:
            list(threads.map(lambda i: _drain_and_delete(world, i, stops, skip_drain), vms))
    for index in found:
        for disk in world.provider.find_disks(world.identity.disk_tags(index)):
            if disks == "delete":
                world.delete_disk(disk)
                continue
            if disk.attached_to:
                try:
                    world.provider.detach_disk(disk.attached_to, disk.id)
                except ProviderError as error:
                    log.warning("detaching the disk %s: %s", disk.id, error)
            if disks == "orphan" and TAG_ORPHANED_AT not in disk.tags:
                world.provider.set_disk_metadata(disk.id, {TAG_ORPHANED_AT: orphan_stamp()})


def _after_acting(before: JobReport, acted: list[ActionRecord], final: JobReport) -> JobReport:
    """The report of a pass that acted: what it did, and the engines' restarts of both looks."""
    final.records = before.records + acted + final.records
    for slot, (count, oom) in before.engine_restarts.items():
        more, oom_after = final.engine_restarts.get(slot, (0, False))
        final.engine_restarts[slot] = (count + more, oom or oom_after)
    return final


def _report(observation: JobObservation, decision: Decision, intent: JobIntent) -> JobReport:
    notices = [_notice_record(n) for n in decision.notices]
    return JobReport(
        observation,
        decision.verdict,
        notices,
        dict(decision.engine_restarts),
        dict(decision.crash_looping),
        upstreams_seen={k: u.latest_start for k, u in intent.upstreams.items()},
        commands=intent.job.commands,
        vm_config=intent.job.vm_config,
    )


_NOTICE_TARGETS = {
    NoticeKind.ROLLOUT_HALTED: "rollout",
    NoticeKind.DISK_LARGER: "disk",
    NoticeKind.DISK_MISSING: "disk",
}
_NOTICES_OK = frozenset({NoticeKind.DISK_LARGER})  # said as Normal Events, not Warnings


def _notice_record(notice: Notice) -> ActionRecord:
    target = _NOTICE_TARGETS.get(notice.kind, "resurrection")
    ok = notice.kind in _NOTICES_OK
    return ActionRecord(notice.kind.value, notice.index, target, notice.message, ok=ok)


# --- adapters -----------------------------------------------------------------------------------


def job_intent(
    desired: JobDesired, inputs: PassInputs, detach_to_resize: bool, vm_config_salt: str = ""
) -> JobIntent:
    return JobIntent(
        job=planning_job(desired, vm_config_salt),
        generation=desired.generation,
        watch_time=desired.watch_time,
        canary_watch_time=desired.canary_watch_time,
        resurrection=inputs.resurrection,
        known_vms=dict(inputs.known_vms),
        upstreams=dict(inputs.upstreams),
        detach_to_resize=detach_to_resize,
        known_disks=dict(inputs.known_disks),
        restore_problem=inputs.restore_problem,
        restore_stalled=inputs.restore_stalled,
        wall_clock=time.time(),
        spec_problem=inputs.spec_problem,
        policy_problem=inputs.policy_problem,
        paused=desired.paused,
    )


def planning_job(desired: JobDesired, vm_config_salt: str = "") -> planning.DesiredJob:
    disk = None
    if desired.disk is not None:
        disk = planning.DesiredDisk(
            size_mib=desired.disk.size_mib,
            type=desired.disk.disk_type or None,
            reclaim_policy="Retain" if desired.disk.reclaim_policy == "Retain" else "Delete",
            orphan_retention=desired.disk.orphan_retention,
            restore_from=desired.disk.restore_snapshot,
        )
    return planning.DesiredJob(
        name=desired.name,
        instances=desired.instances,
        containers=tuple(
            planning.DesiredContainer(
                name=want.name,
                config_hash=want.config_hash(),
                depends_on=want.depends_on,
                restart_policy=_restart_policy(want.config.restart_policy),
                uses_disk=bool(want.volumes),
                waits_for=want.conditions,
                checked=bool(want.config.healthcheck_command),
                published=tuple(host for _, host, _ in want.config.ports if host),
            )
            for want in desired.containers
        ),
        disk=disk,
        update=planning.UpdatePolicy(
            canaries=desired.canaries,
            max_in_flight=max(desired.max_in_flight, 1),
            snapshot_before=desired.snapshot_before,
            vm_strategy=desired.vm_strategy,
        ),
        vm_config=vm_fingerprint(desired.stemcell, desired.machine_type, vm_config_salt),
        commands=desired.commands,
    )


def _restart_policy(policy: str) -> planning.RestartPolicy:
    if policy == "OnFailure":
        return "OnFailure"
    if policy == "Never":
        return "Never"
    return "Always"


def observation_of(
    seen: Mapping[int, InstanceWorld], duplicates: tuple[tuple[int, str], ...] = ()
) -> JobObservation:
    instances: dict[int, InstanceObservation] = {}
    for index, world in seen.items():
        vm, disk, incoming = world.vm, world.disk, world.incoming
        target = world.migration_target.id if world.migration_target else None
        tags: Mapping[str, str] = vm.tags if vm else {}
        instances[index] = InstanceObservation(
            vm_id=vm.id if vm else None,
            vm_phase=VMPhase(vm.state.value) if vm else VMPhase.MISSING,
            engine_ok=world.engine_ok,
            disk=_disk_observation(disk, target) if disk else None,
            containers={n: container_observation(c) for n, c in world.containers.items()},
            address=vm.address if vm else None,
            superseded=tuple(_disk_observation(old) for old in world.superseded),
            vm_config=tags.get(TAG_VM_CONFIG),
            made_for=_number(tags.get(TAG_MADE_FOR)),
            incoming_id=incoming.id if incoming else None,
            incoming_running=incoming is not None and incoming.state is VMState.RUNNING,
        )
    return JobObservation(instances, duplicates)


def _disk_observation(disk: Disk, migration_target: str | None = None) -> DiskObservation:
    return DiskObservation(
        disk.id, disk.size_mib, disk.attached_to, migration_target, _orphaned_at(disk.tags)
    )


def _orphaned_at(tags: Mapping[str, str]) -> float | None:
    try:
        return float(tags[TAG_ORPHANED_AT])
    except (KeyError, ValueError):
        return None


def _number(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


__all__ = [
    "DiskWant",
    "JobDesired",
    "JobReconciler",
    "JobReport",
    "Outcome",
    "PassInputs",
    "ResurrectionPolicy",
]
