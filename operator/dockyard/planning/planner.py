"""The planner: (desired, observed) -> ordered actions. Pure and deterministic.

Order of the plan:

1. Instances no longer wanted (index >= ``instances``, or their job is gone): stop their running
   containers (dependents first), detach the disk, delete the VM, then delete the disk only
   under reclaim policy Delete (Retain leaves it detached, to be reattached on a scale-up).
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
   their restart policy wants them running, restarted when an upstream started after them.

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
    AttachDisk,
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
    ObservedInstance,
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


@dataclass(frozen=True)
class _Start:
    """When a container (last) started: observed (``planned`` false, ``at`` a timestamp) or
    by this plan (``planned``, ``at`` its position). Planned starts are later than observed."""

    planned: bool
    at: float
    verb: str = ""

    def later_than(self, other: _Start) -> bool:
        return (self.planned, self.at) > (other.planned, other.at)


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
        self.stopped: dict[InstanceRef, tuple[set[str], str]] = {}
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
            reason = "job removed" if name not in self.jobs else "scaled down"
            for index in sorted(i for i in self._instances_of(name) if i >= wanted):
                self._remove_instance(name, index, reason)

    def _remove_instance(self, job: str, index: int, reason: str) -> None:
        instance = self._instances_of(job)[index]
        vm, disk = instance.vm, instance.disk
        if vm is not None and vm.healthy:
            up = [n for n, c in instance.containers.items() if c.state in UP_STATES]
            for name in self._stop_order(job, up):
                self.actions.append(StopContainer(job, index, name, reason))
        if disk is not None and disk.attached_to is not None:
            self.actions.append(DetachDisk(job, index, disk.id, disk.attached_to, reason))
        if vm is not None:
            self.actions.append(DeleteVM(job, index, vm.id, reason))
        if disk is not None and disk.migration_target is not None:
            self.actions.append(DeleteDisk(job, index, disk.migration_target))
        if disk is not None and self._reclaim_policy(job, instance) == "Delete":
            self.actions.append(DeleteDisk(job, index, disk.id))

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
        instance = self._instances_of(job.name).get(index, _NOTHING)
        vm, disk = instance.vm, instance.disk
        if vm is not None and not vm.healthy and not job.resurrect:
            return  # resurrection is off (or in meltdown): leave the instance as it is
        kept = vm if vm is not None and vm.healthy else None
        add = self.actions.append
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
                self._stop_disk_users(job, index, "disk migrated", remove=True)
            elif not on_vm:  # its users run without it: down until it is mounted
                self._stop_disk_users(job, index, "disk attached")
            elif grow and self.detach_to_resize:
                self._stop_disk_users(job, index, "disk grown")
        if disk is not None and attached is not None and not on_vm:
            add(DetachDisk(job.name, index, disk.id, attached, "not on the instance's VM"))
        if vm is not None and kept is None:
            add(DeleteVM(job.name, index, vm.id, "VM unhealthy"))
            add(CreateVM(job.name, index, f"replaces unhealthy VM {vm.id}"))
        elif vm is None:
            add(CreateVM(job.name, index, "new instance"))
        if job.disk is None:
            return  # a disk dropped from the spec stays where it is until the instance goes
        if disk is None:
            add(CreateDisk(job.name, index, job.disk.size_mib, job.disk.type))
            return
        if disk.migration_target is not None and not copy:
            add(DeleteDisk(job.name, index, disk.migration_target))
        if copy:
            if not on_vm:
                add(AttachDisk(job.name, index, disk.id))
            add(MigrateDisk(job.name, index, disk.id, job.disk.size_mib, job.disk.type))
            return
        if grow:
            if on_vm and self.detach_to_resize and kept is not None:
                add(DetachDisk(job.name, index, disk.id, kept.id, "to grow it"))
                on_vm = False
            add(ResizeDisk(job.name, index, disk.id, job.disk.size_mib))
        if not on_vm:
            add(AttachDisk(job.name, index, disk.id))

    def _stop_disk_users(
        self, job: DesiredJob, index: int, reason: str, *, remove: bool = False
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
            self.actions.append(verb(job.name, index, name, f"{reason}: {done} first"))
        if remove:
            self.usable[ref] = {n: c for n, c in observed.items() if n not in users}
        self.stopped[ref] = (set(users), reason)

    def _remove_obsolete_containers(self) -> None:
        for ref, containers in self.usable.items():
            wanted = {c.name for c in self.jobs[ref.job].containers}
            for name in sorted(n for n in containers if n not in wanted):
                self.actions.append(
                    RemoveContainer(ref.job, ref.index, name, "no longer in the spec")
                )

    # --- containers -------------------------------------------------------------------------

    def _container(self, key: ContainerKey, index: int) -> None:
        ref = InstanceRef(key.job, index)
        spec = self.specs[key]
        found = self.usable[ref].get(key.container)
        action: Action | None = None
        if found is None:
            reason = "new VM" if ref in self.fresh else "missing"
            if key.container in self.stopped.get(ref, ((), ""))[0]:
                reason = self.stopped[ref][1]
            action = StartContainer(key.job, index, key.container, reason)
        elif found.config_hash != spec.config_hash:
            action = RecreateContainer(key.job, index, key.container, "spec changed")
        elif key.container in self.stopped.get(ref, ((), ""))[0]:
            action = StartContainer(key.job, index, key.container, self.stopped[ref][1])
        elif found.state in DOWN_STATES and _should_run(spec, found):
            code = "" if found.exit_code is None else f" (exit code {found.exit_code})"
            reason = f"{found.state}{code}"
            kind = RecreateContainer if found.state == "dead" else StartContainer
            action = kind(key.job, index, key.container, reason)
        elif found.state in UP_STATES and found.started_at is not None:
            mine = _Start(planned=False, at=found.started_at)
            latest, upstream = self._latest_upstream_start(key, index)
            if latest is not None and upstream is not None and latest.later_than(mine):
                reason = (
                    f"upstream {upstream} {latest.verb} before it"
                    if latest.planned
                    else f"upstream {upstream} restarted after it"
                )
                action = RestartContainer(key.job, index, key.container, reason, upstream)
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
