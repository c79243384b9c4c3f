"""Rollouts the BOSH way: canaries first, then ``max_in_flight`` instances at a time, jobs one
after another (``serial``) or together.

BOSH's director hands a job's canaries to a pool of ``max_in_flight`` threads and waits for all
of them, then does the rest through the same pool; here that becomes batches of instances the
reconciler executes, watches, and re-plans after (:func:`next_step`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dockyard.planning.graph import parse_dependency
from dockyard.planning.model import (
    STARTS,
    Action,
    ContainerAction,
    ContainerKey,
    DesiredJob,
    InstanceRef,
    PlanningError,
    RestartContainer,
)


@dataclass(frozen=True)
class Batch:
    """Instance indices updated together; ``canary`` batches get the canary watch time."""

    indices: tuple[int, ...]
    canary: bool


def rollout_batches(
    indices: Sequence[int], *, canaries: int, max_in_flight: int, already_updated: int = 0
) -> list[Batch]:
    """Split the ordered ``indices`` that need an update into batches: the canaries (up to
    ``canaries`` minus the ``already_updated`` instances of this rollout, ``max_in_flight`` at
    a time), then the rest ``max_in_flight`` at a time."""
    if canaries < 0:
        raise PlanningError("update.canaries", "must not be negative")
    if max_in_flight < 1:
        raise PlanningError("update.maxInFlight", "must be at least 1 (resolve percentages first)")
    todo = list(indices)
    canary_count = min(max(canaries - max(already_updated, 0), 0), len(todo))
    batches = [
        Batch(tuple(todo[start : min(start + max_in_flight, canary_count)]), canary=True)
        for start in range(0, canary_count, max_in_flight)
    ]
    batches += [
        Batch(tuple(todo[start : start + max_in_flight]), canary=False)
        for start in range(canary_count, len(todo), max_in_flight)
    ]
    return batches


def job_order(jobs: Sequence[DesiredJob]) -> list[str]:
    """Deployment order, except that a job comes after the jobs it depends on ("job/name"
    entries). Jobs that depend on each other keep deployment order."""
    names = [job.name for job in jobs]
    needs = {
        job.name: {
            key.job
            for container in job.containers
            for key in (parse_dependency(ref, job.name) for ref in container.depends_on)
            if key.job != job.name and key.job in names
        }
        for job in jobs
    }
    placed: list[str] = []
    remaining = list(names)
    while remaining:
        ready = [name for name in remaining if needs[name] <= set(placed)]
        chosen = ready[0] if ready else remaining[0]
        placed.append(chosen)
        remaining.remove(chosen)
    return placed


def job_stages(jobs: Sequence[DesiredJob]) -> list[tuple[str, ...]]:
    """Jobs that roll at the same time, stage after stage (as BOSH partitions instance groups):
    in :func:`job_order`, consecutive jobs with ``serial: false`` share a stage; a serial job has
    a stage of its own."""
    serial = {job.name: job.update.serial for job in jobs}
    stages: list[tuple[str, ...]] = []
    group: list[str] = []
    for name in job_order(jobs):
        if serial[name]:
            if group:
                stages.append(tuple(group))
                group = []
            stages.append((name,))
        else:
            group.append(name)
    if group:
        stages.append(tuple(group))
    return stages


def schedule(
    desired: Sequence[DesiredJob], pending: Mapping[str, Sequence[int]]
) -> list[tuple[tuple[str, Batch], ...]]:
    """The whole rollout at a glance (for status and previews): waves of (job, batch) that run
    together, in order. ``pending``: per job, the indices needing an update; the job's other
    instances count as already updated. Jobs of a stage advance batch by batch side by side."""
    jobs = {job.name: job for job in desired}
    waves: list[tuple[tuple[str, Batch], ...]] = []
    for stage in job_stages(desired):
        lists = []
        for name in stage:
            todo = sorted(pending.get(name, ()))
            job = jobs[name]
            batches = rollout_batches(
                todo,
                canaries=job.update.canaries,
                max_in_flight=job.update.max_in_flight,
                already_updated=job.instances - len(todo),
            )
            lists.append([(name, batch) for batch in batches])
        for n in range(max((len(x) for x in lists), default=0)):
            waves.append(tuple(x[n] for x in lists if n < len(x)))
    return waves


@dataclass(frozen=True)
class Step:
    """What to execute next: ``actions`` in order, then watch ``instances`` (none for a removal
    step) with the canary watch time when ``canary``. No actions: converged."""

    actions: tuple[Action, ...]
    instances: tuple[InstanceRef, ...]
    canary: bool

    @property
    def done(self) -> bool:
        return not self.actions


def next_step(actions: Sequence[Action], desired: Sequence[DesiredJob]) -> Step:
    """The part of a plan (from :func:`~dockyard.planning.planner.plan`) to run now.

    1. Instances (and jobs) no longer wanted are removed first, all in one step.
    2. Then the first stage (:func:`job_stages`) with work: each of its jobs updates its next
       batch (:func:`rollout_batches`) of the instances the plan touches; ``already_updated`` is
       the job's instances the plan leaves alone, so canaries come first in every rollout.
       A batch takes every action of its instances, so a watched instance is complete.
    3. An instance waits while a container it would (re)start depends on a container of another
       job that still has actions in the plan: dependents restart once, after their upstream
       converged everywhere, not after each of its batches.
    4. Should that leave nothing to run (jobs that depend on each other), instances stop
       waiting, and restarts for an upstream start that is not in the step are left for later
       (they would only have to be done again once it happened).

    Run the step, watch its instances, observe and plan again. The step is empty only when the
    plan is.
    """
    jobs = {job.name: job for job in desired}
    removal = tuple(a for a in actions if a.job not in jobs or a.index >= jobs[a.job].instances)
    if removal:
        return Step(removal, (), canary=False)
    touched: dict[str, set[int]] = {}
    for action in actions:
        touched.setdefault(action.job, set()).add(action.index)
    starting = _starts(actions)
    waiting = _waiting(actions, desired)
    for hold in (True, False):
        for stage in job_stages(desired):
            chosen: set[InstanceRef] = set()
            canary = False
            for name in stage:
                job = jobs[name]
                pending = sorted(touched.get(name, ()))
                if hold:
                    ready = [i for i in pending if InstanceRef(name, i) not in waiting]
                else:
                    useful = {
                        a.index for a in actions if a.job == name and not _premature(a, starting)
                    }
                    ready = [i for i in pending if i in useful]
                if not ready:
                    continue
                batch = rollout_batches(
                    ready,
                    canaries=job.update.canaries,
                    max_in_flight=job.update.max_in_flight,
                    already_updated=job.instances - len(pending),
                )[0]
                chosen.update(InstanceRef(name, i) for i in batch.indices)
                canary = canary or batch.canary
            selected = [a for a in actions if a.instance in chosen]
            later = _starts([a for a in actions if a.instance not in chosen])
            kept = tuple(a for a in selected if not _premature(a, later))
            if kept:
                return Step(kept, tuple(dict.fromkeys(a.instance for a in kept)), canary)
    return Step((), (), canary=False)


def _starts(actions: Sequence[Action]) -> dict[ContainerKey, set[int]]:
    """Which instances each container is (re)started on by ``actions``."""
    starts: dict[ContainerKey, set[int]] = {}
    for action in actions:
        if isinstance(action, STARTS):
            starts.setdefault(action.key, set()).add(action.index)
    return starts


def _premature(action: Action, starts: dict[ContainerKey, set[int]]) -> bool:
    """A restart for an upstream that ``starts`` still (re)starts."""
    if not isinstance(action, RestartContainer) or action.because_of is None:
        return False
    indices = starts.get(action.because_of, set())
    return action.index in indices if action.because_of.job == action.job else bool(indices)


def _waiting(actions: Sequence[Action], desired: Sequence[DesiredJob]) -> set[InstanceRef]:
    """Instances that would (re)start a container whose upstream in another job still has
    actions."""
    busy = {a.key for a in actions if isinstance(a, ContainerAction)}
    specs = {ContainerKey(job.name, c.name): c for job in desired for c in job.containers}
    waiting: set[InstanceRef] = set()
    for action in actions:
        if not isinstance(action, STARTS) or action.key not in specs:
            continue
        for ref in specs[action.key].depends_on:
            upstream = parse_dependency(ref, action.job)
            if upstream.job != action.job and upstream in busy:
                waiting.add(action.instance)
                break
    return waiting
