"""Status of the three kinds, as the operator writes it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, WithJsonSchema

from dockyard.api.conditions import Condition
from dockyard.api.schema import (
    MAX_CONTAINERS,
    MAX_INSTANCES,
    MAX_JOBS,
    ApiModel,
    Count,
    DnsLabel,
    Quantity,
    Text,
    map_list,
)

Conditions = Annotated[list[Condition], Field(max_length=16, json_schema_extra=map_list("type"))]
KopfState = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


class ContainerStatus(ApiModel):
    """What one container on one instance is doing."""

    name: DnsLabel
    """Container name."""
    state: Annotated[str, Field(max_length=64)] = "missing"
    """running, exited, missing, restarting, created, waiting (for an upstream) or unhealthy."""
    ready: bool = False
    """Running and passing its health check."""
    restart_count: Count = 0
    """Restarts since the container was first created."""
    last_restart_time: datetime | None = None
    """When it was last restarted."""
    last_restart_reason: Annotated[str, Field(max_length=1024)] | None = None
    """Why it was last restarted, e.g. Exited, Unhealthy or UpstreamRestarted."""
    spec_hash: Annotated[str, Field(max_length=128)] | None = None
    """Hash of the container spec it runs."""
    image: Annotated[str, Field(max_length=512)] | None = None
    """Image it runs."""
    started_at: datetime | None = None
    """When it last started (millisecond precision): dependents restart when an upstream started
    after them."""


class InstanceStatus(ApiModel):
    """One instance (VM) of a job."""

    index: Count
    """Stable instance index."""
    vm_id: Text | None = None
    """Provider VM id."""
    address: Text | None = None
    """VM address."""
    disk: Text | None = None
    """Name of its PersistentDisk object."""
    state: Annotated[str, Field(max_length=64)] | None = None
    """running, starting, missing; or what an operator asked: stopped, stopped-hard (no VM,
    disk kept), ignored."""
    stemcell: Annotated[str, Field(max_length=512)] | None = None
    """The stemcell its VM was made from ("default": the provider's), when known."""
    vm_type: Text | None = None
    """The VM type its VM was made with ("default": the provider's), when known."""
    containers: Annotated[
        list[ContainerStatus], Field(max_length=MAX_CONTAINERS, json_schema_extra=map_list("name"))
    ] = Field(default_factory=list)
    """Its containers."""


class JobStatus(ApiModel):
    """Observed state of a job."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """metadata.generation last reconciled."""
    observed_commands: Annotated[str, Field(max_length=64)] | None = None
    """A digest of the operator-command annotations (dockyard.dev/restartedAt, stopped...) the
    last pass acted on; "" for none."""
    conditions: Conditions = Field(default_factory=list)
    """Ready, Reconciling, Stalled."""
    replicas: Count = 0
    """Instances that exist now."""
    ready_instances: Count = 0
    """Instances whose containers are all ready."""
    instances: Annotated[
        list[InstanceStatus],
        Field(max_length=MAX_INSTANCES, json_schema_extra=map_list("index")),
    ] = Field(default_factory=list)
    """Per-instance state."""
    kopf: KopfState | None = None
    """kopf's own bookkeeping."""


class JobCount(ApiModel):
    """Instance counts of one job of a deployment."""

    name: DnsLabel
    """Job name."""
    instances: Count = 0
    """Instances that exist."""
    ready: Count = 0
    """Instances that are ready."""


class DeploymentStatus(ApiModel):
    """Observed state of a deployment."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """metadata.generation last reconciled."""
    conditions: Conditions = Field(default_factory=list)
    """Ready, Reconciling, Stalled."""
    jobs: Annotated[
        list[JobCount], Field(max_length=MAX_JOBS, json_schema_extra=map_list("name"))
    ] = Field(default_factory=list)
    """Counts per job."""
    instances: Count = 0
    """Instances that exist, over all jobs."""
    ready_instances: Count = 0
    """Ready instances, over all jobs."""
    kopf: KopfState | None = None
    """kopf's own bookkeeping."""


class PersistentDiskStatus(ApiModel):
    """Observed state of a persistent disk."""

    disk_id: Text | None = None
    """Provider disk id."""
    attached_to: Text | None = None
    """Provider VM id it is attached to."""
    capacity: Quantity | None = None
    """Actual size."""
    phase: Literal["Pending", "Attached", "Detached", "Resizing", "Failed", "Orphaned"] | None = (
        None
    )
    """Pending, Attached, Detached, Resizing, Failed or Orphaned (no longer wanted: deleted at
    expiresAt unless its instance comes back first)."""
    orphaned_at: datetime | None = None
    """When it was orphaned."""
    expires_at: datetime | None = None
    """When an orphaned disk is deleted (``kubectl delete`` of this record deletes it now)."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """metadata.generation last reconciled."""
    conditions: Conditions = Field(default_factory=list)
    """Ready, Reconciling, Stalled."""
    kopf: KopfState | None = None
    """kopf's own bookkeeping."""


class DiskSnapshotStatus(ApiModel):
    """Observed state of a disk snapshot."""

    snapshot_id: Text | None = None
    """Provider snapshot id."""
    source_disk_id: Text | None = None
    """Provider id of the disk it was taken of."""
    restore_size: Quantity | None = None
    """The smallest disk it restores into."""
    ready_to_use: bool = False
    """Complete: usable for a restore."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """metadata.generation last reconciled."""
    conditions: Conditions = Field(default_factory=list)
    """Ready, Reconciling, Stalled."""
    kopf: KopfState | None = None
    """kopf's own bookkeeping."""
