"""Short texts for status messages: what a decision does, what waits, how many are ready."""

from __future__ import annotations

from collections.abc import Sequence

from dockyard.planning.memory import JobMemory
from dockyard.planning.model import Action, ContainerAction, DesiredJob
from dockyard.planning.observation import JobObservation

_VERBS = {
    "CreateVM": "create VM",
    "DeleteVM": "delete VM",
    "CreateDisk": "create disk",
    "AttachDisk": "attach disk",
    "DetachDisk": "detach disk",
    "ResizeDisk": "grow disk",
    "MigrateDisk": "copy disk",
    "DeleteDisk": "delete disk",
    "SnapshotDisk": "snapshot disk",
    "StartContainer": "start",
    "RecreateContainer": "recreate",
    "RestartContainer": "restart",
    "StopContainer": "stop",
    "RemoveContainer": "remove",
}
_MAX_GROUPS = 3


def describe_actions(actions: Sequence[Action]) -> str:
    """``restart cache on 16 instances (upstream db/store restarted after it); ...``"""
    groups: dict[tuple[str, str, str], list[int]] = {}
    reasons: dict[tuple[str, str, str], str] = {}
    for action in actions:
        target = action.container if isinstance(action, ContainerAction) else ""
        key = (action.kind, target, str(action.cause))
        groups.setdefault(key, []).append(action.index)
        if isinstance(action, ContainerAction):
            reasons.setdefault(key, action.reason)
    parts = []
    for key, indices in list(groups.items())[:_MAX_GROUPS]:
        kind, target, _ = key
        where = f"instance {indices[0]}" if len(indices) == 1 else f"{len(set(indices))} instances"
        what = f"{_VERBS.get(kind, kind)} {target}".strip()
        why = f" ({reasons[key]})" if key in reasons else ""
        parts.append(f"{what} on {where}{why}")
    more = len(groups) - _MAX_GROUPS
    text = "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
    return f"acting: {text}"


def describe_waits(memory: JobMemory, now: float) -> str:
    """Failed actions that wait for their back-off (no countdown: the text stays the same
    while it runs, so the status is not rewritten every pass)."""
    waits = [
        (
            index,
            f"{failure.action.kind} failed",
            failure.backoff.failures,
            failure.backoff.delay,
            failure.message,
        )
        for index, failure in memory.step_failures.items()
        if failure.backoff.waiting(now)
    ]
    waits += [
        (
            index,
            f"container {name} failed to start",
            failure.backoff.failures,
            failure.backoff.delay,
            failure.message,
        )
        for (index, name), failure in memory.start_failures.items()
        if failure.backoff.waiting(now)
    ]
    return "; ".join(
        f"instance {index}: {what} {count} time(s) in a row"
        + (f" ({message})" if message else "")
        + f"; tried again {delay:.0f} s after the last failure"
        for index, what, count, delay, message in sorted(waits, key=lambda w: (w[0], w[1]))
    )


def ready_instances(job: DesiredJob, observed: JobObservation) -> int:
    """Wanted instances whose VM answers and whose every container runs and is not unhealthy."""
    ready = 0
    for index in range(job.instances):
        instance = observed.get(index)
        if not (instance.has_vm and instance.engine_ok):
            continue
        ready += all(
            (found := instance.containers.get(spec.name)) is not None
            and found.done_its_part(spec.restart_policy)
            for spec in job.containers
        )
    return ready
