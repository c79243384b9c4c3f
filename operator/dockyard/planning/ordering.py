"""Which actions of a decision must finish before which: the graph the executor runs.

Instances are independent of each other (a same-job ``dependsOn`` is per instance; a cross-job
one is gated before planning), so only actions of one instance are ordered, as the plan lists
them, and only where it matters:

* a VM or disk action waits for every action of its instance before it in the plan, and every
  later action of the instance waits for it (containers stop before their disk is detached, and
  start after it is attached);
* a container action waits for the earlier actions on the same container and on containers
  related to it by ``dependsOn`` (either way, transitively): an upstream starts before its
  dependents, dependents stop before their upstream;
* containers that are not related run at the same time.

So a cascade over ``N`` instances costs one restart per level of the dependency graph, not one
per instance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dockyard.planning.graph import build_graph, external_upstreams
from dockyard.planning.model import Action, ContainerAction, ContainerKey, DesiredJob


@dataclass(frozen=True)
class ActionGraph:
    """``actions`` in plan order; ``after[i]``: positions that must finish before ``i`` runs."""

    actions: tuple[Action, ...]
    after: Mapping[int, frozenset[int]]

    def depth(self) -> int:
        """The longest chain of actions that wait for each other (what a run costs)."""
        level: dict[int, int] = {}
        for i in range(len(self.actions)):
            level[i] = 1 + max((level[j] for j in self.after.get(i, ())), default=0)
        return max(level.values(), default=0)


def order(actions: Sequence[Action], job: DesiredJob) -> ActionGraph:
    graph = build_graph([job], external=external_upstreams([job]))
    related: dict[ContainerKey, frozenset[ContainerKey]] = {
        key: frozenset(graph.upstreams_of(key, transitive=True))
        | frozenset(graph.dependents_of(key))
        | {key}
        for key in graph.keys
    }
    by_instance: dict[int, list[int]] = {}
    for position, action in enumerate(actions):
        by_instance.setdefault(action.index, []).append(position)
    after: dict[int, frozenset[int]] = {}
    for positions in by_instance.values():
        for n, later in enumerate(positions):
            b = actions[later]
            after[later] = frozenset(
                earlier for earlier in positions[:n] if _ordered(actions[earlier], b, related)
            )
    return ActionGraph(tuple(actions), after)


def _ordered(
    first: Action, then: Action, related: Mapping[ContainerKey, frozenset[ContainerKey]]
) -> bool:
    if not isinstance(first, ContainerAction) or not isinstance(then, ContainerAction):
        return True  # a VM or disk step is a barrier within its instance
    if first.container == then.container:
        return True
    # A container no longer in the spec is related to nothing.
    return then.key in related.get(first.key, frozenset())
