"""What one look at a Job's world saw, in the decision step's vocabulary.

The runtime fills these from its providers and engines (``runtime/world.py``); the decision step
(``decide``) reads nothing else about the world. Plain frozen values: a test writes a world in a
few lines.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class VMPhase(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    STOPPED = "stopped"
    MISSING = "missing"


@dataclass(frozen=True)
class ContainerObservation:
    """A container on a VM's engine: Docker's state, the spec hash it was made from, its last
    start (epoch seconds), and what the engine's own restart policy did."""

    id: str
    state: str  # running | restarting | exited | created | paused | dead | removing
    config_hash: str
    started_at: float | None = None
    exit_code: int | None = None
    health: str | None = None  # healthy | unhealthy | starting, when the engine checks it
    restart_count: int = 0
    oom_killed: bool = False

    @property
    def ready(self) -> bool:
        return self.state == "running" and self.health != "unhealthy"

    def done_its_part(self, restart_policy: str) -> bool:
        """Ready, or a one-shot container (restart policy not Always) that completed."""
        completed = self.state == "exited" and self.exit_code == 0
        return self.ready or (completed and restart_policy != "Always")


@dataclass(frozen=True)
class DiskObservation:
    id: str
    size_mib: int
    attached_to: str | None = None  # VM id
    migration_target: str | None = None  # the unfinished copy of a copy-migration
    orphaned_at: float | None = None  # epoch seconds: no longer wanted since then


@dataclass(frozen=True)
class InstanceObservation:
    """One index of the Job. ``engine_ok``: the VM's engine answered, so ``containers`` is what
    runs there (otherwise it is empty and means nothing)."""

    vm_id: str | None = None
    vm_phase: VMPhase = VMPhase.MISSING
    engine_ok: bool = False
    disk: DiskObservation | None = None
    containers: Mapping[str, ContainerObservation] = field(default_factory=dict)
    address: str | None = None
    #: Old disks of finished copy-migrations, orphaned: deleted when their retention passed.
    superseded: tuple[DiskObservation, ...] = ()
    #: What the VM was made from (its fingerprint; None: not recorded) and for which recreate
    #: request (epoch seconds).
    vm_config: str | None = None
    made_for: float = 0.0
    #: A create-swap-delete's replacement VM, not swapped in yet, and whether it runs.
    incoming_id: str | None = None
    incoming_running: bool = False

    @property
    def has_vm(self) -> bool:
        return self.vm_id is not None and self.vm_phase is not VMPhase.MISSING


@dataclass(frozen=True)
class JobObservation:
    """Every instance found (any index, wanted or not) and the VMs that duplicate an index."""

    instances: Mapping[int, InstanceObservation] = field(default_factory=dict)
    duplicates: tuple[tuple[int, str], ...] = ()  # (index, vm id)

    def get(self, index: int) -> InstanceObservation:
        return self.instances.get(index, _NOTHING)


_NOTHING = InstanceObservation()
