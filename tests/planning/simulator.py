"""A pure stand-in for the executor: applies planned actions to an observed world.

It refuses (SimulationError) anything a real executor must never be asked to do: delete a VM a
disk is still attached to, attach a disk that is attached elsewhere, shrink a disk, delete the
disk of an instance that is still wanted, detach a disk from under running containers that use
it, or touch containers on a VM that is not there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import NoReturn

from dockyard.planning import (
    Action,
    AdoptDisk,
    AttachDisk,
    ContainerAction,
    CreateDisk,
    CreateVM,
    DeleteDisk,
    DeleteVM,
    DesiredJob,
    DetachDisk,
    MigrateDisk,
    ObservedContainer,
    ObservedDisk,
    ObservedInstance,
    ObservedVM,
    OrphanDisk,
    RecreateContainer,
    RemoveContainer,
    ResizeDisk,
    RestartContainer,
    StartContainer,
    StopContainer,
    World,
)

UP = ("running", "restarting")


class SimulationError(AssertionError):
    pass


@dataclass
class _Instance:
    vm: ObservedVM | None
    disk: ObservedDisk | None
    containers: dict[str, ObservedContainer] = field(default_factory=dict)


@dataclass
class Simulator:
    desired: Sequence[DesiredJob]
    detach_to_resize: bool = False
    clock: float = 0.0
    made: int = 0

    def apply(
        self, actions: Sequence[Action], world: World
    ) -> dict[str, dict[int, ObservedInstance]]:
        jobs = {job.name: job for job in self.desired}
        state = {
            name: {i: _Instance(o.vm, o.disk, dict(o.containers)) for i, o in instances.items()}
            for name, instances in world.items()
        }
        stamps = [
            c.started_at
            for instances in world.values()
            for o in instances.values()
            for c in o.containers.values()
            if c.started_at is not None
        ]
        self.clock = max([self.clock, *stamps]) + 1.0
        for action in actions:
            instance = state.setdefault(action.job, {}).setdefault(
                action.index, _Instance(None, None)
            )
            wanted = action.job in jobs and action.index < jobs[action.job].instances
            self._one(action, instance, jobs.get(action.job), wanted)
        return {
            name: {i: ObservedInstance(o.vm, o.disk, dict(o.containers)) for i, o in items.items()}
            for name, items in state.items()
        }

    def _tick(self) -> float:
        self.clock += 1.0
        return self.clock

    def _one(self, action: Action, inst: _Instance, job: DesiredJob | None, wanted: bool) -> None:
        def fail(why: str) -> NoReturn:
            raise SimulationError(f"{action}: {why}")

        match action:
            case CreateVM():
                if inst.vm is not None:
                    fail("the instance has a VM")
                self.made += 1
                inst.vm = ObservedVM(f"vm-{self.made}")
                inst.containers = {}
            case DeleteVM(vm_id=vm_id):
                if inst.vm is None or inst.vm.id != vm_id:
                    fail("no such VM")
                if inst.disk is not None and inst.disk.attached_to == vm_id:
                    fail("a persistent disk is still attached")
                inst.vm = None
                inst.containers = {}
            case CreateDisk(size_mib=size):
                if inst.disk is not None:
                    fail("the instance has a disk: it would be replaced by an empty one")
                if inst.vm is None or not inst.vm.healthy:
                    fail("no VM to attach to")
                self._no_users_running(inst, job, fail)
                self.made += 1
                inst.disk = ObservedDisk(f"disk-{self.made}", size, attached_to=inst.vm.id)
            case AttachDisk(disk_id=disk_id):
                if inst.disk is None or inst.disk.id != disk_id:
                    fail("no such disk")
                if inst.disk.attached_to is not None:
                    fail(f"attached to {inst.disk.attached_to}")
                if inst.vm is None or not inst.vm.healthy:
                    fail("no VM to attach to")
                if inst.disk.orphaned:
                    fail("an orphaned disk is adopted before it is attached")
                self._no_users_running(inst, job, fail)
                inst.disk = replace(inst.disk, attached_to=inst.vm.id)
            case DetachDisk(disk_id=disk_id, vm_id=vm_id):
                if inst.disk is None or inst.disk.id != disk_id or inst.disk.attached_to != vm_id:
                    fail("not attached there")
                if inst.vm is not None and inst.vm.healthy and inst.vm.id == vm_id:
                    users = (
                        {c.name for c in job.containers if c.uses_disk}
                        if job is not None and wanted
                        else set(inst.containers)
                    )
                    busy = [
                        n for n in users if n in inst.containers and inst.containers[n].state in UP
                    ]
                    if busy:
                        fail(f"containers {sorted(busy)} still run on it")
                inst.disk = replace(inst.disk, attached_to=None)
            case ResizeDisk(disk_id=disk_id, size_mib=size):
                if inst.disk is None or inst.disk.id != disk_id:
                    fail("no such disk")
                if size <= inst.disk.size_mib:
                    fail(f"would not grow {inst.disk.size_mib} MiB")
                if self.detach_to_resize and inst.disk.attached_to is not None:
                    fail("the provider cannot grow an attached disk")
                inst.disk = replace(inst.disk, size_mib=size)
            case MigrateDisk(disk_id=disk_id, size_mib=size):
                if inst.disk is None or inst.disk.id != disk_id:
                    fail("no such disk")
                if size <= inst.disk.size_mib:
                    fail(f"would not grow {inst.disk.size_mib} MiB")
                if inst.vm is None or not inst.vm.healthy or inst.disk.attached_to != inst.vm.id:
                    fail("the disk is not on the instance's VM: nothing to copy from")
                users = {c.name for c in job.containers if c.uses_disk} if job else set()
                if users & set(inst.containers):
                    fail(f"containers {sorted(users & set(inst.containers))} mount the old disk")
                self.made += 1
                inst.disk = replace(
                    inst.disk, id=f"disk-{self.made}", size_mib=size, migration_target=None
                )
            case DeleteDisk(disk_id=disk_id) if inst.disk and disk_id == inst.disk.migration_target:
                inst.disk = replace(inst.disk, migration_target=None)
            case DeleteDisk(disk_id=disk_id):
                if wanted:
                    fail("the instance is still wanted: its data would be lost")
                if inst.disk is None or inst.disk.id != disk_id or inst.disk.attached_to:
                    fail("no such detached disk")
                inst.disk = None
            case OrphanDisk(disk_id=disk_id):
                if wanted:
                    fail("the instance is still wanted: its disk is not an orphan")
                if inst.disk is None or inst.disk.id != disk_id or inst.disk.attached_to:
                    fail("no such detached disk")
                inst.disk = replace(inst.disk, orphaned=True)
            case AdoptDisk(disk_id=disk_id):
                if inst.disk is None or inst.disk.id != disk_id or not inst.disk.orphaned:
                    fail("no such orphaned disk")
                inst.disk = replace(inst.disk, orphaned=False)
            case ContainerAction():
                if inst.vm is None or not inst.vm.healthy:
                    fail("no healthy VM")
                self._container(action, inst, job, fail)
            case _:  # pragma: no cover
                fail("unknown action")

    @staticmethod
    def _no_users_running(
        inst: _Instance, job: DesiredJob | None, fail: Callable[[str], NoReturn]
    ) -> None:
        """A disk mounted under running containers would stay invisible to them."""
        users = {c.name for c in job.containers if c.uses_disk} if job else set()
        busy = [n for n in users if n in inst.containers and inst.containers[n].state in UP]
        if busy:
            fail(f"containers {sorted(busy)} using the disk run without it")

    def _container(
        self,
        action: ContainerAction,
        inst: _Instance,
        job: DesiredJob | None,
        fail: Callable[[str], NoReturn],
    ) -> None:
        name = action.container
        found = inst.containers.get(name)
        spec = next((c for c in job.containers if c.name == name), None) if job else None
        if (
            isinstance(
                action, (StopContainer, RemoveContainer, RestartContainer, RecreateContainer)
            )
            and found is None
        ):
            fail("no such container")
        if (
            isinstance(action, (StartContainer, RecreateContainer, RestartContainer))
            and spec is None
        ):
            fail("not in the spec")
        match action:
            case StartContainer():
                assert spec is not None
                if found is not None and found.config_hash != spec.config_hash:
                    fail("would start an outdated container")
                inst.containers[name] = ObservedContainer("running", spec.config_hash, self._tick())
            case RecreateContainer():
                assert spec is not None
                inst.containers[name] = ObservedContainer("running", spec.config_hash, self._tick())
            case RestartContainer():
                assert spec is not None and found is not None
                if found.config_hash != spec.config_hash:
                    fail("would restart an outdated container")
                inst.containers[name] = replace(found, state="running", started_at=self._tick())
            case StopContainer():
                assert found is not None
                inst.containers[name] = replace(found, state="exited", exit_code=143)
            case RemoveContainer():
                del inst.containers[name]
