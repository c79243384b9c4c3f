"""Run a decision's actions as a graph: each once those it waits for are done, independent ones
at the same time, on a bounded pool of threads shared by every Job of a provider.

Provider SDKs and the Docker SDK block, so each action runs in a thread; the graph is walked on
the event loop. An action that fails takes the actions that wait for it along (they wait for the
next pass); the others go on. A cancelled run starts nothing new and returns once what is in
flight is done — or, for a teardown, once what is in flight on VMs and disks is done (a container
stop in flight may take its whole grace period; deleting its VM ends it sooner).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

from dockyard.planning import Action, ContainerAction
from dockyard.planning.memory import Failure, Outcome
from dockyard.planning.ordering import ActionGraph

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Actions in flight at once per provider, unless its configuration says otherwise.
DEFAULT_POOL_SIZE = {"local": 32, "aws": 8, "gce": 8}
FALLBACK_POOL_SIZE = 8


class ActionPool:
    """Threads for one provider: ``size`` actions at once, and as many observations (kept
    apart, so a look at the world never waits behind another Job's slow container stop)."""

    def __init__(
        self, size: int, name: str = "actions", fence: Callable[[], bool] = lambda: True
    ) -> None:
        """``fence``: whether this operator may still act (a standby took over otherwise); it
        is asked right before each action starts."""
        self.size = max(size, 1)
        self.fence = fence
        self._actions = concurrent.futures.ThreadPoolExecutor(self.size, f"{name}-act")
        self._looks = concurrent.futures.ThreadPoolExecutor(self.size, f"{name}-look")

    async def act(self, call: Callable[[], R]) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._actions, call)

    async def look(self, call: Callable[[], R]) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._looks, call)

    def map_looks(self, call: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """From a thread: ``call`` over ``items`` on the observation threads, in order."""
        return list(self._looks.map(call, items))

    def close(self) -> None:
        self._actions.shutdown(wait=False, cancel_futures=True)
        self._looks.shutdown(wait=False, cancel_futures=True)


class Execution:
    """One run of an :class:`ActionGraph`. ``perform`` runs one action in a thread and says
    how it went (it must not raise: a failure is an :class:`Outcome` with a ``failure``)."""

    def __init__(
        self, graph: ActionGraph, perform: Callable[[Action], Outcome], pool: ActionPool
    ) -> None:
        self.graph = graph
        self._perform = perform
        self._pool = pool
        self._cancelled = False
        self._abandoned = False  # container actions in flight are no longer waited for
        self._interrupted = asyncio.Event()
        self._running: dict[int, asyncio.Task[Outcome]] = {}

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Start nothing more; what is in flight finishes."""
        self._cancelled = True

    def interrupt(self) -> None:
        """For a new spec: start nothing more, and return as soon as the VM and disk actions
        in flight are done — a container stop in flight (its grace period may be minutes)
        goes on in its thread without the run waiting for it."""
        self._cancelled = self._abandoned = True
        self._interrupted.set()

    async def run(self) -> list[Outcome]:
        """Every action's outcome, in plan order; those never started (after a failure of what
        they wait for, or a cancel), or abandoned in flight, are CANCELLED."""
        actions = self.graph.actions
        outcomes: dict[int, Outcome] = {}
        try:
            await self._walk(set(range(len(actions))), outcomes)
        except asyncio.CancelledError:
            self.cancel()  # what is in flight goes on in its thread; settle() waits for it
            raise
        for position in self._running:  # abandoned: its thread finishes on its own
            outcomes.setdefault(position, Outcome(actions[position], Failure.CANCELLED))
        return [outcomes[p] for p in range(len(actions))]

    def _awaited(self) -> list[asyncio.Task[Outcome]]:
        return [
            task
            for position, task in self._running.items()
            if not (self._abandoned and isinstance(self.graph.actions[position], ContainerAction))
        ]

    async def _walk(self, todo: set[int], outcomes: dict[int, Outcome]) -> None:
        actions, after = self.graph.actions, self.graph.after
        while todo or self._awaited():
            for position in sorted(todo):
                waits = after.get(position, frozenset())
                if self._cancelled or any(p in outcomes and not outcomes[p].ok for p in waits):
                    todo.discard(position)
                    outcomes[position] = Outcome(actions[position], Failure.CANCELLED)
                elif all(p in outcomes for p in waits):
                    todo.discard(position)
                    self._start(position)
            awaited = self._awaited()
            if not awaited:
                continue
            interrupted = asyncio.create_task(self._interrupted.wait())
            await asyncio.wait([*awaited, interrupted], return_when=asyncio.FIRST_COMPLETED)
            interrupted.cancel()
            for position, task in list(self._running.items()):
                if task.done():
                    del self._running[position]
                    outcomes[position] = task.result()

    def _start(self, position: int) -> None:
        action = self.graph.actions[position]
        self._running[position] = asyncio.create_task(
            self._pool.act(lambda: self._fenced(action)), name=f"action-{action}"
        )

    def _fenced(self, action: Action) -> Outcome:
        if not self._pool.fence():  # another operator is active now: it decides anew
            self._cancelled = True
            return Outcome(action, Failure.CANCELLED, "fenced: not the active operator")
        return self._perform(action)

    async def settle(self, containers_too: bool = True) -> None:
        """Cancel, and wait for what is in flight (VM and disk actions only, unless
        ``containers_too``)."""
        self.cancel()
        waiting = [
            task
            for position, task in self._running.items()
            if containers_too or not isinstance(self.graph.actions[position], ContainerAction)
        ]
        if waiting:
            await asyncio.wait(waiting)

    @property
    def busy(self) -> bool:
        return any(not task.done() for task in self._running.values())
