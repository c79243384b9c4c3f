"""The in-VM filesystem step of cloud disks (aws, gce attach bare block devices), run for real:
a local-provider VM stands in for the cloud VM, a loop device on the host for the EBS volume
(made visible in the VM under a cloud-like name), and the helper runs the stemcell's own
e2fsprogs in the VM's mount namespace, as it would on a cloud VM."""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dockyard.providers import ProviderConfig, VMSpec, make_provider
from dockyard.providers.base import Attachment, ProviderError
from dockyard.runtime import diskfs
from dockyard.runtime.engine import Engine

pytestmark = [pytest.mark.e2e]

HELPER = "dockyard/busybox:1"  # what the stemcell's workloads use; any image with nsenter works
MIB = 1024 * 1024


@dataclass
class Volume:
    """A "cloud volume": a sparse file on a host loop device, a block device node in the VM."""

    file: Path
    loop: str
    device_in_vm: str


@pytest.fixture
def vm(stemcell: None, docker_client: Any) -> Iterator[tuple[Any, Engine, str]]:
    provider = make_provider(ProviderConfig(type="local"))
    tags = {"owner-uid": f"diskfs-{uuid.uuid4().hex[:8]}", "job": "diskfs", "index": "0"}
    created = provider.create_vm(VMSpec(tags=tags))
    engine = Engine(provider.docker_client(created.id), image_source=docker_client)
    engine.ensure_image(HELPER)
    try:
        yield provider, engine, created.id
    finally:
        engine.client.close()
        provider.delete_vm(created.id)
        provider.close()


def attach_volume(docker_client: Any, vm_id: str, tmp: Path, name: str, size_mib: int) -> Volume:
    file = tmp / f"{name}.img"
    with file.open("wb") as f:
        f.truncate(size_mib * MIB)
    loop = subprocess.run(
        ["losetup", "-f", "--show", str(file)], check=True, capture_output=True, text=True
    ).stdout.strip()
    rdev = os.stat(loop).st_rdev
    node = f"/dev/{name}"
    vm = docker_client.containers.get(vm_id)
    code, out = vm.exec_run(["mknod", node, "b", str(os.major(rdev)), str(os.minor(rdev))])
    assert code == 0, out
    return Volume(file, loop, node)


AttachVolume = Callable[[str, int], Volume]


@pytest.fixture
def attach(
    vm: tuple[Any, Engine, str], docker_client: Any, tmp_path: Path
) -> Iterator[AttachVolume]:
    """Make a volume of ``size_mib`` visible in the VM as /dev/<name>; detached afterwards."""
    made: list[Volume] = []

    def make(name: str, size_mib: int) -> Volume:
        made.append(attach_volume(docker_client, vm[2], tmp_path, name, size_mib))
        return made[-1]

    yield make
    for volume in made:
        subprocess.run(["losetup", "-d", volume.loop], check=False)


def in_vm(docker_client: Any, vm_id: str, *command: str) -> str:
    code, out = docker_client.containers.get(vm_id).exec_run(list(command))
    assert code == 0, out
    return str(out.decode())


def workload(engine: Engine, mount_path: str, script: str) -> str:
    out = engine.client.containers.run(
        HELPER, ["sh", "-c", script], volumes=[f"{mount_path}/db:/data"], remove=True
    )
    return str(out.decode())


def test_a_blank_volume_is_formatted_mounted_grown_and_keeps_its_data(
    vm: tuple[Any, Engine, str], docker_client: Any, attach: AttachVolume
) -> None:
    _, engine, vm_id = vm
    volume = attach("nvme1n1", 64)
    # An EBS volume on a Nitro VM: attached as /dev/sdf, seen as /dev/nvme1n1, found by serial.
    by_id = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc123"
    in_vm(
        docker_client, vm_id, "sh", "-c", f"mkdir -p /dev/disk/by-id && ln -s ../../nvme1n1 {by_id}"
    )
    attached = Attachment(device="/dev/sdf", serial="vol0abc123")

    mounted = diskfs.mount(engine.client, HELPER, attached, "vol-0abc123")
    assert mounted.mount_path == "/var/vcap/store/vol-0abc123"
    assert mounted.device == volume.device_in_vm
    blob = workload(
        engine,
        mounted.mount_path,
        "head -c 4000000 /dev/urandom > /data/blob && sha256sum /data/blob",
    ).split()[0]

    # Idempotent: a second mount (the next pass, a restarted operator) neither formats nor fails.
    assert diskfs.mount(engine.client, HELPER, attached, "vol-0abc123") == mounted
    assert workload(engine, mounted.mount_path, "sha256sum /data/blob").split()[0] == blob

    # The volume grows (ModifyVolume), the filesystem follows, the data stays.
    diskfs.unmount(engine.client, HELPER, "vol-0abc123")
    with volume.file.open("r+b") as f:
        f.truncate(128 * MIB)
    subprocess.run(["losetup", "-c", volume.loop], check=True)
    grown = diskfs.mount(engine.client, HELPER, attached, "vol-0abc123")
    size_kib = int(
        in_vm(docker_client, vm_id, "df", "-k", grown.mount_path).splitlines()[-1].split()[1]
    )
    assert size_kib > 100 * 1024, f"the filesystem did not grow: {size_kib} KiB"
    assert workload(engine, grown.mount_path, "sha256sum /data/blob").split()[0] == blob
    assert hashlib.sha256(b"").hexdigest() != blob

    diskfs.unmount(engine.client, HELPER, "vol-0abc123")
    mounts = in_vm(docker_client, vm_id, "cat", "/proc/mounts")
    assert grown.mount_path not in mounts
    helpers = engine.client.containers.list(all=True, filters={"label": diskfs.HELPER_LABEL})
    assert helpers == [], "a helper container was left behind"


def test_a_volume_with_data_but_no_known_filesystem_is_never_formatted(
    vm: tuple[Any, Engine, str], attach: AttachVolume
) -> None:
    _, engine, _ = vm
    volume = attach("xvdg", 16)
    with volume.file.open("r+b") as f:
        f.write(b"someone's data, in a format blkid does not know" * 1000)
    before = hashlib.sha256(volume.file.read_bytes()).hexdigest()

    with pytest.raises(diskfs.DiskHelperFailed, match="refusing to format"):
        diskfs.mount(engine.client, HELPER, Attachment(device="/dev/xvdg"), "vol-data")
    assert hashlib.sha256(volume.file.read_bytes()).hexdigest() == before


def test_a_missing_device_is_a_clear_error(vm: tuple[Any, Engine, str]) -> None:
    _, engine, _ = vm
    with pytest.raises(diskfs.DiskHelperFailed, match="/dev/sdz not found"):
        diskfs.mount(engine.client, HELPER, Attachment(device="/dev/sdz", serial="vol0nope"), "x")


def test_a_migration_copy_is_complete_verified_and_restartable(
    vm: tuple[Any, Engine, str], attach: AttachVolume
) -> None:
    _, engine, _ = vm
    attach("xvdh", 32)
    attach("xvdi", 64)
    old = diskfs.mount(engine.client, HELPER, Attachment(device="/dev/xvdh"), "vol-old")
    new = diskfs.mount(engine.client, HELPER, Attachment(device="/dev/xvdi"), "vol-new")
    assert old.mount_path and new.mount_path
    listing = (
        "cd /data && find . | sort && ls -ln sub/secret && readlink link && sha256sum blob sub/*"
    )
    before = workload(
        engine,
        old.mount_path,
        "mkdir -p /data/sub && head -c 3000000 /dev/urandom > /data/blob"
        " && echo hi > /data/sub/secret && chmod 600 /data/sub/secret"
        " && chown 1000:1000 /data/sub/secret && ln -s sub/secret /data/link"
        f" && {listing}",
    )
    # What a copy cut short leaves on the new disk: thrown away, not merged.
    workload(engine, new.mount_path, "echo half > /data/blob && echo stray > /data/stray")

    diskfs.copy(engine.client, HELPER, "vol-old", "vol-new")
    assert workload(engine, new.mount_path, listing) == before
    assert workload(engine, old.mount_path, listing) == before  # the source is untouched

    with pytest.raises(diskfs.DiskHelperFailed, match="vol-gone is not a mounted disk"):
        diskfs.copy(engine.client, HELPER, "vol-gone", "vol-new")
    with pytest.raises(ProviderError, match="no result in 1s"):
        diskfs._in_vm(engine.client, HELPER, "sleep 30", timeout=1)
    for disk in ("vol-old", "vol-new"):
        diskfs.unmount(engine.client, HELPER, disk)
    helpers = engine.client.containers.list(all=True, filters={"label": diskfs.HELPER_LABEL})
    assert helpers == [], "a helper container was left behind"
