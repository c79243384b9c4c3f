"""kopf glue for DiskSnapshots: a point-in-time snapshot of a PersistentDisk's provider disk,
taken when the object is created (its spec is immutable), deleted with it. A job disk restores
from one with ``persistentDisk.restoreFrom`` (``handlers/desired.py``), read from the index
below (the watch cache)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import kopf

from dockyard.api.conditions import kstatus
from dockyard.api.models import ProviderSpec, parse_disk_snapshot, parse_persistent_disk
from dockyard.api.quantities import format_quantity, parse_quantity
from dockyard.handlers import kube, shard
from dockyard.handlers.context import provider_for
from dockyard.handlers.desired import SnapshotSeen
from dockyard.handlers.fleet import fleet_of
from dockyard.providers import ProviderError, Snapshot
from dockyard.providers.base import TAG_SNAPSHOT

MIB = 1024 * 1024
PROVIDER_ANNOTATION = "dockyard.dev/provider"  # where the snapshot lives, for its deletion
READY_POLL = 5.0


@kopf.index(kube.GROUP, kube.VERSION, "disksnapshots", when=shard.owns)
def disk_snapshots(
    name: str, namespace: str | None, status: kopf.Status, **_: Any
) -> dict[str, tuple[str, SnapshotSeen]]:
    size = status.get("restoreSize")
    seen = SnapshotSeen(
        snapshot_id=str(status.get("snapshotId") or ""),
        ready=bool(status.get("readyToUse")),
        restore_bytes=parse_quantity(size) if size else 0,
    )
    return {namespace or "": (name, seen)}


@kopf.on.resume(kube.GROUP, kube.VERSION, "disksnapshots", when=shard.owns)
@kopf.on.create(kube.GROUP, kube.VERSION, "disksnapshots", when=shard.owns)
async def take_snapshot(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    snapshot = parse_disk_snapshot(body)
    if snapshot.status.ready_to_use:
        return
    source = snapshot.spec.persistent_disk
    record = await kube.get("persistentdisks", namespace, source)
    disk_id = ((record or {}).get("status") or {}).get("diskId")
    if record is None or not disk_id:
        problem = f"spec.persistentDisk: no PersistentDisk {source!r} with a disk in this namespace"
        await _publish(body, {}, problem)
        kopf.warn(body, reason="SnapshotFailed", message=problem)
        raise kopf.TemporaryError(problem, delay=30)  # it may appear: look again later
    spec = parse_persistent_disk(record).spec.provider
    provider = await provider_for(fleet_of(memo), spec, namespace)
    await kube.patch(
        "disksnapshots",
        namespace,
        name,
        {"metadata": {"annotations": {PROVIDER_ANNOTATION: json.dumps(spec.to_dict())}}},
    )
    tags = {TAG_SNAPSHOT: f"{namespace}.{name}"}
    try:
        made = await asyncio.to_thread(provider.snapshot_disk, disk_id, tags)
    except ProviderError as error:
        await _publish(body, {}, f"spec.persistentDisk: {error}")
        raise kopf.TemporaryError(str(error), delay=30) from error
    await _publish(body, _status(made), "")
    if not made.ready:
        raise kopf.TemporaryError("not ready to use yet", delay=READY_POLL)
    kopf.info(body, reason="SnapshotReady", message=f"{made.id} of disk {disk_id}")


@kopf.on.delete(kube.GROUP, kube.VERSION, "disksnapshots", when=shard.owns)
async def delete_snapshot(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The provider snapshot goes with the object."""
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    stored = body.get("metadata", {}).get("annotations", {}).get(PROVIDER_ANNOTATION)
    if not stored:
        return  # never taken
    spec = ProviderSpec.model_validate(json.loads(stored))
    provider = await provider_for(fleet_of(memo), spec, namespace)

    def remove() -> None:
        for found in provider.find_snapshots({TAG_SNAPSHOT: f"{namespace}.{name}"}):
            provider.delete_snapshot(found.id)

    await asyncio.to_thread(remove)


def _status(made: Snapshot) -> dict[str, Any]:
    return {
        "snapshotId": made.id,
        "sourceDiskId": made.disk_id,
        "restoreSize": format_quantity(made.size_mib * MIB),
        "readyToUse": made.ready,
    }


async def _publish(body: kopf.Body, status: dict[str, Any], problem: str) -> None:
    generation = body.metadata.get("generation") or 0
    ready = bool(status.get("readyToUse")) and not problem
    reason = "ReadyToUse" if ready else ("DiskNotFound" if problem else "Creating")
    previous = (body.get("status") or {}).get("conditions") or []
    conditions = kstatus(
        previous,
        ready=ready,
        reason=reason,
        message=problem or f"snapshot {status.get('snapshotId', '')}".strip(),
        generation=generation,
        now=datetime.now(UTC),
        stalled_reason=reason,
        stalled_message=problem,
    )
    full = {**status, "observedGeneration": generation, "conditions": conditions}
    await kube.patch_status(
        "disksnapshots", body.metadata.namespace or "", body.metadata.name or "", full
    )
