"""LocalProvider: the CPI on this host's Docker engine."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types

from dockyard.providers.base import (
    VM,
    Attachment,
    Disk,
    DiskSpec,
    NotFoundError,
    PermanentError,
    ProviderConfig,
    ShrinkRefusedError,
    TransientError,
    VMSpec,
    VMState,
)
from dockyard.providers.local.disks import DiskRecord, DiskStore, run

log = logging.getLogger(__name__)

LABEL = "dockyard.dev/"
LABEL_ROOT = LABEL + "local-root"
DEFAULT_ROOT = "/var/lib/dockyard/local"
DEFAULT_STEMCELL = "dockyard/stemcell:latest"
DISK_ROOT_IN_VM = "/var/vcap/store"
ENGINE_READY_TIMEOUT = 30.0

# What replaces --privileged where the capability bounding set lacks CAP_SYS_RESOURCE
# (see docs/providers.md): every other capability, no seccomp/AppArmor confinement, writable
# /proc and /sys paths, and access to all devices.
STAND_IN_FLAGS: dict[str, Any] = {
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
    "device_cgroup_rules": ["a *:* rwm"],
}
_STATES = {
    "running": VMState.RUNNING,
    "created": VMState.PENDING,
    "restarting": VMState.PENDING,
    "paused": VMState.STOPPED,
    "exited": VMState.STOPPED,
    "dead": VMState.STOPPED,
    "removing": VMState.STOPPED,
}


class LocalProvider:
    resizes_attached_disks = False

    def __init__(self, config: ProviderConfig) -> None:
        self.root = Path(config.options.get("root", DEFAULT_ROOT))
        self.network = config.options.get("network", "dockyard-local")
        self.default_stemcell = config.options.get("stemcell", DEFAULT_STEMCELL)
        self.root_id = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
        self.client = docker.from_env(timeout=60)
        self.disks = DiskStore(self.root / "disks")
        self._lock = threading.RLock()
        self._vm_flags: dict[str, Any] | None = None
        (self.root / "vms").mkdir(parents=True, exist_ok=True)
        self._ensure_shared_mount_folder()
        self._ensure_network()

    # --- set-up --------------------------------------------------------------------------------

    @property
    def shared(self) -> Path:
        return self.root / "mnt"

    def _ensure_shared_mount_folder(self) -> None:
        """Disks are mounted below a folder bind-mounted onto itself and made rshared, so a mount
        made there later shows up in every VM that has its subfolder as an rslave bind."""
        self.shared.mkdir(parents=True, exist_ok=True)
        # os.path.ismount cannot see a bind of a folder onto itself (same device): ask the kernel.
        if not is_mount_point(self.shared):
            run("mount", "--bind", str(self.shared), str(self.shared))
            run("mount", "--make-rshared", str(self.shared))

    def _ensure_network(self) -> None:
        try:
            self.client.networks.get(self.network)
        except docker.errors.NotFound:
            try:
                self.client.networks.create(
                    self.network, driver="bridge", labels={LABEL + "local-network": "true"}
                )
            except docker.errors.APIError as error:
                if error.status_code != 409:  # created meanwhile by another provider instance
                    raise TransientError(f"creating network {self.network}: {error}") from error

    def _flags(self, image: str) -> dict[str, Any]:
        """--privileged when this host allows it, else the stand-in (decided once)."""
        if self._vm_flags is None:
            probe = self.client.containers.create(
                image, entrypoint=["/bin/true"], privileged=True, labels={LABEL_ROOT: "probe"}
            )
            try:
                probe.start()
                self._vm_flags = {"privileged": True}
            except docker.errors.APIError:
                log.info("--privileged is refused here; VMs use the stand-in flags")
                self._vm_flags = dict(STAND_IN_FLAGS)
            finally:
                probe.remove(force=True)
        return self._vm_flags

    # --- VMs -----------------------------------------------------------------------------------

    def _vm_dir(self, vm_id: str) -> Path:
        return self.root / "vms" / vm_id

    def _labels(self, tags: Mapping[str, str]) -> dict[str, str]:
        return {LABEL_ROOT: self.root_id, **{LABEL + k: v for k, v in tags.items()}}

    def _vm(self, container: Any) -> VM:
        labels = container.labels or {}
        tags = {
            k[len(LABEL) :]: v for k, v in labels.items() if k.startswith(LABEL) and k != LABEL_ROOT
        }
        networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
        address = (networks.get(self.network) or {}).get("IPAddress") or None
        return VM(
            id=container.name,
            state=_STATES.get(container.status, VMState.STOPPED),
            tags=tags,
            address=address,
        )

    def _container(self, vm_id: str) -> Any:
        try:
            container = self.client.containers.get(vm_id)
        except docker.errors.NotFound as error:
            raise NotFoundError(f"VM {vm_id} does not exist") from error
        except docker.errors.APIError as error:
            raise TransientError(f"inspecting VM {vm_id}: {error}") from error
        if (container.labels or {}).get(LABEL_ROOT) != self.root_id:
            raise NotFoundError(f"VM {vm_id} does not exist")
        return container

    def find_vms(self, tags: Mapping[str, str]) -> list[VM]:
        filters = [f"{k}={v}" for k, v in self._labels(tags).items()]
        try:
            found = self.client.containers.list(all=True, filters={"label": filters})
        except docker.errors.APIError as error:
            raise TransientError(f"listing VMs: {error}") from error
        return sorted((self._vm(c) for c in found), key=lambda vm: vm.id)

    def create_vm(self, spec: VMSpec) -> VM:
        with self._lock:
            existing = self.find_vms(spec.tags)
            if existing:
                return existing[0]
            identity = json.dumps(sorted(spec.tags.items())) + self.root_id
            vm_id = "dyvm-" + hashlib.sha256(identity.encode()).hexdigest()[:12]
            stemcell = spec.stemcell or self.default_stemcell
            try:
                self.client.images.get(stemcell)
            except docker.errors.ImageNotFound as error:
                raise PermanentError(
                    f"stemcell image {stemcell!r} is missing: build it with bash hack/stemcell.sh"
                ) from error
            vm_dir = self._vm_dir(vm_id)
            (vm_dir / "run").mkdir(parents=True, exist_ok=True)
            (self.shared / vm_id).mkdir(parents=True, exist_ok=True)
            (vm_dir / "metadata.json").write_text(json.dumps(dict(spec.metadata)))
            labels = self._labels(spec.tags)
            api = self.client.api
            host_config = api.create_host_config(
                mounts=[
                    docker.types.Mount(
                        "/var/lib/docker", f"{vm_id}-docker", type="volume", labels=labels
                    ),
                    docker.types.Mount("/dockyard/run", str(vm_dir / "run"), type="bind"),
                    docker.types.Mount(
                        DISK_ROOT_IN_VM, str(self.shared / vm_id), type="bind", propagation="rslave"
                    ),
                ],
                **self._flags(stemcell),
            )
            if "privileged" not in self._flags(stemcell):
                # `--security-opt systempaths=unconfined`: the engine API spells it this way.
                host_config["MaskedPaths"], host_config["ReadonlyPaths"] = [], []
            try:
                created = api.create_container(
                    stemcell,
                    name=vm_id,
                    hostname=vm_id,
                    labels=labels,
                    host_config=host_config,
                    networking_config=api.create_networking_config(
                        {self.network: api.create_endpoint_config()}
                    ),
                )
                api.start(created["Id"])
            except docker.errors.APIError as error:
                if error.status_code != 409:
                    raise TransientError(f"creating VM {vm_id}: {error}") from error
            self._wait_for_engine(vm_id)
            return self._vm(self._container(vm_id))

    def _wait_for_engine(self, vm_id: str) -> None:
        deadline = time.monotonic() + ENGINE_READY_TIMEOUT
        socket = self._vm_dir(vm_id) / "run" / "docker.sock"
        while time.monotonic() < deadline:
            if socket.exists():
                client = docker.DockerClient(base_url=f"unix://{socket}", timeout=2)
                try:
                    if client.ping():
                        return
                except docker.errors.DockerException:
                    pass
                finally:
                    client.close()
            if self._container(vm_id).status not in ("running", "created"):
                raise TransientError(f"VM {vm_id} stopped while booting")
            time.sleep(0.05)
        raise TransientError(f"the engine of VM {vm_id} did not answer in {ENGINE_READY_TIMEOUT}s")

    def delete_vm(self, vm_id: str) -> None:
        with self._lock:
            for record in self.disks.all():
                if record.attached_to == vm_id:
                    self._detach(record)
            try:
                self._container(vm_id).remove(force=True, v=True)
            except NotFoundError:
                pass
            except docker.errors.APIError as error:
                if error.status_code != 404:
                    raise TransientError(f"removing VM {vm_id}: {error}") from error
            try:
                self.client.volumes.get(f"{vm_id}-docker").remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as error:
                raise TransientError(f"removing the volume of VM {vm_id}: {error}") from error
            shutil.rmtree(self._vm_dir(vm_id), ignore_errors=True)
            shared = self.shared / vm_id
            if shared.exists() and not any(os.path.ismount(p) for p in shared.iterdir()):
                shutil.rmtree(shared, ignore_errors=True)

    def vm_state(self, vm_id: str) -> VMState:
        try:
            return self._vm(self._container(vm_id)).state
        except NotFoundError:
            return VMState.MISSING

    def set_vm_metadata(self, vm_id: str, metadata: Mapping[str, str]) -> None:
        self._container(vm_id)
        path = self._vm_dir(vm_id) / "metadata.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**current, **metadata}))

    def docker_client(self, vm_id: str) -> docker.DockerClient:
        socket = self._vm_dir(vm_id) / "run" / "docker.sock"
        if not socket.exists():
            raise NotFoundError(f"VM {vm_id} has no engine socket")
        return docker.DockerClient(base_url=f"unix://{socket}", timeout=30)

    # --- disks ---------------------------------------------------------------------------------

    def _disk(self, record: DiskRecord) -> Disk:
        return Disk(
            id=record.id,
            size_mib=record.size_mib,
            tags=dict(record.tags),
            attached_to=record.attached_to,
            disk_type=record.disk_type,
        )

    def _record(self, disk_id: str) -> DiskRecord:
        record = self.disks.load(disk_id)
        if record is None:
            raise NotFoundError(f"disk {disk_id} does not exist")
        return record

    def create_disk(self, spec: DiskSpec) -> Disk:
        with self._lock:
            existing = self.disks.find(spec.tags)
            if existing:
                return self._disk(existing[0])
            return self._disk(self.disks.create(spec.tags, spec.size_mib, spec.disk_type))

    def find_disks(self, tags: Mapping[str, str]) -> list[Disk]:
        return [self._disk(r) for r in self.disks.find(tags)]

    def attach_disk(self, vm_id: str, disk_id: str) -> Attachment:
        with self._lock:
            record = self._record(disk_id)
            if record.attached_to not in (None, vm_id):
                raise TransientError(
                    f"disk {disk_id} is attached to VM {record.attached_to}; detach it first"
                )
            self._container(vm_id)
            mount_point = self.shared / vm_id / disk_id
            device = self.disks.mount(record, mount_point)
            record.attached_to, record.mount_point = vm_id, str(mount_point)
            self.disks.save(record)
            return Attachment(device=device, mount_path=f"{DISK_ROOT_IN_VM}/{disk_id}")

    def _detach(self, record: DiskRecord) -> None:
        self.disks.unmount(record)
        record.attached_to, record.mount_point = None, None
        self.disks.save(record)

    def detach_disk(self, vm_id: str, disk_id: str) -> None:
        with self._lock:
            record = self._record(disk_id)
            if record.attached_to == vm_id:
                self._detach(record)

    def resize_disk(self, disk_id: str, size_mib: int) -> Disk:
        with self._lock:
            record = self._record(disk_id)
            if size_mib < record.size_mib:
                raise ShrinkRefusedError(
                    f"disk {disk_id} is {record.size_mib} MiB; it never shrinks to {size_mib} MiB"
                )
            if size_mib == record.size_mib:
                return self._disk(record)
            if record.attached_to is not None:
                raise TransientError(
                    f"disk {disk_id} is attached to {record.attached_to}: the local provider "
                    "grows disks offline, detach it first"
                )
            self.disks.grow(record, size_mib)
            record.size_mib = size_mib
            self.disks.save(record)
            return self._disk(record)

    def delete_disk(self, disk_id: str) -> None:
        with self._lock:
            record = self.disks.load(disk_id)
            if record is None:
                return
            if record.attached_to is not None:
                self._detach(record)
            self.disks.delete(record)

    def close(self) -> None:
        self.client.close()


def is_mount_point(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split()[4] == target for line in mountinfo)


def leftovers(provider: LocalProvider) -> list[str]:
    """Anything of this provider's root still on the host (for tests and hack/local-cleanup.sh)."""
    found = [f"VM {vm.id}" for vm in provider.find_vms({})]
    volumes = provider.client.volumes.list(filters={"label": f"{LABEL_ROOT}={provider.root_id}"})
    found += [f"volume {v.name}" for v in volumes]
    found += [f"disk {r.id}" for r in provider.disks.all()]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    found += [f"loop {line}" for line in loops.splitlines() if str(provider.disks.root) in line]
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    found += [f"mount {m.split()[1]}" for m in mounts if f"{provider.shared}/" in m.split()[1]]
    return found
