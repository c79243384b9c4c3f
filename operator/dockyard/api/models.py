"""The three Dockyard kinds as pydantic models: the single source of truth for the CRDs.

JSON field names are camelCase (``maxInFlight``); Python attributes are snake_case
(``max_in_flight``); both are accepted on input. ``x-kubernetes-validations`` (CEL) run in the
apiserver; the same rules are repeated here as pydantic validators where cheap, so bad input is
refused by both.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, WithJsonSchema, model_validator

from dockyard.api.containers import Container
from dockyard.api.quantities import (
    PERCENT_PATTERN,
    parse_duration,
    parse_quantity,
    resolve_max_in_flight,
)
from dockyard.api.schema import (
    DNS_LABEL_PATTERN,
    MAX_CONTAINERS,
    MAX_INSTANCES,
    MAX_JOBS,
    ApiModel,
    DnsLabel,
    Duration,
    Quantity,
    StringMap,
    Text,
    WatchTime,
    defaulted,
    int_or_string,
    map_list,
    rule,
    validations,
)
from dockyard.api.status import (
    DeploymentStatus,
    DiskSnapshotStatus,
    JobStatus,
    PersistentDiskStatus,
)

# A transition rule needs an old value: written so it holds trivially for unparsable values (the
# pattern reports those).
_NO_SHRINK = rule(
    "!isQuantity(string(self)) || !isQuantity(string(oldSelf))"
    " || quantity(string(self)).compareTo(quantity(string(oldSelf))) >= 0",
    message_expression="'size cannot shrink (from ' + string(oldSelf) + ' to ' + string(self)"
    " + '); a disk only grows'",
)
_SIZE_RANGE = rule(
    "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))"
    " && quantity(string(self)).isLessThan(quantity('8Ei'))",
    "size must be greater than zero and below 8Ei",
)
_NAME_IS_LABEL = rule(
    f"self.metadata.name.matches('{DNS_LABEL_PATTERN}') && size(self.metadata.name) <= 63",
    "metadata.name must be a DNS label: at most 63 lowercase letters, digits and '-'",
)
# A Job's name prefixes the names Dockyard derives from it, which are DNS labels too: its disk
# records <job>-<index> (index up to 999), an orphaned copy's <job>-<index>-was-<8 hex> and the
# snapshots <job>-<index>-g<generation>. 63 - len("-999-was-12345678") leaves 46.
MAX_JOB_OBJECT_NAME = 46
# Checked on create only (the webhook checks jobs added later): an object made before the rule
# keeps working, and its finalizer can still be removed.
_JOB_NAME_FITS = rule(
    f"oldSelf.hasValue() || size(self.metadata.name) <= {MAX_JOB_OBJECT_NAME}",
    f"metadata.name must be at most {MAX_JOB_OBJECT_NAME} characters (it prefixes the names of "
    "its disk records and snapshots)",
    optional_old_self=True,
)
_JOB_NAMES_FIT = rule(
    "oldSelf.hasValue() || !self.spec.jobs.exists(j,"
    f" size(self.metadata.name) + 1 + size(j.name) > {MAX_JOB_OBJECT_NAME})",
    f"each job becomes a Job named <deployment>-<job>, at most {MAX_JOB_OBJECT_NAME} characters",
    field_path=".spec.jobs",
    optional_old_self=True,
)


# --- provider ---------------------------------------------------------------------------------


class SecretReference(ApiModel):
    """A Secret in the object's namespace holding provider credentials."""

    name: Annotated[str, Field(max_length=253, pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")]
    """Name of the Secret."""
    keys: StringMap | None = None
    """Which Secret key holds each credential the provider reads, e.g. {accessKeyId:
    AWS_ACCESS_KEY_ID}. Without it the provider's own key names are used."""


class ProviderSpec(ApiModel):
    """The IaaS that runs the VMs and disks, and where."""

    type: Annotated[
        Literal["local", "aws", "gce"],
        Field(json_schema_extra=validations(rule("self == oldSelf", "provider.type is immutable"))),
    ]
    """Provider: local (VMs emulated as Docker containers), aws or gce. Immutable."""
    region: Text | None = None
    """Region, e.g. eu-west-1 (aws) or europe-west1 (gce)."""
    zone: Text | None = None
    """Availability zone, e.g. eu-west-1a or europe-west1-b."""
    endpoint: Annotated[str, Field(max_length=2048, pattern=r"^https?://")] | None = None
    """Override of the provider's API endpoint URL (for example a local test server)."""
    credentials_secret_ref: SecretReference | None = None
    """Secret with the provider's credentials (ambient credentials when unset)."""
    options: StringMap = Field(default_factory=dict)
    """Provider-specific options, e.g. subnet, network, project."""


# --- update and resurrection policies -----------------------------------------------------------


class UpdatePolicy(ApiModel):
    """How instances are rolled when the spec changes (BOSH's update block)."""

    canaries: Annotated[int, Field(ge=0, le=MAX_INSTANCES)] = 1
    """Instances updated first, one at a time, before the rest."""
    max_in_flight: Annotated[
        int | str, WithJsonSchema({**int_or_string(PERCENT_PATTERN), "minimum": 1})
    ] = 1
    """Instances updated in parallel after the canaries: a number (at least 1) or a percentage
    of the job's instances such as "25%" (rounded down, never below 1)."""
    canary_watch_time: WatchTime = "1s-30s"
    """How long a canary must stay healthy: a duration ("5s") or a range ("1s-30s"): checked from
    the low end, given up at the high end."""
    update_watch_time: WatchTime = "1s-30s"
    """How long a non-canary instance must stay healthy; same syntax as canaryWatchTime."""
    serial: bool = True
    """Update the jobs one after another (true) or all at once (false)."""
    snapshot_before: bool = False
    """Snapshot each instance's persistent disk just before a rollout stops its users (a spec
    change of a container that mounts it, a disk grow): a DiskSnapshot
    ``<job>-<index>-g<generation>``, labelled ``dockyard.dev/snapshot-before=true``."""
    snapshots_kept: Annotated[int, Field(ge=1, le=100)] = 3
    """Automatic snapshots kept per disk (snapshotBefore); older ones are deleted."""
    vm_strategy: Literal["DeleteCreate", "CreateSwapDelete"] = "DeleteCreate"
    """How a VM is replaced (a new stemcell or VM type, a recreate): DeleteCreate deletes it,
    then creates the new one; CreateSwapDelete creates the new one first, so the instance is
    down only while its containers stop, its disk moves and they start again."""
    skip_drain: bool = False
    """Stop containers without running their lifecycle.preStop (drain) hooks."""

    @model_validator(mode="after")
    def _check_max_in_flight(self) -> UpdatePolicy:
        resolve_max_in_flight(self.max_in_flight, 1)
        return self


class ResurrectionPolicy(ApiModel):
    """Recreating VMs that died, with a meltdown guard (BOSH's resurrector)."""

    enabled: bool = True
    """Recreate VMs that vanished or stopped responding."""
    meltdown_min_down: Annotated[int, Field(ge=0, le=MAX_INSTANCES)] = 5
    """Meltdown is declared only when at least this many instances are down at once..."""
    meltdown_percent: Annotated[int, Field(ge=0, le=100)] = 20
    """...and at least this percentage of all instances is down; then nothing is resurrected."""
    unresponsive_timeout: Annotated[
        Duration,
        Field(
            json_schema_extra=validations(
                rule("duration(self) > duration('0s')", "must be longer than 0s")
            )
        ),
    ] = "5s"
    """How long a VM may fail to answer before it counts as down (longer than 0s)."""

    @model_validator(mode="after")
    def _positive_timeout(self) -> ResurrectionPolicy:
        if parse_duration(self.unresponsive_timeout) <= 0:
            raise ValueError("unresponsiveTimeout must be longer than 0s")
        return self


# --- jobs and disks ----------------------------------------------------------------------------


class PersistentDiskTemplate(ApiModel):
    """A persistent disk per instance; it outlives VM recreation."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "(has(self.type) ? self.type : '') == (has(oldSelf.type) ? oldSelf.type : '')",
                "disk type is immutable",
                field_path=".type",
            )
        )
    )

    size: Annotated[Quantity, Field(json_schema_extra=validations(_NO_SHRINK, _SIZE_RANGE))]
    """Size, a quantity such as 1Gi or 500Mi. It may grow, never shrink."""
    type: Text | None = None
    """Provider disk type, e.g. gp3 (aws) or pd-ssd (gce); provider default when unset.
    Immutable."""
    reclaim_policy: Literal["Retain", "Delete"] = "Delete"
    """What happens to the disk when its owner is deleted."""
    restore_from: DnsLabel | None = None
    """A DiskSnapshot (same namespace) that new disks start from: an instance's disk made
    anew (a new instance, a disk gone from the IaaS) gets its data. At least as big as it."""
    orphan_retention: Duration = "120h"
    """With reclaimPolicy Delete: how long a disk no longer wanted (its instance scaled away,
    its Job or Deployment deleted) is kept, orphaned, before it is deleted, as BOSH keeps
    orphaned disks 5 days; a scale-up within it gets the same disk back with its data. 0s
    deletes at once."""

    @property
    def size_bytes(self) -> int:
        return parse_quantity(self.size)

    @model_validator(mode="after")
    def _positive(self) -> PersistentDiskTemplate:
        if self.size_bytes <= 0:
            raise ValueError("size must be greater than zero")
        return self


_UNKNOWN_LOCAL = "!d.contains('/') && !self.containers.exists(o, o.name == d)"
_BAD_DEPENDS = f"has(c.dependsOn) && c.dependsOn.exists(d, {_UNKNOWN_LOCAL})"
_BAD_VOLUMES = "has(c.volumes) && size(c.volumes) > 0"


def _first_index(condition: str) -> str:
    """CEL: index of the first container ``c`` meeting ``condition``."""
    return f"self.containers.transformList(i, c, {condition}, i)[0]"


def _index_text(condition: str) -> str:
    """CEL: that index as a string. A literal list of digits stands in for string(int), whose
    result size the apiserver's cost estimator cannot bound."""
    digits = ", ".join(f"'{i}'" for i in range(MAX_CONTAINERS))
    return f"[{digits}][{_first_index(condition)}]"


# Rules that need a job's sibling containers. Only the first offender is named: message
# expressions count against the same cost budget as the rules.
_INSTANCE_GROUP_RULES = validations(
    rule(
        "self.containers.all(c, self.containers.exists_one(o, o.name == c.name))",
        "container names must be unique within a job",
        field_path=".containers",
    ),
    rule(
        f"!self.containers.exists(c, {_BAD_DEPENDS})",
        message_expression=(
            f"'containers[' + {_index_text(_BAD_DEPENDS)} + '].dependsOn: '"
            f" + self.containers[{_first_index(_BAD_DEPENDS)}]"
            f".dependsOn.filter(d, {_UNKNOWN_LOCAL})[0]"
            " + ' is not a container in this job (use job/container for another job)'"
        ),
        field_path=".containers",
    ),
    rule(
        f"has(self.persistentDisk) || !self.containers.exists(c, {_BAD_VOLUMES})",
        message_expression=(
            f"'containers[' + {_index_text(_BAD_VOLUMES)}"
            " + '].volumes: volumes mount the persistent disk, but the job has no persistentDisk'"
        ),
        field_path=".containers",
    ),
)


class InstanceGroup(ApiModel):
    """VMs of one kind, each running the same containers (a BOSH instance group)."""

    model_config = ConfigDict(json_schema_extra=_INSTANCE_GROUP_RULES)

    instances: Annotated[int, Field(ge=0, le=MAX_INSTANCES)] = 1
    """Number of VMs (instances); each gets a stable index."""
    vm_type: Text | None = None
    """Provider machine type, e.g. t3.small (aws) or e2-small (gce); provider default when unset."""
    persistent_disk: PersistentDiskTemplate | None = None
    """A persistent disk for each instance, mounted into containers through their volumes."""
    containers: Annotated[
        list[Container],
        Field(min_length=1, max_length=MAX_CONTAINERS, json_schema_extra=map_list("name")),
    ]
    """Containers run on every instance."""

    @model_validator(mode="after")
    def _containers_consistent(self) -> InstanceGroup:
        names = [container.name for container in self.containers]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"container names must be unique within a job: {duplicates}")
        if self.persistent_disk is None:
            with_volumes = [c.name for c in self.containers if c.volumes]
            if with_volumes:
                raise ValueError(
                    f"containers {with_volumes} mount volumes, but the job has no persistentDisk"
                )
        return self


class JobTemplate(InstanceGroup):
    """One job (instance group) of a deployment."""

    name: DnsLabel
    """Job name, unique in the deployment."""


class LocalObjectReference(ApiModel):
    """An object of the same namespace, by name."""

    name: Annotated[str, Field(max_length=253, pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")]
    """Its name."""


ImagePullSecrets = Annotated[
    list[LocalObjectReference], Field(max_length=16, json_schema_extra=map_list("name"))
]


class DeploymentSpec(ApiModel):
    """Desired state of a deployment: where it runs, how it updates, and its jobs."""

    provider: ProviderSpec
    """IaaS the deployment's VMs and disks live on."""
    image_pull_secrets: ImagePullSecrets = Field(default_factory=list)
    """Secrets of type kubernetes.io/dockerconfigjson (same namespace) whose registry
    credentials the VMs' engines pull images with; passed on to every job."""
    stemcell: Annotated[str, Field(max_length=512)] | None = None
    """VM image: a stock image by name (aws, gce: debian-12, the newest official one), an
    image id (an AMI, a GCE image URL, a local image), or the provider's default when unset."""
    update: UpdatePolicy = defaulted(UpdatePolicy)
    """Rollout policy."""
    resurrection: ResurrectionPolicy = defaulted(ResurrectionPolicy)
    """Resurrection policy."""
    jobs: Annotated[
        list[JobTemplate],
        Field(min_length=1, max_length=MAX_JOBS, json_schema_extra=map_list("name")),
    ]
    """Jobs (instance groups); each becomes a Job object."""

    @model_validator(mode="after")
    def _unique_jobs(self) -> DeploymentSpec:
        names = [job.name for job in self.jobs]
        if len(set(names)) != len(names):
            raise ValueError("job names must be unique within a deployment")
        return self


class JobSpec(InstanceGroup):
    """Desired state of one job: its instances and containers, and where they run."""

    name: DnsLabel | None = None
    """Job name within its deployment (metadata.name when unset); "job/container" dependencies
    use it."""
    provider: ProviderSpec
    """IaaS the job's VMs and disks live on (copied from the Deployment)."""
    image_pull_secrets: ImagePullSecrets = Field(default_factory=list)
    """Secrets of type kubernetes.io/dockerconfigjson (same namespace) whose registry
    credentials the VMs' engines pull images with (copied from the Deployment)."""
    stemcell: Annotated[str, Field(max_length=512)] | None = None
    """VM image: a stock image by name (aws, gce: debian-12, the newest official one), an
    image id (an AMI, a GCE image URL, a local image), or the provider's default when unset."""
    update: UpdatePolicy = defaulted(UpdatePolicy)
    """Rollout policy."""
    resurrection: ResurrectionPolicy = defaulted(ResurrectionPolicy)
    """Resurrection policy."""


class PersistentDiskSpec(PersistentDiskTemplate):
    """Desired state of a persistent disk."""

    provider: ProviderSpec
    """IaaS the disk lives on."""


# --- whole objects -----------------------------------------------------------------------------


class ObjectMeta(ApiModel):
    """The part of metadata Dockyard reads."""

    name: str = ""
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    deletion_timestamp: datetime | None = None


# What the API server shows as the status of an object no operator has written to yet (CRD
# schema defaulting applies to reads and watches too): kstatus then calls it InProgress
# (observedGeneration 0 < generation) instead of Current in the moment after it is created.
UNOBSERVED: dict[str, Any] = {"default": {"observedGeneration": 0}}


class Deployment(ApiModel):
    """A BOSH-style deployment: VMs, persistent disks and the Docker containers on them."""

    model_config = ConfigDict(json_schema_extra=validations(_NAME_IS_LABEL, _JOB_NAMES_FIT))

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: DeploymentSpec
    status: DeploymentStatus = Field(default_factory=DeploymentStatus, json_schema_extra=UNOBSERVED)


class Job(ApiModel):
    """One instance group: N VMs running the same containers."""

    model_config = ConfigDict(json_schema_extra=validations(_NAME_IS_LABEL, _JOB_NAME_FITS))

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: JobSpec
    status: JobStatus = Field(default_factory=JobStatus, json_schema_extra=UNOBSERVED)

    @property
    def job_name(self) -> str:
        """The name "job/container" dependencies use for this job."""
        return self.spec.name or self.metadata.name


class PersistentDisk(ApiModel):
    """A persistent disk: created, attached, grown and (per reclaimPolicy) deleted by Dockyard."""

    model_config = ConfigDict(json_schema_extra=validations(_NAME_IS_LABEL))

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: PersistentDiskSpec
    status: PersistentDiskStatus = Field(
        default_factory=PersistentDiskStatus, json_schema_extra=UNOBSERVED
    )


class DiskSnapshotSpec(ApiModel):
    """What to snapshot."""

    model_config = ConfigDict(
        json_schema_extra=validations(rule("self == oldSelf", "a snapshot's spec is immutable"))
    )

    persistent_disk: DnsLabel
    """The PersistentDisk (same namespace; a job's are named <job>-<index>) to snapshot. Its
    disk may be in use: the snapshot is consistent (crash-consistent on a running system)."""


class DiskSnapshot(ApiModel):
    """A point-in-time snapshot of a persistent disk; a job disk restores from it with
    ``persistentDisk.restoreFrom``. Deleting it deletes the provider snapshot."""

    model_config = ConfigDict(json_schema_extra=validations(_NAME_IS_LABEL))

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: DiskSnapshotSpec
    status: DiskSnapshotStatus = Field(
        default_factory=DiskSnapshotStatus, json_schema_extra=UNOBSERVED
    )


def _body(body: Mapping[str, Any]) -> dict[str, Any]:
    # kopf passes its own Body/Spec views; status may be absent or null on a new object.
    return {
        "metadata": dict(body.get("metadata") or {}),
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def parse_deployment(body: Mapping[str, Any]) -> Deployment:
    """A Deployment from a kopf body (metadata, spec, status); raises pydantic.ValidationError."""
    return Deployment.model_validate(_body(body))


def parse_job(body: Mapping[str, Any]) -> Job:
    """A Job from a kopf body; raises pydantic.ValidationError."""
    return Job.model_validate(_body(body))


def parse_persistent_disk(body: Mapping[str, Any]) -> PersistentDisk:
    """A PersistentDisk from a kopf body; raises pydantic.ValidationError."""
    return PersistentDisk.model_validate(_body(body))


def parse_disk_snapshot(body: Mapping[str, Any]) -> DiskSnapshot:
    """A DiskSnapshot from a kopf body; raises pydantic.ValidationError."""
    return DiskSnapshot.model_validate(_body(body))
