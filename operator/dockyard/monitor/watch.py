"""Follow each VM's Docker events, so a dead container or a dead VM is noticed in milliseconds
instead of at the next drift scan.

One thread per VM reads the engine's event stream. Any event of a Dockyard container calls
``on_change``; when the stream ends (the VM died, or the engine went away) the watcher calls
``on_change`` too and reconnects with a short backoff for as long as the VM is watched, so a
watcher can never go silently deaf: every reconnect is followed by a full observation.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable

import docker

from dockyard.runtime.engine import LABEL_CONTAINER

log = logging.getLogger(__name__)

# The events that change what a reconcile pass would see.
WATCHED_ACTIONS = frozenset({"start", "die", "destroy", "oom", "health_status", "create"})


class VMWatcher:
    def __init__(
        self,
        vm_id: str,
        client_factory: Callable[[], docker.DockerClient],
        on_change: Callable[[str, str], None],
    ) -> None:
        self.vm_id = vm_id
        self._client_factory = client_factory
        self._on_change = on_change
        self._stop = threading.Event()
        self._client: docker.DockerClient | None = None
        self.connected = False  # its event stream is open: a change would be heard
        self._thread = threading.Thread(target=self._run, name=f"watch-{vm_id[:12]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        client = self._client
        if client is not None:
            try:
                client.close()  # unblocks the event stream read
            except Exception:  # closing a dead connection may fail; we are leaving anyway
                log.debug("closing watcher client of %s", self.vm_id, exc_info=True)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._client = self._client_factory()
                stream = self._client.events(
                    decode=True, filters={"type": "container", "label": [LABEL_CONTAINER]}
                )
                backoff = 0.1
                self.connected = True
                self._on_change(self.vm_id, "connected")
                for event in stream:
                    action = str(event.get("Action", "")).split(":")[0]
                    if action in WATCHED_ACTIONS:
                        self._on_change(self.vm_id, action)
            except Exception as error:
                if self._stop.is_set():
                    return
                log.debug("event stream of VM %s failed: %s", self.vm_id, error)
            self.connected = False
            if self._stop.is_set():
                return
            self._on_change(self.vm_id, "stream-lost")
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)


class WatcherSet:
    """The watchers of one Job: kept in step with the VMs that exist."""

    def __init__(
        self,
        client_factory: Callable[[str], docker.DockerClient],
        on_change: Callable[[str, str], None],
    ) -> None:
        self._client_factory = client_factory
        self._on_change = on_change
        self._watchers: dict[str, VMWatcher] = {}

    def sync(self, vm_ids: Iterable[str]) -> None:
        wanted = set(vm_ids)
        for vm_id in set(self._watchers) - wanted:
            self._watchers.pop(vm_id).stop()
        for vm_id in wanted - set(self._watchers):
            watcher = VMWatcher(
                vm_id, functools.partial(self._client_factory, vm_id), self._on_change
            )
            self._watchers[vm_id] = watcher
            watcher.start()

    def stop(self) -> None:
        self.sync(())

    def vm_ids(self) -> list[str]:
        return list(self._watchers)

    def all_connected(self) -> bool:
        """Every watched VM's event stream is open: any change of a container is heard."""
        return all(w.connected for w in list(self._watchers.values()))
