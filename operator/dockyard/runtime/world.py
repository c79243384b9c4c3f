"""One Job's real world through its provider: VMs, disks and the containers on each VM.

Everything is found by ownership tags/labels, so an operator that restarts rediscovers it all.
Calls are blocking (provider SDKs are); the reconciler runs them in threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import docker
import docker.errors
import requests

from dockyard.providers import (
    VM,
    Attachment,
    Disk,
    DiskSpec,
    NotFoundError,
    Provider,
    ProviderError,
    VMSpec,
    VMState,
)
from dockyard.providers.base import (
    TAG_DEPLOYMENT,
    TAG_DISK,
    TAG_INDEX,
    TAG_JOB,
    TAG_MADE_FOR,
    TAG_ORPHANED_AT,
    TAG_OWNER_UID,
    TAG_REPLACES,
    TAG_SUPERSEDED_BY,
    TAG_VM_CONFIG,
)
from dockyard.runtime import diskfs
from dockyard.runtime.engine import (
    LABEL_CONFIG_HASH,
    LABEL_INDEX,
    LABEL_JOB,
    ContainerConfig,
    Engine,
    EngineRefusedError,
    ObservedContainer,
    Pull,
)

log = logging.getLogger(__name__)

ConcurrentMap = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]


def _serial_map(call: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    return [call(item) for item in items]


DATA_ROOT_IN_VM = "/var/vcap/data"
# What a call to a VM's engine raises when the engine is not there (the SDK lets requests'
# connection errors through unwrapped).
ENGINE_ERRORS = (ProviderError, docker.errors.DockerException, requests.RequestException, OSError)


@dataclass(frozen=True)
class JobIdentity:
    namespace: str
    name: str  # the Job object's name
    uid: str  # the Job object's uid: owner of every VM
    deployment: str = ""
    job: str = ""  # the job's short name inside its deployment

    def vm_tags(self, index: int | None = None) -> dict[str, str]:
        tags = {TAG_OWNER_UID: self.uid}
        if index is not None:
            tags |= {TAG_DEPLOYMENT: self.deployment, TAG_JOB: self.job or self.name}
            tags[TAG_INDEX] = str(index)
        return tags

    def disk_name(self, index: int) -> str:
        """The PersistentDisk name of an instance: stable across VM resurrection."""
        return f"{self.name}-{index}"

    def disk_tags(self, index: int) -> dict[str, str]:
        return {TAG_DISK: f"{self.namespace}.{self.disk_name(index)}"}


@dataclass(frozen=True)
class VolumeMount:
    sub_path: str
    mount_path: str
    read_only: bool = False


@dataclass(frozen=True)
class BindVolume:
    host_path: str  # on the VM; "" means a directory of this container's own
    mount_path: str
    read_only: bool = False


@dataclass(frozen=True)
class Hook:
    """A lifecycle hook: a command exec'd in the container, allowed ``timeout`` seconds."""

    command: tuple[str, ...]
    timeout: float


@dataclass(frozen=True)
class ContainerWant:
    """A container as the spec wants it; disk paths are resolved when it runs. Its hooks run
    from outside the container: changing them recreates nothing."""

    config: ContainerConfig
    depends_on: tuple[str, ...] = ()  # "name" (same job) or "job/name"
    volumes: tuple[VolumeMount, ...] = ()
    bind_volumes: tuple[BindVolume, ...] = ()
    pre_stop: Hook | None = None  # the drain, before every stop the operator makes
    post_start: Hook | None = None  # after every start the operator makes
    #: Where a bind volume's hostPath may lead, symlinks followed (the namespace's policy
    #: allows no more); empty: anywhere.
    host_paths_within: tuple[str, ...] = ()
    #: Upstreams it waits for more than the start of: (reference, "Healthy" | "Completed").
    conditions: tuple[tuple[str, str], ...] = ()
    #: Its upstreams in its own job, with the ports they publish: linked at its VM's address
    #: when it runs (the links to other jobs are in its config).
    local_links: tuple[tuple[str, tuple[int, ...]], ...] = ()
    #: How its image is had (pull policy, registry credentials): not its config.
    pull: Pull = field(default_factory=Pull)

    @property
    def name(self) -> str:
        return self.config.name

    def config_hash(self) -> str:
        described = replace(
            self.config,
            labels={
                **self.config.labels,
                "volumes": repr(self.volumes),
                "bind-volumes": repr(self.bind_volumes),
            },
        )
        return described.config_hash()


def vm_fingerprint(stemcell: str, machine_type: str, salt: str = "") -> str:
    """What a VM is made from, as a short tag value every IaaS takes. ``salt``: what else the
    provider makes VMs from (``vm_config_salt``: the engine CA of aws/gce VMs), so that a change
    of it rolls them like a new stemcell."""
    made_from = f"{stemcell}\n{machine_type}" + (f"\n{salt}" if salt else "")
    return hashlib.sha256(made_from.encode()).hexdigest()[:16]


@dataclass
class InstanceWorld:
    index: int
    vm: VM | None = None
    #: A create-swap-delete's replacement of ``vm``, made and not swapped in yet.
    incoming: VM | None = None
    disk: Disk | None = None
    migration_target: Disk | None = None  # the unfinished copy of ``disk``, if any
    #: Old disks of finished copy-migrations, orphaned for their retention.
    superseded: list[Disk] = field(default_factory=list)
    engine_ok: bool = False
    containers: dict[str, ObservedContainer] = field(default_factory=dict)


class JobWorld:
    """Observe and act on one Job's VMs, disks and containers through a provider."""

    def __init__(
        self,
        provider: Provider,
        identity: JobIdentity,
        image_source: docker.DockerClient | None = None,
        disk_helper_image: str = diskfs.DEFAULT_HELPER_IMAGE,
    ) -> None:
        self.provider = provider
        self.identity = identity
        self.image_source = image_source
        self.disk_helper_image = disk_helper_image
        self._engines: dict[str, Engine] = {}
        self._engines_lock = threading.Lock()  # actions and looks run in threads
        self.duplicates: list[VM] = []  # extra VMs for an index, seen by the last observe()

    # --- observe ---------------------------------------------------------------------------

    def observe(
        self, indices: Sequence[int], map_: ConcurrentMap | None = None
    ) -> dict[int, InstanceWorld]:
        """What exists: every VM of this job (whatever its index) and the disks of ``indices``.
        ``map_`` runs the per-VM and per-disk lookups (at once, given a pool's map)."""
        run_all: ConcurrentMap = map_ or _serial_map
        world: dict[int, InstanceWorld] = {}
        self.duplicates = []
        # A running VM wins when two claim one index (creates are idempotent, so this takes a
        # provider bug or a hand-made VM); the other is reported for deletion.
        found = sorted(
            self.provider.find_vms(self.identity.vm_tags()),
            key=lambda vm: vm.state is not VMState.RUNNING,
        )
        ids = {vm.id for vm in found}
        for vm in found:
            index = int(vm.tags.get(TAG_INDEX, "-1"))
            if index < 0:
                continue
            instance = world.setdefault(index, InstanceWorld(index))
            if vm.tags.get(TAG_REPLACES) in ids and instance.incoming is None:
                instance.incoming = vm  # its predecessor still stands: not the instance's yet
                continue
            if instance.vm is not None:
                log.warning(
                    "two VMs for %s/%d: keeping %s, %s is a duplicate",
                    self.identity.name,
                    index,
                    instance.vm.id,
                    vm.id,
                )
                self.duplicates.append(vm)
                continue
            instance.vm = vm
        running = [i for i in world.values() if i.vm is not None and i.vm.state is VMState.RUNNING]
        run_all(self._look_inside, running)
        wanted = sorted(set(indices) | set(world))
        for index, disks in zip(wanted, run_all(self._disks_of, wanted), strict=True):
            if disks:
                instance = world.setdefault(index, InstanceWorld(index))
                current, instance.superseded = _superseded(disks)
                if current:
                    instance.disk, instance.migration_target = _current_disk(current)
        return world

    def _look_inside(self, instance: InstanceWorld) -> None:
        assert instance.vm is not None
        try:
            engine = self.engine(instance.vm.id)
            instance.containers = engine.containers({LABEL_JOB: self.identity.name})
            instance.engine_ok = True
        except ENGINE_ERRORS as error:  # dying, or gone between the listing and this look
            log.info("engine of VM %s does not answer: %s", instance.vm.id, error)
            self._engines.pop(instance.vm.id, None)

    def _disks_of(self, index: int) -> list[Disk]:
        return self.provider.find_disks(self.identity.disk_tags(index))

    @property
    def vm_config_salt(self) -> str:
        """What else than stemcell and machine type the provider makes VMs from (optional
        provider attribute ``vm_config_salt``; the aws/gce engine CA's fingerprint)."""
        return str(getattr(self.provider, "vm_config_salt", "") or "")

    def engine(self, vm_id: str) -> Engine:
        with self._engines_lock:
            known = self._engines.get(vm_id)
        if known is not None:
            return known
        made = Engine(
            self.provider.docker_client(vm_id),
            self.image_source,
            self.provider.withheld_capabilities,
        )
        with self._engines_lock:
            return self._engines.setdefault(vm_id, made)

    # --- act -------------------------------------------------------------------------------

    def create_vm(
        self,
        index: int,
        stemcell: str,
        machine_type: str,
        made_for: float = 0.0,
        replaces: str = "",
    ) -> VM:
        """The instance's VM, tagged with what it is made from and for (and, for a
        create-swap-delete, the VM it replaces)."""
        tags = {
            **self.identity.vm_tags(index),
            TAG_VM_CONFIG: vm_fingerprint(stemcell, machine_type, self.vm_config_salt),
            TAG_MADE_FOR: f"{made_for:.0f}",
        }
        if replaces:
            tags[TAG_REPLACES] = replaces
        spec = VMSpec(
            tags=tags,
            stemcell=stemcell,
            machine_type=machine_type,
            metadata={"dockyard.dev/job-object": f"{self.identity.namespace}/{self.identity.name}"},
        )
        return self.provider.create_vm(spec)

    def delete_vm(self, vm: VM, disk: Disk | None) -> None:
        if disk is not None and disk.attached_to == vm.id:
            self.provider.detach_disk(vm.id, disk.id)
        self._engines.pop(vm.id, None)
        self.provider.delete_vm(vm.id)

    def delete_vm_id(self, vm_id: str) -> None:
        """Delete a VM known only by id (it may be gone already)."""
        self._engines.pop(vm_id, None)
        with contextlib.suppress(NotFoundError):
            self.provider.delete_vm(vm_id)

    def stop_container(self, vm_id: str, name: str, grace: int = 10) -> None:
        self.engine(vm_id).stop(name, timeout=grace)

    def create_disk(self, index: int, size_mib: int, disk_type: str, snapshot: str = "") -> Disk:
        tags = self.identity.disk_tags(index)
        spec = DiskSpec(tags=tags, size_mib=size_mib, disk_type=disk_type, snapshot=snapshot)
        return self.provider.create_disk(spec)

    def attach_disk(self, vm: VM, disk: Disk) -> Attachment:
        if disk.attached_to and disk.attached_to != vm.id:
            # Still attached to a dead predecessor: take it over (BOSH reattaches on resurrect).
            self.provider.detach_disk(disk.attached_to, disk.id)
        attachment = self.provider.attach_disk(vm.id, disk.id)
        if self.provider.mounts_disks:
            return attachment
        engine = self.engine(vm.id)
        engine.ensure_image(self.disk_helper_image)
        return diskfs.mount(engine.client, self.disk_helper_image, attachment, disk.id)

    def detach_disk(self, vm_id: str, disk_id: str) -> None:
        """Detach, after unmounting it in the VM when the runtime mounted it. A VM whose engine
        does not answer is dead or going: its disk is detached anyway."""
        if not self.provider.mounts_disks:
            try:
                engine = self.engine(vm_id)
                engine.ensure_image(self.disk_helper_image)
                diskfs.unmount(engine.client, self.disk_helper_image, disk_id)
            except diskfs.DiskHelperFailed:
                raise  # the VM answered and could not unmount it (in use): detaching loses data
            except ENGINE_ERRORS as error:
                log.warning("detaching %s without unmounting it: %s", disk_id, error)
        self.provider.detach_disk(vm_id, disk_id)

    def migrate_disk(
        self, index: int, vm: VM, old: Disk, size_mib: int, disk_type: str, retention: float
    ) -> tuple[Disk, Attachment]:
        """Grow by copy (BOSH's disk migration), for a disk its provider cannot grow in place:
        a new disk tagged as replacing ``old``, both mounted on ``vm``, everything copied and
        compared, then ``old`` unmounted, detached and orphaned for ``retention`` seconds
        (deleted at once when 0). Until that mark, ``old`` stays the instance's disk (see
        :func:`_current_disk`), so a crash at any step redoes the copy and loses nothing. The
        disk's users must be gone: their mounts name ``old``."""
        tags = {**self.identity.disk_tags(index), TAG_REPLACES: old.id}
        target = next(iter(self.provider.find_disks(tags)), None)
        if target is not None and target.size_mib < size_mib:
            self.delete_disk(target)  # begun for a smaller size: begin again
            target = None
        if target is None:
            spec = DiskSpec(tags=tags, size_mib=size_mib, disk_type=disk_type or old.disk_type)
            target = self.provider.create_disk(spec)
        self.attach_disk(vm, old)
        attachment = self.attach_disk(vm, target)
        engine = self.engine(vm.id)
        engine.ensure_image(self.disk_helper_image)
        diskfs.copy(engine.client, self.disk_helper_image, old.id, target.id)
        self.detach_disk(vm.id, old.id)
        if retention > 0:  # the one write that makes the copy the instance's disk
            marks = {TAG_ORPHANED_AT: orphan_stamp(), TAG_SUPERSEDED_BY: target.id}
            self.provider.set_disk_metadata(old.id, marks)
        else:
            self.provider.delete_disk(old.id)
        log.info("disk %s migrated to %s (%d MiB)", old.id, target.id, target.size_mib)
        return replace(target, attached_to=vm.id), attachment

    def run_container(
        self,
        vm: VM,
        index: int,
        want: ContainerWant,
        attachment: Attachment | None,
    ) -> ObservedContainer:
        binds = list(want.config.binds)
        if want.volumes:
            if attachment is None or attachment.mount_path is None:
                raise ProviderError(f"container {want.name} needs the persistent disk mounted")
            for volume in want.volumes:
                sub_path = volume.sub_path or want.name
                source = f"{attachment.mount_path}/{sub_path}"
                binds.append(f"{source}:{volume.mount_path}{':ro' if volume.read_only else ''}")
        for number, bind in enumerate(want.bind_volumes):
            # Each bind volume gets its own host directory unless one is named (docker-boshrelease
            # mapped them all to one directory: their bug #45).
            source = bind.host_path or (
                f"{DATA_ROOT_IN_VM}/{self.identity.name}/{want.name}/{number}"
            )
            if bind.host_path and want.host_paths_within:
                source = self._confined(vm, want, number, bind.host_path)
            binds.append(f"{source}:{bind.mount_path}{':ro' if bind.read_only else ''}")
        env, files = self._identity(vm, index, want)
        config = replace(
            want.config,
            binds=tuple(binds),
            env={**want.config.env, **env},
            files=(*want.config.files, *files),
        )
        labels: Mapping[str, str] = {
            LABEL_JOB: self.identity.name,
            LABEL_INDEX: str(index),
            LABEL_CONFIG_HASH: want.config_hash(),
        }
        return self.engine(vm.id).run(config, labels, want.pull)

    def run_hook(self, vm: VM, name: str, hook: Hook) -> str | None:
        """Run a lifecycle hook in the container: None when it succeeded, else why not."""
        return self.engine(vm.id).run_hook(name, hook.command, hook.timeout)

    def _identity(
        self, vm: VM, index: int, want: ContainerWant
    ) -> tuple[dict[str, str], list[tuple[str, str, int]]]:
        """What a container learns of where it runs, and its links to upstreams of its own job
        (on its own VM): its VM, not its spec, so not in its config hash."""
        address = vm.address or ""
        env = {
            "DOCKYARD_DEPLOYMENT": self.identity.deployment,
            "DOCKYARD_JOB": self.identity.job or self.identity.name,
            "DOCKYARD_INDEX": str(index),
            "DOCKYARD_ADDRESS": address,
        }
        files: list[tuple[str, str, int]] = []
        job = self.identity.job or self.identity.name
        for upstream, ports in want.local_links:
            endpoints = [f"{address}:{port}" for port in ports] if ports else [address]
            name, value, path = link(job, upstream, endpoints)
            env[name] = value
            files.append((path, "\n".join(endpoints) + "\n", 0o644))
        return env, files

    def _confined(self, vm: VM, want: ContainerWant, number: int, host_path: str) -> str:
        """Where ``host_path`` really leads on the VM, when that stays within what the policy
        allows: a symlink planted there (by another container) cannot lead a bind to the VM's
        engine. The resolved path is what is bound."""
        engine = self.engine(vm.id)
        engine.ensure_image(self.disk_helper_image)
        real = diskfs.resolve(engine.client, self.disk_helper_image, host_path)
        if not any(
            real == root or real.startswith(root.rstrip("/") + "/")
            for root in want.host_paths_within
        ):
            raise EngineRefusedError(
                f"bindVolumes[{number}].hostPath {host_path} leads to {real} on the VM, outside "
                f"what the namespace's policy allows ({', '.join(want.host_paths_within)})"
            )
        return real

    def restart_container(self, vm: VM, name: str, grace: int = 10) -> ObservedContainer:
        return self.engine(vm.id).restart(name, timeout=grace)

    def remove_container(self, vm: VM, name: str) -> None:
        self.engine(vm.id).remove(name)

    def delete_disk(self, disk: Disk) -> None:
        if disk.attached_to:
            self.detach_disk(disk.attached_to, disk.id)
        self.provider.delete_disk(disk.id)


LINKS_DIR = "/.dockyard/links"


def link(job: str, container: str, endpoints: Sequence[str]) -> tuple[str, str, str]:
    """How a dependent sees an upstream: (env name, "a:p,b:p", the file with one per line):
    DOCKYARD_LINK_BACKEND_API and /.dockyard/links/backend.api."""
    name = f"DOCKYARD_LINK_{job}_{container}".upper().replace("-", "_")
    return name, ",".join(endpoints), f"{LINKS_DIR}/{job}.{container}"


def orphan_stamp() -> str:
    """The orphan mark's value: when it was orphaned (epoch seconds)."""
    return str(int(time.time()))


def _superseded(disks: Sequence[Disk]) -> tuple[list[Disk], list[Disk]]:
    """An instance's disks, and the old disks of finished copy-migrations among them."""
    old = [d for d in disks if TAG_SUPERSEDED_BY in d.tags]
    return [d for d in disks if d not in old], old


def _current_disk(disks: Sequence[Disk]) -> tuple[Disk, Disk | None]:
    """An instance's disk among those carrying its tags, and an unfinished migration's new
    disk: one that replaces a disk still there is not trusted yet."""
    ids = {disk.id for disk in disks}
    unfinished = [d for d in disks if d.tags.get(TAG_REPLACES) in ids]
    current = [d for d in disks if d not in unfinished] or list(disks)
    return current[0], unfinished[0] if unfinished else None
