"""LocalProvider: the CPI on this host's Docker engine.

A VM is a container of the stemcell (hack/stemcell.sh) running its own Docker engine, reached
through a unix socket in a per-VM host folder. A disk is ext4 in a sparse file, mounted on the
host below ``<root>/mnt/<vm>/`` (a folder made rshared), which the VM sees as ``/var/vcap/store``
(rslave): disks come and go in a running VM and outlive it.

Layout of a root (default /var/lib/dockyard/local):
  disks/<id>.img, disks/<id>.json    a disk and its sidecar
  mnt/<vm>/<disk>                    mount points of attached disks
  vms/<vm>/run/                      bound into the VM at /dockyard/run: docker.sock, metadata.json
  .lock                              serialises changes across threads and processes
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types

from dockyard.providers.base import (
    DISK_ROOT_IN_VM,
    STAND_IN_FLAGS,
    VM,
    Attachment,
    Disk,
    DiskSpec,
    InPlaceResizeUnsupportedError,
    NotFoundError,
    PermanentError,
    ProviderConfig,
    ShrinkRefusedError,
    Snapshot,
    TransientError,
    VMSpec,
    VMState,
)
from dockyard.providers.local.disks import DiskRecord, DiskStore
from dockyard.providers.local.host import RootLock, loop_devices, mounts_under, run
from dockyard.providers.options import option_bool

log = logging.getLogger(__name__)

LABEL = "dockyard.dev/"
# Labels of our own; tag keys may not start with "local-".
LABEL_ROOT = LABEL + "local-root"  # a short hash of the root path
LABEL_ROOT_PATH = LABEL + "local-root-path"
LABEL_NETWORK = LABEL + "local-network"
DEFAULT_ROOT = "/var/lib/dockyard/local"
DEFAULT_NETWORK = "dockyard-local"
DEFAULT_STEMCELL = "dockyard/stemcell:latest"
# VM networks are /24s carved from here, one per root; the inner engines use another range, so
# neither clashes with the host's docker0 (172.17/16) or Docker's default pools.
VM_SUBNETS = ipaddress.IPv4Network("10.213.0.0/16")
DEFAULT_INNER_BIP = "10.214.255.1/24"
DEFAULT_INNER_POOL = "10.214.0.0/17"
RUN_IN_VM = "/dockyard/run"
OPTIONS = {
    "root",
    "network",
    "subnet",
    "stemcell",
    "inner_bip",
    "inner_address_pool",
    "engine_timeout",
    "in_place_resize",
    "insecure_registries",
}
# sun_path holds 108 bytes: a root too long for <root>/vms/<vm>/run/docker.sock keeps its VM
# folders under /run/dockyard-local/<root hash> instead.
MAX_ROOT_FOR_SOCKETS = 64
SHORT_RUN_ROOT = Path("/run/dockyard-local")
ADDRESS_ATTEMPTS = 3  # a VM whose address another process took at the same time picks again

_STATES = {
    "running": VMState.RUNNING,
    # create_vm starts the VM container right after creating it: one left "created" is a create
    # cut short (the operator died in between) and will never boot by itself.
    "created": VMState.STOPPED,
    "restarting": VMState.PENDING,
    "paused": VMState.STOPPED,
    "exited": VMState.STOPPED,
    "dead": VMState.STOPPED,
    "removing": VMState.STOPPED,
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# --privileged or the stand-in, decided once per Docker engine (keyed by its URL).
_flags_cache: dict[str, dict[str, Any]] = {}
_flags_lock = threading.Lock()


# A few VM removals at once, not the whole action pool: Docker 20.10.24 (Debian's) can deadlock
# when containers leave a network while it processes another endpoint's removal from the same
# network (moby/libnetwork#2649, fixed by #2679 after 20.10.24); 100 at once hung it here.
_REMOVALS = threading.BoundedSemaphore(4)


@contextlib.contextmanager
def _docker_call(what: str) -> Iterator[None]:
    """Docker API hiccups (and a host engine that is down) are worth retrying."""
    try:
        yield
    except docker.errors.NotFound:
        raise
    except (docker.errors.DockerException, OSError) as error:
        raise TransientError(f"{what}: {error}") from error


def _ping(path: Path, timeout: float = 2.0) -> bool:
    """GET /_ping on an engine's unix socket, without building a client per attempt."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(path))
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status = conn.recv(64)
    except OSError:
        return False
    return status.startswith(b"HTTP/1.") and status.split(b" ", 2)[1:2] == [b"200"]


class _Summary:
    """The fields of a container we use, from either a list entry or an inspect."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        if "Names" in data:  # GET /containers/json
            self.name = data["Names"][0].lstrip("/")
            self.status = data.get("State", "")
            self.labels: Mapping[str, str] = data.get("Labels") or {}
            mounts = data.get("Mounts") or []
            self.run_dir = next(
                (m.get("Source") for m in mounts if m.get("Destination") == RUN_IN_VM), None
            )
        else:  # GET /containers/{id}/json
            self.name = data["Name"].lstrip("/")
            self.status = data.get("State", {}).get("Status", "")
            self.labels = data.get("Config", {}).get("Labels") or {}
            mounts = data.get("Mounts") or []
            self.run_dir = next(
                (m.get("Source") for m in mounts if m.get("Destination") == RUN_IN_VM), None
            )
        self.networks: Mapping[str, Any] = (data.get("NetworkSettings") or {}).get("Networks") or {}

    def address(self, network: str) -> str | None:
        endpoint = self.networks.get(network) or next(iter(self.networks.values()), None) or {}
        static = (endpoint.get("IPAMConfig") or {}).get("IPv4Address")
        return endpoint.get("IPAddress") or static or None


class LocalProvider:
    """VMs as containers running their own Docker engine; disks as loop-mounted ext4 files."""

    resizes_attached_disks = False
    mounts_disks = True

    def __init__(self, config: ProviderConfig) -> None:
        options = dict(config.options)
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise PermanentError(
                f"options.{unknown[0]}: unknown option of the local provider "
                f"(known: {', '.join(sorted(OPTIONS))})"
            )
        root = options.get("root") or DEFAULT_ROOT
        if not os.path.isabs(root):
            raise PermanentError(f"options.root: {root!r} is not an absolute path")
        self.root = Path(os.path.normpath(root))
        self.root_id = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        default_network = (
            DEFAULT_NETWORK if str(self.root) == DEFAULT_ROOT else f"dockyard-local-{self.root_id}"
        )
        self.network = options.get("network") or default_network
        self.subnet = _subnet_option(options.get("subnet", ""))
        self.default_stemcell = options.get("stemcell") or DEFAULT_STEMCELL
        self.inner_bip = options.get("inner_bip") or DEFAULT_INNER_BIP
        self.inner_pool = options.get("inner_address_pool") or DEFAULT_INNER_POOL
        # Registries VMs may pull from over plain HTTP, "host:port,...": a registry on the host
        # (the VMs reach it at their network's gateway).
        self.insecure_registries = options.get("insecure_registries", "")
        try:
            self.engine_timeout = float(options.get("engine_timeout") or 60)
        except ValueError as error:
            raise PermanentError(f"options.engine_timeout: {error}") from error
        # "false" plays an IaaS that cannot grow a disk: every grow is a copy-migration.
        self.in_place_resize = option_bool(config, "in_place_resize", True)
        self.shared = self.root / "mnt"
        self.vms_root = (
            self.root / "vms"
            if len(str(self.root)) <= MAX_ROOT_FOR_SOCKETS
            else SHORT_RUN_ROOT / self.root_id / "vms"
        )
        self.disks = DiskStore(self.root / "disks")
        self.snapshots = DiskStore(self.root / "snapshots")  # point-in-time copies of disks
        self._lock = RootLock(self.root / ".lock")
        # What this process is making: instances (tags) and the addresses it gave out, so threads
        # that create VMs side by side, outside the root's lock, never make one instance twice
        # nor pick one address twice. Another process that picks the same address meanwhile
        # fails to start its VM ("Address already in use") and picks again.
        self._claims = threading.Condition()
        self._creating: set[tuple[tuple[str, str], ...]] = set()
        self._given: dict[str, str] = {}  # address -> VM id, until this process removes the VM
        try:
            self.client = docker.from_env(timeout=60)
        except docker.errors.DockerException as error:
            raise TransientError(f"connecting to the host's Docker engine: {error}") from error

    # --- plumbing ------------------------------------------------------------------------------

    def _root_labels(self) -> dict[str, str]:
        return {LABEL_ROOT: self.root_id, LABEL_ROOT_PATH: str(self.root)}

    def _ensure_shared_mount(self) -> None:
        """Disks are mounted below a folder bind-mounted onto itself and made rshared, so a mount
        made there later shows up in every VM that has its subfolder as an rslave bind."""
        self.shared.mkdir(parents=True, exist_ok=True)
        if str(self.shared) not in mounts_under(self.shared):
            run("mount", "--bind", str(self.shared), str(self.shared))
            run("mount", "--make-rshared", str(self.shared))

    def _ensure_network(self) -> tuple[ipaddress.IPv4Network | None, str | None]:
        """The VMs' network (created when missing): its subnet and gateway."""
        with _docker_call(f"inspecting network {self.network}"):
            try:
                attrs = self.client.api.inspect_network(self.network)
            except docker.errors.NotFound:
                attrs = self._create_network()
        for pool in (attrs.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(KeyError, ValueError):
                subnet = ipaddress.ip_network(pool["Subnet"])
                if isinstance(subnet, ipaddress.IPv4Network):
                    return subnet, pool.get("Gateway")
        return None, None

    def _create_network(self) -> dict[str, Any]:
        if self.subnet is not None:
            candidates = [self.subnet]
        else:  # a /24 of VM_SUBNETS picked by the root's hash, the next free one on overlap
            slices: list[ipaddress.IPv4Network] = list(VM_SUBNETS.subnets(new_prefix=24))
            start = int(self.root_id, 16) % len(slices)
            candidates = slices[start:] + slices[:start]
        for subnet in candidates:
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))])
            try:
                self.client.api.create_network(
                    self.network,
                    driver="bridge",
                    ipam=ipam,
                    labels={**self._root_labels(), LABEL_NETWORK: "true"},
                    check_duplicate=True,
                )
            except docker.errors.APIError as error:
                text = str(error).lower()
                if "overlap" in text and self.subnet is None:
                    continue
                if error.status_code == 409 or "already exists" in text:
                    break  # made meanwhile by someone else
                raise
            break
        else:
            raise TransientError(f"no free /24 in {VM_SUBNETS} for network {self.network}")
        result: dict[str, Any] = self.client.api.inspect_network(self.network)
        return result

    def _addresses_in_use(self) -> set[str]:
        with _docker_call(f"listing the containers on {self.network}"):
            found = self.client.api.containers(all=True, filters={"network": self.network})
        addresses = (_Summary(entry).address(self.network) for entry in found)
        return {address.split("/")[0] for address in addresses if address}

    def _give_address(
        self, vm_id: str, subnet: ipaddress.IPv4Network, gateway: str | None, in_use: set[str]
    ) -> str:
        """The first address neither listed nor given out by this process; held for ``vm_id``."""
        taken = in_use | ({gateway.split("/")[0]} if gateway else {str(next(subnet.hosts()))})
        with self._claims:
            taken |= set(self._given)
            for host in subnet.hosts():
                if str(host) not in taken:
                    self._given[str(host)] = vm_id
                    return str(host)
        raise TransientError(f"network {self.network} ({subnet}) has no free address left")

    def _take_back_address(self, vm_id: str) -> None:
        with self._claims:
            for address in [a for a, owner in self._given.items() if owner == vm_id]:
                del self._given[address]

    def _release_plumbing_if_idle(self) -> None:
        """With no VM and no disk left, the root's network and shared mount go too, so a clean
        root leaves nothing on the host. A disk keeps them: a VM will come for it (a resurrection
        deletes the last VM and makes the next at once; tearing down and rebuilding the network
        in between cost it ~0.3 s)."""
        if self.disks.all() or self._creating:
            return
        with contextlib.suppress(OSError):
            if any(self.vms_root.iterdir()):  # a VM being made (or one gone that left its folder)
                return
        with _docker_call("listing VMs"):
            if self.client.api.containers(all=True, filters={"label": self._root_filter()}):
                return
        if any(m != str(self.shared) for m in mounts_under(self.shared)):
            return
        with contextlib.suppress(docker.errors.DockerException):
            labels = self.client.api.inspect_network(self.network).get("Labels") or {}
            # Ours, or one an older Dockyard made without a root label (and a subnet of ours).
            if labels.get(LABEL_ROOT, self.root_id) == self.root_id and LABEL_NETWORK in labels:
                self.client.api.remove_network(self.network)
        if mounts_under(self.shared):
            run("umount", str(self.shared))
        shutil.rmtree(self.shared, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.vms_root.rmdir()
            if self.vms_root.parent != self.root:
                self.vms_root.parent.rmdir()

    @property
    def withheld_capabilities(self) -> frozenset[str]:
        """What the stand-in drops, when VMs run with it: their containers cannot have it."""
        flags = self._flags(self.default_stemcell)
        return frozenset() if flags.get("privileged") else frozenset(flags.get("cap_drop", ()))

    def _flags(self, image: str) -> dict[str, Any]:
        """--privileged when this host allows it, else the stand-in (decided once per engine)."""
        key = str(self.client.api.base_url)
        with _flags_lock:
            if key not in _flags_cache:
                _flags_cache[key] = self._probe_privileged(image)
            return dict(_flags_cache[key])

    def _probe_privileged(self, image: str) -> dict[str, Any]:
        with _docker_call("probing --privileged"):
            probe = self.client.api.create_container(
                image,
                entrypoint=["/bin/true"],
                labels={LABEL + "local-probe": "true"},
                host_config=self.client.api.create_host_config(privileged=True),
            )
            try:
                self.client.api.start(probe["Id"])
                return {"privileged": True}
            except docker.errors.APIError as error:
                log.info("--privileged is refused here (%s); VMs use the stand-in flags", error)
                return dict(STAND_IN_FLAGS)
            finally:
                # v: the stemcell declares VOLUME /var/lib/docker, an anonymous volume here
                self.client.api.remove_container(probe["Id"], force=True, v=True)

    # --- VMs -----------------------------------------------------------------------------------

    def _root_filter(self) -> list[str]:
        return [f"{LABEL_ROOT}={self.root_id}"]

    def _vm_dir(self, vm_id: str) -> Path:
        return self.vms_root / vm_id

    def _vm(self, summary: _Summary) -> VM:
        tags = {
            key[len(LABEL) :]: value
            for key, value in summary.labels.items()
            if key.startswith(LABEL) and not key.startswith(LABEL + "local-")
        }
        return VM(
            id=summary.name,
            state=_STATES.get(summary.status, VMState.STOPPED),
            tags=tags,
            address=summary.address(self.network),
        )

    def _inspect(self, vm_id: str) -> _Summary:
        if not _NAME.match(vm_id):
            raise NotFoundError(f"VM {vm_id!r} does not exist")
        try:
            with _docker_call(f"inspecting VM {vm_id}"):
                summary = _Summary(self.client.api.inspect_container(vm_id))
        except docker.errors.NotFound as error:
            raise NotFoundError(f"VM {vm_id} does not exist") from error
        if summary.labels.get(LABEL_ROOT) != self.root_id or summary.name != vm_id:
            raise NotFoundError(f"VM {vm_id} does not exist")
        return summary

    def find_vms(self, tags: Mapping[str, str]) -> list[VM]:
        filters = self._root_filter() + [f"{LABEL}{k}={v}" for k, v in tags.items()]
        with _docker_call("listing VMs"):
            found = self.client.api.containers(all=True, filters={"label": filters})
        vms = (self._vm(_Summary(entry)) for entry in found)
        return sorted((vm for vm in vms if vm.state is not VMState.MISSING), key=lambda v: v.id)

    def create_vm(self, spec: VMSpec) -> VM:
        tags = _check_tags(spec.tags)
        stemcell = spec.stemcell or self.default_stemcell
        self._check_stemcell(stemcell)
        flags = self._flags(stemcell)
        instance = tuple(sorted(tags.items()))
        with self._claims:  # a second caller for one instance waits, then finds the first's VM
            self._claims.wait_for(lambda: instance not in self._creating)
            self._creating.add(instance)
        try:
            # No Docker call under the root's lock: 100 VMs made at once would queue on it.
            vm_id = self._find_or_create_vm(tags, stemcell, spec.metadata, flags)
        finally:
            with self._claims:
                self._creating.discard(instance)
                self._claims.notify_all()
        summary = self._inspect(vm_id)
        if summary.status == "running":
            self._wait_for_engine(vm_id)
            summary = self._inspect(vm_id)
        return self._vm(summary)

    def _find_or_create_vm(
        self,
        tags: Mapping[str, str],
        stemcell: str,
        metadata: Mapping[str, str],
        flags: Mapping[str, Any],
    ) -> str:
        for attempt in range(1, ADDRESS_ATTEMPTS + 1):
            same = [vm for vm in self.find_vms(tags) if dict(vm.tags) == tags]
            if same:
                return same[0].id
            vm_id = f"dyvm-{uuid.uuid4().hex[:12]}"
            # The root's network and mount, made again when another process released them (not
            # remembered: a network removed meanwhile lets a container be made, not started).
            with self._lock.held():
                self._ensure_shared_mount()
                subnet, gateway = self._ensure_network()
                # The VM's folder says "a VM is here" to any process about to release the
                # network and mount (the container is made after the lock).
                (self._vm_dir(vm_id) / "run").mkdir(parents=True, exist_ok=True)
            try:
                self._create_vm(vm_id, tags, stemcell, metadata, flags, subnet, gateway)
                self._boot(vm_id)
            except TransientError as error:
                if "Address already in use" in str(error) and attempt < ADDRESS_ATTEMPTS:
                    continue  # another process picked the same address: pick again
                raise
            return vm_id
        raise AssertionError("unreachable")

    def _check_stemcell(self, stemcell: str) -> None:
        try:
            with _docker_call(f"inspecting image {stemcell}"):
                self.client.api.inspect_image(stemcell)
        except docker.errors.NotFound as error:
            raise PermanentError(
                f"stemcell: image {stemcell!r} does not exist; "
                "build it with `bash hack/stemcell.sh`"
            ) from error

    def _create_vm(
        self,
        vm_id: str,
        tags: Mapping[str, str],
        stemcell: str,
        metadata: Mapping[str, str],
        flags: Mapping[str, Any],
        subnet: ipaddress.IPv4Network | None,
        gateway: str | None,
    ) -> None:
        run_dir = self._vm_dir(vm_id) / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metadata.json").write_text(json.dumps(dict(metadata), sort_keys=True))
        (self.shared / vm_id).mkdir(parents=True, exist_ok=True)
        labels = {**self._root_labels(), **{LABEL + k: v for k, v in tags.items()}}
        api = self.client.api
        host_config = api.create_host_config(
            mounts=[
                docker.types.Mount(
                    "/var/lib/docker", f"{vm_id}-docker", type="volume", labels=labels
                ),
                docker.types.Mount(RUN_IN_VM, str(run_dir), type="bind"),
                docker.types.Mount(
                    DISK_ROOT_IN_VM, str(self.shared / vm_id), type="bind", propagation="rslave"
                ),
            ],
            **flags,
        )
        if "privileged" not in flags:  # the stand-in: systempaths=unconfined as well
            host_config["MaskedPaths"], host_config["ReadonlyPaths"] = [], []
        address = None
        if subnet is not None:
            address = self._give_address(vm_id, subnet, gateway, self._addresses_in_use())
        try:
            with _docker_call(f"creating VM {vm_id}"):
                try:
                    self._create_container(vm_id, stemcell, labels, host_config, address)
                except docker.errors.APIError as error:
                    if address is None or "user specified IP address" not in str(error):
                        raise
                    # A network made without a configured subnet (older Dockyard): dynamic IPs.
                    self._remove_container(vm_id)
                    self._create_container(vm_id, stemcell, labels, host_config, None)
        except BaseException:
            self._discard(vm_id)
            raise

    def _create_container(
        self,
        vm_id: str,
        stemcell: str,
        labels: Mapping[str, str],
        host_config: dict[str, Any],
        address: str | None,
    ) -> None:
        api = self.client.api
        api.create_container(
            stemcell,
            name=vm_id,
            hostname=vm_id,
            labels=dict(labels),
            environment={
                "DOCKYARD_BIP": self.inner_bip,
                "DOCKYARD_ADDRESS_POOL": self.inner_pool,
                "DOCKYARD_INSECURE_REGISTRIES": self.insecure_registries,
            },
            host_config=host_config,
            networking_config=api.create_networking_config(
                {self.network: api.create_endpoint_config(ipv4_address=address)}
            ),
        )

    def _boot(self, vm_id: str) -> None:
        try:
            with _docker_call(f"starting VM {vm_id}"):
                self.client.api.start(vm_id)
        except BaseException:
            self._discard(vm_id)
            raise

    def _discard(self, vm_id: str) -> None:
        """What a create cut short left: the container, its engine's volume, its folders."""
        self._remove_container(vm_id)
        self._remove_volume(vm_id)
        self._take_back_address(vm_id)
        shutil.rmtree(self._vm_dir(vm_id), ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.shared / vm_id).rmdir()

    def _remove_container(self, vm_id: str) -> None:
        deadline = time.monotonic() + 30.0
        while True:
            try:
                with _REMOVALS, _docker_call(f"removing VM {vm_id}"):
                    self.client.api.remove_container(vm_id, force=True, v=True)
                return
            except docker.errors.NotFound:
                return
            except TransientError as error:
                # Someone else is removing it (`docker rm -f` by hand): done in a moment, and
                # its engine's volume can go only after it.
                if "already in progress" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _remove_volume(self, vm_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound), _docker_call(f"removing volume {vm_id}"):
            self.client.api.remove_volume(f"{vm_id}-docker", force=True)

    def _socket(self, summary: _Summary) -> Path:
        run_dir = summary.run_dir or str(self._vm_dir(summary.name) / "run")
        return Path(run_dir) / "docker.sock"

    def _wait_for_engine(self, vm_id: str) -> None:
        """Until the VM's engine answers /_ping; TransientError when it does not in time."""
        sock = self._socket(self._inspect(vm_id))
        deadline = time.monotonic() + self.engine_timeout
        next_check = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if _ping(sock):
                return
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 1.0
                status = self._inspect(vm_id).status
                if status not in ("running", "created"):
                    raise TransientError(
                        f"VM {vm_id} stopped ({status}) while booting: {self._engine_log(sock)}"
                    )
            time.sleep(0.05)
        raise TransientError(
            f"the engine of VM {vm_id} did not answer in {self.engine_timeout:.0f}s: "
            f"{self._engine_log(sock)}",
            retry_after=10,
        )

    @staticmethod
    def _engine_log(sock: Path) -> str:
        try:
            lines = (sock.parent / "dockerd.log").read_text(errors="replace").splitlines()
        except OSError:
            return "no engine log"
        return " | ".join(lines[-3:]) or "empty engine log"

    def delete_vm(self, vm_id: str) -> None:
        if not _NAME.match(vm_id):
            return
        try:
            self._inspect(vm_id)
        except NotFoundError:
            pass  # gone already, or never ours: only tidy what this root may still hold for it
        else:
            # The container first: its inner containers release the disks they bind.
            self._remove_container(vm_id)
        # Also when the container was removed behind our back (its engine's volume stays).
        self._remove_volume(vm_id)
        self._take_back_address(vm_id)
        with self._lock.held():
            for record in self.disks.all():
                if record.attached_to == vm_id:
                    self._detach(record)
            shutil.rmtree(self._vm_dir(vm_id), ignore_errors=True)
            shared = self.shared / vm_id
            if shared.is_dir() and not mounts_under(shared):
                shutil.rmtree(shared, ignore_errors=True)
            self._release_plumbing_if_idle()

    def vm_state(self, vm_id: str) -> VMState:
        try:
            return self._vm(self._inspect(vm_id)).state
        except NotFoundError:
            return VMState.MISSING

    def set_vm_metadata(self, vm_id: str, metadata: Mapping[str, str]) -> None:
        summary = self._inspect(vm_id)
        path = self._socket(summary).parent / "metadata.json"
        with self._lock.held():
            try:
                current = json.loads(path.read_text())
            except (OSError, ValueError):
                current = {}
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps({**current, **metadata}, sort_keys=True))
            os.replace(temporary, path)

    def vm_metadata(self, vm_id: str) -> dict[str, str]:
        """The VM's metadata (also visible inside the VM at /dockyard/run/metadata.json)."""
        path = self._socket(self._inspect(vm_id)).parent / "metadata.json"
        try:
            data: dict[str, str] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def docker_client(self, vm_id: str) -> docker.DockerClient:
        sock = self._socket(self._inspect(vm_id))
        # The stemcell's engine is the host's own build: same API version, and no version
        # round trip (which would block on an engine that hangs).
        return docker.DockerClient(
            base_url=f"unix://{sock}", version=self.client.api.api_version, timeout=60
        )

    # --- disks ---------------------------------------------------------------------------------

    @staticmethod
    def _disk(record: DiskRecord) -> Disk:
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
            raise NotFoundError(f"disk {disk_id!r} does not exist")
        return record

    def create_disk(self, spec: DiskSpec) -> Disk:
        tags = _check_tags(spec.tags)
        _check_size(spec.size_mib)
        with self._lock.held():
            same = [r for r in self.disks.find(tags) if r.tags == tags]
            if same:
                return self._disk(same[0])
            if spec.snapshot:
                snapshot = self._snapshot_record(spec.snapshot)
                if snapshot.size_mib > spec.size_mib:
                    raise PermanentError(
                        f"size: {spec.size_mib} MiB is smaller than snapshot {snapshot.id} "
                        f"({snapshot.size_mib} MiB)"
                    )
                source = self.snapshots.image(snapshot.id)
                # Copied under the lock: the snapshot cannot go meanwhile.
                record = self.disks.build(tags, spec.size_mib, spec.disk_type, source)
                self.disks.commit(record)
                return self._disk(record)
        # A blank image is made outside the root's lock (mkfs takes long: 100 disks made at
        # once would wait for each other); who made one first is settled under it.
        built = self.disks.build(tags, spec.size_mib, spec.disk_type)
        with self._lock.held():
            same = [r for r in self.disks.find(tags) if r.tags == tags]
            if same:
                self.disks.discard(built)
                return self._disk(same[0])
            self.disks.commit(built)
            return self._disk(built)

    # --- snapshots -----------------------------------------------------------------------------

    def _snapshot_record(self, snapshot_id: str) -> DiskRecord:
        record = self.snapshots.load(snapshot_id)
        if record is None:
            raise NotFoundError(f"snapshot {snapshot_id!r} does not exist")
        return record

    @staticmethod
    def _snapshot(record: DiskRecord) -> Snapshot:
        tags = {k: v for k, v in record.tags.items() if k != "source-disk"}
        disk_id = record.tags.get("source-disk", "")
        return Snapshot(id=record.id, disk_id=disk_id, size_mib=record.size_mib, tags=tags)

    def snapshot_disk(self, disk_id: str, tags: Mapping[str, str]) -> Snapshot:
        tags = _check_tags(tags)
        with self._lock.held():
            for found in self.snapshots.find(tags):
                if self._snapshot(found).tags == tags:
                    return self._snapshot(found)
            record = self._record(disk_id)
            return self._snapshot(self.disks.copy_of(record, self.snapshots, tags))

    def find_snapshots(self, tags: Mapping[str, str]) -> list[Snapshot]:
        return [self._snapshot(r) for r in self.snapshots.find(tags)]

    def delete_snapshot(self, snapshot_id: str) -> None:
        with self._lock.held():
            record = self.snapshots.load(snapshot_id)
            if record is not None:
                self.snapshots.delete(record)

    def find_disks(self, tags: Mapping[str, str]) -> list[Disk]:
        return [self._disk(r) for r in self.disks.find(tags)]

    def set_disk_metadata(self, disk_id: str, tags: Mapping[str, str | None]) -> Disk:
        set_tags = _check_tags({k: v for k, v in tags.items() if v is not None})
        with self._lock.held():
            record = self._record(disk_id)
            record.tags = {k: v for k, v in record.tags.items() if k not in tags} | set_tags
            self.disks.save(record)
            return self._disk(record)

    def attach_disk(self, vm_id: str, disk_id: str) -> Attachment:
        self._inspect(vm_id)
        with self._lock.held():  # who holds the disk is settled here, the mount made outside
            record = self._record(disk_id)
            holder = record.attached_to
            if holder not in (None, vm_id):
                if self.vm_state(holder) is not VMState.MISSING:
                    raise TransientError(
                        f"disk {disk_id} is attached to VM {holder}; detach it first"
                    )
                self._detach(record)  # its VM is gone: take the disk over
            self._ensure_shared_mount()
            mount_point = self.shared / vm_id / disk_id
            record.attached_to, record.mount_point = vm_id, str(mount_point)
            self.disks.save(record)
        try:
            device = self.disks.mount(record, mount_point)
        except BaseException:
            with self._lock.held():
                self._detach(self._record(disk_id))
            raise
        return Attachment(device=device, mount_path=f"{DISK_ROOT_IN_VM}/{disk_id}")

    def _detach(self, record: DiskRecord) -> None:
        self.disks.unmount(record)
        record.attached_to, record.mount_point = None, None
        self.disks.save(record)

    def detach_disk(self, vm_id: str, disk_id: str) -> None:
        with self._lock.held():
            record = self._record(disk_id)
            if record.attached_to == vm_id:
                self._detach(record)
                self._release_plumbing_if_idle()

    def resize_disk(self, disk_id: str, size_mib: int) -> Disk:
        _check_size(size_mib)
        with self._lock.held():
            record = self._record(disk_id)
            if size_mib < record.size_mib:
                raise ShrinkRefusedError(
                    f"size_mib: disk {disk_id} is {record.size_mib} MiB and never shrinks "
                    f"(asked for {size_mib} MiB)"
                )
            if size_mib == record.size_mib:
                return self._disk(record)
            if not self.in_place_resize:
                raise InPlaceResizeUnsupportedError(
                    f"disk {disk_id}: options.in_place_resize is false: it grows by copy"
                )
            if record.attached_to is not None:
                raise TransientError(
                    f"disk {disk_id} is attached to VM {record.attached_to}: the local provider "
                    "grows disks offline, so stop its containers and detach it first"
                )
            self.disks.grow(record, size_mib)
            record.size_mib = size_mib
            self.disks.save(record)
            return self._disk(record)

    def delete_disk(self, disk_id: str) -> None:
        with self._lock.held():
            record = self.disks.load(disk_id)
            if record is None:
                return
            if record.attached_to is not None:
                self._detach(record)
            self.disks.delete(record)
            self._release_plumbing_if_idle()

    def close(self) -> None:
        self.client.close()

    # --- housekeeping (tests, hack/local-cleanup.sh) -------------------------------------------

    def purge(self) -> None:
        """Delete every VM and disk of this root and the host plumbing it made."""
        for vm in self.find_vms({}):
            self.delete_vm(vm.id)
        with _docker_call("listing VMs"):
            stray = self.client.api.containers(all=True, filters={"label": self._root_filter()})
        for entry in stray:  # MISSING-state leftovers find_vms does not report
            self.delete_vm(_Summary(entry).name)
        with self._lock.held():
            for record in self.disks.all():
                self.delete_disk(record.id)
            for record in self.snapshots.all():
                self.snapshots.delete(record)
            self._unmount_all()
            for device, backing in loop_devices().items():
                if backing.startswith(f"{self.root}/"):
                    run("losetup", "--detach", device)
            with _docker_call("listing volumes"):
                volumes = self.client.api.volumes(filters={"label": self._root_filter()})
            for volume in volumes.get("Volumes") or []:
                with contextlib.suppress(docker.errors.NotFound):
                    self.client.api.remove_volume(volume["Name"], force=True)
            # The folders first: a VM's folder keeps the network and mount.
            shutil.rmtree(self.vms_root, ignore_errors=True)
            self._release_plumbing_if_idle()
            for leftover in (self.root / "disks").glob("*.tmp"):
                leftover.unlink(missing_ok=True)

    def _unmount_all(self) -> None:
        """Every mount below the root, deepest first, the shared folder's bind last. A mount made
        on the folder under that bind (while it was away) shows only once the bind is gone."""
        for _ in range(3):
            for mount_point in mounts_under(self.root):
                with contextlib.suppress(TransientError):  # covered, or gone with a parent
                    run("umount", "--lazy", mount_point)
            if not mounts_under(self.root):
                return

    def leftovers(self) -> list[str]:
        """Everything of this root still on the host, human-readable; empty when clean."""
        api = self.client.api
        found = [
            f"container {_Summary(c).name} ({_Summary(c).status})"
            for c in api.containers(all=True, filters={"label": self._root_filter()})
        ]
        volumes = api.volumes(filters={"label": self._root_filter()}).get("Volumes") or []
        found += [f"volume {v['Name']}" for v in volumes]
        found += [
            f"network {n['Name']}" for n in api.networks(filters={"label": self._root_filter()})
        ]
        found += [
            f"loop device {device} ({backing})"
            for device, backing in sorted(loop_devices().items())
            if backing.startswith(f"{self.root}/")
        ]
        found += [f"mount {m}" for m in mounts_under(self.root)]
        folders = (
            [self.root] if self.vms_root.is_relative_to(self.root) else [self.root, self.vms_root]
        )
        for folder in folders:
            if folder.is_dir():
                found += [
                    f"file {path}"
                    for path in sorted(folder.rglob("*"))
                    if not path.is_dir() and path != self.root / ".lock"
                ]
        return found


def _check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    for key, value in tags.items():
        if not _NAME.match(key) or key.startswith("local-"):
            raise PermanentError(
                f"tags: key {key!r} must be letters, digits, '.', '_' or '-' and not start with "
                "'local-'"
            )
        if not isinstance(value, str):
            raise PermanentError(f"tags.{key}: value must be a string, got {type(value).__name__}")
    return dict(tags)


def _check_size(size_mib: int) -> None:
    if not isinstance(size_mib, int) or isinstance(size_mib, bool) or size_mib < 1:
        raise PermanentError(f"size_mib: must be a positive integer, got {size_mib!r}")


def _subnet_option(value: str) -> ipaddress.IPv4Network | None:
    if not value:
        return None
    try:
        subnet = ipaddress.ip_network(value)
    except ValueError as error:
        raise PermanentError(f"options.subnet: {error}") from error
    if not isinstance(subnet, ipaddress.IPv4Network) or subnet.prefixlen > 29:
        raise PermanentError(f"options.subnet: {value!r} must be an IPv4 network of /29 or wider")
    return subnet
