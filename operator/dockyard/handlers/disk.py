"""kopf glue for PersistentDisks.

A Job records each instance's disk as a PersistentDisk named ``<job>-<index>`` (stable across VM
resurrection); the Job's daemon creates, attaches and grows the disk itself, because only it
knows when the disk's containers may stop. A PersistentDisk made by hand gets its provider disk
here, grown when its ``spec.size`` grows. With reclaimPolicy Delete the disk goes with the
object; with Retain it stays, and a Job instance of the same name adopts it again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import kopf

from dockyard.api.models import parse_persistent_disk
from dockyard.api.quantities import format_quantity
from dockyard.handlers import kube, shard
from dockyard.handlers.context import provider_for
from dockyard.handlers.disks import ORPHANED_LABEL, REPLACED_LABEL
from dockyard.handlers.fleet import Fleet, fleet_of
from dockyard.handlers.status import disk_conditions
from dockyard.providers import DiskSpec, NotFoundError, PermanentError, TransientError
from dockyard.providers.base import TAG_DISK, TAG_ORPHANED_AT

log = logging.getLogger(__name__)
MIB = 1024 * 1024


def disk_tags(namespace: str, name: str) -> dict[str, str]:
    return {TAG_DISK: f"{namespace}.{name}"}


@kopf.on.resume(kube.GROUP, kube.VERSION, "persistentdisks", when=shard.owns)
@kopf.on.create(kube.GROUP, kube.VERSION, "persistentdisks", when=shard.owns)
@kopf.on.update(kube.GROUP, kube.VERSION, "persistentdisks", field="spec.size", when=shard.owns)
async def ensure_disk(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The provider disk exists, at least as big as ``spec.size`` (the CRD refuses a shrink)."""
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    if body.get("metadata", {}).get("labels", {}).get("dockyard.dev/job"):
        return  # its Job manages it
    disk = parse_persistent_disk(body)
    provider = await provider_for(fleet_of(memo), disk.spec.provider, namespace)
    spec = DiskSpec(
        tags=disk_tags(namespace, name),
        size_mib=-(-disk.spec.size_bytes // MIB),
        disk_type=disk.spec.type or "",
    )
    created = await asyncio.to_thread(provider.create_disk, spec)
    problem = ""
    if created.size_mib < spec.size_mib:
        try:
            created = await asyncio.to_thread(provider.resize_disk, created.id, spec.size_mib)
        except TransientError as error:
            raise kopf.TemporaryError(str(error), delay=error.retry_after) from error
        except PermanentError as error:  # one that cannot grow in place has no VM to copy on
            problem = f"spec.size: {error}"
    status: dict[str, Any] = {
        "diskId": created.id,
        "capacity": format_quantity(created.size_mib * MIB),
        "phase": "Failed" if problem else ("Attached" if created.attached_to else "Detached"),
        "observedGeneration": disk.metadata.generation or 0,
    }
    if created.attached_to:
        status["attachedTo"] = created.attached_to
    previous = (body.get("status") or {}).get("conditions") or []
    generation = disk.metadata.generation or 0
    status["conditions"] = disk_conditions(previous, status, generation, problem)
    current = {k: v for k, v in (body.get("status") or {}).items() if k in status}
    if current != status:
        await kube.patch_status("persistentdisks", namespace, name, status)
        if problem:
            kopf.warn(body, reason="ResizeDiskFailed", message=problem)


@kopf.on.delete(kube.GROUP, kube.VERSION, "persistentdisks", when=shard.owns)
async def delete_disk(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A hand-made disk with reclaimPolicy Delete goes with its record; so does an orphaned
    one (``kubectl delete dypd <orphan>``: now, not at expiry). A Job's other records: the Job
    deletes its disks itself (scale-down, teardown); deleted while the Job is torn down too
    (the namespace goes), the record waits for the teardown to orphan or keep its disk."""
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    labels = body.get("metadata", {}).get("labels", {})
    if labels.get(ORPHANED_LABEL) == "true":
        await _reap(fleet_of(memo), body)
        return
    if labels.get(REPLACED_LABEL) == "true":  # a migrated disk's old one: now, not at expiry
        await _delete_replaced(fleet_of(memo), body)
        return
    job_name = labels.get("dockyard.dev/job")
    if job_name:
        job = await kube.get("jobs", namespace, job_name)
        going = job is not None and bool(job["metadata"].get("deletionTimestamp"))
        if job is not None and (going or await kube.namespace_terminating(namespace)):
            # Deleted with its Job (`kubectl delete namespace`, which may delete the records
            # first): the Job's teardown says whether the disk is kept (Retain) or orphaned,
            # and an orphan whose record goes goes with it. Gone first, the record left the
            # disk on the IaaS with no record at all.
            raise kopf.TemporaryError(f"waiting for the teardown of Job {job_name}", delay=2)
        return
    disk = parse_persistent_disk(body)
    if disk.spec.reclaim_policy != "Delete":
        kopf.info(body, reason="DiskRetained", message="reclaimPolicy Retain: the disk stays")
        return
    provider = await provider_for(fleet_of(memo), disk.spec.provider, namespace)

    def remove() -> None:
        for found in provider.find_disks(disk_tags(namespace, name)):
            if found.attached_to:
                provider.detach_disk(found.attached_to, found.id)
            provider.delete_disk(found.id)

    await asyncio.to_thread(remove)


REAP_INTERVAL = 10.0  # seconds between looks at an orphaned disk's expiry


@kopf.timer(
    kube.GROUP,
    kube.VERSION,
    "persistentdisks",
    interval=REAP_INTERVAL,
    labels={ORPHANED_LABEL: "true"},
    when=shard.owns,
)
async def reap_orphan(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """An orphaned disk past its expiry is deleted, then its record (BOSH deletes orphaned
    disks after 5 days). One that a scale-up adopted meanwhile lost its mark: it stays."""
    expires = (body.get("status") or {}).get("expiresAt")
    if not expires or datetime.fromisoformat(expires) > datetime.now(UTC):
        return
    if await _reap(fleet_of(memo), body):
        kopf.info(body, reason="DeletedOrphanedDisk", message=f"expired at {expires}")
        await kube.delete(
            "persistentdisks", body.metadata.namespace or "", body.metadata.name or ""
        )


async def _delete_replaced(fleet: Fleet, body: kopf.Body) -> None:
    disk_id = (body.get("status") or {}).get("diskId")
    if not disk_id:
        return
    disk = parse_persistent_disk(body)
    provider = await provider_for(fleet, disk.spec.provider, body.metadata.namespace or "")

    def remove() -> None:
        with contextlib.suppress(NotFoundError):
            provider.delete_disk(disk_id)

    await asyncio.to_thread(remove)


async def _reap(fleet: Fleet, body: kopf.Body) -> bool:
    """Delete the orphaned provider disk of a record; False when it is no orphan any more."""
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    disk = parse_persistent_disk(body)
    provider = await provider_for(fleet, disk.spec.provider, namespace)

    def remove() -> bool:
        found = provider.find_disks(disk_tags(namespace, name))
        if any(TAG_ORPHANED_AT not in d.tags for d in found):
            return False  # adopted again (a scale-up): the Job's now
        for orphan in found:
            if orphan.attached_to:
                provider.detach_disk(orphan.attached_to, orphan.id)
            provider.delete_disk(orphan.id)
        return True

    return await asyncio.to_thread(remove)
