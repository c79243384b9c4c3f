"""Hot standby: replicas share a coordination.k8s.io Lease; only its holder runs kopf.

A standby polls the lease and takes it when the holder stopped renewing (see
:mod:`dockyard.planning.lease`). The holder renews in the background; when it cannot renew
within the deadline it fences itself (no action of any pass starts any more), stops kopf, and
the process exits non-zero so that it comes back as a standby.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from dockyard.handlers import kube
from dockyard.observability import metrics
from dockyard.planning.lease import LeaseRecord, LeaseTimings, Sighting, holds, may_take, seen

log = logging.getLogger(__name__)


def default_identity() -> str:
    """The pod's name (HOSTNAME in Kubernetes) and a suffix: a restarted process is new."""
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}-{uuid.uuid4().hex[:6]}"


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class Leadership:
    """One replica's part in the lease ``namespace/name``."""

    namespace: str
    name: str
    identity: str = field(default_factory=default_identity)
    timings: LeaseTimings = field(default_factory=LeaseTimings)
    last_renewed: float | None = None  # monotonic time of the last successful write
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    _sighting: Sighting | None = None

    def holds(self) -> bool:
        """From any thread: this replica may act now (the fence every action checks)."""
        return holds(self.last_renewed, time.monotonic(), self.timings)

    def _api(self) -> kubernetes.client.CoordinationV1Api:
        return kubernetes.client.CoordinationV1Api(kube.api_client())

    def _try_take(self) -> bool:
        """One look at the lease, and a write of ourselves into it if we may (thread)."""
        api = self._api()
        try:
            lease = api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            lease = None
        now = time.monotonic()
        record = None
        if lease is not None:
            holder = (lease.spec.holder_identity if lease.spec else None) or ""
            version = lease.metadata.resource_version if lease.metadata else None
            record = LeaseRecord(holder, version or "")
        self._sighting = seen(self._sighting, record, now)
        if not may_take(self._sighting, self.identity, now, self.timings):
            return False
        spec = kubernetes.client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=round(self.timings.duration),
            acquire_time=_utc_now(),
            renew_time=_utc_now(),
        )
        try:
            if lease is None:
                body = kubernetes.client.V1Lease(
                    metadata=kubernetes.client.V1ObjectMeta(name=self.name), spec=spec
                )
                spec.lease_transitions = 0
                api.create_namespaced_lease(self.namespace, body)
            else:
                before = lease.spec.holder_identity if lease.spec else None
                transitions = (lease.spec.lease_transitions or 0) if lease.spec else 0
                spec.lease_transitions = transitions + (before != self.identity)
                lease.spec = spec  # resourceVersion kept: a concurrent taker gets a conflict
                api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as error:
            if error.status in (409, 422):  # someone else was quicker
                return False
            raise
        self.last_renewed = now
        return True

    def _renew(self) -> None:
        """Write a new renewTime, if the lease is still ours (thread)."""
        api = self._api()
        started = time.monotonic()
        lease = api.read_namespaced_lease(self.name, self.namespace)
        if lease.spec is None or lease.spec.holder_identity != self.identity:
            raise LostError(f"the lease is held by {lease.spec and lease.spec.holder_identity}")
        lease.spec.renew_time = _utc_now()
        api.replace_namespaced_lease(self.name, self.namespace, lease)
        self.last_renewed = started

    async def acquire(self) -> None:
        """Wait (as a standby) until this replica holds the lease."""
        metrics.set_active(False)
        log.info(
            "standby %s: waiting for the lease %s/%s", self.identity, self.namespace, self.name
        )
        while True:
            try:
                if await asyncio.to_thread(self._try_take):
                    break
            except ApiException as error:
                log.warning("reading the lease %s: %s", self.name, kube.describe(error))
            except OSError as error:
                log.warning("reading the lease %s: %s", self.name, error)
            await asyncio.sleep(self.timings.retry_every)
        metrics.set_active(True)
        log.info("active %s: holding the lease %s/%s", self.identity, self.namespace, self.name)

    async def keep(self) -> None:
        """Renew until the lease is lost (then ``lost`` is set)."""
        while self.holds():
            await asyncio.sleep(self.timings.renew_every)
            try:
                await asyncio.to_thread(self._renew)
            except LostError as error:
                log.error("lost the lease %s: %s", self.name, error)
                break
            except (ApiException, OSError) as error:
                log.warning("renewing the lease %s: %s", self.name, error)
        self.last_renewed = None
        metrics.set_active(False)
        log.error("no longer the active operator: fenced, stopping")
        self.lost.set()

    def release(self) -> None:
        """On a clean stop: empty the holder, so a standby takes over at once (thread)."""
        if self.last_renewed is None:
            return
        self.last_renewed = None
        api = self._api()
        try:
            lease = api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec is not None and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                api.replace_namespaced_lease(self.name, self.namespace, lease)
        except (ApiException, OSError) as error:
            log.warning("releasing the lease %s: %s", self.name, error)


class LostError(Exception):
    """Another replica holds the lease."""
