"""What the operator shares between its Jobs, owned by one object in kopf's memo (no
module-level state): providers and their action pools, the board of upstream reports that
carries cascades from one Job to its dependents, and the wake-ups of Job daemons.

Cascades across jobs go through the board, in this process, never through the API: a Job
reports each of its containers after each decision (its latest start, whether it is settled);
a dependent reads its upstreams from the board and is woken when one of them changes. The jobs
of one Deployment are in one namespace and served by one operator.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, MutableMapping
from typing import Any

from dockyard.api.policy import Policy
from dockyard.handlers.engineca import EngineCAStore
from dockyard.planning import ContainerKey
from dockyard.planning.cascade import ContainerReport, upstream_states
from dockyard.planning.verdict import UpstreamState
from dockyard.providers import Provider, ProviderConfig, make_provider
from dockyard.runtime.executor import DEFAULT_POOL_SIZE, FALLBACK_POOL_SIZE, ActionPool

log = logging.getLogger(__name__)

Group = tuple[str, str]  # (namespace, deployment): the jobs that may depend on each other
JobRef = tuple[str, str]  # (namespace, Job object name)
SettledListener = Callable[["Fleet", Group], Coroutine[Any, Any, None]]


class Fleet:
    def __init__(
        self,
        pool_sizes: Mapping[str, int] | None = None,
        policy: Policy | None = None,
        fence: Callable[[], bool] = lambda: True,
    ) -> None:
        """``pool_sizes``: actions in flight at once per provider type (``dockyard run
        --pool local=32``); a default per IaaS otherwise (cloud APIs rate-limit). ``policy``:
        what namespaces may run (``dockyard run --policy``), baseline by default. ``fence``:
        whether this replica may act (it holds the leader lease), asked before every action."""
        self.pool_sizes = {**DEFAULT_POOL_SIZE, **(pool_sizes or {})}
        self.fence = fence
        # namespace -> (monotonic time read, its labels): one read serves all its Jobs a while.
        self.namespace_labels: dict[str, tuple[float, dict[str, str]]] = {}
        # Deployments with a roll-up waiting behind the running one (one covers every ask).
        self.roll_ups_waiting: set[Group] = set()
        self.policy = policy or Policy()
        # The CA of aws/gce VMs' engines (a Secret in the operator's namespace).
        self.engine_ca = EngineCAStore()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._providers: dict[ProviderConfig, tuple[Provider, ActionPool]] = {}
        self._providers_guard = threading.Lock()
        self._boards: dict[Group, dict[ContainerKey, ContainerReport]] = {}
        self._interest: dict[Group, dict[JobRef, frozenset[ContainerKey]]] = {}
        self._wakers: dict[JobRef, Callable[[], None]] = {}
        self._settled_listeners: list[SettledListener] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}
        # (namespace, ConfigMap) -> the Jobs whose files read it, and what tells each.
        self._config_readers: dict[tuple[str, str], dict[JobRef, Callable[[], None]]] = {}

    # --- providers ------------------------------------------------------------------------------

    def provider(self, config: ProviderConfig) -> tuple[Provider, ActionPool]:
        """One provider, and one pool of action threads, per configuration: Jobs that start at
        once in threads get the same one (a second would forget the first one's back-offs)."""
        with self._providers_guard:
            if config not in self._providers:
                provider = make_provider(config)
                size = self.pool_sizes.get(config.type, FALLBACK_POOL_SIZE)
                self._providers[config] = (provider, ActionPool(size, config.type, self.fence))
            return self._providers[config]

    def close(self) -> None:
        with self._providers_guard:
            for provider, pool in self._providers.values():
                pool.close()
                provider.close()
            self._providers.clear()

    def lock(self, key: tuple[str, ...]) -> asyncio.Lock:
        """One coroutine at a time for ``key`` (e.g. a Deployment's roll-up)."""
        return self._locks.setdefault(key, asyncio.Lock())

    # --- wake-ups -------------------------------------------------------------------------------

    def register(self, job: JobRef, wake: Callable[[], None]) -> None:
        """``wake`` (called on the event loop) makes the Job's daemon run a pass now."""
        self._loop = asyncio.get_running_loop()
        self._wakers[job] = wake

    def unregister(self, job: JobRef) -> None:
        self._wakers.pop(job, None)
        for interest in self._interest.values():
            interest.pop(job, None)
        for readers in self._config_readers.values():
            readers.pop(job, None)

    # --- ConfigMaps read by Jobs' files ----------------------------------------------------------

    def read_config_maps(
        self, job: JobRef, names: Iterable[str], changed: Callable[[], None]
    ) -> None:
        """``job`` reads these ConfigMaps of its namespace: ``changed`` is called (on the event
        loop) when one of them changes."""
        wanted = {(job[0], name) for name in names}
        for key, readers in self._config_readers.items():
            if key not in wanted:
                readers.pop(job, None)
        for key in wanted:
            self._config_readers.setdefault(key, {})[job] = changed

    def config_map_changed(self, namespace: str, name: str) -> None:
        for changed in list(self._config_readers.get((namespace, name), {}).values()):
            changed()

    def wake(self, job: JobRef) -> None:
        """From any thread: the Job's daemon runs a pass soon."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake_now(job)
        else:
            loop.call_soon_threadsafe(self._wake_now, job)

    def _wake_now(self, job: JobRef) -> None:
        waker = self._wakers.get(job)
        if waker is not None:
            waker()

    # --- the board of upstream reports -----------------------------------------------------------

    def upstreams(
        self, group: Group, job: JobRef, keys: Iterable[ContainerKey]
    ) -> dict[ContainerKey, UpstreamState]:
        """What ``job`` needs to know of its upstreams in other jobs (those no Job reported
        yet are left out: unknown); it is woken when they change."""
        wanted = frozenset(keys)
        self._interest.setdefault(group, {})[job] = wanted
        return upstream_states(self._boards.get(group, {}), wanted)

    def report(
        self, group: Group, job: JobRef, reports: Mapping[ContainerKey, ContainerReport]
    ) -> None:
        """A Job's containers after a decision; wakes the Jobs that depend on any that changed."""
        board = self._boards.setdefault(group, {})
        before = upstream_states(board, board)
        changed = {key for key, report in reports.items() if board.get(key) != report}
        board.update(reports)
        if not changed:
            return
        after = upstream_states(board, board)
        moved = changed | {key for key in after if before.get(key) != after[key]}
        for other, keys in self._interest.get(group, {}).items():
            if other != job and keys & moved:
                self._wake_now(other)
        was_settled = all(state.settled for state in before.values())
        if not was_settled and all(state.settled for state in after.values()):
            for listener in self._settled_listeners:
                task = asyncio.create_task(listener(self, group), name=f"settled {group}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def on_settled(self, listener: SettledListener) -> None:
        """``await listener(fleet, group)`` whenever every container of a group is settled
        again (the Deployment's roll-up may say Ready now)."""
        if listener not in self._settled_listeners:
            self._settled_listeners.append(listener)

    def unsettled(self, group: Group) -> list[ContainerKey]:
        """Containers of the group's jobs that (re)start now or are about to."""
        board = self._boards.get(group, {})
        return [key for key, state in upstream_states(board, board).items() if not state.settled]

    def withdraw(self, group: Group, keys: Iterable[ContainerKey]) -> None:
        """A Job is gone: its containers leave the board (its dependents stop waiting)."""
        board = self._boards.get(group, {})
        gone = [key for key in keys if board.pop(key, None) is not None]
        if not gone:
            return
        for other, interest in self._interest.get(group, {}).items():
            if interest & set(gone):
                self._wake_now(other)


def fleet_of(memo: MutableMapping[str, Any]) -> Fleet:
    """The operator's fleet, in its memo (every object's memo is a shallow copy of it)."""
    fleet = memo.get("fleet")
    if not isinstance(fleet, Fleet):  # an operator started without our startup handler
        fleet = memo["fleet"] = Fleet()
    return fleet
