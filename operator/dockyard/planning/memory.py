"""What a Job's decisions remember between passes, and how the outcome of actions changes it.

Observation cannot tell these: since when an engine is silent, how often a start or a disk action
failed in a row (and why), when a health restart last happened, which rollout batch is being
watched since when, which generation's rollout halted. Immutable: :func:`record` and
``decide`` return a new one.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from dockyard.planning.backoff import Backoff
from dockyard.planning.model import (
    Action,
    Cause,
    ContainerAction,
    DeleteDisk,
    DesiredJob,
    MigrateDisk,
    ResizeDisk,
)
from dockyard.planning.observation import ContainerObservation

Slot = tuple[int, str]  # (instance index, container name)

#: A request the engine or IaaS refused (a 4xx: a value it does not take, an image it cannot
#: have) will not heal by itself: Stalled at once, and still retried with a back-off.
REFUSALS_TO_STALL = 1

DISK_ACTION_KINDS = frozenset(
    {
        "CreateDisk",
        "AttachDisk",
        "DetachDisk",
        "ResizeDisk",
        "MigrateDisk",
        "DeleteDisk",
        "OrphanDisk",
        "AdoptDisk",
        "SnapshotDisk",
    }
)


class Failure(enum.StrEnum):
    """How an action failed, as the executor classifies the error."""

    TRANSIENT = "Transient"  # worth trying again: the engine or IaaS was busy or away
    REFUSED = "Refused"  # the engine or IaaS refused the request (a bad image, name, mount...)
    RESIZE_UNSUPPORTED = "ResizeUnsupported"  # grow by copy-migration instead
    HOOK = "Hook"  # a lifecycle hook failed: the drain before a stop, the post-start after a start
    CANCELLED = "Cancelled"  # not run: the pass was cancelled first


#: Failures of a rollout batch's action that halt the rollout (as a failed canary halts BOSH's
#: deploy); others are tried again after a back-off.
HALTING_FAILURES = frozenset({Failure.REFUSED, Failure.HOOK})


@dataclass(frozen=True)
class Outcome:
    """What one action did. ``container``: the container a container action left running."""

    action: Action
    failure: Failure | None = None
    message: str = ""
    container: ContainerObservation | None = None
    retry_after: float = 0.0  # the IaaS asked to wait at least this long (rate limits)

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass(frozen=True)
class StartFailure:
    """A container action that failed: it waits ``backoff`` (a new spec is tried at once)."""

    backoff: Backoff
    spec_hash: str
    refusals: int = 0  # of those failures, refusals in a row
    message: str = ""

    @property
    def refused(self) -> bool:
        return self.refusals >= REFUSALS_TO_STALL


@dataclass(frozen=True)
class StepFailure:
    """A VM or disk action that failed: that same action waits ``backoff`` with the rest of
    its instance; another one runs at once."""

    backoff: Backoff
    action: Action
    refusals: int = 0
    message: str = ""

    @property
    def refused(self) -> bool:
        return self.refusals >= REFUSALS_TO_STALL

    def holds_grow(self, disk_id: str, size_mib: int, now: float) -> bool:
        grow = self.action
        return (
            isinstance(grow, (ResizeDisk, MigrateDisk))
            and grow.disk_id == disk_id
            and grow.size_mib == size_mib
            and self.backoff.waiting(now)
        )


@dataclass(frozen=True)
class Watch:
    """A rollout batch updated at ``since``: watched for ``window`` (low, high) seconds. A
    container whose engine restart count rose past ``baseline`` (id, count) restarted."""

    generation: int
    indices: tuple[int, ...]
    canary: bool
    since: float
    window: tuple[float, float]
    baseline: Mapping[Slot, tuple[str, int]] = field(default_factory=dict)
    key: str = ""  # the rollout's requests (see Halt)


@dataclass(frozen=True)
class Halt:
    """A halted rollout: of ``generation``, and of the operator's requests ``key`` names (a new
    spec or a new request starts a new rollout)."""

    generation: int
    reason: str
    key: str = ""
    index: int = 0  # the instance whose failure halted it


@dataclass(frozen=True)
class JobMemory:
    start_failures: Mapping[Slot, StartFailure] = field(default_factory=dict)
    step_failures: Mapping[int, StepFailure] = field(default_factory=dict)
    health_restarts: Mapping[Slot, Backoff] = field(default_factory=dict)
    unresponsive_since: Mapping[str, float] = field(default_factory=dict)  # VM id -> since
    watch: Watch | None = None
    halted: Halt | None = None
    paused: str = ""  # the meltdown / resurrection-disabled message last reported
    copy_grow: frozenset[str] = frozenset()  # disks their provider would not grow in place
    restart_counts: Mapping[tuple[int, str], int] = field(default_factory=dict)  # (index, id)
    told: frozenset[tuple[object, ...]] = frozenset()  # what was said once (an Event), by key
    deleted_disks: frozenset[str] = frozenset()  # disks this Job deleted (not missing, gone)


@dataclass(frozen=True)
class RolloutStep:
    """The batch a decision updates: watched from when its actions finish."""

    generation: int
    indices: tuple[int, ...]
    canary: bool
    window: tuple[float, float]
    baseline: Mapping[Slot, tuple[str, int]] = field(default_factory=dict)
    key: str = ""  # the rollout's requests (see Halt)


def record(
    memory: JobMemory,
    job: DesiredJob,
    outcomes: Sequence[Outcome],
    rollout: RolloutStep | None,
    now: float,
) -> JobMemory:
    """``memory`` after the actions of a decision ran with these ``outcomes`` at ``now``."""
    hashes = {c.name: c.config_hash for c in job.containers}
    starts = dict(memory.start_failures)
    steps = dict(memory.step_failures)
    health = dict(memory.health_restarts)
    copy_grow = set(memory.copy_grow)
    deleted = set(memory.deleted_disks)
    for outcome in outcomes:
        action = outcome.action
        if outcome.failure is Failure.CANCELLED:
            continue
        if outcome.failure is Failure.RESIZE_UNSUPPORTED:
            assert isinstance(action, ResizeDisk), action
            copy_grow.add(action.disk_id)
        elif isinstance(action, ContainerAction):
            slot = (action.index, action.container)
            if outcome.ok:
                starts.pop(slot, None)
                if action.cause is Cause.UNHEALTHY:
                    health[slot] = health.get(slot, Backoff()).failed(now)
            else:
                starts[slot] = _start_failed(starts.get(slot), outcome, hashes, now)
        elif outcome.ok:
            if isinstance(action, DeleteDisk):
                deleted.add(action.disk_id)
            before = steps.get(action.index)
            if before is not None and before.action == action:
                del steps[action.index]  # what failed works now
        else:
            steps[action.index] = _step_failed(steps.get(action.index), outcome, now)
    halted = _halt(rollout, outcomes) if rollout else None
    return replace(
        memory,
        start_failures=starts,
        step_failures=steps,
        health_restarts=health,
        copy_grow=frozenset(copy_grow),
        deleted_disks=frozenset(deleted),
        watch=None if halted else _watch_after(rollout, outcomes, now) if rollout else memory.watch,
        halted=halted or memory.halted,
    )


def _halt(rollout: RolloutStep, outcomes: Sequence[Outcome]) -> Halt | None:
    """A batch whose container or VM action failed in a way a retry will not mend (the new
    spec's container or stemcell refused, a lifecycle hook failed) halts the rollout: the rest
    of the instances stay as they are."""
    for outcome in outcomes:
        action = outcome.action
        if action.kind in DISK_ACTION_KINDS:
            continue  # the IaaS's side: backed off and retried, the old disk serving meanwhile
        if outcome.failure in HALTING_FAILURES and action.index in rollout.indices:
            kind = "canary" if rollout.canary else "batch"
            reason = (
                f"rollout halted: {kind} instance {action.index}: {action.kind} failed: "
                f"{outcome.message}"
            )
            return Halt(rollout.generation, reason, rollout.key, action.index)
    return None


def _start_failed(
    before: StartFailure | None, outcome: Outcome, hashes: Mapping[str, str], now: float
) -> StartFailure:
    action = outcome.action
    assert isinstance(action, ContainerAction)
    backoff = before.backoff if before else Backoff()
    refusals = before.refusals if before else 0
    refusals = refusals + 1 if outcome.failure is Failure.REFUSED else 0
    backoff = backoff.failed(now, at_least=outcome.retry_after)
    return StartFailure(backoff, hashes.get(action.container, ""), refusals, outcome.message)


def _step_failed(before: StepFailure | None, outcome: Outcome, now: float) -> StepFailure:
    same = before is not None and before.action == outcome.action
    backoff = before.backoff if before is not None and same else Backoff()
    refusals = before.refusals if before is not None and same else 0
    refusals = refusals + 1 if outcome.failure is Failure.REFUSED else 0
    backoff = backoff.failed(now, at_least=outcome.retry_after)
    return StepFailure(backoff, outcome.action, refusals, outcome.message)


def _watch_after(rollout: RolloutStep, outcomes: Sequence[Outcome], now: float) -> Watch | None:
    """The watch of a batch whose actions ran: instances where one failed are not watched
    (they are tried again); containers a step left running are the baseline."""
    failed = {o.action.index for o in outcomes if not o.ok}
    indices = tuple(i for i in rollout.indices if i not in failed)
    if not indices:
        return None
    baseline = dict(rollout.baseline)
    for outcome in outcomes:
        action, found = outcome.action, outcome.container
        if found is not None and isinstance(action, ContainerAction):
            baseline[(action.index, action.container)] = (found.id, found.restart_count)
    return Watch(
        rollout.generation, indices, rollout.canary, now, rollout.window, baseline, rollout.key
    )
