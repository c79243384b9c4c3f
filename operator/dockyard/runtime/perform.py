"""Doing one planned action on the real world: a VM, a disk or a container, through the
provider and the VM's engine. Runs in a worker thread; never raises (a failure is an Outcome).

A :class:`Performer` lives for one execution: it starts from what the pass observed (the
provider's VM and disk objects) and keeps it current as actions change it, so a container
started after its disk was attached finds the mount.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from dockyard import planning
from dockyard.planning import Cause
from dockyard.planning.decide import IAAS_ONLY
from dockyard.planning.memory import DISK_ACTION_KINDS, Failure, Outcome
from dockyard.planning.observation import ContainerObservation
from dockyard.providers import (
    VM,
    Attachment,
    Disk,
    InPlaceResizeUnsupportedError,
    NotFoundError,
    PermanentError,
    ProviderError,
    TransientError,
)
from dockyard.providers.base import TAG_ORPHANED_AT, TAG_SNAPSHOT, VMState
from dockyard.runtime.engine import HookFailedError, ObservedContainer
from dockyard.runtime.world import (
    ENGINE_ERRORS,
    ContainerWant,
    InstanceWorld,
    JobWorld,
    orphan_stamp,
)

log = logging.getLogger(__name__)

_RECORD_KINDS = {
    "CreateVM": "CreatedVM",
    "DeleteVM": "DeletedVM",
    "CreateDisk": "CreatedDisk",
    "AttachDisk": "AttachedDisk",
    "DetachDisk": "DetachedDisk",
    "ResizeDisk": "ResizedDisk",
    "MigrateDisk": "MigratedDisk",
    "DeleteDisk": "DeletedDisk",
    "OrphanDisk": "OrphanedDisk",
    "AdoptDisk": "AdoptedDisk",
    "SnapshotDisk": "SnapshotTaken",
    "RecreateContainer": "RecreatedContainer",
    "RestartContainer": "RestartedContainer",
    "StopContainer": "StoppedContainer",
    "RemoveContainer": "RemovedContainer",
}
_FIRST_STARTS = frozenset({Cause.NEW_VM, Cause.MISSING})


@dataclass(frozen=True)
class ActionRecord:
    """What was done, for Events and metrics. ``kind`` is the Event reason."""

    kind: str
    index: int
    target: str
    reason: str
    ok: bool = True
    message: str = ""
    cause: Cause = Cause.UNSPECIFIED


def failure_kind(action: planning.Action) -> str:
    """The Event reason of a failed action."""
    if isinstance(action, planning.ContainerAction):
        return "ContainerFailed"
    if action.kind in DISK_ACTION_KINDS:
        return f"{action.kind}Failed"
    if isinstance(action, planning.CreateVM) and action.cause is Cause.VM_UNHEALTHY:
        return "ResurrectionFailed"
    return "InstanceFailed"


def classify(error: Exception) -> Failure:
    if isinstance(error, InPlaceResizeUnsupportedError):
        return Failure.RESIZE_UNSUPPORTED
    if isinstance(error, HookFailedError):
        return Failure.HOOK
    if isinstance(error, PermanentError):
        return Failure.REFUSED
    return Failure.TRANSIENT


def container_observation(found: ObservedContainer) -> ContainerObservation:
    return ContainerObservation(
        id=found.id,
        state=found.state,
        config_hash=found.config_hash,
        started_at=found.started_at,
        exit_code=found.exit_code,
        health=found.health,
        restart_count=found.restart_count,
        oom_killed=found.oom_killed,
    )


@dataclass
class _Instance:
    """What one execution knows of an instance while its actions run."""

    vm: VM | None = None
    #: A create-swap-delete's replacement: the instance's VM once DeleteVM of ``vm`` ran.
    incoming: VM | None = None
    disk: Disk | None = None
    migration_target: Disk | None = None
    attachment: Attachment | None = None
    containers: dict[str, ObservedContainer] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Performer:
    def __init__(
        self,
        world: JobWorld,
        seen: Mapping[int, InstanceWorld],
        wants: Mapping[str, ContainerWant],
        stemcell: str,
        machine_type: str,
        recreate: Mapping[int, float] | None = None,
        skip_drain: bool = False,
    ) -> None:
        self.world = world
        self.wants = wants
        self.skip_drain = skip_drain
        self.stemcell, self.machine_type = stemcell, machine_type
        self.recreate = recreate or {}  # index -> the recreate request new VMs are made for
        self._instances = {
            index: _Instance(i.vm, i.incoming, i.disk, i.migration_target, None, dict(i.containers))
            for index, i in seen.items()
        }
        self._guard = threading.Lock()
        self.records: list[ActionRecord] = []

    def perform(self, action: planning.Action) -> Outcome:
        """Do ``action``; an Outcome either way (and an ActionRecord for Events)."""
        if action.kind not in IAAS_ONLY and self._booting(action.index):
            # A VM made in this pass is still booting (a cloud VM installing its engine): what
            # needs its engine waits for a later pass (held while it boots), without a back-off.
            return Outcome(action, Failure.CANCELLED, "its VM is booting")
        try:
            record, found = self._do(action)
        except InPlaceResizeUnsupportedError as error:
            why = f"{error}; copying it to a new disk"
            self._record(ActionRecord("DiskMigrationStarted", action.index, "disk", why))
            return Outcome(action, Failure.RESIZE_UNSUPPORTED, str(error))
        except ENGINE_ERRORS as error:
            target = action.container if isinstance(action, planning.ContainerAction) else "vm"
            if action.kind in DISK_ACTION_KINDS:
                target = "disk"
            message = f"{action.kind}: {error}"
            log.warning("%s failed: %s", action, error)
            kind = failure_kind(action)
            self._record(ActionRecord(kind, action.index, target, message, False, "", action.cause))
            retry = error.retry_after if isinstance(error, TransientError) else 0.0
            return Outcome(action, classify(error), str(error), retry_after=retry)
        except Exception as error:  # a bug must not kill the pass: report it as a failure
            log.exception("%s failed unexpectedly", action)
            self._record(ActionRecord(failure_kind(action), action.index, "vm", repr(error), False))
            return Outcome(action, Failure.TRANSIENT, repr(error))
        self._record(record)
        seen = container_observation(found) if found is not None else None
        return Outcome(action, container=seen)

    def _booting(self, index: int) -> bool:
        vm = self._instance(index).vm
        return vm is not None and vm.state is VMState.PENDING

    def _record(self, record: ActionRecord) -> None:
        with self._guard:
            self.records.append(record)

    def _instance(self, index: int) -> _Instance:
        with self._guard:
            return self._instances.setdefault(index, _Instance())

    def _do(self, action: planning.Action) -> tuple[ActionRecord, ObservedContainer | None]:
        if isinstance(action, planning.ContainerAction):
            return self._container_action(action)
        state = self._instance(action.index)
        kind = _RECORD_KINDS.get(action.kind, action.kind)
        with state.lock:
            target, reason = self._instance_action(action, state)
        if isinstance(action, planning.CreateVM) and action.cause is Cause.VM_UNHEALTHY:
            kind = "ResurrectedVM"
        return ActionRecord(kind, action.index, target, reason, cause=action.cause), None

    def _instance_action(self, action: planning.Action, state: _Instance) -> tuple[str, str]:
        """A VM or disk action: (what it acted on, why) for its record."""
        index = action.index
        if isinstance(action, planning.CreateVM):
            made = self.world.create_vm(
                index,
                self.stemcell,
                self.machine_type,
                self.recreate.get(index, 0.0),
                action.replaces,
            )
            if action.replaces:
                state.incoming = made  # swapped in when its predecessor goes
                return made.id, action.reason
            state.vm, state.containers, state.attachment = made, {}, None
            return made.id, action.reason
        if isinstance(action, planning.DeleteVM):
            self.world.delete_vm_id(action.vm_id)
            if state.incoming is not None and state.incoming.id == action.vm_id:
                state.incoming = None
            if state.vm is not None and state.vm.id == action.vm_id:
                state.vm, state.containers, state.attachment = state.incoming, {}, None
                state.incoming = None
            return action.vm_id, action.reason
        if isinstance(action, planning.CreateDisk):
            state.disk = self.world.create_disk(
                index, action.size_mib, action.disk_type or "", action.snapshot
            )
            self._attach(state)
            return state.disk.id, f"{state.disk.size_mib} MiB"
        if isinstance(action, planning.AttachDisk):
            return action.disk_id, f"to VM {self._attach(state)}"
        if isinstance(action, planning.DetachDisk):
            with contextlib.suppress(NotFoundError):  # its VM is gone: nothing holds it
                self.world.detach_disk(action.vm_id, action.disk_id)
            if state.disk is not None:
                state.disk = replace(state.disk, attached_to=None)
            state.attachment = None
            return action.disk_id, action.reason
        return self._disk_action(action, state)

    def _disk_action(self, action: planning.Action, state: _Instance) -> tuple[str, str]:
        if isinstance(action, planning.ResizeDisk):
            disk = self.world.provider.resize_disk(action.disk_id, action.size_mib)
            attached_to = state.disk.attached_to if state.disk else None
            state.disk, state.attachment = replace(disk, attached_to=attached_to), None
            live = state.vm
            if not self.world.provider.mounts_disks and live and attached_to == live.id:
                self._attach(state)  # grown online: its filesystem grows in the VM now
            return action.disk_id, f"grown to {disk.size_mib} MiB"
        if isinstance(action, planning.MigrateDisk):
            old, vm = state.disk, state.vm
            assert old is not None and vm is not None, action
            disk, attachment = self.world.migrate_disk(
                action.index,
                vm,
                old,
                action.size_mib,
                action.disk_type or "",
                action.orphan_retention,
            )
            state.disk, state.attachment = disk, attachment
            why = f"{old.id} ({old.size_mib} MiB) copied to {disk.id} ({disk.size_mib} MiB)"
            fate = "orphaned for its retention" if action.orphan_retention > 0 else "deleted"
            return disk.id, f"{why}; {old.id} {fate}"
        if isinstance(action, planning.SnapshotDisk):
            name = snapshot_name(self.world.identity.disk_name(action.index), action.generation)
            tags = {TAG_SNAPSHOT: f"{self.world.identity.namespace}.{name}"}
            made = self.world.provider.snapshot_disk(action.disk_id, tags)
            return name, f"{made.id} of disk {action.disk_id}, before the rollout stops its users"
        if isinstance(action, planning.OrphanDisk):
            self.world.provider.set_disk_metadata(action.disk_id, {TAG_ORPHANED_AT: orphan_stamp()})
            state.disk = None
            return action.disk_id, "no longer wanted: orphaned, deleted after its retention"
        if isinstance(action, planning.AdoptDisk):
            state.disk = self.world.provider.set_disk_metadata(
                action.disk_id, {TAG_ORPHANED_AT: None}
            )
            return action.disk_id, "wanted again: its orphan mark goes, its data comes back"
        assert isinstance(action, planning.DeleteDisk), action
        if action.cause is Cause.ORPHAN_EXPIRED:  # detached since its migration
            with contextlib.suppress(NotFoundError):
                self.world.provider.delete_disk(action.disk_id)
            return action.disk_id, "replaced by a copy; its retention has passed"
        target = state.migration_target
        if target is not None and target.id == action.disk_id:
            self.world.delete_disk(target)
            state.migration_target = None
            return action.disk_id, "unfinished copy not wanted"
        if state.disk is not None:
            self.world.delete_disk(state.disk)
            state.disk = None
        return action.disk_id, "instance removed"

    def _container_action(
        self, action: planning.ContainerAction
    ) -> tuple[ActionRecord, ObservedContainer | None]:
        state = self._instance(action.index)
        vm, name = state.vm, action.container
        if vm is None:
            raise ProviderError(f"instance {action.index} has no VM for container {name}")
        kind = _RECORD_KINDS.get(action.kind, action.kind)
        grace = _grace(self.wants.get(name))
        found: ObservedContainer | None = None
        running = state.containers.get(name)
        if (
            running is not None
            and running.state == "running"
            and not (isinstance(action, planning.StartContainer))
        ):
            self._drain(vm, action)
        if isinstance(action, planning.StopContainer):
            self.world.stop_container(vm.id, name, grace)
        elif isinstance(action, planning.RemoveContainer):
            self.world.remove_container(vm, name)
            state.containers.pop(name, None)
        elif isinstance(action, planning.RestartContainer) or (
            isinstance(action, planning.StartContainer) and name in state.containers
        ):
            found = self.world.restart_container(vm, name, grace)
            kind = "RestartedContainer"
        else:  # a missing container, or one whose spec changed
            want = self.wants[name]
            attachment = self._attachment(state) if want.volumes else None
            found = self.world.run_container(vm, action.index, want, attachment)
            if isinstance(action, planning.StartContainer):
                # Removed by the plan itself (disk migrated): a restart for the user.
                kind = "StartedContainer" if action.cause in _FIRST_STARTS else "RecreatedContainer"
        if found is not None:
            state.containers[name] = found
            self._post_start(vm, action, grace)
        record = ActionRecord(kind, action.index, name, action.reason, cause=action.cause)
        return record, found

    def _drain(self, vm: VM, action: planning.ContainerAction) -> None:
        """The container's preStop before the operator stops it. A failure during a rollout
        fails the action (and halts the rollout); otherwise the stop goes on, and says so."""
        want = self.wants.get(action.container)
        if want is None or want.pre_stop is None or self.skip_drain:
            return
        problem = self.world.run_hook(vm, action.container, want.pre_stop)
        if problem is None:
            self._record(ActionRecord("Drained", action.index, action.container, action.reason))
            return
        why = f"preStop (drain) of {action.container} failed: {problem}"
        if action.cause in planning.ROLLOUT_CAUSES:
            raise HookFailedError(f"{why} (set update.skipDrain to roll out anyway)")
        log.warning("%s; stopping it anyway (%s)", why, action.reason)
        record = ActionRecord("DrainFailed", action.index, action.container, why, False)
        self._record(record)

    def _post_start(self, vm: VM, action: planning.ContainerAction, grace: int) -> None:
        """The container's postStart after the operator started it: a failure fails the start
        (the container is stopped again)."""
        want = self.wants.get(action.container)
        if want is None or want.post_start is None:
            return
        problem = self.world.run_hook(vm, action.container, want.post_start)
        if problem is None:
            self._record(ActionRecord("PostStarted", action.index, action.container, "done"))
            return
        self.world.stop_container(vm.id, action.container, grace)
        raise HookFailedError(f"postStart of {action.container} failed: {problem}")

    def _attach(self, state: _Instance) -> str:
        vm, disk = state.vm, state.disk
        if vm is None or disk is None:
            raise ProviderError("no VM or no disk to attach")
        state.attachment = self.world.attach_disk(vm, disk)
        state.disk = replace(disk, attached_to=vm.id)
        return vm.id

    def _attachment(self, state: _Instance) -> Attachment:
        with state.lock:  # containers of one instance may start at once: attach once
            if state.attachment is None:
                if state.disk is None:
                    raise ProviderError("the instance has no persistent disk for its volumes")
                self._attach(state)  # idempotent: returns where it is mounted
            assert state.attachment is not None
            return state.attachment


def snapshot_name(disk_name: str, generation: int) -> str:
    """The DiskSnapshot taken of an instance's disk before the rollout to ``generation``."""
    return f"{disk_name}-g{generation}"


def _grace(want: ContainerWant | None) -> int:
    """Seconds a container gets to stop before SIGKILL: its stopGracePeriod (0: at once), else
    Docker's 10."""
    if want is None or want.config.stop_timeout is None:
        return 10
    return want.config.stop_timeout
