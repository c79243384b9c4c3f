"""dependsOn conditions: a dependent (re)starts only once its upstream is what it waits for.

docker compose's ``depends_on`` conditions, per instance and across jobs:

- ``Started`` (plain ``dependsOn``): ordering only — the upstream's start comes first.
- ``Healthy``: the upstream's health check passes — on the same instance for a same-job
  upstream, on every instance of its job for ``job/name``.
- ``Completed``: the upstream (a one-shot container: restartPolicy Never or OnFailure) exited 0
  — a migration before the app. One that failed with restartPolicy Never will not run again by
  itself: the dependent is blocked, and the Job says which (Stalled).

A start the plan makes of the upstream in this same decision does not satisfy anything yet: the
dependent waits for the next look, after it ran. Restarts still cascade as for ``Started``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dockyard.planning.graph import build_graph, external_upstreams, parse_dependency
from dockyard.planning.model import STARTS, Action, ContainerAction, ContainerKey, DesiredJob
from dockyard.planning.observation import ContainerObservation, JobObservation
from dockyard.planning.verdict import Completion, Readiness, UpstreamState


@dataclass(frozen=True)
class Waiting:
    """A start held for a condition: who waits for whom, and whether it can still come."""

    index: int
    container: str
    upstream: ContainerKey
    condition: str
    failed: bool = False  # a Completed upstream that failed for good

    def __str__(self) -> str:
        what = "be healthy" if self.condition == "Healthy" else "complete"
        if self.failed:
            return (
                f"instance {self.index}: container {self.container} waits for {self.upstream} "
                "to complete, but it failed (exit code non-zero, restartPolicy Never: it runs "
                "again only when its spec changes)"
            )
        return (
            f"instance {self.index}: container {self.container} waits for {self.upstream} to {what}"
        )


def healthy(found: ContainerObservation | None, checked: bool) -> bool:
    if found is None or found.state != "running":
        return False
    return found.health == "healthy" if checked else found.health != "unhealthy"


def completion(found: ContainerObservation | None, restart_policy: str) -> Completion:
    if found is None or found.state != "exited" or found.exit_code is None:
        return Completion.PENDING
    if found.exit_code == 0:
        return Completion.DONE
    return Completion.FAILED if restart_policy == "Never" else Completion.PENDING


def readiness(job: DesiredJob, observed: JobObservation) -> dict[ContainerKey, Readiness]:
    """Each container of ``job``, over its wanted instances (none: not ready)."""
    result: dict[ContainerKey, Readiness] = {}
    for spec in job.containers:
        found = [observed.get(i).containers.get(spec.name) for i in range(job.instances)]
        done = [completion(f, spec.restart_policy) for f in found]
        if not found or Completion.PENDING in done:
            state = Completion.PENDING
        elif Completion.FAILED in done:
            state = Completion.FAILED
        else:
            state = Completion.DONE
        ready = bool(found) and all(healthy(f, spec.checked) for f in found)
        result[ContainerKey(job.name, spec.name)] = Readiness(ready, state)
    return result


def waiting(
    job: DesiredJob,
    actions: Sequence[Action],
    held: Mapping[Action, object],
    observed: JobObservation,
    upstreams: Mapping[ContainerKey, UpstreamState],
) -> dict[Action, Waiting]:
    """The starts (and what depends on them on their instance) that wait for a condition."""
    specs = {c.name: c for c in job.containers}
    starting = {(a.container, a.index) for a in actions if isinstance(a, STARTS) and a not in held}
    blocked: dict[tuple[str, int], Waiting] = {}
    for action in actions:
        if not isinstance(action, STARTS) or action.container not in specs:
            continue
        for reference, condition in specs[action.container].waits_for:
            upstream = parse_dependency(reference, job.name)
            reason = _unmet(job, action, upstream, condition, starting, observed, upstreams)
            if reason is not None:
                blocked.setdefault((action.container, action.index), reason)
                break
    graph = build_graph([job], external=external_upstreams([job]))
    result: dict[Action, Waiting] = {}
    for action in actions:
        if not isinstance(action, ContainerAction) or not isinstance(action, STARTS):
            continue
        key = ContainerKey(job.name, action.container)
        behind = [key, *graph.upstreams_of(key, transitive=True)]
        for up in behind:
            reason = blocked.get((up.container, action.index)) if up.job == job.name else None
            if reason is not None:
                result[action] = reason
                break
    return result


def _unmet(
    job: DesiredJob,
    action: ContainerAction,
    upstream: ContainerKey,
    condition: str,
    starting: set[tuple[str, int]],
    observed: JobObservation,
    upstreams: Mapping[ContainerKey, UpstreamState],
) -> Waiting | None:
    index = action.index
    if upstream.job != job.name:
        state = upstreams.get(upstream)
        if state is None:
            return Waiting(index, action.container, upstream, condition)
        ready = state.readiness
        if condition == "Healthy" and not ready.healthy:
            return Waiting(index, action.container, upstream, condition)
        if condition == "Completed" and ready.completion is not Completion.DONE:
            failed = ready.completion is Completion.FAILED
            return Waiting(index, action.container, upstream, condition, failed)
        return None
    if (upstream.container, index) in starting:
        return Waiting(index, action.container, upstream, condition)  # after it ran
    spec = next(c for c in job.containers if c.name == upstream.container)
    found = observed.get(index).containers.get(upstream.container)
    if condition == "Healthy" and not healthy(found, spec.checked):
        return Waiting(index, action.container, upstream, condition)
    if condition == "Completed":
        done = completion(found, spec.restart_policy)
        if done is not Completion.DONE:
            return Waiting(index, action.container, upstream, condition, done is Completion.FAILED)
    return None
