"""Containers of a job: image, command, env, ports, volumes, dependencies, health checks."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from dockyard.api.quantities import parse_duration, parse_quantity
from dockyard.api.schema import (
    DEPENDENCY_PATTERN,
    MAX_DEPENDS_ON,
    MAX_LIST,
    QUANTITY_RANGE,
    SET_LIST,
    AbsolutePath,
    ApiModel,
    Arg,
    ContainerPath,
    DnsLabel,
    Duration,
    HostPath,
    ImageReference,
    Port,
    Quantity,
    StringMap,
    defaulted,
    map_list,
    rule,
    validations,
)

#: Docker's smallest memory limit ("Minimum memory limit allowed is 6MB").
MIN_MEMORY = "6Mi"
#: Label keys under this prefix are Dockyard's own (ownership, spec hash, index).
RESERVED_LABEL_PREFIX = "dockyard.dev/"
#: The shortest health-check interval and timeout, as Kubernetes probes (Docker takes 1ms, but
#: each check execs a process on the VM, and tcp/http probes time out in whole seconds).
MIN_PROBE_DURATION = "1s"

# --- containers --------------------------------------------------------------------------------


class SecretKeySelector(ApiModel):
    """One key of a Secret (or ConfigMap) in the object's namespace."""

    name: Annotated[str, Field(max_length=253, pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")]
    """Name of the Secret (or ConfigMap)."""
    key: Annotated[str, Field(max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
    """Key within it."""


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
    sub_path: Annotated[str, Field(max_length=255, pattern=r"^[^/:][^:]*$")] | None = None
    """Relative directory on the persistent disk (the whole disk when unset); no ':'."""
    mount_path: ContainerPath
    """Absolute path inside the container: not /, nor under /proc, /sys, /dev or /.dockyard;
    no '.', '..' or empty part, no ':'."""

    @model_validator(mode="after")
    def _inside_disk(self) -> VolumeMount:
        if self.sub_path is not None and ".." in self.sub_path:
            raise ValueError("subPath must stay inside the disk: no '..'")
        return self


class BindVolume(ApiModel):
    """A directory of the VM bind-mounted into the container."""

    host_path: HostPath | None = None
    """Directory on the VM (absolute, no ':'). Default: a directory of its own per container and
    mount path, so two bind volumes never share one."""
    mount_path: ContainerPath
    """Absolute path inside the container: not /, nor under /proc, /sys, /dev or /.dockyard;
    no '.', '..' or empty part, no ':'."""
    read_only: bool = False
    """Mount read-only."""


class ContainerFile(ApiModel):
    """A file written into the container before it starts, from a key of a ConfigMap or a
    Secret of the object's namespace. A change of its content recreates the container (through
    the rollout) and then its dependents."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "has(self.configMapRef) != has(self.secretRef)",
                "set exactly one of configMapRef or secretRef",
            )
        )
    )

    path: ContainerPath
    """Absolute path of the file in the container."""
    config_map_ref: SecretKeySelector | None = None
    """A key of a ConfigMap (same namespace)."""
    secret_ref: SecretKeySelector | None = None
    """A key of a Secret (same namespace)."""
    mode: Annotated[int, Field(ge=0, le=0o777)] = 0o644
    """File mode, as a number (420 is 0644; 511 is 0777)."""

    @model_validator(mode="after")
    def _one_source(self) -> ContainerFile:
        if (self.config_map_ref is None) == (self.secret_ref is None):
            raise ValueError("set exactly one of configMapRef or secretRef")
        return self


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


_AT_LEAST_MIN_PROBE = rule(
    f"duration(self) >= duration('{MIN_PROBE_DURATION}')",
    f"must be at least {MIN_PROBE_DURATION} (0 would mean Docker's default)",
)
ProbeDuration = Annotated[Duration, Field(json_schema_extra=validations(_AT_LEAST_MIN_PROBE))]


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
    interval: ProbeDuration = "10s"
    """Time between checks (at least 1s)."""
    timeout: ProbeDuration = "1s"
    """Time one check may take (at least 1s)."""
    retries: Annotated[int, Field(ge=1, le=100)] = 3
    """Consecutive failures before the container is unhealthy."""
    start_period: Duration = "0s"
    """Grace period after start during which failures do not count."""

    @model_validator(mode="after")
    def _exactly_one(self) -> HealthCheck:
        if sum(probe is not None for probe in (self.exec, self.tcp, self.http)) != 1:
            raise ValueError("set exactly one of exec, tcp or http")
        for name in ("interval", "timeout"):
            if parse_duration(getattr(self, name)) < parse_duration(MIN_PROBE_DURATION):
                raise ValueError(f"{name} must be at least {MIN_PROBE_DURATION}")
        return self


_MEMORY_MINIMUM = rule(
    f"!isQuantity(string(self)) || quantity(string(self)).compareTo(quantity('{MIN_MEMORY}')) >= 0",
    f"must be at least {MIN_MEMORY} (Docker's minimum memory limit)",
)


class LifecycleHook(ApiModel):
    """A command run in the container (no shell unless you call one) at a point of its life."""

    exec: ExecProbe
    """The command."""
    timeout: ProbeDuration = "30s"
    """How long it may run (at least 1s); longer counts as failed."""

    @model_validator(mode="after")
    def _long_enough(self) -> LifecycleHook:
        if parse_duration(self.timeout) < parse_duration(MIN_PROBE_DURATION):
            raise ValueError(f"timeout must be at least {MIN_PROBE_DURATION}")
        return self


class Lifecycle(ApiModel):
    """Hooks around the operator's starts and stops of the container (BOSH's drain and
    post-start)."""

    pre_stop: LifecycleHook | None = None
    """The drain: run before every stop the operator makes (a rollout, a dependent restart, a
    scale-down, a VM replacement, a delete; not a crash). During a rollout a failed drain halts
    it, unless update.skipDrain; otherwise the stop goes on and an Event says so."""
    post_start: LifecycleHook | None = None
    """Run after every start the operator makes; failing (or timing out) fails that start,
    the container is stopped, and a rollout (its canary) halts."""


class Resources(ApiModel):
    """Resource limits of the container."""

    memory: Annotated[
        Quantity | None, Field(json_schema_extra=validations(QUANTITY_RANGE, _MEMORY_MINIMUM))
    ] = None
    """Memory limit, e.g. 256Mi; at least 6Mi (Docker's minimum)."""
    cpu_shares: Annotated[int, Field(ge=2, le=262144)] | None = None
    """Relative CPU weight (Docker CPU shares; 1024 is the default weight)."""

    @model_validator(mode="after")
    def _memory_minimum(self) -> Resources:
        if self.memory is not None and parse_quantity(self.memory) < parse_quantity(MIN_MEMORY):
            raise ValueError(f"memory must be at least {MIN_MEMORY} (Docker's minimum)")
        return self


#: The capabilities Docker knows (with or without CAP_), and ALL.
CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
)
Capability = Annotated[
    str, Field(max_length=64, pattern=rf"^(ALL|(CAP_)?({'|'.join(CAPABILITIES)}))$")
]
# Docker's signal names (SIG optional) and numbers; 0 is no signal.
_SIGNAL_NAMES = (
    "ABRT|ALRM|BUS|CHLD|CLD|CONT|FPE|HUP|ILL|INT|IO|IOT|KILL|PIPE|POLL|PROF|PWR|QUIT|SEGV|STKFLT"
    "|STOP|SYS|TERM|TRAP|TSTP|TTIN|TTOU|URG|USR1|USR2|VTALRM|WINCH|XCPU|XFSZ"
    r"|RTMIN|RTMIN\+([1-9]|1[0-5])|RTMAX-([1-9]|1[0-4])|RTMAX"
)
SIGNAL_PATTERN = rf"^((SIG)?({_SIGNAL_NAMES})|[1-9]|[1-5][0-9]|6[0-4])$"
# user[:group], each a name or a numeric id (what the engine resolves in the image).
# Numeric ids are 0..2147483647 (runc: "uids and gids must be in range 0-2147483647").
_ID = (
    r"([0-9]{1,9}|1[0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}|2147[0-3][0-9]{5}"
    r"|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}|21474836[0-3][0-9]"
    r"|214748364[0-7])"
)
_USER_PART = rf"([A-Za-z_][A-Za-z0-9_.-]{{0,31}}|{_ID})"
USER_PATTERN = rf"^{_USER_PART}(:{_USER_PART})?$"
_OUR_LABELS = rule(
    "!has(self.labels)"
    f" || self.labels.all(k, size(k) > 0 && !k.startsWith('{RESERVED_LABEL_PREFIX}'))",
    f"label keys must not be empty nor start with {RESERVED_LABEL_PREFIX} (Dockyard's own)",
    field_path=".labels",
)


DependencyRef = Annotated[str, Field(max_length=127, pattern=DEPENDENCY_PATTERN)]
#: What a dependent waits for before it starts (docker compose's depends_on conditions).
DependsOnCondition = Literal["Started", "Healthy", "Completed"]


class DependencyCondition(ApiModel):
    """An upstream, and what of it this container waits for before it (re)starts."""

    name: DependencyRef
    """"name" (same job) or "job/name" (another job of the deployment)."""
    condition: DependsOnCondition
    """Started: its process runs (as dependsOn); Healthy: its health check passes, on every
    instance it runs on; Completed: it exited 0 (a one-shot container, restartPolicy Never or
    OnFailure, such as a migration)."""


class Container(ApiModel):
    """A Docker container run on every instance of the job."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.dependsOn) || !(self.name in self.dependsOn)",
                "a container cannot depend on itself",
                field_path=".dependsOn",
            ),
            rule(
                "!has(self.dependsOnConditions) || self.dependsOnConditions.all(d,"
                " d.name != self.name && !(has(self.dependsOn) && d.name in self.dependsOn))",
                "an upstream is named once, in dependsOn or in dependsOnConditions, and never "
                "the container itself",
                field_path=".dependsOnConditions",
            ),
            _OUR_LABELS,
        )
    )

    name: DnsLabel
    """Container name, unique in the job."""
    image: ImageReference
    """Image reference in Docker's grammar ([registry/]repository[:tag][@digest], at most 255
    characters)."""
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    """IfNotPresent: pulled when the VM does not have it (a local VM first takes the host's
    copy); Always: pulled at every (re)create; Never: the VM (or, local, the host) must have it.
    Pulls use the job's imagePullSecrets for the image's registry."""
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
    volumes: Annotated[
        list[VolumeMount], Field(max_length=16, json_schema_extra=map_list("mountPath"))
    ] = Field(default_factory=list)
    """Directories of the job's persistent disk to mount (needs spec persistentDisk)."""
    bind_volumes: Annotated[
        list[BindVolume], Field(max_length=16, json_schema_extra=map_list("mountPath"))
    ] = Field(default_factory=list)
    """VM directories to bind-mount."""
    depends_on: Annotated[
        list[DependencyRef], Field(max_length=MAX_DEPENDS_ON, json_schema_extra=SET_LIST)
    ] = Field(default_factory=list)
    """Containers that must run before this one: "name" (same job) or "job/name" (another job of
    the deployment). When one of them restarts or changes, this container restarts too."""
    depends_on_conditions: Annotated[
        list[DependencyCondition],
        Field(max_length=MAX_DEPENDS_ON, json_schema_extra=map_list("name")),
    ] = Field(default_factory=list)
    """Upstreams as dependsOn, each with what to wait for: {name: db, condition: Healthy},
    {name: migrate, condition: Completed}. Restarts cascade the same way."""
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"
    """When an exited container is restarted."""
    restart_backoff: RestartBackoff = defaulted(RestartBackoff)
    """Backoff between restarts."""
    health_check: HealthCheck | None = None
    """Health check (none: running means healthy)."""
    lifecycle: Lifecycle | None = None
    """preStop (drain) and postStart hooks."""
    files: Annotated[
        list[ContainerFile], Field(max_length=16, json_schema_extra=map_list("path"))
    ] = Field(default_factory=list)
    """Configuration files from ConfigMaps and Secrets, written into the container."""
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
    user: Annotated[str, Field(max_length=65, pattern=USER_PATTERN)] | None = None
    """User and optional group, each a name or a numeric id (0..2147483647): nobody, 1000,
    1000:1000, app:staff. A name must exist in the image."""
    stop_signal: Annotated[str, Field(max_length=32, pattern=SIGNAL_PATTERN)] | None = None
    """Signal that stops the container: a name (SIGTERM, TERM, SIGRTMIN+3) or a number 1..64
    (the image's, usually SIGTERM, when unset)."""
    stop_grace_period: Duration | None = None
    """Time between the stop signal and SIGKILL (whole seconds, rounded up; 0: at once)."""
    labels: StringMap = Field(default_factory=dict)
    """Extra Docker labels; keys starting with dockyard.dev/ are Dockyard's own."""

    def dependencies(self) -> list[tuple[str, DependsOnCondition]]:
        """Every upstream reference, with what this container waits for of it."""
        started: list[tuple[str, DependsOnCondition]] = [(r, "Started") for r in self.depends_on]
        return started + [(d.name, d.condition) for d in self.depends_on_conditions]

    @property
    def upstream_refs(self) -> list[str]:
        """Every upstream reference, dependsOn's and dependsOnConditions' alike."""
        return [reference for reference, _ in self.dependencies()]

    @model_validator(mode="after")
    def _consistent(self) -> Container:
        if self.name in self.upstream_refs:
            raise ValueError(f"container {self.name!r} cannot depend on itself")
        twice = sorted({r for r in self.upstream_refs if self.upstream_refs.count(r) > 1})
        if twice:
            raise ValueError(
                f"upstream {twice[0]!r} is named twice (dependsOn, dependsOnConditions)"
            )
        for field, mounts in (("volumes", self.volumes), ("bindVolumes", self.bind_volumes)):
            paths = [m.mount_path for m in mounts]
            twice = sorted({p for p in paths if paths.count(p) > 1})
            if twice:  # the CRD keys these lists by mountPath
                raise ValueError(f"{field}: mountPath {twice[0]} appears twice")
        ours = sorted(k for k in self.labels if not k or k.startswith(RESERVED_LABEL_PREFIX))
        if ours:
            raise ValueError(
                f"labels: key {ours[0]!r} is empty or starts with {RESERVED_LABEL_PREFIX}"
            )
        return self
