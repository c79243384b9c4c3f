"""The local provider on real Docker: VMs that run their own engine, loop-device disks that
outlive VMs, offline grow, rediscovery by a restarted operator, nothing left behind."""

from __future__ import annotations

import os
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from dockyard.providers import make_provider
from dockyard.providers.base import (
    VM,
    DiskSpec,
    InPlaceResizeUnsupportedError,
    NotFoundError,
    PermanentError,
    ProviderConfig,
    ShrinkRefusedError,
    TransientError,
    VMSpec,
    VMState,
)
from dockyard.providers.local import LocalProvider
from tests.conftest import WORKLOAD_IMAGE
from tests.providers.local_support import (
    checksum,
    ensure_workload_image,
    local_leftovers,
    make_local_provider,
    purge_local,
    read_file_on_disk,
    run_on_disk,
    write_file_on_disk,
)
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProvider]:
    provider = make_local_provider(tmp_path_factory.mktemp("local"))
    yield provider
    purge_local(provider)
    assert local_leftovers(provider) == []
    provider.close()


@pytest.fixture(scope="module")
def vm(provider: LocalProvider) -> VM:
    """One VM shared by the tests that only read or add things to it."""
    return provider.create_vm(VMSpec(tags={"owner-uid": "shared", "index": "0"}))


def tags(**extra: str) -> dict[str, str]:
    return {"owner-uid": uuid.uuid4().hex[:8], **extra}


def filesystem_kib(provider: LocalProvider, vm: VM, attachment: object) -> int:
    out = run_on_disk(provider, vm.id, attachment, "df -k /disk | tail -n 1")  # type: ignore[arg-type]
    return int(out.split()[1])


def test_entry_point_builds_the_local_provider(tmp_path: Path) -> None:
    made = make_provider(ProviderConfig(type="local", options={"root": str(tmp_path)}))
    assert isinstance(made, LocalProvider)
    made.close()


def test_bad_options_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match=r"options\.colour"):
        LocalProvider(ProviderConfig(type="local", options={"colour": "blue"}))
    with pytest.raises(PermanentError, match=r"options\.subnet"):
        LocalProvider(ProviderConfig(type="local", options={"root": str(tmp_path), "subnet": "x"}))
    with pytest.raises(PermanentError, match=r"options\.root"):
        LocalProvider(ProviderConfig(type="local", options={"root": "relative/path"}))


def test_without_in_place_resize_a_grow_asks_for_a_copy(provider: LocalProvider) -> None:
    copying = LocalProvider(
        ProviderConfig(type="local", options={"root": str(provider.root), "in_place_resize": "0"})
    )
    disk = copying.create_disk(DiskSpec(tags=tags(), size_mib=16))
    try:
        with pytest.raises(ShrinkRefusedError):
            copying.resize_disk(disk.id, 8)
        assert copying.resize_disk(disk.id, 16).size_mib == 16  # nothing to grow
        with pytest.raises(InPlaceResizeUnsupportedError, match="in_place_resize"):
            copying.resize_disk(disk.id, 32)
        assert copying.find_disks(disk.tags)[0].size_mib == 16
    finally:
        copying.delete_disk(disk.id)
        copying.close()
    with pytest.raises(PermanentError, match=r"options\.in_place_resize"):
        LocalProvider(ProviderConfig(type="local", options={"in_place_resize": "sometimes"}))


def test_missing_stemcell_says_how_to_build_it(provider: LocalProvider) -> None:
    with pytest.raises(PermanentError, match=r"hack/stemcell\.sh"):
        provider.create_vm(VMSpec(tags=tags(), stemcell="dockyard/stemcell:no-such-build"))
    assert provider.find_vms({}) == [] or all(v.tags["owner-uid"] for v in provider.find_vms({}))


def test_unknown_ids(provider: LocalProvider) -> None:
    assert provider.vm_state("dyvm-000000000000") is VMState.MISSING
    with pytest.raises(NotFoundError):
        provider.docker_client("dyvm-000000000000")
    with pytest.raises(NotFoundError):
        provider.attach_disk("dyvm-000000000000", "disk-000000000000")
    with pytest.raises(NotFoundError):
        provider.resize_disk("disk-000000000000", 64)
    with pytest.raises(NotFoundError):
        provider.set_vm_metadata("../../etc", {"a": "b"})
    provider.delete_vm("dyvm-000000000000")  # deleting what is gone succeeds
    provider.delete_disk("disk-000000000000")


def test_bad_disk_input_names_the_field(provider: LocalProvider) -> None:
    with pytest.raises(PermanentError, match="size_mib"):
        provider.create_disk(DiskSpec(tags=tags(), size_mib=0))
    with pytest.raises(PermanentError, match="tags"):
        provider.create_disk(DiskSpec(tags={"local-root": "x"}, size_mib=16))


def test_vm_engine_runs_a_workload_reachable_at_the_vm_address(
    provider: LocalProvider, vm: VM
) -> None:
    assert vm.state is VMState.RUNNING
    assert vm.address and not vm.address.startswith("172.17.")
    engine = ensure_workload_image(provider, vm.id)
    try:
        engine.containers.run(
            WORKLOAD_IMAGE,
            [
                "sh",
                "-c",
                "mkdir /www && echo hello-from-vm > /www/index.html && "
                "exec httpd -f -p 8080 -h /www",
            ],
            name="web",
            ports={"8080/tcp": 18080},
            detach=True,
        )

        def page() -> bytes:
            with urllib.request.urlopen(f"http://{vm.address}:18080/index.html", timeout=2) as r:
                body: bytes = r.read()
                return body

        assert wait_for(page, timeout=20, what="the VM's published port") == b"hello-from-vm\n"
        # The workload runs in the VM's engine, not the host's.
        host = docker.from_env()
        try:
            assert not host.containers.list(all=True, filters={"name": "^/web$"})
        finally:
            host.close()
    finally:
        engine.containers.get("web").remove(force=True)
        engine.close()


def test_create_vm_is_idempotent_even_from_several_threads(provider: LocalProvider) -> None:
    spec = VMSpec(tags=tags(index="0"), metadata={"purpose": "idempotence"})
    made: list[VM] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            made.append(provider.create_vm(spec))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len({vm.id for vm in made}) == 1
    assert [vm.id for vm in provider.find_vms(spec.tags)] == [made[0].id]
    assert provider.create_vm(spec).id == made[0].id
    # a VM with more tags is a different VM: create matches tags exactly
    wider = provider.create_vm(VMSpec(tags={**spec.tags, "job": "other"}))
    assert wider.id != made[0].id
    assert {vm.id for vm in provider.find_vms(spec.tags)} == {made[0].id, wider.id}
    assert provider.vm_metadata(made[0].id) == {"purpose": "idempotence"}
    provider.set_vm_metadata(made[0].id, {"extra": "1"})
    assert provider.vm_metadata(made[0].id) == {"purpose": "idempotence", "extra": "1"}
    for vm in (made[0], wider):
        provider.delete_vm(vm.id)
        assert provider.vm_state(vm.id) is VMState.MISSING


def test_a_vm_whose_engine_hangs_is_still_running(provider: LocalProvider) -> None:
    created = provider.create_vm(VMSpec(tags=tags()))
    host = docker.from_env()
    try:
        container = host.containers.get(created.id)
        code, _ = container.exec_run(["sh", "-c", "kill -STOP $(pidof dockerd)"])
        assert code == 0
        engine = provider.docker_client(created.id)
        engine.api.timeout = 1
        with pytest.raises((docker.errors.DockerException, OSError)):
            engine.ping()
        engine.close()
        assert provider.vm_state(created.id) is VMState.RUNNING
    finally:
        host.close()
        provider.delete_vm(created.id)
    assert provider.vm_state(created.id) is VMState.MISSING


@pytest.mark.e2e
def test_disk_outlives_its_vm_and_moves_to_a_new_one_with_its_data(
    provider: LocalProvider,
) -> None:
    owner = tags()
    first = provider.create_vm(VMSpec(tags={**owner, "index": "0"}))
    disk = provider.create_disk(DiskSpec(tags={"disk": owner["owner-uid"]}, size_mib=32))
    assert provider.create_disk(DiskSpec(tags={"disk": owner["owner-uid"]}, size_mib=32)) == disk
    attachment = provider.attach_disk(first.id, disk.id)
    assert attachment.device.startswith("/dev/loop")
    assert attachment.mount_path == f"/var/vcap/store/{disk.id}"
    assert provider.attach_disk(first.id, disk.id) == attachment  # idempotent
    data = os.urandom(1_500_000)
    write_file_on_disk(provider, first.id, attachment, "db/blob", data)

    provider.delete_vm(first.id)
    (kept,) = provider.find_disks({"disk": owner["owner-uid"]})
    assert kept.attached_to is None

    second = provider.create_vm(VMSpec(tags={**owner, "index": "0"}))
    assert second.id != first.id
    moved = provider.attach_disk(second.id, disk.id)
    assert checksum(read_file_on_disk(provider, second.id, moved, "db/blob")) == checksum(data)

    # The VM dies behind our back (docker rm -f): a replacement takes the disk over.
    host = docker.from_env()
    try:
        host.containers.get(second.id).remove(force=True, v=True)
    finally:
        host.close()
    assert provider.vm_state(second.id) is VMState.MISSING
    third = provider.create_vm(VMSpec(tags={**owner, "index": "0"}))
    taken = provider.attach_disk(third.id, disk.id)
    assert checksum(read_file_on_disk(provider, third.id, taken, "db/blob")) == checksum(data)
    provider.delete_vm(second.id)  # tidies the folders of the dead VM

    provider.delete_vm(third.id)
    provider.delete_disk(disk.id)
    assert provider.find_disks({"disk": owner["owner-uid"]}) == []


def test_a_disk_attached_to_a_live_vm_is_not_stolen(provider: LocalProvider, vm: VM) -> None:
    other = provider.create_vm(VMSpec(tags=tags()))
    disk = provider.create_disk(DiskSpec(tags=tags(), size_mib=16))
    try:
        provider.attach_disk(vm.id, disk.id)
        with pytest.raises(TransientError, match="detach it first"):
            provider.attach_disk(other.id, disk.id)
        provider.detach_disk(other.id, disk.id)  # not attached there: nothing to do
        assert provider.find_disks(disk.tags)[0].attached_to == vm.id
    finally:
        provider.delete_disk(disk.id)
        provider.delete_vm(other.id)


@pytest.mark.e2e
def test_offline_grow_keeps_data_and_shrink_is_refused(provider: LocalProvider, vm: VM) -> None:
    disk = provider.create_disk(DiskSpec(tags=tags(), size_mib=32))
    try:
        attachment = provider.attach_disk(vm.id, disk.id)
        data = os.urandom(2_000_000)
        write_file_on_disk(provider, vm.id, attachment, "data.bin", data)
        before = filesystem_kib(provider, vm, attachment)

        with pytest.raises(TransientError, match="detach"):
            provider.resize_disk(disk.id, 64)  # attached: the local provider grows offline
        with pytest.raises(ShrinkRefusedError):
            provider.resize_disk(disk.id, 16)
        provider.detach_disk(vm.id, disk.id)
        grown = provider.resize_disk(disk.id, 64)
        assert grown.size_mib == 64
        assert provider.resize_disk(disk.id, 64) == grown  # same size: nothing to do
        with pytest.raises(ShrinkRefusedError):
            provider.resize_disk(disk.id, 32)

        attachment = provider.attach_disk(vm.id, disk.id)
        assert filesystem_kib(provider, vm, attachment) > before + 28 * 1024  # ~32 MiB more
        assert checksum(read_file_on_disk(provider, vm.id, attachment, "data.bin")) == checksum(
            data
        )
    finally:
        provider.delete_disk(disk.id)


@pytest.mark.e2e
def test_grow_waits_while_a_container_still_uses_the_detached_disk(
    provider: LocalProvider, vm: VM
) -> None:
    disk = provider.create_disk(DiskSpec(tags=tags(), size_mib=16))
    engine = ensure_workload_image(provider, vm.id)
    try:
        attachment = provider.attach_disk(vm.id, disk.id)
        user = engine.containers.run(
            WORKLOAD_IMAGE,
            ["sleep", "600"],
            volumes={attachment.mount_path: {"bind": "/data"}},
            detach=True,
        )
        provider.detach_disk(vm.id, disk.id)
        with pytest.raises(TransientError, match="still in use"):
            provider.resize_disk(disk.id, 32)
        user.remove(force=True)
        assert wait_for(lambda: provider.resize_disk(disk.id, 32).size_mib == 32, timeout=10)
    finally:
        engine.close()
        provider.delete_disk(disk.id)


def test_a_fresh_provider_on_the_same_root_rediscovers_everything(
    provider: LocalProvider, vm: VM
) -> None:
    disk = provider.create_disk(DiskSpec(tags=tags(disk="rediscover"), size_mib=16))
    attachment = provider.attach_disk(vm.id, disk.id)
    try:
        restarted = LocalProvider(
            ProviderConfig(type="local", options={"root": str(provider.root)})
        )
        try:
            assert restarted.find_vms(vm.tags) == provider.find_vms(vm.tags)
            (found,) = restarted.find_disks({"disk": "rediscover"})
            assert found.attached_to == vm.id and found.size_mib == 16
            assert restarted.attach_disk(vm.id, disk.id) == attachment
            assert restarted.docker_client(vm.id).ping()
            # create is idempotent across instances too
            assert restarted.create_vm(VMSpec(tags=dict(vm.tags))).id == vm.id
        finally:
            restarted.close()
    finally:
        provider.delete_disk(disk.id)


def test_after_deleting_everything_nothing_is_left(tmp_path: Path) -> None:
    own = make_local_provider(tmp_path)
    try:
        created = own.create_vm(VMSpec(tags=tags()))
        disk = own.create_disk(DiskSpec(tags=tags(), size_mib=16))
        own.attach_disk(created.id, disk.id)
        assert any(item.startswith("network ") for item in local_leftovers(own))
        own.delete_vm(created.id)
        own.delete_disk(disk.id)
        assert local_leftovers(own) == []
    finally:
        purge_local(own)
        own.close()


def test_vms_are_made_after_another_process_released_the_roots_network(tmp_path: Path) -> None:
    """Two operators on one root: when one removes the last VM, the network goes; the other's
    next VM must bring it back (a remembered network let the container be made, never started)."""
    own = make_local_provider(tmp_path)
    other = LocalProvider(ProviderConfig(type="local", options={"root": str(tmp_path)}))
    try:
        first = own.create_vm(VMSpec(tags=tags()))
        other.delete_vm(first.id)
        assert not any(item.startswith("network ") for item in local_leftovers(own))
        second = own.create_vm(VMSpec(tags=tags()))
        assert own.vm_state(second.id) is VMState.RUNNING
        own.delete_vm(second.id)
        assert local_leftovers(own) == []
    finally:
        purge_local(own)
        other.close()
        own.close()


def test_local_cleanup_script_leaves_nothing(tmp_path: Path) -> None:
    own = make_local_provider(tmp_path)
    try:
        created = own.create_vm(VMSpec(tags=tags()))
        own.attach_disk(created.id, own.create_disk(DiskSpec(tags=tags(), size_mib=16)).id)
        script = Path(__file__).resolve().parents[2] / "hack" / "local-cleanup.sh"
        result = subprocess.run(
            ["bash", str(script), str(tmp_path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        assert local_leftovers(own) == []
    finally:
        purge_local(own)
        own.close()
