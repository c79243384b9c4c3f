"""One Job's reconcile pass: observe the world, plan (pure, ``dockyard.planning``), execute,
and report.

Each pass adapts the observations into the planner's vocabulary and splits the plan in two:

* **repairs** (missing VMs, resurrection, missing or stopped containers, dependents whose
  upstream restarted, scale-down) run at once, on every instance;
* the **rollout** (instances whose containers' spec changed, or whose disk grows) runs one
  :func:`~dockyard.planning.next_step` batch per pass, canaries first, each batch watched for
  ``watch_time``; a batch that fails halts the rollout (Stalled) for this generation and leaves
  the instances not yet reached on their old version.

What observation cannot tell is kept here: since when an engine stopped answering, which
generation's rollout halted, and the back-off of containers restarted for failing health checks.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import docker.errors

from dockyard import planning
from dockyard.providers import (
    VM,
    Attachment,
    Disk,
    InPlaceResizeUnsupportedError,
    NotFoundError,
    ProviderError,
    VMState,
)
from dockyard.providers.base import TAG_INDEX
from dockyard.runtime.engine import ObservedContainer
from dockyard.runtime.world import ContainerWant, InstanceWorld, JobWorld

log = logging.getLogger(__name__)

# Operator-initiated restarts of an unhealthy container back off like Docker's own restart
# policy does for crashes: doubling from 10 s, capped at 5 min, forgotten after 10 min of health.
# A container the engine refuses to start (missing program, bad mount…) backs off the same way,
# as the kubelet's CrashLoopBackOff; a start that succeeds resets it.
RESTART_BACKOFF = (10.0, 300.0)
UNHEALTHY_BACKOFF_RESET = 600.0


@dataclass(frozen=True)
class DiskWant:
    size_mib: int
    disk_type: str = ""
    reclaim_policy: str = "Delete"  # Delete | Retain


@dataclass(frozen=True)
class JobDesired:
    instances: int
    containers: tuple[ContainerWant, ...]
    stemcell: str = ""
    machine_type: str = ""
    disk: DiskWant | None = None
    canaries: int = 1
    max_in_flight: int = 1
    watch_time: tuple[float, float] = (1.0, 30.0)
    canary_watch_time: tuple[float, float] = (1.0, 30.0)
    generation: int = 0
    # Latest start (epoch s) of each cross-job upstream "job/container", across its instances.
    external_upstream_starts: dict[str, float] = field(default_factory=dict)
    name: str = "job"  # the job's name inside its deployment ("job/name" references use it)


@dataclass(frozen=True)
class ActionRecord:
    """What was done, for Events and metrics."""

    kind: str
    index: int
    target: str
    reason: str
    ok: bool = True
    message: str = ""


@dataclass
class JobReport:
    instances: dict[int, InstanceWorld]
    actions: list[ActionRecord]
    updated_indices: set[int]
    stalled: str = ""  # why the rollout stopped, "" when it did not
    meltdown: str = ""  # why resurrection is paused, "" when it is not
    resurrection_disabled: str = ""  # instances down and left down, "" when none
    backing_off: str = ""  # actions that failed and wait to be tried again, "" when none
    crash_looping: dict[tuple[int, str], str] = field(default_factory=dict)  # -> why
    # Restarts the engine made on its own since the last pass (restart policy): -> (count, OOM)
    engine_restarts: dict[tuple[int, str], tuple[int, bool]] = field(default_factory=dict)
    converged: bool = False
    requeue_after: float | None = None


Sleep = Callable[[float], None]


@dataclass(frozen=True)
class ResurrectionWant:
    enabled: bool = True
    meltdown_min_down: int = 5
    meltdown_percent: int = 20
    unresponsive_timeout: float = 5.0


_ACTION_RECORD_KINDS = {
    "CreateVM": "CreatedVM",
    "DeleteVM": "DeletedVM",
    "CreateDisk": "CreatedDisk",
    "AttachDisk": "AttachedDisk",
    "DetachDisk": "DetachedDisk",
    "ResizeDisk": "ResizedDisk",
    "MigrateDisk": "MigratedDisk",
    "DeleteDisk": "DeletedDisk",
    "RecreateContainer": "RecreatedContainer",
    "RestartContainer": "RestartedContainer",
    "StopContainer": "StoppedContainer",
    "RemoveContainer": "RemovedContainer",
}


_DISK_ACTION_KINDS = frozenset(
    {"CreateDisk", "AttachDisk", "DetachDisk", "ResizeDisk", "MigrateDisk", "DeleteDisk"}
)
# What a pass reports when an action failed; any of these makes the pass a reconcile error.
FAILURE_KINDS = frozenset(
    {"ContainerFailed", "InstanceFailed", "ResurrectionFailed"}
    | {f"{kind}Failed" for kind in _DISK_ACTION_KINDS}
)


@dataclass
class _Pass:
    """What one pass knows about each instance while it executes actions."""

    vms: dict[int, VM] = field(default_factory=dict)
    disks: dict[int, Disk] = field(default_factory=dict)
    migration_targets: dict[int, Disk] = field(default_factory=dict)
    attachments: dict[int, Attachment] = field(default_factory=dict)
    containers: dict[int, dict[str, ObservedContainer]] = field(default_factory=dict)
    unhealthy: set[tuple[int, str]] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    backing_off: set[int] = field(default_factory=set)  # a container failed to start lately


class JobReconciler:
    """Keeps one Job's instances converged."""

    def __init__(self, world: JobWorld, sleep: Sleep = time.sleep) -> None:
        self.world = world
        self.sleep = sleep
        self.halted_generation: int | None = None
        self.halted_reason = ""
        self.unresponsive_since: dict[str, float] = {}
        self.paused_reason = ""  # why resurrection is paused, as last reported
        # (index, container) -> (restarts for failing health, last restart, monotonic)
        self.unhealthy_restarts: dict[tuple[int, str], tuple[int, float]] = {}
        # (index, container id) -> the engine's RestartCount last seen
        self.restart_counts: dict[tuple[int, str], int] = {}
        # (index, container) -> (failed starts in a row, when the last failed (monotonic),
        # the spec's hash then: a new spec is tried at once)
        self.failed_starts: dict[tuple[int, str], tuple[int, float, str]] = {}
        # index -> (failures in a row of a disk action, when the last failed (monotonic), the
        # action): that same action waits, with the rest of its instance; another runs at once
        self.failed_disk_actions: dict[int, tuple[int, float, planning.Action]] = {}
        # Disks their provider would not grow in place: they grow by copy-migration.
        self.copy_grow: set[str] = set()

    # --- one pass ---------------------------------------------------------------------------

    def reconcile(
        self,
        desired: JobDesired,
        resurrection: ResurrectionWant = ResurrectionWant(),
        known_vms: Mapping[int, str] | None = None,
    ) -> JobReport:
        indices = list(range(desired.instances))
        hashes = {want.name: want.config_hash() for want in desired.containers}
        world = self.world.observe(indices)
        actions: list[ActionRecord] = []
        report = JobReport(instances=world, actions=actions, updated_indices=set())
        if self.halted_generation is not None and self.halted_generation != desired.generation:
            self.halted_generation, self.halted_reason = None, ""  # a new spec: try again

        known = known_vms or {}
        for extra in self.world.duplicates:
            at = int(extra.tags.get(TAG_INDEX, "-1"))
            try:
                self.world.delete_vm_id(extra.id)
                why = "duplicate VM for its index"
                actions.append(ActionRecord("DeletedVM", at, extra.id, why))
            except ProviderError as error:
                actions.append(ActionRecord("InstanceFailed", at, extra.id, str(error), ok=False))
        down, deaf = self._down_instances(world, indices, resurrection, known)
        meltdown = bool(down) and (
            len(down) >= resurrection.meltdown_min_down
            and len(down) * 100 >= resurrection.meltdown_percent * max(len(indices), 1)
        )
        if meltdown:
            report.meltdown = (
                f"{len(down)} of {len(indices)} instances down at once "
                f"(instances {', '.join(map(str, sorted(down)))}): resurrection paused"
            )
        elif down and not resurrection.enabled:
            report.resurrection_disabled = (
                f"instances {', '.join(map(str, sorted(down)))} down; resurrection is disabled"
            )
        # One Event when it starts, not one per pass.
        paused = report.meltdown or report.resurrection_disabled
        if paused and paused != self.paused_reason:
            kind = "Meltdown" if meltdown else "ResurrectionDisabled"
            actions.append(ActionRecord(kind, min(down), "resurrection", paused, ok=False))
        self.paused_reason = paused
        job = self._planning_job(desired, hashes, resurrect=resurrection.enabled and not meltdown)
        state = _Pass(backing_off=self._backing_off(desired.instances, hashes))
        try:
            actions_planned = self._plan(job, desired, world, down, deaf, known, state)
        except planning.PlanningError as error:
            report.stalled = f"invalid spec: {error}"
            return report

        spec_changed = {
            a.index
            for a in actions_planned
            if isinstance(a, (planning.ResizeDisk, planning.MigrateDisk))
            or (isinstance(a, planning.RecreateContainer) and a.reason == "spec changed")
        }
        repairs = [a for a in actions_planned if a.index not in spec_changed]
        rollout = [a for a in actions_planned if a.index in spec_changed]
        self._execute(repairs, desired, state, actions)

        if rollout and self.halted_generation is None:
            step = planning.next_step(rollout, [job])
            self._execute(step.actions, desired, state, actions)
            batch = [ref.index for ref in step.instances if ref.index not in state.failed]
            if batch:
                watch = desired.canary_watch_time if step.canary else desired.watch_time
                failure = self._watch(state, batch, hashes, watch)
                if failure:
                    kind = "canary" if step.canary else "batch"
                    self.halted_generation = desired.generation
                    self.halted_reason = f"rollout halted: {kind} {failure}"
                    actions.append(
                        ActionRecord(
                            "RolloutHalted", batch[0], "rollout", self.halted_reason, False
                        )
                    )
                report.updated_indices = set(batch)
        report.stalled = self.halted_reason

        report.instances = self.world.observe(indices)
        report.crash_looping = _crash_looping(report.instances, indices)
        report.engine_restarts = self._engine_restarts(report.instances)
        down_after, deaf_after = self._down_instances(
            report.instances, indices, resurrection, known
        )
        remaining = self._plan(
            job, desired, report.instances, down_after, deaf_after, known, _Pass()
        )
        if self.halted_generation is not None:
            remaining = [a for a in remaining if a.index not in spec_changed]
        now = time.monotonic()
        # No countdown in the text: the status stays as it is while the back-off runs.
        waiting: list[tuple[int, str, tuple[int, float, object]]] = [
            (index, f"{failure[2]} failed", failure)
            for index, failure in self.failed_disk_actions.items()
        ]
        waiting += [
            (index, f"container {name} failed to start", failure)
            for (index, name), failure in self.failed_starts.items()
        ]
        report.backing_off = "; ".join(
            f"instance {index}: {what} {failure[0]} time(s) in a row; tried again "
            f"{_backoff(failure[0]):.0f} s after the last failure (see its Events)"
            for index, what, failure in sorted(waiting, key=lambda w: (w[0], w[1]))
            if _wait(failure, now) > 0
        )
        report.converged = (
            not remaining
            and not report.backing_off  # a grow that waits is not planned, nor done
            and self._converged(report.instances, indices, hashes)
        )
        if not report.converged and not report.stalled:
            report.requeue_after = 5.0 if (meltdown or report.resurrection_disabled) else 1.0
            waits = [self._start_wait(key, now) for key in self.failed_starts]
            waits += [_wait(failure, now) for failure in self.failed_disk_actions.values()]
            if waits and all(w > 0 for w in waits):
                report.requeue_after = max(report.requeue_after, min(waits))
        return report

    def _engine_restarts(
        self, world: Mapping[int, InstanceWorld]
    ) -> dict[tuple[int, str], tuple[int, bool]]:
        """Restarts the engine made since the last look, from each container's RestartCount.

        A container first seen counts from what it shows then (restarts before this operator
        looked are not ours to report). Instances whose engine did not answer keep their counts."""
        restarts: dict[tuple[int, str], tuple[int, bool]] = {}
        silent = {index for index, instance in world.items() if not instance.engine_ok}
        seen = {key: count for key, count in self.restart_counts.items() if key[0] in silent}
        for index, instance in world.items():
            if index in silent:
                continue
            for name, found in instance.containers.items():
                key = (index, found.id)
                before = self.restart_counts.get(key)
                if before is not None and found.restart_count > before:
                    restarts[(index, name)] = (found.restart_count - before, found.oom_killed)
                seen[key] = found.restart_count
        self.restart_counts = seen
        return restarts

    # --- adapting to the planner ---------------------------------------------------------------

    @staticmethod
    def _planning_job(
        desired: JobDesired, hashes: Mapping[str, str], resurrect: bool
    ) -> planning.DesiredJob:
        disk = None
        if desired.disk is not None:
            disk = planning.DesiredDisk(
                size_mib=desired.disk.size_mib,
                type=desired.disk.disk_type or None,
                reclaim_policy="Retain" if desired.disk.reclaim_policy == "Retain" else "Delete",
            )
        return planning.DesiredJob(
            name=desired.name,
            instances=desired.instances,
            containers=tuple(
                planning.DesiredContainer(
                    name=want.name,
                    config_hash=hashes[want.name],
                    depends_on=want.depends_on,
                    restart_policy=_restart_policy(want.config.restart_policy),
                    uses_disk=bool(want.volumes),
                )
                for want in desired.containers
            ),
            disk=disk,
            update=planning.UpdatePolicy(
                canaries=desired.canaries, max_in_flight=max(desired.max_in_flight, 1)
            ),
            resurrect=resurrect,
        )

    def _plan(
        self,
        job: planning.DesiredJob,
        desired: JobDesired,
        world: Mapping[int, InstanceWorld],
        down: set[int],
        deaf: set[int],
        known_vms: Mapping[int, str],
        state: _Pass,
    ) -> list[planning.Action]:
        """Plan against ``world``, filling ``state`` with what the executor needs. Instances
        whose engine is silent but not yet past the unresponsive timeout are left alone."""
        now = time.monotonic()
        instances: dict[int, planning.ObservedInstance] = {}
        for index, instance in world.items():
            vm = instance.vm
            observed_vm: planning.ObservedVM | None = None
            if vm is not None and vm.state is not VMState.MISSING:
                observed_vm = planning.ObservedVM(vm.id, healthy=index not in down)
                state.vms[index] = vm
            elif index in known_vms and index in down:
                # Gone from the IaaS although we made it: replaced by resurrection, not re-created.
                observed_vm = planning.ObservedVM(known_vms[index], healthy=False)
            observed_disk = None
            if instance.disk is not None:
                state.disks[index] = instance.disk
                target = instance.migration_target
                if target is not None:
                    state.migration_targets[index] = target
                observed_disk = planning.ObservedDisk(
                    id=instance.disk.id,
                    size_mib=instance.disk.size_mib,
                    attached_to=instance.disk.attached_to,
                    reclaim_policy=None,
                    # An unfinished copy says so even to an operator that just restarted.
                    grows_in_place=instance.disk.id not in self.copy_grow and target is None,
                    migration_target=target.id if target is not None else None,
                    grow_waits=self._grow_waits(index, instance.disk.id, desired.disk, now),
                )
            containers: dict[str, planning.ObservedContainer] = {}
            if instance.engine_ok:
                state.containers[index] = dict(instance.containers)
                for name, found in instance.containers.items():
                    containers[name] = self._observed_container(index, found, state, now)
            instances[index] = planning.ObservedInstance(observed_vm, observed_disk, containers)
        for index in down:
            if index not in instances and index in known_vms:
                instances[index] = planning.ObservedInstance(
                    planning.ObservedVM(known_vms[index], healthy=False)
                )
        external = {
            key: desired.external_upstream_starts.get(str(key))
            for key in planning.external_upstreams([job])
        }
        actions = planning.plan(
            [job],
            {job.name: instances},
            external_starts=external,
            detach_to_resize=not self.world.provider.resizes_attached_disks,
        )
        return [a for a in actions if a.index not in deaf]

    def _backing_off(self, instances: int, hashes: Mapping[str, str]) -> set[int]:
        """Instances with a container whose failed start is still backing off. Failures of
        removed instances, and of a spec since changed, are forgotten: a new spec starts at once."""
        self.failed_starts = {
            (index, name): failure
            for (index, name), failure in self.failed_starts.items()
            if index < instances and failure[2] == hashes.get(name)
        }
        self.failed_disk_actions = {
            index: failure
            for index, failure in self.failed_disk_actions.items()
            if index < instances
        }
        now = time.monotonic()
        return {
            index for (index, name) in self.failed_starts if self._start_wait((index, name), now)
        }

    def _grow_waits(self, index: int, disk_id: str, want: DiskWant | None, now: float) -> bool:
        """Growing this disk to the wanted size failed lately: it waits for its back-off, and
        its users run on the disk as it is meanwhile rather than stay stopped. A new size is
        tried at once."""
        failure = self.failed_disk_actions.get(index)
        if failure is None or want is None:
            return False
        grow = failure[2]
        if not isinstance(grow, (planning.ResizeDisk, planning.MigrateDisk)):
            return False
        return (
            grow.disk_id == disk_id and grow.size_mib == want.size_mib and _wait(failure, now) > 0
        )

    def _start_wait(self, key: tuple[int, str], now: float) -> float:
        """Seconds until a container that failed to start may be tried again (0: now)."""
        return _wait(self.failed_starts.get(key, (0, 0.0, "")), now)

    def _observed_container(
        self, index: int, found: ObservedContainer, state: _Pass, now: float
    ) -> planning.ObservedContainer:
        container_state = found.state
        if container_state not in ("running", "restarting", "paused", "created", "exited"):
            container_state = "dead"  # removing, dead or unknown: recreate it
        key = (index, found.name)
        if found.state == "running" and found.health == "unhealthy":
            count, last = self.unhealthy_restarts.get(key, (0, 0.0))
            if now - last >= _backoff(count):
                # Down for the planner: restarted (with its dependents after it).
                state.unhealthy.add(key)
                return planning.ObservedContainer("exited", found.config_hash, found.started_at)
        elif (
            found.health == "healthy"
            and key in self.unhealthy_restarts
            and now - self.unhealthy_restarts[key][1] >= UNHEALTHY_BACKOFF_RESET
        ):
            del self.unhealthy_restarts[key]
        return planning.ObservedContainer(
            container_state,  # type: ignore[arg-type]
            found.config_hash,
            found.started_at,
            found.exit_code,
        )

    # --- execution --------------------------------------------------------------------------

    def _execute(
        self,
        todo: Iterable[planning.Action],
        desired: JobDesired,
        state: _Pass,
        actions: list[ActionRecord],
    ) -> None:
        wants = {want.name: want for want in desired.containers}
        for action in todo:
            if action.index in state.failed:
                continue  # an earlier step of this instance failed: the rest waits a pass
            if isinstance(action, planning.ContainerAction) and action.index in state.backing_off:
                continue  # its containers wait for the failed one's back-off
            failure = self.failed_disk_actions.get(action.index)
            if failure and failure[2] == action and _wait(failure, time.monotonic()):
                state.failed.add(action.index)  # it failed lately: it, and the rest, wait
                continue
            try:
                record = self._do(action, desired, wants, state)
            except InPlaceResizeUnsupportedError as error:
                assert isinstance(action, planning.ResizeDisk), action
                self.copy_grow.add(action.disk_id)
                state.failed.add(action.index)  # the rest waits: the next pass plans the copy
                why = f"{error}; copying it to a new {action.size_mib} MiB disk"
                actions.append(ActionRecord("DiskMigrationStarted", action.index, "disk", why))
                continue
            except (ProviderError, docker.errors.DockerException) as error:
                state.failed.add(action.index)
                if isinstance(action, planning.ContainerAction):
                    kind, target = "ContainerFailed", action.container
                    key = (action.index, action.container)
                    count = self.failed_starts.get(key, (0, 0.0, ""))[0]
                    want = wants.get(action.container)
                    spec_hash = want.config_hash() if want else ""
                    self.failed_starts[key] = (count + 1, time.monotonic(), spec_hash)
                elif action.kind in _DISK_ACTION_KINDS:
                    kind, target = f"{action.kind}Failed", "disk"
                    count, _, before = self.failed_disk_actions.get(action.index, (0, 0.0, action))
                    count = count if before == action else 0
                    self.failed_disk_actions[action.index] = (count + 1, time.monotonic(), action)
                else:
                    kind, target = "InstanceFailed", "vm"
                    if isinstance(action, planning.CreateVM) and action.reason.startswith(
                        "replaces"
                    ):
                        kind = "ResurrectionFailed"
                message = f"{action.kind}: {error}"
                actions.append(ActionRecord(kind, action.index, target, message, ok=False))
                log.warning("%s failed: %s", action, error)
                continue
            if isinstance(action, planning.ContainerAction):
                self.failed_starts.pop((action.index, action.container), None)
            elif self.failed_disk_actions.get(action.index, (0, 0.0, None))[2] == action:
                del self.failed_disk_actions[action.index]  # what failed works now
            actions.append(record)

    def _do(
        self,
        action: planning.Action,
        desired: JobDesired,
        wants: Mapping[str, ContainerWant],
        state: _Pass,
    ) -> ActionRecord:
        index = action.index
        kind = _ACTION_RECORD_KINDS.get(action.kind, action.kind)
        if isinstance(action, planning.CreateVM):
            vm = self.world.create_vm(index, desired.stemcell, desired.machine_type)
            state.vms[index] = vm
            state.containers[index] = {}
            state.attachments.pop(index, None)
            if action.reason.startswith("replaces"):
                return ActionRecord("ResurrectedVM", index, vm.id, action.reason)
            return ActionRecord(kind, index, vm.id, action.reason)
        if isinstance(action, planning.DeleteVM):
            self.world.delete_vm_id(action.vm_id)
            self.unresponsive_since.pop(action.vm_id, None)
            if index in state.vms and state.vms[index].id == action.vm_id:
                del state.vms[index]
            return ActionRecord(kind, index, action.vm_id, action.reason)
        if isinstance(action, planning.CreateDisk):
            disk = self.world.create_disk(index, action.size_mib, action.disk_type or "")
            state.disks[index] = disk
            self._attach(index, state)
            return ActionRecord(kind, index, disk.id, f"{disk.size_mib} MiB")
        if isinstance(action, planning.AttachDisk):
            vm_id = self._attach(index, state)
            return ActionRecord(kind, index, action.disk_id, f"to VM {vm_id}")
        if isinstance(action, planning.DetachDisk):
            with contextlib.suppress(NotFoundError):  # its VM is gone: nothing holds it
                self.world.detach_disk(action.vm_id, action.disk_id)
            state.disks[index] = replace(state.disks[index], attached_to=None)
            state.attachments.pop(index, None)
            return ActionRecord(kind, index, action.disk_id, action.reason)
        if isinstance(action, planning.ResizeDisk):
            disk = self.world.provider.resize_disk(action.disk_id, action.size_mib)
            attached_to = state.disks[index].attached_to
            state.disks[index] = replace(disk, attached_to=attached_to)
            state.attachments.pop(index, None)
            live = state.vms.get(index)
            if not self.world.provider.mounts_disks and live and attached_to == live.id:
                self._attach(index, state)  # grown online: its filesystem grows in the VM now
            return ActionRecord(kind, index, action.disk_id, f"grown to {disk.size_mib} MiB")
        if isinstance(action, planning.MigrateDisk):
            old = state.disks[index]
            disk, attachment = self.world.migrate_disk(
                index, state.vms[index], old, action.size_mib, action.disk_type or ""
            )
            self.copy_grow.discard(old.id)
            state.disks[index], state.attachments[index] = disk, attachment
            why = f"{old.id} ({old.size_mib} MiB) copied to {disk.id} ({disk.size_mib} MiB)"
            return ActionRecord(kind, index, disk.id, f"{why}; {old.id} deleted")
        if isinstance(action, planning.DeleteDisk):
            target = state.migration_targets.get(index)
            if target is not None and target.id == action.disk_id:
                self.world.delete_disk(state.migration_targets.pop(index))
                return ActionRecord(kind, index, action.disk_id, "unfinished copy not wanted")
            self.world.delete_disk(state.disks.pop(index))
            return ActionRecord(kind, index, action.disk_id, "instance removed")
        assert isinstance(action, planning.ContainerAction), action
        return self._container_action(action, wants, state)

    def _container_action(
        self,
        action: planning.ContainerAction,
        wants: Mapping[str, ContainerWant],
        state: _Pass,
    ) -> ActionRecord:
        index, name = action.index, action.container
        vm = state.vms[index]
        kind = _ACTION_RECORD_KINDS.get(action.kind, action.kind)
        reason = action.reason
        existing = state.containers.get(index, {})
        if isinstance(action, planning.StopContainer):
            self.world.stop_container(vm.id, name, _grace(wants.get(name)))
        elif isinstance(action, planning.RemoveContainer):
            self.world.remove_container(vm, name)
            existing.pop(name, None)
        elif isinstance(action, planning.RestartContainer):
            existing[name] = self.world.restart_container(vm, name, _grace(wants.get(name)))
        elif isinstance(action, planning.StartContainer) and name in existing:
            if (index, name) in state.unhealthy:
                count, _ = self.unhealthy_restarts.get((index, name), (0, 0.0))
                self.unhealthy_restarts[(index, name)] = (count + 1, time.monotonic())
                reason = "unhealthy"
            existing[name] = self.world.restart_container(vm, name, _grace(wants.get(name)))
            kind = "RestartedContainer"
        else:  # a missing container, or one whose spec changed
            want = wants[name]
            attachment = self._attachment(index, state) if want.volumes else None
            existing[name] = self.world.run_container(vm, index, want, attachment)
            if isinstance(action, planning.StartContainer):
                # Removed by the plan itself (disk migrated): a restart for the user.
                first = action.reason in ("new VM", "missing")
                kind = "StartedContainer" if first else "RecreatedContainer"
        state.containers[index] = existing
        return ActionRecord(kind, index, name, reason)

    def _attach(self, index: int, state: _Pass) -> str:
        vm, disk = state.vms[index], state.disks[index]
        state.attachments[index] = self.world.attach_disk(vm, disk)
        state.disks[index] = replace(disk, attached_to=vm.id)
        return vm.id

    def _attachment(self, index: int, state: _Pass) -> Attachment:
        if index not in state.attachments:
            if index not in state.disks:
                raise ProviderError(f"instance {index} has no persistent disk for its volumes")
            self._attach(index, state)  # idempotent: returns where it is mounted
        return state.attachments[index]

    # --- observation helpers ----------------------------------------------------------------

    def _down_instances(
        self,
        world: Mapping[int, InstanceWorld],
        indices: Sequence[int],
        resurrection: ResurrectionWant,
        known_vms: Mapping[int, str],
    ) -> tuple[set[int], set[int]]:
        """Instances that had a VM and lost it, or whose engine stopped answering for longer
        than the unresponsive timeout; and those whose engine is silent for less than that."""
        now = time.monotonic()
        down: set[int] = set()
        deaf: set[int] = set()
        for index in indices:
            instance = world.get(index)
            vm = instance.vm if instance else None
            if vm is None or vm.state in (VMState.MISSING, VMState.STOPPED):
                if index in known_vms or vm is not None:
                    down.add(index)
                continue
            if vm.state is VMState.RUNNING and instance is not None and not instance.engine_ok:
                since = self.unresponsive_since.setdefault(vm.id, now)
                if now - since >= resurrection.unresponsive_timeout:
                    down.add(index)
                else:
                    deaf.add(index)
            else:
                self.unresponsive_since.pop(vm.id, None)
        return down, deaf

    def _watch(
        self,
        state: _Pass,
        batch: Sequence[int],
        hashes: Mapping[str, str],
        watch: tuple[float, float],
    ) -> str:
        """Wait ``low`` seconds, then until every container of the batch runs (and is not
        unhealthy) with the new spec, at most ``high``: "" on success, else what failed."""
        low, high = watch
        self.sleep(low)
        deadline = time.monotonic() + max(high - low, 0.0)
        while True:
            failure = ""
            for index in batch:
                vm = state.vms.get(index)
                if vm is None:
                    return f"instance {index}: VM is gone"
                current = self.world.engine(vm.id).containers()
                before = state.containers.get(index, {})
                for name, digest in hashes.items():
                    observed = current.get(name)
                    restarts = observed.restart_count if observed else 0
                    if name in before:  # restarts the engine made since this step ran
                        restarts -= before[name].restart_count
                    if observed is None or observed.config_hash != digest:
                        failure = f"instance {index}: container {name} was not updated"
                    elif observed.state != "running" or observed.health in (
                        "unhealthy",
                        "starting",
                    ):
                        failure = (
                            f"instance {index}: container {name} is {observed.state}"
                            f"{' (' + observed.health + ')' if observed.health else ''}"
                            f", exit code {observed.exit_code}, restarts {observed.restart_count}"
                        )
                    elif restarts > 0:
                        failure = (
                            f"instance {index}: container {name} restarted "
                            f"{restarts} times, exit code {observed.exit_code}"
                        )
            if not failure or time.monotonic() >= deadline:
                return failure
            self.sleep(0.2)

    @staticmethod
    def _converged(
        world: Mapping[int, InstanceWorld], indices: Sequence[int], hashes: Mapping[str, str]
    ) -> bool:
        if any(i >= len(indices) and world[i].vm is not None for i in world):
            return False
        for index in indices:
            instance = world.get(index)
            if instance is None or instance.vm is None or not instance.engine_ok:
                return False
            for name, digest in hashes.items():
                observed = instance.containers.get(name)
                if observed is None or observed.config_hash != digest:
                    return False
                if observed.state not in ("running", "exited"):
                    return False
        return True

    # --- deletion -----------------------------------------------------------------------------

    def teardown(self, keep_disks: bool) -> None:
        world = self.world.observe([])
        for instance in world.values():
            if instance.vm is not None:
                self.world.delete_vm(instance.vm, instance.disk)
        for index in world:
            for disk in self.world.provider.find_disks(self.world.identity.disk_tags(index)):
                if keep_disks:
                    if disk.attached_to:
                        self.world.provider.detach_disk(disk.attached_to, disk.id)
                else:
                    self.world.delete_disk(disk)


def _backoff(count: int) -> float:
    """The wait after the ``count``-th restart in a row: 0, then 10 s doubling to 5 min."""
    low, high = RESTART_BACKOFF
    return 0.0 if count == 0 else min(low * 2.0 ** (count - 1), high)


def _wait(failure: tuple[int, float, object], now: float) -> float:
    """Seconds until an action that failed ``failure[0]`` times in a row, last at
    ``failure[1]`` (monotonic), may be tried again (0: now)."""
    count, last, _ = failure
    return max(_backoff(count) - (now - last), 0.0)


def _grace(want: ContainerWant | None) -> int:
    """Seconds a container gets to stop before SIGKILL: its stopGracePeriod, else Docker's 10."""
    return want.config.stop_timeout if want and want.config.stop_timeout else 10


def _restart_policy(policy: str) -> planning.RestartPolicy:
    if policy == "OnFailure":
        return "OnFailure"
    if policy == "Never":
        return "Never"
    return "Always"


def _crash_looping(
    world: Mapping[int, InstanceWorld], indices: Sequence[int]
) -> dict[tuple[int, str], str]:
    """Containers the engine keeps restarting: Docker holds a crashing container in
    "restarting" while it backs off (doubling from 100 ms, capped at 1 min, reset after 10 s up)."""
    looping: dict[tuple[int, str], str] = {}
    for index in indices:
        instance = world.get(index)
        if instance is None or not instance.engine_ok:
            continue
        for name, found in instance.containers.items():
            if found.state == "restarting" and found.restart_count >= 2:
                why = "OOM-killed" if found.oom_killed else f"exit code {found.exit_code}"
                looping[(index, name)] = (
                    f"instance {index}: container {name} is crash-looping "
                    f"({found.restart_count} restarts, {why}); the engine backs off"
                )
    return looping
