"""Cascades across jobs: when is a container of another job settled?

Each Job plans alone, so it learns about its upstreams in other jobs from what their Jobs
report after each decision (a :class:`ContainerReport` per container). A dependent must not
restart while an upstream still (re)starts, or is about to: it would restart again after it. An
upstream is **settled** when its Job

* has nothing (re)starting it now or waiting to (``settled`` in its report), and
* planned against the latest starts of its own upstreams in other jobs (an upstream of it that
  restarted since its Job last decided may restart it: it is not settled until that Job looked),
* and those upstreams are settled too.

A container nobody reported (its Job not running here yet) counts as settled: waiting for it
could be forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dockyard.planning.graph import build_graph, external_upstreams
from dockyard.planning.model import ContainerKey, DesiredJob
from dockyard.planning.verdict import Readiness, UpstreamState, Verdict


@dataclass(frozen=True)
class ContainerReport:
    """What a Job said about one of its containers after its last decision."""

    latest_start: float | None
    settled: bool = True
    #: Its upstreams in other jobs, with the latest start the Job decided against.
    upstreams: Mapping[ContainerKey, float | None] = field(default_factory=dict)
    #: Healthy everywhere, completed: what dependsOn conditions wait for.
    readiness: Readiness = field(default_factory=Readiness)
    #: address:port of every instance of it: its dependents' links.
    endpoints: tuple[str, ...] = ()


Board = Mapping[ContainerKey, ContainerReport]


def upstream_states(
    board: Board, keys: Iterable[ContainerKey]
) -> dict[ContainerKey, UpstreamState]:
    """What a dependent needs to know about each of ``keys`` (containers of other jobs)."""
    memo: dict[ContainerKey, bool] = {}
    states: dict[ContainerKey, UpstreamState] = {}
    for key in keys:
        report = board.get(key)
        if report is None:
            continue
        settled = _settled(board, key, memo, set())
        states[key] = UpstreamState(
            report.latest_start, settled, report.readiness, report.endpoints
        )
    return states


def _settled(
    board: Board, key: ContainerKey, memo: dict[ContainerKey, bool], path: set[ContainerKey]
) -> bool:
    if key in memo:
        return memo[key]
    report = board.get(key)
    if report is None or key in path:  # unknown, or a loop (refused at apply): do not wait
        return True
    path.add(key)
    result = report.settled
    for upstream, seen in report.upstreams.items():
        current = board.get(upstream)
        if current is not None and current.latest_start != seen:
            result = False  # it restarted after this one's Job last decided
        result = result and _settled(board, upstream, memo, path)
    path.discard(key)
    memo[key] = result
    return result


def reports_of(
    job: DesiredJob,
    verdict: Verdict,
    upstreams_seen: Mapping[ContainerKey, float | None],
) -> dict[ContainerKey, ContainerReport]:
    """What a Job tells its dependents after a decision: per container, its latest start,
    whether it is settled, and the starts of its upstreams in other jobs it decided against."""
    graph = build_graph([job], external=external_upstreams([job]))
    reports: dict[ContainerKey, ContainerReport] = {}
    for key in graph.keys:
        outside = [u for u in graph.upstreams_of(key, transitive=True) if u in graph.external]
        reports[key] = ContainerReport(
            latest_start=verdict.latest_starts.get(key),
            settled=key not in verdict.unsettled,
            upstreams={u: upstreams_seen.get(u) for u in outside},
            readiness=verdict.readiness.get(key, Readiness()),
            endpoints=verdict.endpoints.get(key, ()),
        )
    return reports
