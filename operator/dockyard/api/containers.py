"""Containers of a job: image, command, env, ports, volumes, dependencies, health checks."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from dockyard.api.quantities import parse_duration
from dockyard.api.schema import (
    DEPENDENCY_PATTERN,
    MAX_DEPENDS_ON,
    MAX_LIST,
    SET_LIST,
    AbsolutePath,
    ApiModel,
    Arg,
    DnsLabel,
    Duration,
    Port,
    Quantity,
    StringMap,
    defaulted,
    map_list,
    rule,
    validations,
)

# --- containers --------------------------------------------------------------------------------


class SecretKeySelector(ApiModel):
    """One key of a Secret in the object's namespace."""

    name: Annotated[str, Field(max_length=253, pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")]
    """Name of the Secret."""
    key: Annotated[str, Field(max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
    """Key within the Secret."""


class EnvVarSource(ApiModel):
    """Where an environment variable's value comes from."""

    secret_key_ref: SecretKeySelector
    """A key of a Secret."""


class EnvVar(ApiModel):
    """An environment variable: a literal value or a reference to a Secret key."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule("has(self.value) != has(self.valueFrom)", "set exactly one of value or valueFrom")
        )
    )

    name: Annotated[str, Field(max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")]
    """Variable name."""
    value: Arg | None = None
    """Literal value."""
    value_from: EnvVarSource | None = None
    """Value taken from a Secret key."""

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if (self.value is None) == (self.value_from is None):
            raise ValueError("set exactly one of value or valueFrom")
        return self


class ContainerPort(ApiModel):
    """A port the container listens on."""

    container_port: Port
    """Port inside the container."""
    host_port: Port | None = None
    """Port on the VM it is published on (not published when unset)."""
    protocol: Literal["TCP", "UDP"] = "TCP"
    """TCP or UDP."""


class VolumeMount(ApiModel):
    """A directory of the job's persistent disk mounted into the container."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.subPath) || !self.subPath.contains('..')",
                "subPath must stay inside the disk: no '..'",
                field_path=".subPath",
            )
        )
    )

    name: DnsLabel | None = None
    """Optional name, for readers."""
    sub_path: Annotated[str, Field(max_length=255, pattern=r"^[^/]")] | None = None
    """Relative directory on the persistent disk (the whole disk when unset)."""
    mount_path: AbsolutePath
    """Absolute path inside the container."""

    @model_validator(mode="after")
    def _inside_disk(self) -> VolumeMount:
        if self.sub_path is not None and ".." in self.sub_path:
            raise ValueError("subPath must stay inside the disk: no '..'")
        return self


class BindVolume(ApiModel):
    """A directory of the VM bind-mounted into the container."""

    host_path: AbsolutePath | None = None
    """Directory on the VM. Default: a directory of its own per container and mount path, so two
    bind volumes never share one."""
    mount_path: AbsolutePath
    """Absolute path inside the container."""
    read_only: bool = False
    """Mount read-only."""


class RestartBackoff(ApiModel):
    """Delay between restarts of a failing container: doubles from initial up to max."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.initial) || !has(self.max)"
                " || duration(self.initial) <= duration(self.max)",
                "initial must not exceed max",
                field_path=".initial",
            )
        )
    )

    initial: Duration = "1s"
    """First delay."""
    max: Duration = "5m"
    """Largest delay."""

    @model_validator(mode="after")
    def _ordered(self) -> RestartBackoff:
        if parse_duration(self.initial) > parse_duration(self.max):
            raise ValueError("initial must not exceed max")
        return self


class ExecProbe(ApiModel):
    """Run a command in the container; healthy when it exits 0."""

    command: Annotated[list[Arg], Field(min_length=1, max_length=MAX_LIST)]
    """Command and arguments (no shell unless you call one)."""


class TcpProbe(ApiModel):
    """Open a TCP connection; healthy when it connects."""

    port: Port
    """Port inside the container."""


class HttpProbe(ApiModel):
    """HTTP GET; healthy on a 2xx or 3xx answer."""

    port: Port
    """Port inside the container."""
    path: Annotated[str, Field(max_length=2048, pattern=r"^/")] = "/"
    """Request path."""


class HealthCheck(ApiModel):
    """How the container's health is checked: exactly one of exec, tcp or http."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "(has(self.exec) ? 1 : 0) + (has(self.tcp) ? 1 : 0) + (has(self.http) ? 1 : 0)"
                " == 1",
                "set exactly one of exec, tcp or http",
            )
        )
    )

    exec: ExecProbe | None = None
    """Command probe."""
    tcp: TcpProbe | None = None
    """TCP connect probe."""
    http: HttpProbe | None = None
    """HTTP GET probe."""
    interval: Duration = "10s"
    """Time between checks."""
    timeout: Duration = "1s"
    """Time one check may take."""
    retries: Annotated[int, Field(ge=1, le=100)] = 3
    """Consecutive failures before the container is unhealthy."""
    start_period: Duration = "0s"
    """Grace period after start during which failures do not count."""

    @model_validator(mode="after")
    def _exactly_one(self) -> HealthCheck:
        if sum(probe is not None for probe in (self.exec, self.tcp, self.http)) != 1:
            raise ValueError("set exactly one of exec, tcp or http")
        return self


class Resources(ApiModel):
    """Resource limits of the container."""

    memory: Quantity | None = None
    """Memory limit, e.g. 256Mi."""
    cpu_shares: Annotated[int, Field(ge=2, le=262144)] | None = None
    """Relative CPU weight (Docker CPU shares; 1024 is the default weight)."""


Capability = Annotated[str, Field(max_length=64, pattern=r"^[A-Z_]+$")]


class Container(ApiModel):
    """A Docker container run on every instance of the job."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.dependsOn) || !(self.name in self.dependsOn)",
                "a container cannot depend on itself",
                field_path=".dependsOn",
            )
        )
    )

    name: DnsLabel
    """Container name, unique in the job."""
    image: Annotated[str, Field(min_length=1, max_length=512)]
    """Image reference; it must already be present on the VM (nothing is pulled implicitly)."""
    command: Annotated[list[Arg], Field(max_length=MAX_LIST)] = Field(default_factory=list)
    """Entrypoint override (the image's entrypoint when empty)."""
    args: Annotated[list[Arg], Field(max_length=MAX_LIST)] = Field(default_factory=list)
    """Arguments (the image's command when empty)."""
    env: Annotated[list[EnvVar], Field(max_length=MAX_LIST, json_schema_extra=map_list("name"))] = (
        Field(default_factory=list)
    )
    """Environment variables."""
    ports: Annotated[
        list[ContainerPort],
        Field(max_length=MAX_LIST, json_schema_extra=map_list("containerPort", "protocol")),
    ] = Field(default_factory=list)
    """Ports the container listens on."""
    volumes: Annotated[list[VolumeMount], Field(max_length=16)] = Field(default_factory=list)
    """Directories of the job's persistent disk to mount (needs spec persistentDisk)."""
    bind_volumes: Annotated[
        list[BindVolume], Field(max_length=16, json_schema_extra=map_list("mountPath"))
    ] = Field(default_factory=list)
    """VM directories to bind-mount."""
    depends_on: Annotated[
        list[Annotated[str, Field(max_length=127, pattern=DEPENDENCY_PATTERN)]],
        Field(max_length=MAX_DEPENDS_ON, json_schema_extra=SET_LIST),
    ] = Field(default_factory=list)
    """Containers that must run before this one: "name" (same job) or "job/name" (another job of
    the deployment). When one of them restarts or changes, this container restarts too."""
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"
    """When an exited container is restarted."""
    restart_backoff: RestartBackoff = defaulted(RestartBackoff)
    """Backoff between restarts."""
    health_check: HealthCheck | None = None
    """Health check (none: running means healthy)."""
    resources: Resources | None = None
    """Resource limits."""
    privileged: bool = False
    """Run privileged."""
    cap_add: Annotated[list[Capability], Field(max_length=MAX_LIST, json_schema_extra=SET_LIST)] = (
        Field(default_factory=list)
    )
    """Linux capabilities to add, e.g. NET_ADMIN."""
    cap_drop: Annotated[
        list[Capability], Field(max_length=MAX_LIST, json_schema_extra=SET_LIST)
    ] = Field(default_factory=list)
    """Linux capabilities to drop."""
    working_dir: AbsolutePath | None = None
    """Working directory."""
    user: Annotated[str, Field(max_length=256)] | None = None
    """User (name, uid or uid:gid)."""
    stop_signal: Annotated[str, Field(max_length=32, pattern=r"^(SIG)?[A-Z0-9+]+$")] | None = None
    """Signal that stops the container (the image's, usually SIGTERM, when unset)."""
    stop_grace_period: Duration | None = None
    """Time between the stop signal and SIGKILL."""
    labels: StringMap = Field(default_factory=dict)
    """Extra Docker labels."""

    @model_validator(mode="after")
    def _not_self(self) -> Container:
        if self.name in self.depends_on:
            raise ValueError(f"container {self.name!r} cannot depend on itself")
        return self
