"""Containers on one VM's Docker engine, found by Dockyard's labels.

Containers run with an engine-level restart policy, so a crashed container comes back even while
the operator is down; the operator's part is the dependents (it watches the engine's events).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import docker
import docker.errors

from dockyard.providers import PermanentError, ProviderError, TransientError
from dockyard.providers.base import STAND_IN_FLAGS

log = logging.getLogger(__name__)

LABEL = "dockyard.dev/"
LABEL_CONTAINER = LABEL + "container"
LABEL_CONFIG_HASH = LABEL + "config-hash"
LABEL_JOB = LABEL + "job"
LABEL_INDEX = LABEL + "index"

_ENGINE_RESTART = {"Always": "always", "OnFailure": "on-failure", "Never": "no"}
#: ContainerConfig fields added after containers were running: left out of the hash when empty.
_ADDED_LATER = ("files",)


class HookFailedError(ProviderError):
    """A lifecycle hook failed or timed out: the drain before a stop, the post-start after a
    start."""


class EngineRefusedError(PermanentError):
    """The engine refused the request (a 4xx answer, an image it cannot have): trying again
    the same way will not help until someone changes the spec or the image."""


@dataclass(frozen=True)
class Pull:
    """How a container's image is had: its imagePullPolicy, and the job's registry
    credentials (registry host -> {"username", "password"})."""

    policy: str = "IfNotPresent"  # IfNotPresent | Always | Never
    auths: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def auth_for(self, image: str) -> Mapping[str, str] | None:
        return self.auths.get(registry_of(image))


def registry_of(image: str) -> str:
    """The registry an image reference names (Docker Hub's when it names none)."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _unauthorized(text: str) -> bool:
    lowered = text.lower()
    words = ("unauthorized", "authentication required", "denied", "no basic auth credentials")
    return any(word in lowered for word in words)


def _archive(files: Sequence[tuple[str, str, int]]) -> bytes:
    """A tar of ``files`` (with their directories) to extract at the container's root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        made: set[str] = set()
        for path, content, mode in files:
            parts = path.strip("/").split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in made:
                    made.add(directory)
                    entry = tarfile.TarInfo(directory)
                    entry.type, entry.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(entry)
            data = content.encode()
            entry = tarfile.TarInfo("/".join(parts))
            entry.size, entry.mode = len(data), mode
            tar.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


def _tagged(image: str) -> str:
    """``image`` as the engine lists it among an image's tags (``:latest`` when untagged)."""
    last = image.rsplit("/", 1)[-1]
    return image if ":" in last or "@" in image else f"{image}:latest"


def _bare(capability: str) -> str:
    return capability.removeprefix("CAP_")


def engine_name(name: str) -> str:
    """The engine's name for a container: Docker wants at least two characters, a DNS label may
    have one. An underscore never occurs in a DNS label, so no other container gets that name.
    Containers are found by their label, never by this name."""
    return name if len(name) >= 2 else f"{name}_"


# What an engine answers when it is busy or short of something, not when the request is wrong.
# Docker reports most refusals of a container's config (its runtime's, a bind, a user the image
# lacks) as 500s, so the status code alone cannot tell: these words can.
_TRANSIENT_WORDS = (
    "no space left",
    "cannot allocate memory",
    "resource temporarily unavailable",
    "too many open files",
    "device or resource busy",
    "port is already allocated",
    "address already in use",
    "marked for removal",
    "already in progress",
    "is restarting",
    "timeout",
    "deadline exceeded",
    "connection refused",
    "connection reset",
    "dial tcp",
    "no such host",
    "tls handshake",
)


# A registry that is there but busy: worth another try, not a reason to stall.
_BUSY_REGISTRY_WORDS = (
    "toomanyrequests",
    "too many requests",
    "service unavailable",
    "timeout",
    "deadline exceeded",
    "connection reset",
    "tls handshake",
)


def _start_error(name: str, error: docker.errors.APIError) -> Exception:
    """A refusal (it will fail the same way until the spec or image changes) or a hiccup."""
    explanation = str(error.explanation or error)
    message = f"starting container {name}: {explanation}"
    conflict = error.status_code == 409  # a name still in use by a container being removed
    hiccup = any(word in explanation.lower() for word in _TRANSIENT_WORDS)
    if conflict or hiccup or error.status_code is None:
        return TransientError(message)
    return EngineRefusedError(message)


@dataclass(frozen=True)
class ContainerConfig:
    """Everything that, when changed, means the container must be recreated."""

    name: str
    image: str
    entrypoint: Sequence[str] | None = None
    command: Sequence[str] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    ports: Sequence[tuple[int, int | None, str]] = ()  # (container port, host port, protocol)
    binds: Sequence[str] = ()  # "source:target[:ro]" on the VM
    restart_policy: str = "Always"
    memory_bytes: int | None = None
    cpu_shares: int | None = None
    privileged: bool = False
    cap_add: Sequence[str] = ()
    cap_drop: Sequence[str] = ()
    working_dir: str | None = None
    user: str | None = None
    stop_signal: str | None = None
    stop_timeout: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    healthcheck_command: Sequence[str] | None = None  # engine-level exec health check
    healthcheck_interval_ns: int = 0
    healthcheck_timeout_ns: int = 0
    healthcheck_retries: int = 0
    healthcheck_start_period_ns: int = 0
    #: Files written into the container before it starts: (absolute path, content, mode).
    files: Sequence[tuple[str, str, int]] = ()

    def config_hash(self) -> str:
        described = asdict(self)
        for later in _ADDED_LATER:  # absent as before they existed: no container recreated
            if not described[later]:
                del described[later]
        encoded = json.dumps(described, sort_keys=True, default=list).encode()
        return hashlib.sha256(encoded).hexdigest()[:16]


@dataclass(frozen=True)
class ObservedContainer:
    name: str
    id: str
    state: str  # running | restarting | exited | created | paused | dead
    config_hash: str
    started_at: float | None  # epoch seconds of the last start
    restart_count: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    health: str | None = None  # healthy | unhealthy | starting, when the engine checks it


def _parse_time(value: str | None) -> float | None:
    if not value or value.startswith("0001-"):
        return None
    # Docker prints nanoseconds; Python parses microseconds.
    head, _, rest = value.partition(".")
    fraction = "".join(ch for ch in rest if ch.isdigit())[:6]
    stamp = f"{head}.{fraction or '0'}+00:00"
    return datetime.fromisoformat(stamp).timestamp()


def observe(container: Any) -> ObservedContainer:
    attrs = container.attrs
    state = attrs.get("State", {})
    labels = attrs.get("Config", {}).get("Labels") or {}
    return ObservedContainer(
        name=labels.get(LABEL_CONTAINER, container.name),
        id=container.id,
        state=state.get("Status", "unknown"),
        config_hash=labels.get(LABEL_CONFIG_HASH, ""),
        started_at=_parse_time(state.get("StartedAt")),
        restart_count=int(attrs.get("RestartCount", 0)),
        exit_code=state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        health=(state.get("Health") or {}).get("Status"),
    )


# The host's tarballs of small images, kept: 100 new VMs need the same image, and the host's
# engine would otherwise build the same tarball 100 times.
_SAVED_MAX_BYTES = 64 * 1024 * 1024
_SAVED_MAX_ENTRIES = 4
_saved_tarballs: dict[tuple[str, str | bool], bytes] = {}
_saved_lock = threading.Lock()


def _saved(source: Any, named: str | bool) -> bytes:
    """``source`` (a host image) saved as a tarball, from the cache while its id is the same."""
    key = (str(source.id), named)
    with _saved_lock:
        tarball = _saved_tarballs.get(key)
    if tarball is not None:
        return tarball
    tarball = b"".join(source.save(named=named))
    if len(tarball) <= _SAVED_MAX_BYTES:
        with _saved_lock:
            while len(_saved_tarballs) >= _SAVED_MAX_ENTRIES:
                _saved_tarballs.pop(next(iter(_saved_tarballs)))
            _saved_tarballs[key] = tarball
    return tarball


class Engine:
    """One VM's Docker engine. ``image_source`` is an engine to copy missing images from (the
    host's, for the local provider, where no registry is reachable); otherwise images are pulled."""

    def __init__(
        self,
        client: docker.DockerClient,
        image_source: docker.DockerClient | None = None,
        withheld_capabilities: frozenset[str] = frozenset(),
    ) -> None:
        self.client = client
        self.image_source = image_source
        self.withheld = withheld_capabilities

    def containers(self, labels: Mapping[str, str] | None = None) -> dict[str, ObservedContainer]:
        filters = [f"{LABEL_CONTAINER}"] + [f"{k}={v}" for k, v in (labels or {}).items()]
        try:
            found = self.client.containers.list(all=True, filters={"label": filters})
        except docker.errors.APIError as error:
            raise TransientError(f"listing containers: {error}") from error
        observed = [observe(c) for c in found]
        return {c.name: c for c in observed}

    def ensure_image(self, image: str, pull: Pull | None = None) -> None:
        """Have ``image`` on this engine, as ``pull`` says (IfNotPresent by default): from the
        VM itself, the host's copy (local VMs, no registry needed), or its registry."""
        pull = pull or Pull()
        if pull.policy != "Always":
            try:
                self.client.images.get(image)
                return
            except docker.errors.ImageNotFound:
                pass
            if self._copy_from_host(image):
                return
            if pull.policy == "Never":
                where = "the VM (or the host)" if self.image_source else "the VM"
                raise EngineRefusedError(
                    f"image {image!r} is not on {where}, and imagePullPolicy is Never"
                )
        self._pull(image, pull.auth_for(image))

    def _copy_from_host(self, image: str) -> bool:
        if self.image_source is None:
            return False
        try:
            source = self.image_source.images.get(image)
        except docker.errors.ImageNotFound:
            return False
        # Saved under the name asked for: an image with several tags would otherwise arrive
        # under its first one only.
        named: str | bool = _tagged(image)
        if named not in source.tags:
            named = True
        self.client.images.load(_saved(source, named))
        return True

    def _pull(self, image: str, auth: Mapping[str, str] | None) -> None:
        try:
            self.client.images.pull(image, auth_config=dict(auth) if auth else None)
        except docker.errors.APIError as error:
            said = str(error.explanation or error)
            message = f"pulling {image}: {said}"
            if auth is None and _unauthorized(said):  # a private image: its Secret may come
                raise TransientError(message) from error
            if any(word in said.lower() for word in _BUSY_REGISTRY_WORDS):
                raise TransientError(message) from error
            # Not on the VM, not on the host, and its registry does not have it or cannot be
            # reached by that name: Stalled in the registry's words (and still retried).
            raise EngineRefusedError(message) from error

    def run(
        self, config: ContainerConfig, labels: Mapping[str, str], pull: Pull | None = None
    ) -> ObservedContainer:
        """(Re)create the container from ``config``: an existing one of that name is replaced."""
        self.ensure_image(config.image, pull)
        self.remove(config.name)
        all_labels = {
            **config.labels,
            LABEL_CONTAINER: config.name,
            LABEL_CONFIG_HASH: config.config_hash(),
            **labels,  # the caller may name the hash it compares against
        }
        ports: dict[str, int | None] = {
            f"{port}/{proto.lower()}": host for port, host, proto in config.ports
        }
        healthcheck = None
        if config.healthcheck_command:
            healthcheck = {
                "test": ["CMD", *config.healthcheck_command],
                "interval": config.healthcheck_interval_ns,
                "timeout": config.healthcheck_timeout_ns,
                "retries": config.healthcheck_retries,
                "start_period": config.healthcheck_start_period_ns,
            }
        restart = _ENGINE_RESTART.get(config.restart_policy, "always")
        privileges = self._privileges(config)
        try:
            container = self.client.containers.create(
                config.image,
                name=engine_name(config.name),
                entrypoint=list(config.entrypoint) if config.entrypoint else None,
                command=list(config.command) if config.command else None,
                environment=dict(config.env),
                ports=ports or None,
                volumes=list(config.binds) or None,
                restart_policy={"Name": restart},
                mem_limit=config.memory_bytes,
                cpu_shares=config.cpu_shares,
                **privileges,
                working_dir=config.working_dir,
                user=config.user,
                stop_signal=config.stop_signal,
                labels=all_labels,
                healthcheck=healthcheck,
            )
            if config.files:  # written before its first start: there from its first breath
                container.put_archive("/", _archive(config.files))
            container.start()
        except docker.errors.APIError as error:
            raise _start_error(config.name, error) from error
        container.reload()
        return observe(container)

    def _privileges(self, config: ContainerConfig) -> dict[str, Any]:
        """privileged, capAdd and capDrop as this engine can grant them: where the VM withholds
        capabilities, a privileged container gets every other one (and no seccomp or AppArmor
        confinement, every device), as the local provider's VMs themselves do."""
        wanted = {_bare(cap) for cap in config.cap_add}
        denied = sorted(wanted & self.withheld)
        if denied:
            raise EngineRefusedError(
                f"starting container {config.name}: capAdd {', '.join(denied)}: "
                "this provider's VMs cannot grant it"
            )
        drop = [*config.cap_drop]
        if self.withheld and (config.privileged or "ALL" in wanted):
            drop += sorted(self.withheld - {_bare(cap) for cap in drop})
        if self.withheld and config.privileged:
            return {**STAND_IN_FLAGS, "cap_drop": drop}
        return {
            "privileged": config.privileged,
            "cap_add": list(config.cap_add) or None,
            "cap_drop": drop or None,
        }

    def restart(self, name: str, timeout: int = 10) -> ObservedContainer:
        try:
            container = self._get(name)
            container.restart(timeout=timeout)
            container.reload()
        except docker.errors.APIError as error:
            raise TransientError(f"restarting container {name}: {error}") from error
        return observe(container)

    def stop(self, name: str, timeout: int = 10) -> None:
        """Stop gracefully; the engine's restart policy leaves a stopped container down."""
        try:
            self._get(name).stop(timeout=timeout)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as error:
            raise TransientError(f"stopping container {name}: {error}") from error

    def remove(self, name: str) -> None:
        try:
            self._get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as error:
            raise TransientError(f"removing container {name}: {error}") from error

    def run_hook(self, name: str, command: Sequence[str], timeout: float) -> str | None:
        """Exec ``command`` in the running container: None when it exited 0 within ``timeout``
        seconds, else what went wrong. A hook that outlives its timeout is left to end with
        the container (an engine cannot kill an exec)."""
        try:
            exec_id = self.client.api.exec_create(self._get(name).id, list(command))["Id"]
        except docker.errors.APIError as error:
            return f"could not run {list(command)}: {error.explanation or error}"
        output: list[bytes] = []
        runner = threading.Thread(
            target=lambda: output.append(self.client.api.exec_start(exec_id)),
            name=f"hook-{name}",
            daemon=True,
        )
        runner.start()
        runner.join(timeout)
        if runner.is_alive():
            return f"{list(command)} still running after {timeout:g} s"
        code = self.client.api.exec_inspect(exec_id).get("ExitCode")
        if code == 0:
            return None
        said = b"".join(output).decode(errors="replace").strip()[-500:]
        return f"{list(command)} exited with {code}" + (f": {said}" if said else "")

    def _get(self, name: str) -> Any:
        found = self.client.containers.list(
            all=True, filters={"label": [f"{LABEL_CONTAINER}={name}"]}
        )
        if not found:
            raise docker.errors.NotFound(f"container {name}")
        return found[0]
