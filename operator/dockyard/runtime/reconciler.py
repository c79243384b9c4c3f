"""One Job's reconcile pass: observe the world, plan (pure), execute, and report.

Rollouts follow the update policy: container updates run one batch at a time (canaries first),
each batch watched for ``watch_time`` before the next; a batch that fails halts the rollout
(Stalled) and leaves the instances not yet reached on their old version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from dockyard.providers import Attachment, ProviderError, VMState
from dockyard.runtime.engine import ObservedContainer
from dockyard.runtime.world import ContainerWant, InstanceWorld, JobWorld

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiskWant:
    size_mib: int
    disk_type: str = ""
    reclaim_policy: str = "Delete"  # Delete | Retain


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
    # Latest start (epoch s) of each cross-job upstream "job/container", across its instances.
    external_upstream_starts: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ActionRecord:
    """What was done, for Events and metrics."""

    kind: str
    index: int
    target: str
    reason: str
    ok: bool = True
    message: str = ""


@dataclass
class JobReport:
    instances: dict[int, InstanceWorld]
    actions: list[ActionRecord]
    updated_indices: set[int]
    stalled: str = ""  # why the rollout stopped, "" when it did not
    meltdown: str = ""  # why resurrection is paused, "" when it is not
    converged: bool = False
    requeue_after: float | None = None


Sleep = Callable[[float], None]


@dataclass(frozen=True)
class ResurrectionWant:
    enabled: bool = True
    meltdown_min_down: int = 5
    meltdown_percent: int = 20
    unresponsive_timeout: float = 5.0


def topological(containers: Sequence[ContainerWant]) -> list[ContainerWant]:
    """Same-job dependency order, ties in declaration order (cycles are rejected earlier)."""
    by_name = {c.name: c for c in containers}
    done: list[ContainerWant] = []
    seen: set[str] = set()

    def visit(want: ContainerWant, path: tuple[str, ...]) -> None:
        if want.name in seen:
            return
        if want.name in path:
            raise ValueError(f"dependency cycle: {' -> '.join((*path, want.name))}")
        for upstream in want.depends_on:
            if upstream in by_name:
                visit(by_name[upstream], (*path, want.name))
        seen.add(want.name)
        done.append(want)

    for want in containers:
        visit(want, ())
    return done


def rollout_batch(
    outdated: Sequence[int], updated: int, canaries: int, max_in_flight: int
) -> tuple[list[int], bool]:
    """The next instances to update and whether they are canaries: BOSH updates ``canaries``
    instances first, then ``max_in_flight`` at a time."""
    if not outdated:
        return [], False
    if updated == 0 and canaries > 0:
        return list(outdated[:canaries]), True
    return list(outdated[: max(max_in_flight, 1)]), False


class JobReconciler:
    """Keeps one Job's instances converged; holds only what observation cannot tell (when an
    engine stopped answering, which generation's rollout halted)."""

    def __init__(self, world: JobWorld, sleep: Sleep = time.sleep) -> None:
        self.world = world
        self.sleep = sleep
        self.halted_generation: int | None = None
        self.halted_reason = ""
        self.unresponsive_since: dict[str, float] = {}

    # --- one pass ---------------------------------------------------------------------------

    def reconcile(
        self,
        desired: JobDesired,
        resurrection: ResurrectionWant = ResurrectionWant(),
        known_vms: Mapping[int, str] | None = None,
    ) -> JobReport:
        indices = list(range(desired.instances))
        world = self.world.observe(indices)
        actions: list[ActionRecord] = []
        report = JobReport(instances=world, actions=actions, updated_indices=set())
        if self.halted_generation is not None and self.halted_generation != desired.generation:
            self.halted_generation, self.halted_reason = None, ""  # a new spec: try again

        down = self._down_instances(world, indices, resurrection, known_vms or {})
        meltdown = bool(down) and (
            len(down) >= resurrection.meltdown_min_down
            and len(down) * 100 >= resurrection.meltdown_percent * max(len(indices), 1)
        )
        if meltdown:
            report.meltdown = (
                f"{len(down)} of {len(indices)} instances down at once "
                f"(instances {', '.join(map(str, sorted(down)))}): resurrection paused"
            )
        attachments: dict[int, Attachment | None] = {}
        for index in indices:
            instance = world.setdefault(index, InstanceWorld(index))
            if index in down and (meltdown or not resurrection.enabled):
                continue
            try:
                attachments[index] = self._ensure_infrastructure(
                    instance, desired, index in down, actions
                )
            except ProviderError as error:
                actions.append(ActionRecord("InstanceFailed", index, "vm", str(error), ok=False))
        self._scale_down(world, desired, actions)

        ordered = topological(desired.containers)
        hashes = {want.name: want.config_hash() for want in desired.containers}
        outdated = [
            i
            for i in indices
            if i in attachments
            and any(
                (c := world[i].containers.get(name)) is not None and c.config_hash != digest
                for name, digest in hashes.items()
            )
        ]
        updated = sum(1 for i in indices if i in attachments and i not in outdated)
        batch: list[int] = []
        canary = False
        if self.halted_generation is None:
            batch, canary = rollout_batch(
                outdated, updated, desired.canaries, desired.max_in_flight
            )
        for index in indices:
            if index not in attachments or not world[index].engine_ok:
                continue
            self._converge_containers(
                world[index], ordered, hashes, index in batch, attachments[index], desired, actions
            )
        if batch:
            watch = desired.canary_watch_time if canary else desired.watch_time
            failure = self._watch(world, batch, hashes, watch)
            if failure:
                kind = "canary" if canary else "batch"
                self.halted_generation = desired.generation
                self.halted_reason = f"rollout halted: {kind} {failure}"
                actions.append(
                    ActionRecord("RolloutHalted", batch[0], "rollout", self.halted_reason, ok=False)
                )
            report.updated_indices = set(batch)
        report.stalled = self.halted_reason
        report.instances = self.world.observe(indices)
        report.converged = self._converged(report.instances, indices, hashes, desired)
        if not report.converged and not report.stalled:
            report.requeue_after = 1.0
        return report

    # --- pieces ------------------------------------------------------------------------------

    def _down_instances(
        self,
        world: Mapping[int, InstanceWorld],
        indices: Sequence[int],
        resurrection: ResurrectionWant,
        known_vms: Mapping[int, str],
    ) -> set[int]:
        """Instances that had a VM and lost it, or whose engine stopped answering for longer
        than the unresponsive timeout."""
        now = time.monotonic()
        down: set[int] = set()
        for index in indices:
            instance = world.get(index)
            vm = instance.vm if instance else None
            if vm is None or vm.state in (VMState.MISSING, VMState.STOPPED):
                if index in known_vms:
                    down.add(index)
                continue
            if vm.state is VMState.RUNNING and instance is not None and not instance.engine_ok:
                since = self.unresponsive_since.setdefault(vm.id, now)
                if now - since >= resurrection.unresponsive_timeout:
                    down.add(index)
            else:
                self.unresponsive_since.pop(vm.id, None)
        return down

    def _ensure_infrastructure(
        self,
        instance: InstanceWorld,
        desired: JobDesired,
        resurrect: bool,
        actions: list[ActionRecord],
    ) -> Attachment | None:
        index = instance.index
        vm = instance.vm
        if vm is not None and (resurrect or vm.state in (VMState.STOPPED, VMState.MISSING)):
            self.world.delete_vm(vm, instance.disk)
            self.unresponsive_since.pop(vm.id, None)
            actions.append(ActionRecord("DeletedVM", index, vm.id, "unresponsive or stopped"))
            vm = None
        if vm is None:
            vm = self.world.create_vm(index, desired.stemcell, desired.machine_type)
            reason = "resurrected" if resurrect else "created"
            actions.append(
                ActionRecord("ResurrectedVM" if resurrect else "CreatedVM", index, vm.id, reason)
            )
            instance.vm, instance.engine_ok, instance.containers = vm, True, {}
            if instance.disk is not None and instance.disk.attached_to:
                instance.disk = replace(instance.disk, attached_to=instance.disk.attached_to)
        if desired.disk is None:
            return None
        disk = instance.disk
        if disk is None:
            disk = self.world.create_disk(index, desired.disk.size_mib, desired.disk.disk_type)
            actions.append(ActionRecord("CreatedDisk", index, disk.id, f"{disk.size_mib} MiB"))
        attachment = self.world.attach_disk(vm, disk)
        if disk.attached_to != vm.id:
            actions.append(ActionRecord("AttachedDisk", index, disk.id, f"to VM {vm.id}"))
        disk = replace(disk, attached_to=vm.id)
        if disk.size_mib < desired.disk.size_mib:
            users = [c.name for c in desired.containers if c.volumes]
            disk = self.world.resize_disk(
                replace(instance, disk=disk), desired.disk.size_mib, users
            )
            for name in users:
                instance.containers.pop(name, None)
            actions.append(
                ActionRecord("ResizedDisk", index, disk.id, f"grown to {disk.size_mib} MiB")
            )
            attachment = self.world.attach_disk(vm, disk)
        instance.disk = disk
        return attachment

    def _scale_down(
        self, world: dict[int, InstanceWorld], desired: JobDesired, actions: list[ActionRecord]
    ) -> None:
        for index in sorted(i for i in world if i >= desired.instances):
            instance = world[index]
            if instance.vm is not None:
                self.world.delete_vm(instance.vm, instance.disk)
                actions.append(ActionRecord("DeletedVM", index, instance.vm.id, "scaled down"))
                instance.vm = None
            if instance.disk is not None:
                keep = desired.disk is not None and desired.disk.reclaim_policy == "Retain"
                if not keep:
                    self.world.delete_disk(instance.disk)
                    actions.append(
                        ActionRecord("DeletedDisk", index, instance.disk.id, "scaled down")
                    )
                    instance.disk = None

    def _converge_containers(
        self,
        instance: InstanceWorld,
        ordered: Sequence[ContainerWant],
        hashes: Mapping[str, str],
        in_batch: bool,
        attachment: Attachment | None,
        desired: JobDesired,
        actions: list[ActionRecord],
    ) -> None:
        vm = instance.vm
        assert vm is not None
        index = instance.index
        starts: dict[str, float] = dict(desired.external_upstream_starts)
        for want in ordered:
            observed = instance.containers.get(want.name)
            reason = ""
            if observed is None:
                reason = "created"
            elif observed.config_hash != hashes[want.name]:
                if not in_batch:
                    if observed.started_at:
                        starts[want.name] = observed.started_at
                    continue
                reason = "spec changed"
            elif observed.state in ("exited", "created", "dead") and _should_run(want, observed):
                reason = "not running"
            else:
                latest = max(((starts.get(u, 0.0), u) for u in want.depends_on), default=(0.0, ""))
                if observed.started_at is not None and latest[0] > observed.started_at:
                    reason = f"upstream {latest[1]} restarted"
            if not reason:
                if observed is not None and observed.started_at:
                    starts[want.name] = observed.started_at
                continue
            try:
                if reason.startswith("upstream") or reason == "not running":
                    result = self.world.restart_container(vm, want.name)
                    kind = "RestartedContainer"
                else:
                    result = self.world.run_container(vm, index, want, attachment)
                    kind = "StartedContainer" if reason == "created" else "RecreatedContainer"
            except ProviderError as error:
                actions.append(
                    ActionRecord("ContainerFailed", index, want.name, str(error), ok=False)
                )
                continue
            instance.containers[want.name] = result
            starts[want.name] = result.started_at or time.time()
            actions.append(ActionRecord(kind, index, want.name, reason))

    def _watch(
        self,
        world: Mapping[int, InstanceWorld],
        batch: Sequence[int],
        hashes: Mapping[str, str],
        watch: tuple[float, float],
    ) -> str:
        """Wait ``low`` seconds, then until every container of the batch runs (and is not
        unhealthy) with the new spec, at most ``high``: "" on success, else what failed."""
        low, high = watch
        self.sleep(low)
        deadline = time.monotonic() + max(high - low, 0.0)
        while True:
            failure = ""
            for index in batch:
                instance = world[index]
                if instance.vm is None:
                    return f"instance {index}: VM is gone"
                current = self.world.engine(instance.vm.id).containers()
                for name, digest in hashes.items():
                    observed = current.get(name)
                    if observed is None or observed.config_hash != digest:
                        failure = f"instance {index}: container {name} was not updated"
                    elif observed.state != "running" or observed.health in (
                        "unhealthy",
                        "starting",
                    ):
                        failure = (
                            f"instance {index}: container {name} is {observed.state}"
                            f"{' (' + observed.health + ')' if observed.health else ''}"
                            f", exit code {observed.exit_code}, restarts {observed.restart_count}"
                        )
                    elif observed.restart_count > 0:
                        failure = (
                            f"instance {index}: container {name} restarted "
                            f"{observed.restart_count} times, exit code {observed.exit_code}"
                        )
            if not failure or time.monotonic() >= deadline:
                return failure
            self.sleep(0.2)

    def _converged(
        self,
        world: Mapping[int, InstanceWorld],
        indices: Sequence[int],
        hashes: Mapping[str, str],
        desired: JobDesired,
    ) -> bool:
        if any(i >= desired.instances and world[i].vm is not None for i in world):
            return False
        for index in indices:
            instance = world.get(index)
            if instance is None or instance.vm is None or not instance.engine_ok:
                return False
            for name, digest in hashes.items():
                observed = instance.containers.get(name)
                if observed is None or observed.config_hash != digest:
                    return False
                if observed.state != "running" and observed.state != "exited":
                    return False
        return True

    # --- deletion -----------------------------------------------------------------------------

    def teardown(self, keep_disks: bool) -> None:
        world = self.world.observe([])
        for instance in world.values():
            if instance.vm is not None:
                self.world.delete_vm(instance.vm, instance.disk)
        for index in world:
            for disk in self.world.provider.find_disks(self.world.identity.disk_tags(index)):
                if keep_disks:
                    if disk.attached_to:
                        self.world.provider.detach_disk(disk.attached_to, disk.id)
                else:
                    self.world.delete_disk(disk)


def _should_run(want: ContainerWant, observed: ObservedContainer) -> bool:
    policy = want.config.restart_policy
    if policy == "Always":
        return True
    return policy == "OnFailure" and (observed.exit_code or 0) != 0
