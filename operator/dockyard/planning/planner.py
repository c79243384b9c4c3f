"""The planner: (desired, observed) -> ordered actions. Pure and deterministic.

Order of the plan:

1. Instances no longer wanted (index >= ``instances``, or their job is gone): stop their running
   containers (dependents first), detach the disk, delete the VM; under reclaim policy Delete
   the disk is orphaned for its retention (deleted at once when that is 0); Retain leaves it
   detached. Either way a scale-up reattaches it with its data (an orphan is adopted first).
2. For each wanted instance, VM and disk: detach the disk from any VM it will not stay on,
   replace an unhealthy VM (when the job resurrects), create a missing VM, create a missing
   disk, grow a small one (never shrink), attach. An existing disk is always reattached, never
   recreated. On a VM that stays, the running containers that mount the disk are stopped
   before it is attached (or detached to grow) and started again in step 4. A disk the
   provider cannot grow in place is copy-migrated (:class:`MigrateDisk`) with its users removed
   first (their mounts name the old disk) and run again in step 4; a migration's new disk that
   is no longer wanted is deleted.
3. Containers the spec no longer has are removed.
4. Containers, key by key in topological order, each key on every instance of its job:
   created when missing, recreated when their ``config_hash`` changed, started when down and
   their restart policy wants them running, restarted when the caller says they are unhealthy
   (``ObservedContainer.unhealthy``: it applies the back-off) or an upstream started after them.

Every action carries a :class:`~dockyard.planning.model.Cause`: code branches on it, the
``reason`` text is for people.

The restart rule makes "restart the dependents" idempotent without memory: a running container
is restarted when one of its upstreams started later than it did — the same instance's upstream
for a same-job ``dependsOn``, the latest start over every instance for ``job/name``, or the
caller's ``external_starts`` for an upstream in a Job planned elsewhere. Starts this plan makes
count as later than anything observed, in plan order, so a recreated container's dependents get
one RestartContainer each, after it; once executed, every dependent started after its upstreams
and the next plan is empty. Start times come from Docker's ``State.StartedAt``: exact on one VM;
across VMs they rely on synchronised clocks (a skew can cost one extra restart, never a loop).
Containers that are down are never restarted for their upstreams: only their restart policy
brings them back (a one-shot container that completed stays completed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dockyard.planning.graph import DependencyGraph, build_graph
from dockyard.planning.model import (
    DOWN_STATES,
    UP_STATES,
    Action,
    AdoptDisk,
    AttachDisk,
    Cause,
    ContainerKey,
    CreateDisk,
    CreateVM,
    DeleteDisk,
    DeleteVM,
    DesiredContainer,
    DesiredJob,
    DetachDisk,
    InstanceRef,
    MigrateDisk,
    ObservedContainer,
    ObservedDisk,
    ObservedInstance,
    ObservedVM,
    OrphanDisk,
    PlanningError,
    RecreateContainer,
    RemoveContainer,
    ResizeDisk,
    RestartContainer,
    StartContainer,
    StopContainer,
    World,
)

_NOTHING = ObservedInstance()
#: Why a VM is replaced, in words.
_REPLACED = {
    Cause.VM_UNHEALTHY: "VM unhealthy",
    Cause.VM_CHANGED: "stemcell or VM type changed",
    Cause.RECREATE_REQUESTED: "recreate requested",
}


@dataclass(frozen=True)
class _Start:
    """When a container (last) started: observed (``planned`` false, ``at`` a timestamp) or
    by this plan (``planned``, ``at`` its position). Planned starts are later than observed."""

    planned: bool
    at: float
    verb: str = ""

    def later_than(self, other: _Start) -> bool:
        return (self.planned, self.at) > (other.planned, other.at)


@dataclass(frozen=True)
class _Stopped:
    """Containers of an instance the plan stops or removes around a disk operation."""

    names: frozenset[str]
    reason: str
    cause: Cause


def plan(
    desired: Sequence[DesiredJob],
    observed: World,
    *,
    external_starts: Mapping[ContainerKey, float | None] | None = None,
    detach_to_resize: bool = False,
) -> list[Action]:
    """Everything to do, in order, to bring ``observed`` to ``desired`` (see the module doc).

    ``external_starts``: latest start of upstreams in jobs that are not in ``desired`` (None:
    never started); other ``job/name`` references to jobs outside ``desired`` are errors.
    ``detach_to_resize``: the provider cannot grow an attached disk, so the disk's users are
    stopped and the disk detached around ResizeDisk (and the users started again after).
    Raises :class:`PlanningError` (naming the field) for unknown references, dependency cycles,
    negative instance counts or non-positive disk sizes.
    """
    return _Planner(desired, observed, external_starts or {}, detach_to_resize).run()


class _Planner:
    def __init__(
        self,
        desired: Sequence[DesiredJob],
        observed: World,
        external_starts: Mapping[ContainerKey, float | None],
        detach_to_resize: bool,
    ) -> None:
        for job in desired:
            if job.instances < 0:
                raise PlanningError(f"jobs[{job.name}].instances", "must not be negative")
            if job.disk is not None and job.disk.size_mib <= 0:
                raise PlanningError(f"jobs[{job.name}].persistentDisk.size", "must be positive")
        self.graph: DependencyGraph = build_graph(desired, external=external_starts.keys())
        self.order = self.graph.topological_order()
        self.desired = desired
        self.observed = observed
        self.external_starts = external_starts
        self.detach_to_resize = detach_to_resize
        self.jobs = {job.name: job for job in desired}
        self.specs: dict[ContainerKey, DesiredContainer] = {
            ContainerKey(job.name, c.name): c for job in desired for c in job.containers
        }
        self.actions: list[Action] = []
        # Instances whose containers are managed, with the containers found there ({} on a new VM).
        self.usable: dict[InstanceRef, Mapping[str, ObservedContainer]] = {}
        self.fresh: set[InstanceRef] = set()
        self.stopped: dict[InstanceRef, _Stopped] = {}
        self.starts: dict[tuple[ContainerKey, int], _Start] = {}
        self.latest: dict[ContainerKey, _Start | None] = {}

    def run(self) -> list[Action]:
        self._remove_unwanted()
        for job in self.desired:
            for index in range(job.instances):
                self._instance(job, index)
        self._remove_obsolete_containers()
        for key in self.order:
            job = self.jobs[key.job]
            for index in range(job.instances):
                if InstanceRef(key.job, index) in self.usable:
                    self._container(key, index)
        return self.actions

    # --- instances --------------------------------------------------------------------------

    def _instances_of(self, job: str) -> Mapping[int, ObservedInstance]:
        return self.observed.get(job, {})

    def _remove_unwanted(self) -> None:
        names = [job.name for job in self.desired]
        names += sorted(name for name in self.observed if name not in self.jobs)
        for name in names:
            wanted = self.jobs[name].instances if name in self.jobs else 0
            removed = name not in self.jobs
            reason = "job removed" if removed else "scaled down"
            cause = Cause.JOB_REMOVED if removed else Cause.SCALED_DOWN
            ignored = self.jobs[name].commands.ignored if name in self.jobs else frozenset()
            for index in sorted(i for i in self._instances_of(name) if i >= wanted):
                if index not in ignored:
                    self._remove_instance(name, index, reason, cause)

    def _remove_instance(self, job: str, index: int, reason: str, cause: Cause) -> None:
        instance = self._instances_of(job)[index]
        disk, add = instance.disk, self.actions.append
        self._take_down(job, index, instance, reason, cause)
        if disk is not None and disk.migration_target is not None:
            add(DeleteDisk(job, index, disk.migration_target, cause=Cause.COPY_NOT_WANTED))
        if disk is not None and self._reclaim_policy(job, instance) == "Delete":
            spec = self.jobs.get(job)
            retention = spec.disk.orphan_retention if spec and spec.disk else 0.0
            if retention <= 0:
                add(DeleteDisk(job, index, disk.id, cause=cause))
            elif not disk.orphaned:  # kept a while: a scale-up gets it back; reaped after
                add(OrphanDisk(job, index, disk.id, cause=cause))

    def _reclaim_policy(self, job: str, instance: ObservedInstance) -> str:
        spec = self.jobs.get(job)
        if spec is not None and spec.disk is not None:
            return spec.disk.reclaim_policy
        recorded = instance.disk.reclaim_policy if instance.disk else None
        return recorded or "Retain"  # when nobody says, keep the data

    def _stop_order(self, job: str, names: Sequence[str]) -> list[str]:
        """Containers the spec no longer knows first, then dependents before their upstreams."""
        known = [key.container for key in reversed(self.order) if key.job == job]
        return sorted(n for n in names if n not in known) + [n for n in known if n in names]

    def _instance(self, job: DesiredJob, index: int) -> None:
        ref = InstanceRef(job.name, index)
        commands = job.commands
        if index in commands.ignored:
            return  # left alone, repairs and rollouts alike (BOSH's ignore)
        instance = self._instances_of(job.name).get(index, _NOTHING)
        if index in commands.detached:
            self._detach_instance(job.name, index, instance)
            return
        vm, disk = instance.vm, instance.disk
        if vm is not None and not vm.healthy and (not job.resurrect or index in commands.stopped):
            return  # resurrection is off (in meltdown, or the instance is stopped): left as is
        replacing = self._replacement(job, index, vm)
        kept = vm if vm is not None and vm.healthy and replacing is None else None
        self._replace_or_keep(job, index, instance, replacing)
        self.usable[ref] = instance.containers if kept is not None else {}
        if kept is None:
            self.fresh.add(ref)
        attached = disk.attached_to if disk is not None else None
        on_vm = kept is not None and attached == kept.id
        grow = (
            job.disk is not None
            and disk is not None
            and disk.size_mib < job.disk.size_mib
            and not disk.grow_waits  # its users run on it meanwhile
        )
        copy = grow and disk is not None and not disk.grows_in_place
        if job.disk is not None and kept is not None:
            if copy:  # their mounts name the old disk: run again on the new one
                self._stop_disk_users(job, index, "disk migrated", Cause.DISK_MIGRATED, remove=True)
            elif not on_vm:  # its users run without it: down until it is mounted
                self._stop_disk_users(job, index, "disk attached", Cause.DISK_ATTACHED)
            elif grow and self.detach_to_resize:
                self._stop_disk_users(job, index, "disk grown", Cause.DISK_GROWN)
        if disk is not None and attached is not None and not on_vm:
            why, cause = "not on the instance's VM", Cause.NOT_ON_VM
            if replacing is not None:
                why, cause = "its VM is replaced", replacing
            self.actions.append(DetachDisk(job.name, index, disk.id, attached, why, cause=cause))
        self._vm_steps(job, index, vm, kept, replacing)
        if job.disk is not None:  # a disk dropped from the spec stays until the instance goes
            self._disk_steps(job, index, disk, kept, on_vm=on_vm, grow=grow, copy=copy)
        if index in commands.stopped:
            self._stop_instance(job.name, index)

    def _replacement(self, job: DesiredJob, index: int, vm: ObservedVM | None) -> Cause | None:
        """Why a healthy VM is replaced (through the rollout), or None."""
        if vm is None or not vm.healthy:
            return None
        if job.commands.recreate.get(index, 0.0) > vm.made_for:
            return Cause.RECREATE_REQUESTED
        if job.vm_config and vm.config is not None and vm.config != job.vm_config:
            return Cause.VM_CHANGED
        return None

    def _replace_or_keep(
        self, job: DesiredJob, index: int, instance: ObservedInstance, replacing: Cause | None
    ) -> None:
        """Before a VM is replaced: its containers stop (dependents first, each drained); with
        create-swap-delete its replacement is made first, so the instance is down only while
        its disk moves. A replacement no longer needed goes."""
        add, incoming = self.actions.append, instance.incoming
        if replacing is None or job.update.vm_strategy != "CreateSwapDelete":
            if incoming is not None:
                add(DeleteVM(job.name, index, incoming.id, "replacement not needed",
                             cause=Cause.SWAP_NOT_WANTED))  # fmt: skip
        elif incoming is None or not incoming.healthy:
            assert instance.vm is not None
            if incoming is not None:
                add(
                    DeleteVM(job.name, index, incoming.id, "replacement unhealthy", cause=replacing)
                )
            why = f"replacement of VM {instance.vm.id} ({_REPLACED[replacing]})"
            add(CreateVM(job.name, index, why, instance.vm.id, cause=replacing))
        if replacing is not None:
            why = f"its VM is replaced ({_REPLACED[replacing]})"
            self._stop_running(job.name, index, instance.containers, why, replacing)

    def _vm_steps(
        self,
        job: DesiredJob,
        index: int,
        vm: ObservedVM | None,
        kept: ObservedVM | None,
        replacing: Cause | None,
    ) -> None:
        add, name = self.actions.append, job.name
        if vm is not None and kept is None:
            cause = replacing or Cause.VM_UNHEALTHY
            why = _REPLACED[cause]
            add(DeleteVM(name, index, vm.id, why, cause=cause))
            if replacing is None or job.update.vm_strategy != "CreateSwapDelete":
                add(CreateVM(name, index, f"replaces VM {vm.id} ({why})", cause=cause))
        elif vm is None:
            add(CreateVM(name, index, "new instance", cause=Cause.NEW_INSTANCE))

    def _stop_instance(self, job: str, index: int) -> None:
        """A stopped instance: its running containers stop (dependents first), none starts."""
        ref = InstanceRef(job, index)
        found = self.usable.pop(ref, {})
        self.fresh.discard(ref)
        self._stop_running(job, index, found, "instance stopped", Cause.INSTANCE_STOPPED)

    def _detach_instance(self, job: str, index: int, instance: ObservedInstance) -> None:
        """``stop --hard``: containers stop, the disk is detached and kept, the VM goes."""
        self._take_down(job, index, instance, "instance stopped --hard", Cause.INSTANCE_DETACHED)

    def _take_down(
        self, job: str, index: int, instance: ObservedInstance, reason: str, cause: Cause
    ) -> None:
        """An instance's running containers stop (dependents first, each drained), its disk is
        detached, its VM (and a swap's replacement) deleted."""
        vm, disk, add = instance.vm, instance.disk, self.actions.append
        if vm is not None and vm.healthy:
            self._stop_running(job, index, instance.containers, reason, cause)
        if disk is not None and disk.attached_to is not None:
            add(DetachDisk(job, index, disk.id, disk.attached_to, reason, cause=cause))
        for gone in (vm, instance.incoming):
            if gone is not None:
                add(DeleteVM(job, index, gone.id, reason, cause=cause))

    def _stop_running(
        self,
        job: str,
        index: int,
        containers: Mapping[str, ObservedContainer],
        reason: str,
        cause: Cause,
    ) -> None:
        """StopContainer for each running one, dependents before their upstreams."""
        up = [n for n, c in containers.items() if c.state in UP_STATES]
        for name in self._stop_order(job, up):
            self.actions.append(StopContainer(job, index, name, reason, cause=cause))

    def _disk_steps(
        self,
        job: DesiredJob,
        index: int,
        disk: ObservedDisk | None,
        kept: ObservedVM | None,
        *,
        on_vm: bool,
        grow: bool,
        copy: bool,
    ) -> None:
        """Create, copy-migrate, grow and attach the instance's disk, as needed."""
        assert job.disk is not None
        add, name = self.actions.append, job.name
        if disk is not None and disk.orphaned:
            add(AdoptDisk(name, index, disk.id, cause=Cause.ADOPTED))
        if disk is None:
            size, kind, source = job.disk.size_mib, job.disk.type, job.disk.restore_from
            add(CreateDisk(name, index, size, kind, source, cause=Cause.NEW_INSTANCE))
            return
        if disk.migration_target is not None and not copy:
            add(DeleteDisk(name, index, disk.migration_target, cause=Cause.COPY_NOT_WANTED))
        if copy:
            if not on_vm:
                add(AttachDisk(name, index, disk.id, cause=Cause.DISK_ATTACHED))
            size, kind, keep = job.disk.size_mib, job.disk.type, job.disk.orphan_retention
            add(MigrateDisk(name, index, disk.id, size, kind, keep, cause=Cause.DISK_GROWN))
            return
        if grow:
            if on_vm and self.detach_to_resize and kept is not None:
                add(DetachDisk(name, index, disk.id, kept.id, "to grow it", cause=Cause.DISK_GROWN))
                on_vm = False
            add(ResizeDisk(name, index, disk.id, job.disk.size_mib, cause=Cause.DISK_GROWN))
        if not on_vm:
            add(AttachDisk(name, index, disk.id, cause=Cause.DISK_ATTACHED))

    def _stop_disk_users(
        self, job: DesiredJob, index: int, reason: str, cause: Cause, *, remove: bool = False
    ) -> None:
        """Stop the running containers that mount the disk (dependents first), or with
        ``remove`` remove them whatever their state; the container pass starts them again,
        with ``reason``."""
        ref = InstanceRef(job.name, index)
        observed = self.usable[ref]
        users = [
            c.name
            for c in job.containers
            if c.uses_disk
            and c.name in observed
            and (remove or observed[c.name].state in UP_STATES)
        ]
        verb, done = (RemoveContainer, "removed") if remove else (StopContainer, "stopped")
        for name in self._stop_order(job.name, users):
            self.actions.append(verb(job.name, index, name, f"{reason}: {done} first", cause=cause))
        if remove:
            self.usable[ref] = {n: c for n, c in observed.items() if n not in users}
        self.stopped[ref] = _Stopped(frozenset(users), reason, cause)

    def _remove_obsolete_containers(self) -> None:
        for ref, containers in self.usable.items():
            wanted = {c.name for c in self.jobs[ref.job].containers}
            for name in sorted(n for n in containers if n not in wanted):
                self.actions.append(
                    RemoveContainer(
                        ref.job, ref.index, name, "no longer in the spec", cause=Cause.NOT_IN_SPEC
                    )
                )

    # --- containers -------------------------------------------------------------------------

    def _container(self, key: ContainerKey, index: int) -> None:
        found = self.usable[InstanceRef(key.job, index)].get(key.container)
        action = self._container_action(key, index, found)
        if action is not None:
            self.actions.append(action)
            verb = {
                "StartContainer": "starts",
                "RecreateContainer": "is recreated",
                "RestartContainer": "restarts",
            }[action.kind]
            self.starts[(key, index)] = _Start(True, float(len(self.actions)), verb)
        elif found is not None and found.started_at is not None:
            self.starts[(key, index)] = _Start(False, found.started_at)

    def _container_action(
        self, key: ContainerKey, index: int, found: ObservedContainer | None
    ) -> Action | None:
        ref = InstanceRef(key.job, index)
        spec = self.specs[key]
        job, name = key
        stopped = self.stopped.get(ref)
        if found is None:
            if stopped is not None and name in stopped.names:
                return StartContainer(job, index, name, stopped.reason, cause=stopped.cause)
            if ref in self.fresh:
                return StartContainer(job, index, name, "new VM", cause=Cause.NEW_VM)
            return StartContainer(job, index, name, "missing", cause=Cause.MISSING)
        if found.config_hash != spec.config_hash:
            return RecreateContainer(job, index, name, "spec changed", cause=Cause.SPEC_CHANGED)
        if stopped is not None and name in stopped.names:
            return StartContainer(job, index, name, stopped.reason, cause=stopped.cause)
        if found.state in DOWN_STATES and _should_run(spec, found):
            code = "" if found.exit_code is None else f" (exit code {found.exit_code})"
            if found.state == "dead":
                return RecreateContainer(job, index, name, f"dead{code}", cause=Cause.DEAD)
            return StartContainer(job, index, name, f"{found.state}{code}", cause=Cause.EXITED)
        if found.state in UP_STATES and found.unhealthy:
            return RestartContainer(job, index, name, "unhealthy", cause=Cause.UNHEALTHY)
        asked = self.jobs[job].commands.restart.get(index)
        if found.state in UP_STATES and asked is not None and (found.started_at or 0.0) < asked:
            why = "restart requested"
            return RestartContainer(job, index, name, why, cause=Cause.RESTART_REQUESTED)
        if found.state in UP_STATES and found.started_at is not None:
            mine = _Start(planned=False, at=found.started_at)
            latest, upstream = self._latest_upstream_start(key, index)
            if latest is not None and upstream is not None and latest.later_than(mine):
                reason = (
                    f"upstream {upstream} {latest.verb} before it"
                    if latest.planned
                    else f"upstream {upstream} restarted after it"
                )
                return RestartContainer(job, index, name, reason, upstream, cause=Cause.UPSTREAM)
        return None

    def _latest_upstream_start(
        self, key: ContainerKey, index: int
    ) -> tuple[_Start | None, ContainerKey | None]:
        best: _Start | None = None
        best_key: ContainerKey | None = None
        for upstream in self.graph.upstreams_of(key):
            if upstream in self.graph.external:
                at = self.external_starts.get(upstream)
                start = None if at is None else _Start(False, at)
            elif upstream.job == key.job:
                start = self.starts.get((upstream, index))
            else:
                start = self._latest_anywhere(upstream)
            if start is not None and (best is None or start.later_than(best)):
                best, best_key = start, upstream
        return best, best_key

    def _latest_anywhere(self, key: ContainerKey) -> _Start | None:
        """The latest start of ``key`` over its job's managed instances (it was planned already:
        keys are visited in topological order)."""
        if key not in self.latest:
            best: _Start | None = None
            for index in range(self.jobs[key.job].instances):
                start = self.starts.get((key, index))
                if start is not None and (best is None or start.later_than(best)):
                    best = start
            self.latest[key] = best
        return self.latest[key]


def _should_run(spec: DesiredContainer, found: ObservedContainer) -> bool:
    """Whether a container that is down should be brought back, per its restart policy."""
    if found.state == "created":
        return True  # created but never started (e.g. the operator stopped half-way)
    if spec.restart_policy == "Always":
        return True
    return spec.restart_policy == "OnFailure" and found.exit_code != 0
