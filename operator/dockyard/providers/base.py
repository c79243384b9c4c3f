"""The provider contract: Dockyard's one IaaS seam, as small as BOSH's CPI.

Every call is synchronous (boto3, google-cloud-compute and the Docker SDK are); callers on the
event loop use ``asyncio.to_thread``. Every create is idempotent: a provider looks its resource up
by tags first, so an operator that crashes between "create" and "record in status" never makes a
second VM or disk. Deletes of something already gone succeed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import docker

# Logical tag keys. Each provider maps them onto what its IaaS allows (Docker labels and EC2 tags
# take them as ``dockyard.dev/<key>``; GCE labels as ``dockyard-<key>``, lower-cased).
TAG_OWNER_UID = "owner-uid"
TAG_DEPLOYMENT = "deployment"
TAG_JOB = "job"
TAG_INDEX = "index"
# What a VM was made from (a fingerprint of its stemcell and VM type) and for which recreate
# request (epoch seconds, "0" for none): a VM made from something else is rolled.
TAG_VM_CONFIG = "vm-config"
TAG_MADE_FOR = "made-for"
TAG_DISK = "disk"
# On the new disk of a copy-migration: the id of the disk it replaces. While that disk exists it
# is still the instance's disk, and this one an unfinished copy.
TAG_REPLACES = "replaces"
# On a disk no longer wanted (reclaim policy Delete, a retention): when it was orphaned (epoch
# seconds). It is deleted once the retention has passed; a scale-up before that adopts it again.
TAG_ORPHANED_AT = "orphaned-at"
# On the old disk of a finished copy-migration, orphaned for its retention: the disk that took
# its place (it is no longer the instance's disk, whatever its other tags say).
TAG_SUPERSEDED_BY = "superseded-by"
# On a snapshot: ``<namespace>.<DiskSnapshot name>``, its identity (snapshot_disk is idempotent).
TAG_SNAPSHOT = "snapshot"


class ProviderError(Exception):
    """Base of every error a provider raises on purpose."""


class NotFoundError(ProviderError):
    """The VM or disk does not exist (any more)."""


class TransientError(ProviderError):
    """Worth retrying later: quota, throttling, timeouts, a resource still busy."""

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(ProviderError):
    """Retrying the same call will not help: bad input, refused operation."""


class ShrinkRefusedError(PermanentError):
    """A disk never shrinks."""


class InPlaceResizeUnsupportedError(PermanentError):
    """The provider cannot grow this disk in place; the caller copy-migrates instead."""


class VMState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    STOPPED = "stopped"
    MISSING = "missing"  # terminated, deleted, or never existed


# Where persistent disks are mounted inside a VM, as in BOSH: ``<DISK_ROOT_IN_VM>/<disk id>``.
DISK_ROOT_IN_VM = "/var/vcap/store"

# What replaces --privileged where the capability bounding set lacks CAP_SYS_RESOURCE (as on
# this project's CI machines and inside the local provider's VMs): every other capability, no
# seccomp/AppArmor confinement and access to all devices.
STAND_IN_FLAGS: dict[str, Any] = {
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
    "device_cgroup_rules": ["a *:* rwm"],
}


@dataclass(frozen=True)
class VMSpec:
    """What to create. ``tags`` identify the VM: create_vm returns an existing VM with them."""

    tags: Mapping[str, str]
    stemcell: str = ""  # provider-specific image: local image tag, AMI id, GCE image URL
    machine_type: str = ""  # "" means the provider's default
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VM:
    id: str
    state: VMState
    tags: Mapping[str, str]
    address: str | None = None


@dataclass(frozen=True)
class DiskSpec:
    """What to create. ``tags`` identify the disk: create_disk returns the existing one."""

    tags: Mapping[str, str]
    size_mib: int
    disk_type: str = ""  # "" means the provider's default
    snapshot: str = ""  # a snapshot id: the new disk starts with its data (at least its size)


@dataclass(frozen=True)
class Disk:
    id: str
    size_mib: int
    tags: Mapping[str, str]
    attached_to: str | None = None  # VM id
    disk_type: str = ""


@dataclass(frozen=True)
class Snapshot:
    """A point-in-time copy of a disk. ``ready``: complete, usable for a restore."""

    id: str
    disk_id: str
    size_mib: int
    tags: Mapping[str, str]
    ready: bool = True


@dataclass(frozen=True)
class Attachment:
    """Where an attached disk shows up: the block device and, when the provider mounts it
    itself (local), the mount point inside the VM that containers bind from. Otherwise (aws,
    gce) the runtime mounts it (``runtime/diskfs.py``), finding the device by ``serial`` in
    ``/dev/disk/by-id`` when the kernel names it differently (EBS on Nitro: ``/dev/nvme1n1``)."""

    device: str
    mount_path: str | None = None
    serial: str | None = None


@dataclass(frozen=True)
class ProviderConfig:
    """Everything a provider is built from; ``credentials`` come from a Secret and are never
    logged (their values are masked in ``__repr__``)."""

    type: str
    region: str = ""
    zone: str = ""
    endpoint: str = ""  # override for the IaaS API (moto, a test fake)
    options: Mapping[str, str] = field(default_factory=dict)
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)


@runtime_checkable
class Provider(Protocol):
    """The CPI-sized contract every IaaS implements."""

    #: True when ``resize_disk`` works on an attached disk (EBS, GCE PD). False (local) means the
    #: caller must stop the disk's users and detach it before resizing.
    resizes_attached_disks: bool
    #: True when ``attach_disk`` formats and mounts the disk itself and returns its
    #: ``mount_path`` (local). False (aws, gce): it attaches a block device; the runtime formats
    #: a blank one, mounts it in the VM, grows it after a resize and unmounts it before a detach.
    mounts_disks: bool
    #: Capabilities this provider's VMs cannot give their containers (local VMs on a host that
    #: refuses --privileged lack SYS_RESOURCE): a privileged container gets every other one.
    withheld_capabilities: frozenset[str]
    # Optional, read with getattr (not part of the protocol, so plug-ins need not have it):
    # ``vm_config_salt: str``, what else than stemcell and machine type the provider makes VMs
    # from (aws/gce: the engine CA's fingerprint). The runtime folds it into each VM's recorded
    # config, so a change of it replaces the VMs through the rollout like a new stemcell.

    def create_vm(self, spec: VMSpec) -> VM: ...

    def delete_vm(self, vm_id: str) -> None: ...

    def find_vms(self, tags: Mapping[str, str]) -> list[VM]:
        """VMs (not MISSING) that carry all of ``tags``."""
        ...

    def vm_state(self, vm_id: str) -> VMState: ...

    def set_vm_metadata(self, vm_id: str, metadata: Mapping[str, str]) -> None: ...

    def create_disk(self, spec: DiskSpec) -> Disk: ...

    def attach_disk(self, vm_id: str, disk_id: str) -> Attachment:
        """Idempotent: a disk already attached to ``vm_id`` returns its Attachment again."""
        ...

    def detach_disk(self, vm_id: str, disk_id: str) -> None: ...

    def resize_disk(self, disk_id: str, size_mib: int) -> Disk:
        """Grow to at least ``size_mib``. Raises ShrinkRefusedError when smaller than now and
        InPlaceResizeUnsupportedError when the caller must copy-migrate."""
        ...

    def delete_disk(self, disk_id: str) -> None: ...

    def find_disks(self, tags: Mapping[str, str]) -> list[Disk]: ...

    def snapshot_disk(self, disk_id: str, tags: Mapping[str, str]) -> Snapshot:
        """A consistent snapshot of the disk, attached or not (crash-consistent: as if the
        machine stopped at that instant). Idempotent: ``tags`` identify it."""
        ...

    def find_snapshots(self, tags: Mapping[str, str]) -> list[Snapshot]: ...

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Gone already is fine."""
        ...

    def set_disk_metadata(self, disk_id: str, tags: Mapping[str, str | None]) -> Disk:
        """Set these tags on a disk (None removes one), as BOSH's CPI ``set_disk_metadata``:
        how a disk is orphaned and adopted again. Returns the disk as it is then."""
        ...

    def docker_client(self, vm_id: str) -> docker.DockerClient:
        """A client for the Docker engine inside the VM."""
        ...

    def close(self) -> None:
        """Release clients and connections (not resources)."""
        ...
