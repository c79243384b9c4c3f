"""The provider contract (dockyard/providers/base.py), once, for every provider: local on real
Docker, AWS on moto's server, GCE on the HTTP fake. Each test ends with the harness's leak
check: nothing of the provider may be left behind."""

from __future__ import annotations

import uuid

import pytest

from dockyard.providers import available_providers, make_provider
from dockyard.providers.base import (
    DiskSpec,
    NotFoundError,
    PermanentError,
    Provider,
    ShrinkRefusedError,
    TransientError,
    VMSpec,
    VMState,
)
from tests.providers.conftest import Harness
from tests.waiting import wait_for


def identity(**extra: str) -> dict[str, str]:
    return {
        "owner-uid": str(uuid.uuid4()),
        "deployment": "shop",
        "job": "db",
        "index": "0",
        **extra,
    }


def gone(provider: Provider, vm_id: str) -> bool:
    return provider.vm_state(vm_id) is VMState.MISSING


def test_provider_satisfies_the_protocol(harness: Harness) -> None:
    assert isinstance(harness.provider, Provider)
    assert isinstance(harness.provider.resizes_attached_disks, bool)
    assert isinstance(harness.provider.mounts_disks, bool)


def test_the_registry_builds_it_from_its_entry_point(harness: Harness) -> None:
    assert harness.config.type in available_providers()
    made = make_provider(harness.config)
    try:
        assert type(made) is type(harness.provider)
    finally:
        made.close()


def test_create_is_idempotent_and_delete_leaves_nothing(harness: Harness) -> None:
    provider, tags = harness.provider, identity()
    vm = provider.create_vm(VMSpec(tags=tags, stemcell=harness.stemcell))
    assert vm.state in (VMState.PENDING, VMState.RUNNING)
    assert dict(vm.tags) == tags

    assert provider.create_vm(VMSpec(tags=tags, stemcell=harness.stemcell)).id == vm.id
    # The operator crashed after create_vm, before recording the id: a new process creates
    # again with the same tags and must get the same VM, not a second one.
    restarted = harness.another()
    assert restarted.create_vm(VMSpec(tags=tags, stemcell=harness.stemcell)).id == vm.id
    assert [found.id for found in provider.find_vms(tags)] == [vm.id]
    assert [found.id for found in provider.find_vms({"owner-uid": tags["owner-uid"]})] == [vm.id]
    assert provider.find_vms({**tags, "index": "1"}) == []
    wait_for(lambda: provider.vm_state(vm.id) is VMState.RUNNING, timeout=30, what="VM running")

    provider.delete_vm(vm.id)
    wait_for(lambda: gone(provider, vm.id), timeout=30, what="VM gone")
    assert provider.find_vms(tags) == []
    provider.delete_vm(vm.id)  # deleting what is gone succeeds
    assert restarted.vm_state(vm.id) is VMState.MISSING


def test_a_vm_deleted_can_be_created_again_with_the_same_tags(harness: Harness) -> None:
    """Resurrection recreates a VM under the identity of the dead one."""
    provider, tags = harness.provider, identity()
    first = provider.create_vm(VMSpec(tags=tags, stemcell=harness.stemcell))
    provider.delete_vm(first.id)
    wait_for(lambda: gone(provider, first.id), timeout=30, what="first VM gone")

    second = provider.create_vm(VMSpec(tags=tags, stemcell=harness.stemcell))
    assert provider.vm_state(second.id) in (VMState.PENDING, VMState.RUNNING)
    assert [vm.id for vm in provider.find_vms(tags)] == [second.id]
    provider.delete_vm(second.id)
    wait_for(lambda: gone(provider, second.id), timeout=30, what="second VM gone")


def test_vm_metadata_is_set_and_merged(harness: Harness) -> None:
    provider = harness.provider
    vm = provider.create_vm(
        VMSpec(tags=identity(), stemcell=harness.stemcell, metadata={"deployment-rev": "1"})
    )
    try:
        assert harness.metadata_of(vm.id).items() >= {"deployment-rev": "1"}.items()
        provider.set_vm_metadata(vm.id, {"deployment-rev": "2", "job": "db"})
        assert harness.metadata_of(vm.id).items() >= {"deployment-rev": "2", "job": "db"}.items()
        provider.set_vm_metadata(vm.id, {"job": "db"})  # unchanged: still fine
        assert harness.metadata_of(vm.id).items() >= {"deployment-rev": "2", "job": "db"}.items()
    finally:
        provider.delete_vm(vm.id)


def test_disk_metadata_is_set_and_removed_and_found_by(harness: Harness) -> None:
    """How a disk is orphaned and adopted again: tags set and removed in place."""
    provider = harness.provider
    tags = {"disk": f"ns.{uuid.uuid4().hex[:8]}-0"}
    disk = provider.create_disk(DiskSpec(tags=tags, size_mib=1024))
    try:
        marked = provider.set_disk_metadata(disk.id, {"orphaned-at": "1796320000"})
        assert (
            marked.id == disk.id
            and marked.tags.items() >= {**tags, "orphaned-at": "1796320000"}.items()
        )
        (found,) = provider.find_disks({**tags, "orphaned-at": "1796320000"})
        assert found.id == disk.id
        adopted = provider.set_disk_metadata(disk.id, {"orphaned-at": None})
        assert "orphaned-at" not in adopted.tags and adopted.tags.items() >= tags.items()
        (found,) = provider.find_disks(tags)
        assert "orphaned-at" not in found.tags
        assert not provider.find_disks({**tags, "orphaned-at": "1796320000"})
        with pytest.raises(NotFoundError):
            provider.set_disk_metadata(harness.unknown_disk_id, {"orphaned-at": "1"})
    finally:
        provider.delete_disk(disk.id)


def test_a_snapshot_of_an_attached_disk_restores_into_a_new_disk_with_its_data(
    harness: Harness,
) -> None:
    provider = harness.provider
    vm = provider.create_vm(VMSpec(tags=identity(), stemcell=harness.stemcell))
    disk = provider.create_disk(DiskSpec(tags=identity(disk="snapped"), size_mib=1024))
    restored_tags = identity(disk="restored")
    snapshot_tags = {"snapshot": f"ns.{uuid.uuid4().hex[:8]}"}
    try:
        attachment = provider.attach_disk(vm.id, disk.id)
        payload, later = uuid.uuid4().bytes * 64, b"changed after the snapshot"
        if harness.write_file is not None:
            harness.write_file(vm.id, attachment, "store/payload.bin", payload)
        snapshot = provider.snapshot_disk(disk.id, snapshot_tags)  # attached, in use
        assert snapshot.disk_id == disk.id and snapshot.size_mib >= 1024
        assert provider.snapshot_disk(disk.id, snapshot_tags).id == snapshot.id  # idempotent
        wait_for(
            lambda: all(s.ready for s in provider.find_snapshots(snapshot_tags)),
            timeout=60,
            what="the snapshot ready",
        )
        assert [s.id for s in provider.find_snapshots(snapshot_tags)] == [snapshot.id]
        if harness.write_file is not None:
            harness.write_file(vm.id, attachment, "store/payload.bin", later)
        with pytest.raises(PermanentError, match="smaller"):
            provider.create_disk(
                DiskSpec(tags=restored_tags, size_mib=snapshot.size_mib - 512, snapshot=snapshot.id)
            )
        restored = provider.create_disk(
            DiskSpec(tags=restored_tags, size_mib=snapshot.size_mib, snapshot=snapshot.id)
        )
        assert restored.id != disk.id and restored.size_mib >= snapshot.size_mib
        if harness.read_file is not None:
            provider.detach_disk(vm.id, disk.id)
            mounted = provider.attach_disk(vm.id, restored.id)
            assert harness.read_file(vm.id, mounted, "store/payload.bin") == payload
    finally:
        for found in provider.find_disks(restored_tags):
            provider.delete_disk(found.id)
        provider.delete_disk(disk.id)
        provider.delete_vm(vm.id)
        for found in provider.find_snapshots(snapshot_tags):
            provider.delete_snapshot(found.id)
    assert provider.find_snapshots(snapshot_tags) == []
    provider.delete_snapshot(snapshot.id)  # gone: still fine


def test_disk_lifecycle_keeps_data_through_detach_and_grow(harness: Harness) -> None:
    provider = harness.provider
    vm = provider.create_vm(VMSpec(tags=identity(), stemcell=harness.stemcell))
    disk_tags = identity(disk="data")
    disk = provider.create_disk(DiskSpec(tags=disk_tags, size_mib=1024))
    try:
        assert disk.size_mib >= 1024
        assert dict(disk.tags) == disk_tags
        assert disk.attached_to is None
        assert provider.create_disk(DiskSpec(tags=disk_tags, size_mib=1024)).id == disk.id
        assert harness.another().create_disk(DiskSpec(tags=disk_tags, size_mib=1024)).id == disk.id
        assert [d.id for d in provider.find_disks(disk_tags)] == [disk.id]

        attachment = provider.attach_disk(vm.id, disk.id)
        assert attachment.device
        assert provider.attach_disk(vm.id, disk.id) == attachment  # idempotent
        (seen,) = provider.find_disks(disk_tags)
        assert seen.attached_to == vm.id

        payload = uuid.uuid4().bytes * 64
        if harness.write_file is not None:
            harness.write_file(vm.id, attachment, "store/payload.bin", payload)
        else:
            # No data plane in this test IaaS (moto's EBS volumes and the fake's disks hold no
            # bytes): what is checked is that the IaaS reports the disk attached to this VM.
            assert attachment.mount_path is None

        bigger = seen.size_mib + 1024
        if provider.resizes_attached_disks:
            grown = provider.resize_disk(disk.id, bigger)
            assert grown.attached_to == vm.id, "an online grow keeps the disk attached"
        else:
            # Documented: such a provider grows offline; the caller stops users and detaches.
            with pytest.raises(TransientError, match="detach"):
                provider.resize_disk(disk.id, bigger)
            provider.detach_disk(vm.id, disk.id)
            grown = provider.resize_disk(disk.id, bigger)
            assert grown.attached_to is None
            attachment = provider.attach_disk(vm.id, disk.id)
        assert grown.size_mib >= bigger
        (seen,) = provider.find_disks(disk_tags)
        assert seen.size_mib == grown.size_mib
        assert provider.resize_disk(disk.id, bigger).size_mib == grown.size_mib  # no-op

        provider.detach_disk(vm.id, disk.id)
        provider.detach_disk(vm.id, disk.id)  # idempotent
        (seen,) = provider.find_disks(disk_tags)
        assert seen.attached_to is None
        assert seen.size_mib == grown.size_mib

        attachment = provider.attach_disk(vm.id, disk.id)
        if harness.read_file is not None:
            assert harness.read_file(vm.id, attachment, "store/payload.bin") == payload
        else:
            (seen,) = provider.find_disks(disk_tags)
            assert (seen.attached_to, seen.size_mib) == (vm.id, grown.size_mib)
    finally:
        provider.delete_disk(disk.id)  # attached: delete detaches first
        provider.delete_vm(vm.id)
    assert provider.find_disks(disk_tags) == []
    provider.delete_disk(disk.id)  # gone: still fine


def test_a_disk_outlives_its_vm(harness: Harness) -> None:
    """Resurrection: the VM dies, its disk stays, a new VM gets the disk and its data."""
    provider = harness.provider
    first = provider.create_vm(VMSpec(tags=identity(), stemcell=harness.stemcell))
    disk = provider.create_disk(DiskSpec(tags=identity(disk="data"), size_mib=1024))
    second_tags = identity(index="1")
    try:
        attachment = provider.attach_disk(first.id, disk.id)
        payload = b"kept across VMs " + uuid.uuid4().bytes
        if harness.write_file is not None:
            harness.write_file(first.id, attachment, "payload", payload)
        provider.delete_vm(first.id)

        def released() -> bool:
            (seen,) = provider.find_disks(disk.tags)
            return seen.attached_to is None

        wait_for(released, timeout=30, what="disk released by the deleted VM")
        second = provider.create_vm(VMSpec(tags=second_tags, stemcell=harness.stemcell))
        attachment = provider.attach_disk(second.id, disk.id)
        if harness.read_file is not None:
            assert harness.read_file(second.id, attachment, "payload") == payload
        else:
            # No data plane here (see the disk lifecycle test): the IaaS's word is checked.
            (seen,) = provider.find_disks(disk.tags)
            assert seen.attached_to == second.id
    finally:
        provider.delete_disk(disk.id)
        for vm in provider.find_vms(second_tags) + provider.find_vms(first.tags):
            provider.delete_vm(vm.id)


def test_disks_never_shrink(harness: Harness) -> None:
    provider = harness.provider
    disk = provider.create_disk(DiskSpec(tags=identity(disk="data"), size_mib=2048))
    try:
        with pytest.raises(ShrinkRefusedError):
            provider.resize_disk(disk.id, disk.size_mib - 1024)
        (seen,) = provider.find_disks(disk.tags)
        assert seen.size_mib == disk.size_mib
        assert provider.resize_disk(disk.id, disk.size_mib).size_mib == disk.size_mib
    finally:
        provider.delete_disk(disk.id)


def test_a_disk_attached_elsewhere_is_not_stolen(harness: Harness) -> None:
    provider = harness.provider
    first = provider.create_vm(VMSpec(tags=identity(index="0"), stemcell=harness.stemcell))
    second = provider.create_vm(VMSpec(tags=identity(index="1"), stemcell=harness.stemcell))
    disk = provider.create_disk(DiskSpec(tags=identity(disk="data"), size_mib=1024))
    try:
        provider.attach_disk(first.id, disk.id)
        with pytest.raises(TransientError, match="detach"):
            provider.attach_disk(second.id, disk.id)
        provider.detach_disk(second.id, disk.id)  # not attached there: nothing to do
        (seen,) = provider.find_disks(disk.tags)
        assert seen.attached_to == first.id
    finally:
        provider.delete_disk(disk.id)
        provider.delete_vm(first.id)
        provider.delete_vm(second.id)


def test_unknown_ids_raise_not_found(harness: Harness) -> None:
    provider = harness.provider
    vm_id, disk_id = harness.unknown_vm_id, harness.unknown_disk_id
    assert provider.vm_state(vm_id) is VMState.MISSING
    assert provider.find_vms(identity()) == []
    assert provider.find_disks(identity()) == []
    with pytest.raises(NotFoundError):
        provider.set_vm_metadata(vm_id, {"a": "b"})
    with pytest.raises(NotFoundError):
        provider.docker_client(vm_id)
    with pytest.raises(NotFoundError):
        provider.resize_disk(disk_id, 4096)
    with pytest.raises(NotFoundError):
        provider.detach_disk(vm_id, disk_id)
    with pytest.raises(NotFoundError):
        provider.attach_disk(vm_id, disk_id)
    disk = provider.create_disk(DiskSpec(tags=identity(disk="data"), size_mib=1024))
    try:
        with pytest.raises(NotFoundError):
            provider.attach_disk(vm_id, disk.id)
    finally:
        provider.delete_disk(disk.id)
    provider.delete_vm(vm_id)  # deleting the unknown succeeds
    provider.delete_disk(disk_id)
