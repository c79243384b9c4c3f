"""The dependency DAG over the containers of a deployment.

A node is a :class:`ContainerKey` ``(job, container)``; an edge goes from an upstream to its
dependent. ``dependsOn`` entries are ``"name"`` (same job) or ``"job/name"`` (another job).
Works on anything shaped like a job (``name``, ``containers``) whose containers have ``name``
and ``depends_on`` — the planner's :class:`DesiredJob` or the API's job templates alike.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from dockyard.planning.model import ContainerKey, PlanningError


class ContainerLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def depends_on(self) -> Sequence[str]: ...


class JobLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def containers(self) -> Sequence[ContainerLike]: ...


class CycleError(PlanningError):
    """The dependencies loop; ``cycle`` is the loop as a path whose last key is its first."""

    def __init__(self, field: str, cycle: tuple[ContainerKey, ...]) -> None:
        super().__init__(field, f"dependency cycle: {format_path(cycle)}")
        self.cycle = cycle


def parse_dependency(ref: str, job: str) -> ContainerKey:
    """``"name"`` -> (job, name); ``"other/name"`` -> (other, name)."""
    head, slash, tail = ref.partition("/")
    return ContainerKey(head, tail) if slash else ContainerKey(job, ref)


def format_path(path: Iterable[ContainerKey]) -> str:
    """``web/app -> web/db``: keys joined by arrows."""
    return " -> ".join(str(key) for key in path)


def dependency_field(key: ContainerKey) -> str:
    return f"jobs[{key.job}].containers[{key.container}].dependsOn"


@dataclass(frozen=True)
class DependencyGraph:
    """Immutable; build it with :func:`build_graph`.

    ``keys`` are the containers in declaration order (jobs in order, then their containers);
    ``external`` are keys outside the graph that containers may depend on (another Job planned
    separately): they are upstreams only, never in ``keys`` or the topological order.
    """

    keys: tuple[ContainerKey, ...]
    external: frozenset[ContainerKey]
    _upstreams: dict[ContainerKey, tuple[ContainerKey, ...]]
    _dependents: dict[ContainerKey, tuple[ContainerKey, ...]]
    _order: tuple[ContainerKey, ...]  # topological; only a prefix when there are cycles

    def __contains__(self, key: object) -> bool:
        return key in self._upstreams

    def upstreams_of(
        self, key: ContainerKey, *, transitive: bool = False
    ) -> tuple[ContainerKey, ...]:
        """What ``key`` depends on: directly, in ``dependsOn`` order; or (``transitive``) all of
        it, in topological order (external keys last, in the order they were met)."""
        self._check(key)
        if not transitive:
            return self._upstreams[key]
        return self._closure(key, self._upstreams)

    def dependents_of(
        self, key: ContainerKey, *, transitive: bool = True
    ) -> tuple[ContainerKey, ...]:
        """What depends on ``key`` (an external key too): all of it, transitively, in
        topological order; or only the direct dependents (``transitive=False``), in
        declaration order."""
        if key not in self.external:
            self._check(key)
        if not transitive:
            return self._dependents.get(key, ())
        return self._closure(key, self._dependents)

    def topological_order(self) -> tuple[ContainerKey, ...]:
        """Every key after all its upstreams; ties keep declaration order (so a graph without
        dependencies keeps its order). Raises :class:`CycleError` when there is a loop."""
        if len(self._order) < len(self.keys):
            cycle = self.find_cycles()[0]
            raise CycleError(dependency_field(cycle[0]), cycle)
        return self._order

    def find_cycles(self) -> list[tuple[ContainerKey, ...]]:
        """One loop per knot of mutually dependent containers, each as a path from its
        earliest-declared key back to it (``(web, app, web)``); empty when the graph is a DAG."""
        position = {key: i for i, key in enumerate(self.keys)}
        cycles: list[tuple[ContainerKey, ...]] = []
        for component in self._strongly_connected():
            start = min(component, key=position.__getitem__)
            if len(component) == 1 and start not in self._upstreams[start]:
                continue
            cycles.append(self._loop_from(start, component))
        cycles.sort(key=lambda cycle: position[cycle[0]])
        return cycles

    # --- internals ------------------------------------------------------------------------------

    def _check(self, key: ContainerKey) -> None:
        if key not in self._upstreams:
            raise KeyError(f"{key} is not a container of this graph")

    def _closure(
        self, key: ContainerKey, edges: dict[ContainerKey, tuple[ContainerKey, ...]]
    ) -> tuple[ContainerKey, ...]:
        seen: dict[ContainerKey, None] = {}
        stack = list(reversed(edges.get(key, ())))
        while stack:
            current = stack.pop()
            if current in seen or current == key:
                continue
            seen[current] = None
            stack.extend(reversed(edges.get(current, ())))
        rank = {k: i for i, k in enumerate(self._order)}
        declared = {k: len(rank) + i for i, k in enumerate(self.keys)}
        return tuple(sorted(seen, key=lambda k: rank.get(k, declared.get(k, len(rank) * 3))))

    def _strongly_connected(self) -> list[list[ContainerKey]]:
        """Tarjan's algorithm, iterative (deep chains must not hit the recursion limit)."""
        index: dict[ContainerKey, int] = {}
        low: dict[ContainerKey, int] = {}
        on_stack: set[ContainerKey] = set()
        stack: list[ContainerKey] = []
        components: list[list[ContainerKey]] = []
        for root in self.keys:
            if root in index:
                continue
            work: list[tuple[ContainerKey, int]] = [(root, 0)]
            while work:
                node, child = work.pop()
                if child == 0:
                    index[node] = low[node] = len(index)
                    stack.append(node)
                    on_stack.add(node)
                successors = [s for s in self._dependents.get(node, ()) if s in self._upstreams]
                if child < len(successors):
                    work.append((node, child + 1))
                    successor = successors[child]
                    if successor not in index:
                        work.append((successor, 0))
                    elif successor in on_stack:
                        low[node] = min(low[node], index[successor])
                    continue
                if low[node] == index[node]:
                    component: list[ContainerKey] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(component)
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
        return components

    def _loop_from(
        self, start: ContainerKey, component: Collection[ContainerKey]
    ) -> tuple[ContainerKey, ...]:
        """A shortest path start -> ... -> start inside one component (breadth first, edges in
        declaration order, so the answer is stable)."""
        members = set(component)
        parent: dict[ContainerKey, ContainerKey] = {}
        frontier = [start]
        while frontier:
            following: list[ContainerKey] = []
            for node in frontier:
                for successor in self._dependents.get(node, ()):
                    if successor not in members:
                        continue
                    if successor == start:
                        back = [node]
                        while back[-1] != start:
                            back.append(parent[back[-1]])
                        return (*reversed(back), start)
                    if successor not in parent and successor != start:
                        parent[successor] = node
                        following.append(successor)
            frontier = following
        raise AssertionError("a strongly connected component always loops")  # pragma: no cover


def external_upstreams(jobs: Sequence[JobLike]) -> list[ContainerKey]:
    """The ``job/name`` upstreams of ``jobs`` that are in none of them, in the order met: what a
    caller planning one Job at a time passes to ``plan(external_starts=...)``."""
    inside = {job.name for job in jobs}
    found: dict[ContainerKey, None] = {}
    for job in jobs:
        for container in job.containers:
            for ref in container.depends_on:
                key = parse_dependency(ref, job.name)
                if key.job not in inside:
                    found[key] = None
    return list(found)


def build_graph(
    jobs: Sequence[JobLike], *, external: Collection[ContainerKey] = ()
) -> DependencyGraph:
    """The graph of ``jobs``' containers. Raises :class:`PlanningError` naming the field for a
    duplicate job or container name, or a ``dependsOn`` entry that names no container (unless it
    is one of ``external``). Cycles are allowed here: see ``find_cycles``/``topological_order``."""
    keys: list[ContainerKey] = []
    seen_jobs: set[str] = set()
    for job in jobs:
        if job.name in seen_jobs:
            raise PlanningError(f"jobs[{job.name}]", "job names must be unique")
        seen_jobs.add(job.name)
        names: set[str] = set()
        for container in job.containers:
            if container.name in names:
                raise PlanningError(
                    f"jobs[{job.name}].containers[{container.name}]",
                    "container names must be unique within a job",
                )
            names.add(container.name)
            keys.append(ContainerKey(job.name, container.name))
    known = set(keys)
    outside = frozenset(external) - known
    upstreams: dict[ContainerKey, tuple[ContainerKey, ...]] = {}
    dependents: dict[ContainerKey, list[ContainerKey]] = {}
    for job in jobs:
        for container in job.containers:
            key = ContainerKey(job.name, container.name)
            ups: list[ContainerKey] = []
            for ref in container.depends_on:
                upstream = parse_dependency(ref, job.name)
                if upstream not in known and upstream not in outside:
                    where = "this job" if upstream.job == job.name else f"job {upstream.job!r}"
                    raise PlanningError(
                        dependency_field(key),
                        f"{ref!r} is not a container of {where}"
                        + ("" if upstream.job in seen_jobs else " (no such job)"),
                    )
                if upstream not in ups:
                    ups.append(upstream)
            upstreams[key] = tuple(ups)
            for upstream in ups:
                dependents.setdefault(upstream, []).append(key)
    frozen = {key: tuple(value) for key, value in dependents.items()}
    return DependencyGraph(
        keys=tuple(keys),
        external=outside,
        _upstreams=upstreams,
        _dependents=frozen,
        _order=_kahn(keys, upstreams, frozen),
    )


def _kahn(
    keys: Sequence[ContainerKey],
    upstreams: dict[ContainerKey, tuple[ContainerKey, ...]],
    dependents: dict[ContainerKey, tuple[ContainerKey, ...]],
) -> tuple[ContainerKey, ...]:
    """Kahn's algorithm taking the earliest-declared ready key each time; keys on or behind a
    cycle are left out."""
    position = {key: i for i, key in enumerate(keys)}
    waiting = {key: sum(1 for up in ups if up in position) for key, ups in upstreams.items()}
    ready = [position[key] for key, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[ContainerKey] = []
    while ready:
        key = keys[heapq.heappop(ready)]
        order.append(key)
        for dependent in dependents.get(key, ()):
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, position[dependent])
    return tuple(order)
