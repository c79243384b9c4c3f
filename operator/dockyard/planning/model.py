"""The planner's own vocabulary: what is wanted, what was seen, and what to do about it.

Small frozen dataclasses, independent of ``dockyard.api`` (the reconciler adapts API models and
observations into them), so the planning layer stays pure and easy to test.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal, NamedTuple

RestartPolicy = Literal["Always", "OnFailure", "Never"]
ReclaimPolicy = Literal["Retain", "Delete"]
#: BOSH's update.vm_strategy: delete the old VM, then create its replacement; or create the
#: replacement first (the instance is down only while its disk moves).
VMStrategy = Literal["DeleteCreate", "CreateSwapDelete"]

#: Docker's container states. "running" and "restarting" count as up (the engine restarts a
#: crashed container itself); "paused" is left alone; the others are down.
ContainerState = Literal["running", "restarting", "paused", "created", "exited", "dead"]
UP_STATES: frozenset[str] = frozenset({"running", "restarting"})
DOWN_STATES: frozenset[str] = frozenset({"created", "exited", "dead"})


class PlanningError(ValueError):
    """Input the planner cannot work with; ``field`` names where it is, e.g.
    ``jobs[backend].containers[api].dependsOn``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message


class ContainerKey(NamedTuple):
    """One container of a job (on every instance of it). Printed as ``job/container``."""

    job: str
    container: str

    def __str__(self) -> str:
        return f"{self.job}/{self.container}"


@dataclass(frozen=True, order=True)
class InstanceRef:
    """One instance (VM) of a job. Printed as ``job/index``."""

    job: str
    index: int

    def __str__(self) -> str:
        return f"{self.job}/{self.index}"


# --- desired ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdatePolicy:
    """BOSH's update block, with max_in_flight already resolved to a number of instances."""

    canaries: int = 1
    max_in_flight: int = 1
    serial: bool = True
    #: Snapshot an instance's disk before a rollout stops its users.
    snapshot_before: bool = False
    vm_strategy: VMStrategy = "DeleteCreate"


@dataclass(frozen=True)
class DesiredContainer:
    """A container as the spec wants it on every instance of its job.

    ``config_hash`` covers everything whose change means recreating the container (image,
    command, env, ports, volumes, restart policy...); the caller computes it and labels the
    container with it. ``depends_on`` holds ``"name"`` (same job, same instance) or
    ``"job/name"`` (every instance of another job). ``uses_disk``: it mounts the job's
    persistent disk (it is stopped while the disk is detached to grow).
    """

    name: str
    config_hash: str
    depends_on: tuple[str, ...] = ()
    restart_policy: RestartPolicy = "Always"
    uses_disk: bool = False
    #: Upstreams (of ``depends_on``) it waits for more than the start of before it (re)starts:
    #: (reference, "Healthy" | "Completed").
    waits_for: tuple[tuple[str, str], ...] = ()
    #: It has a health check (its health is known, not taken from running).
    checked: bool = False
    #: The ports it publishes on its VM: its dependents' links are address:port of these.
    published: tuple[int, ...] = ()


@dataclass(frozen=True)
class DesiredDisk:
    """One persistent disk per instance."""

    size_mib: int
    type: str | None = None
    reclaim_policy: ReclaimPolicy = "Delete"
    #: Seconds a disk no longer wanted (policy Delete) stays orphaned before its deletion; 0:
    #: deleted at once.
    orphan_retention: float = 0.0
    #: A provider snapshot new disks start from ("" : blank). With one, a recorded disk gone
    #: from the IaaS is restored from it rather than left missing.
    restore_from: str = ""


@dataclass(frozen=True)
class InstanceCommands:
    """What the operator asked of single instances (BOSH's instance commands), by index.

    ``restart``/``recreate``: the time of the request; containers started (VMs made) for an
    earlier one are restarted (recreated), through the rollout. ``stopped``: containers stopped,
    the VM kept; ``detached``: containers stopped, the disk detached and kept, the VM deleted
    (``stop --hard``); ``ignored``: left out of rollouts and repairs alike."""

    restart: Mapping[int, float] = field(default_factory=dict)
    recreate: Mapping[int, float] = field(default_factory=dict)
    stopped: frozenset[int] = frozenset()
    detached: frozenset[int] = frozenset()
    ignored: frozenset[int] = frozenset()


@dataclass(frozen=True)
class DesiredJob:
    """A job (instance group): ``instances`` VMs with indices ``0..instances-1``, each running
    ``containers`` (in declaration order). ``resurrect``: replace VMs observed unhealthy (false
    when resurrection is disabled or in meltdown: such instances are then left alone).
    ``vm_config``: what the VMs are made from (stemcell and VM type, as a fingerprint; "" for
    any): a VM made from another is replaced through the rollout."""

    name: str
    instances: int
    containers: tuple[DesiredContainer, ...]
    disk: DesiredDisk | None = None
    update: UpdatePolicy = UpdatePolicy()
    resurrect: bool = True
    vm_config: str = ""
    commands: InstanceCommands = InstanceCommands()


# --- observed -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObservedVM:
    """The instance's VM. ``healthy`` is false when it is stopped, gone from the IaaS although
    Dockyard made it, or its engine stopped answering (the caller decides the timeout).
    ``config``: the vm_config it was made from (None: not recorded, taken as current);
    ``made_for``: the recreate request it was made for (0: none)."""

    id: str
    healthy: bool = True
    config: str | None = None
    made_for: float = 0.0


@dataclass(frozen=True)
class ObservedDisk:
    """The instance's persistent disk. ``reclaim_policy`` is the one recorded when it was made;
    it decides the disk's fate when its job no longer says (None counts as Retain)."""

    id: str
    size_mib: int
    attached_to: str | None = None
    reclaim_policy: ReclaimPolicy | None = None
    #: False when the provider cannot grow it in place: it grows by copy-migration.
    grows_in_place: bool = True
    #: The new disk of a copy-migration that has not finished (its data is not trusted).
    migration_target: str | None = None
    #: Growing it failed lately and waits for its back-off: meanwhile it serves at its size.
    grow_waits: bool = False
    #: Orphaned (no longer wanted, kept for a while): adopted again by a wanted instance.
    orphaned: bool = False


@dataclass(frozen=True)
class ObservedContainer:
    """A container on an instance's VM. ``config_hash`` is the label it was created with;
    ``started_at`` its last start (Docker's State.StartedAt as a number; only compared)."""

    state: ContainerState
    config_hash: str
    started_at: float | None = None
    exit_code: int | None = None
    #: Its health check fails and its back-off allows a restart now (the caller decides).
    unhealthy: bool = False


@dataclass(frozen=True)
class ObservedInstance:
    """What exists for one index of a job. Containers are by name; they are only trusted when
    the VM is healthy."""

    vm: ObservedVM | None = None
    disk: ObservedDisk | None = None
    containers: Mapping[str, ObservedContainer] = field(default_factory=dict)
    #: The replacement of ``vm`` a create-swap-delete made and has not swapped in yet.
    incoming: ObservedVM | None = None


#: The observed world: job name -> instance index -> instance.
World = Mapping[str, Mapping[int, ObservedInstance]]


# --- actions ------------------------------------------------------------------------------------


class Cause(enum.StrEnum):
    """Why an action is planned: what code branches on (an action's ``reason`` is for humans)."""

    UNSPECIFIED = "Unspecified"
    NEW_INSTANCE = "NewInstance"  # a wanted instance has no VM or disk yet
    SCALED_DOWN = "ScaledDown"
    JOB_REMOVED = "JobRemoved"
    VM_UNHEALTHY = "VMUnhealthy"  # resurrection: the VM is replaced
    DUPLICATE_VM = "DuplicateVM"
    NOT_ON_VM = "NotOnVM"  # a disk attached elsewhere than the instance's VM
    DISK_ATTACHED = "DiskAttached"  # its users stop while the disk is attached
    DISK_GROWN = "DiskGrown"
    DISK_MIGRATED = "DiskMigrated"
    COPY_NOT_WANTED = "CopyNotWanted"  # an unfinished migration's new disk
    NEW_VM = "NewVM"  # a container's first start on a new VM
    MISSING = "Missing"  # a container that should exist does not
    SPEC_CHANGED = "SpecChanged"
    EXITED = "Exited"  # down, and its restart policy wants it up
    DEAD = "Dead"
    UPSTREAM = "Upstream"  # an upstream started after it
    UNHEALTHY = "Unhealthy"  # its health check fails
    NOT_IN_SPEC = "NotInSpec"
    ADOPTED = "Adopted"  # an orphaned disk wanted again: its data comes back
    ORPHAN_EXPIRED = "OrphanExpired"  # a migrated disk's old one, once its retention passed
    VM_CHANGED = "VMChanged"  # the stemcell or VM type changed: the VM is replaced
    RECREATE_REQUESTED = "RecreateRequested"  # an operator asked for new VMs
    RESTART_REQUESTED = "RestartRequested"  # an operator asked for a (rolling) restart
    INSTANCE_STOPPED = "InstanceStopped"  # an operator stopped the instance
    INSTANCE_DETACHED = "InstanceDetached"  # ...hard: its VM goes, its disk stays
    SWAP_NOT_WANTED = "SwapNotWanted"  # a replacement VM no longer needed


#: Causes of a rollout (the spec changed, or an operator asked): batched, watched, halted on
#: failure. Anything else is a repair, run at once on every instance.
ROLLOUT_CAUSES: frozenset[Cause] = frozenset(
    {
        Cause.SPEC_CHANGED,
        Cause.DISK_GROWN,
        Cause.VM_CHANGED,
        Cause.RECREATE_REQUESTED,
        Cause.RESTART_REQUESTED,
    }
)


@dataclass(frozen=True)
class Action:
    """Something to do to one instance. ``kind`` is the class name; ``str()`` reads well in an
    Event. Actions that create something refer to the instance's VM by (job, index): its id is
    only known once CreateVM ran."""

    kind: ClassVar[str] = "Action"
    job: str
    index: int
    #: Not part of equality: the same step planned for another reason is the same step.
    cause: Cause = field(default=Cause.UNSPECIFIED, kw_only=True, compare=False)

    @property
    def instance(self) -> InstanceRef:
        return InstanceRef(self.job, self.index)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__()
        cls.kind = cls.__name__

    def _detail(self) -> str:
        return ""

    def __str__(self) -> str:
        return f"{self.kind} {self.job}/{self.index}{self._detail()}"


@dataclass(frozen=True)
class CreateVM(Action):
    """Create the instance's VM; with ``replaces``, its replacement beside the old one (which
    stays the instance's VM until DeleteVM of it swaps the new one in)."""

    reason: str
    replaces: str = ""

    def _detail(self) -> str:
        return f": {self.reason}"


@dataclass(frozen=True)
class DeleteVM(Action):
    vm_id: str
    reason: str

    def _detail(self) -> str:
        return f" {self.vm_id}: {self.reason}"


@dataclass(frozen=True)
class CreateDisk(Action):
    """Create the instance's disk (from ``snapshot`` when given) and attach it to the
    instance's VM."""

    size_mib: int
    disk_type: str | None
    snapshot: str = ""

    def _detail(self) -> str:
        source = f" from snapshot {self.snapshot}" if self.snapshot else ""
        return f": {self.size_mib} MiB{source}"


@dataclass(frozen=True)
class AttachDisk(Action):
    """Attach an existing (detached) disk to the instance's VM: its data is kept."""

    disk_id: str

    def _detail(self) -> str:
        return f" {self.disk_id}"


@dataclass(frozen=True)
class DetachDisk(Action):
    disk_id: str
    vm_id: str
    reason: str

    def _detail(self) -> str:
        return f" {self.disk_id} from {self.vm_id}: {self.reason}"


@dataclass(frozen=True)
class ResizeDisk(Action):
    """Grow the disk (and its filesystem) to ``size_mib``; never shrinks."""

    disk_id: str
    size_mib: int

    def _detail(self) -> str:
        return f" {self.disk_id} to {self.size_mib} MiB"


@dataclass(frozen=True)
class MigrateDisk(Action):
    """Grow by copy, as BOSH migrates a disk: a new disk of ``size_mib``, the data copied onto
    it on the instance's VM, the new disk attached in the old one's place, the old one orphaned
    for ``orphan_retention`` seconds (deleted at once when 0). The disk's users are removed
    before (their mounts name the old disk)."""

    disk_id: str
    size_mib: int
    disk_type: str | None
    orphan_retention: float = 0.0

    def _detail(self) -> str:
        return f" {self.disk_id} to a new {self.size_mib} MiB disk"


@dataclass(frozen=True)
class SnapshotDisk(Action):
    """A snapshot of the instance's disk before a rollout stops its users (``snapshotBefore``);
    identified by the generation it precedes, so a retried step finds the one it took."""

    disk_id: str
    generation: int

    def _detail(self) -> str:
        return f" {self.disk_id} before generation {self.generation}"


@dataclass(frozen=True)
class DeleteDisk(Action):
    """For an instance that is removed, under reclaim policy Delete; an unfinished
    migration's new disk that is no longer wanted; a finished one's old disk after its
    retention (cause ORPHAN_EXPIRED)."""

    disk_id: str

    def _detail(self) -> str:
        return f" {self.disk_id}"


@dataclass(frozen=True)
class OrphanDisk(Action):
    """Keep a disk no longer wanted (policy Delete) for its retention, marked orphaned: it is
    deleted after, unless a scale-up adopts it first."""

    disk_id: str

    def _detail(self) -> str:
        return f" {self.disk_id}"


@dataclass(frozen=True)
class AdoptDisk(Action):
    """An orphaned disk is the instance's again (the orphan mark goes)."""

    disk_id: str

    def _detail(self) -> str:
        return f" {self.disk_id}"


@dataclass(frozen=True)
class ContainerAction(Action):
    container: str
    reason: str

    @property
    def key(self) -> ContainerKey:
        return ContainerKey(self.job, self.container)

    def _detail(self) -> str:
        return f" {self.container}: {self.reason}"


@dataclass(frozen=True)
class StartContainer(ContainerAction):
    """Make the container run with the desired config: create it when missing, else start it."""


@dataclass(frozen=True)
class RecreateContainer(ContainerAction):
    """Remove the container and create it again with the desired config (its spec changed)."""


@dataclass(frozen=True)
class RestartContainer(ContainerAction):
    """Restart an unchanged container: ``because_of`` (an upstream) started after it, or (None)
    its health check fails."""

    because_of: ContainerKey | None = None


@dataclass(frozen=True)
class StopContainer(ContainerAction):
    """Stop gracefully (before its instance is removed, or its disk detached to grow)."""


@dataclass(frozen=True)
class RemoveContainer(ContainerAction):
    """Stop and remove a container the spec no longer has."""


#: Actions that (re)start a container.
STARTS: tuple[type[ContainerAction], ...] = (StartContainer, RecreateContainer, RestartContainer)
