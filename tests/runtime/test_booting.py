"""A VM made in a pass that is still booting (a cloud VM installing its engine from its user
data): what needs its engine is deferred to a later pass — not tried, so not failed and not
backed off — while what runs on the IaaS alone goes on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dockyard import planning
from dockyard.planning import Cause
from dockyard.planning.memory import Failure
from dockyard.providers.base import VM, Disk, DiskSpec, VMSpec, VMState
from dockyard.runtime.perform import Performer
from dockyard.runtime.world import JobIdentity, JobWorld, vm_fingerprint


class BootingCloud:
    """Just enough of a provider: VMs come back pending, every call is counted."""

    resizes_attached_disks = True
    mounts_disks = False
    withheld_capabilities: frozenset[str] = frozenset()
    vm_config_salt = "engine-ca 0123"

    def __init__(self, state: VMState) -> None:
        self.state = state
        self.calls: list[str] = []
        self.made: list[VMSpec] = []

    def create_vm(self, spec: VMSpec) -> VM:
        self.calls.append("create_vm")
        self.made.append(spec)
        return VM("i-1", self.state, dict(spec.tags), "10.0.0.5")

    def create_disk(self, spec: DiskSpec) -> Disk:
        self.calls.append("create_disk")
        return Disk("vol-1", spec.size_mib, dict(spec.tags))

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            raise AssertionError(f"{name} must not be called on a booting VM")

        return call


def _performer(cloud: BootingCloud) -> Performer:
    world = JobWorld(cloud, JobIdentity("ns", "web", "uid-1", "shop", "web"))  # type: ignore[arg-type]
    wants: Mapping[str, Any] = {}
    return Performer(world, {}, wants, "debian-12", "t3.small")


def test_what_needs_the_engine_of_a_booting_vm_waits_without_failing() -> None:
    cloud = BootingCloud(VMState.PENDING)
    performer = _performer(cloud)
    made = performer.perform(planning.CreateVM("web", 0, "new instance", cause=Cause.NEW_INSTANCE))
    assert made.ok
    attach = performer.perform(planning.AttachDisk("web", 0, "vol-1", cause=Cause.DISK_ATTACHED))
    start = performer.perform(
        planning.StartContainer("web", 0, "app", "new VM", cause=Cause.NEW_VM)
    )
    for outcome in (attach, start):
        assert outcome.failure is Failure.CANCELLED  # not a failure: no back-off, no Event
        assert "booting" in outcome.message
    assert cloud.calls == ["create_vm"]
    assert [r.kind for r in performer.records] == ["CreatedVM"]
    # the provider's salt (its engine CA) is part of what the VM is recorded as made from
    tags = cloud.made[0].tags
    assert tags["vm-config"] == vm_fingerprint("debian-12", "t3.small", "engine-ca 0123")
    assert tags["vm-config"] != vm_fingerprint("debian-12", "t3.small")
    # a new disk is attached and mounted as soon as it is made: it waits too
    disk = performer.perform(
        planning.CreateDisk("web", 0, 1024, None, "", cause=Cause.NEW_INSTANCE)
    )
    assert disk.failure is Failure.CANCELLED and cloud.calls == ["create_vm"]


def test_a_running_vm_is_not_held() -> None:
    cloud = BootingCloud(VMState.RUNNING)
    performer = _performer(cloud)
    assert performer.perform(planning.CreateVM("web", 0, "new", cause=Cause.NEW_INSTANCE)).ok
    disk = performer.perform(
        planning.CreateDisk("web", 0, 1024, None, "", cause=Cause.NEW_INSTANCE)
    )
    assert disk.failure is not Failure.CANCELLED
    assert cloud.calls[:2] == ["create_vm", "create_disk"]
