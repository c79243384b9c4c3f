"""A PersistentDisk record per instance disk (``<job>-<index>``), so disks show in
``kubectl get dypd``; written off the path of the actions, only when what it says changed (no
writes at steady state).

A record follows its disk: Attached or Detached; Orphaned (no longer wanted, with when it
expires) — then it has no owner, so it outlives its Job, and the reaper (``handlers/disk.py``)
deletes disk and record at expiry; back to Attached, owned again, when a scale-up adopts it.
The old disk of a finished copy-migration has a record of its own (``<job>-<index>-was-<hash>``,
Orphaned, labelled replaced) until the Job deletes it at expiry.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from dockyard.api.models import Job
from dockyard.api.quantities import format_quantity, parse_duration
from dockyard.api.selector import inherited
from dockyard.handlers import kube
from dockyard.handlers.publisher import Publisher
from dockyard.handlers.status import disk_conditions
from dockyard.planning.observation import DiskObservation
from dockyard.runtime.reconciler import JobReport
from dockyard.runtime.world import JobIdentity

log = logging.getLogger(__name__)

JOB_LABEL = "dockyard.dev/job"
DEPLOYMENT_LABEL = "dockyard.dev/deployment"
ORPHANED_LABEL = "dockyard.dev/orphaned"  # the reaper watches records with it
REPLACED_LABEL = "dockyard.dev/replaced"  # the old disk of a finished copy-migration
MIB = 1024 * 1024


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class DiskRecords:
    def __init__(self, job: Job, identity: JobIdentity) -> None:
        self.job = job
        self.identity = identity
        self.namespace = job.metadata.namespace or ""
        self.records: dict[str, dict[str, Any]] | None = None  # name -> what it says
        self.replaced: set[str] = set()  # records of old disks of finished copy-migrations
        self.conditions: dict[str, list[dict[str, Any]]] = {}  # what its status last said
        self.publisher = Publisher(self._write, f"disk records of Job {job.metadata.name}")

    def offer(self, job: Job, report: JobReport) -> None:
        self.job = job
        self.publisher.offer(self._wanted(report))

    def close(self) -> None:
        self.publisher.close()

    # --- after a teardown ----------------------------------------------------------------------

    async def detached(self) -> None:
        """The disks were kept (Retain): their records say Detached, not attached to a VM that
        is gone."""
        for item in await self._listed():
            status = item.get("status") or {}
            if status.get("phase") == "Attached" or status.get("attachedTo"):
                await self._patch_status(item, {**status, "phase": "Detached", "attachedTo": None})

    async def orphaned(self, retention: float) -> None:
        """The disks were orphaned: their records lose their owner (the Job goes now) and say
        Orphaned, until when."""
        now = datetime.now(UTC)
        for item in await self._listed():
            name = item["metadata"]["name"]
            labels = {**item["metadata"].get("labels", {}), ORPHANED_LABEL: "true"}
            patch = {"metadata": {"labels": labels, "ownerReferences": None}}
            await kube.patch("persistentdisks", self.namespace, name, patch)
            status = {**(item.get("status") or {}), **_orphan_status(now, retention)}
            await self._patch_status(item, status)

    async def _listed(self) -> list[dict[str, Any]]:
        selector = f"{JOB_LABEL}={self.job.metadata.name}"
        return await kube.list_("persistentdisks", self.namespace, selector)

    async def _patch_status(self, item: dict[str, Any], status: dict[str, Any]) -> None:
        name, generation = item["metadata"]["name"], item["metadata"]["generation"]
        previous = (item.get("status") or {}).get("conditions") or []
        status["conditions"] = disk_conditions(previous, status, generation)
        await kube.patch_status("persistentdisks", self.namespace, name, status)

    # --- every pass ------------------------------------------------------------------------------

    def _wanted(self, report: JobReport) -> dict[str, Any]:
        job = self.job
        template = job.spec.persistent_disk
        wanted: dict[str, dict[str, Any]] = {}
        for index, instance in sorted(report.observation.instances.items()):
            if instance.disk is not None and template is not None:
                wanted[self.identity.disk_name(index)] = self._record(instance.disk)
            for old in instance.superseded if template is not None else ():
                wanted[replaced_name(self.identity.disk_name(index), old.id)] = self._record(
                    old, replaced=True
                )
        retain = template is not None and template.reclaim_policy == "Retain"
        kept = [self.identity.disk_name(i) for i in range(job.spec.instances)]
        return {"retain": retain, "disks": wanted, "instances": kept}

    def _record(self, disk: DiskObservation, replaced: bool = False) -> dict[str, Any]:
        job, template = self.job, self.job.spec.persistent_disk
        assert template is not None
        capacity = disk.size_mib * MIB
        # A disk larger than asked (git holds an older size) is kept as it is: its record
        # says its real size, never a smaller one (the CRD refuses a shrink).
        size = template.size if template.size_bytes >= capacity else format_quantity(capacity)
        if replaced:
            size = format_quantity(capacity)
        status: dict[str, Any] = {
            "diskId": disk.id,
            "capacity": format_quantity(capacity),
            "phase": "Attached" if disk.attached_to else "Detached",
        }
        if disk.attached_to:
            status["attachedTo"] = disk.attached_to
        orphan = disk.orphaned_at is not None
        if disk.orphaned_at is not None:
            since = datetime.fromtimestamp(disk.orphaned_at, UTC)
            status |= _orphan_status(since, parse_duration(template.orphan_retention))
        spec = {
            "provider": job.spec.provider.model_dump(mode="json", by_alias=True, exclude_none=True),
            "size": size,
            "reclaimPolicy": template.reclaim_policy,
            "orphanRetention": template.orphan_retention,
            **({"type": template.type} if template.type else {}),
        }
        return {"metadata": self._metadata(orphan, replaced), "spec": spec, "status": status}

    def _metadata(self, orphan: bool, replaced: bool = False) -> dict[str, Any]:
        job = self.job
        labels = {
            JOB_LABEL: job.metadata.name,
            DEPLOYMENT_LABEL: job.metadata.labels.get(DEPLOYMENT_LABEL, ""),
            **inherited(job.metadata.labels),
        }
        template = job.spec.persistent_disk
        if replaced:  # the Job deletes its disk at expiry: the record goes with the Job
            labels[REPLACED_LABEL] = "true"
        elif orphan:  # it outlives the Job: no owner, the reaper's label
            return {"labels": {**labels, ORPHANED_LABEL: "true"}, "ownerReferences": None}
        if replaced or (template is not None and template.reclaim_policy == "Delete"):
            owner = {
                "apiVersion": f"{kube.GROUP}/{kube.VERSION}",
                "kind": "Job",
                "name": job.metadata.name,
                "uid": job.metadata.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
            return {"labels": labels, "ownerReferences": [owner]}
        return {"labels": labels, "ownerReferences": None}  # Retain: the record outlives us

    async def _write(self, offer: dict[str, Any]) -> None:
        if self.records is None:  # first time: learn which records exist
            found = await self._listed()
            self.records = {item["metadata"]["name"]: {} for item in found}
            self.replaced = {
                item["metadata"]["name"]
                for item in found
                if item["metadata"].get("labels", {}).get(REPLACED_LABEL) == "true"
            }
            self.conditions = {
                item["metadata"]["name"]: (item.get("status") or {}).get("conditions") or []
                for item in found
            }
        wanted: dict[str, dict[str, Any]] = offer["disks"]
        for name, record in wanted.items():
            if self.records.get(name) != record:
                await self._write_one(name, record)
            if REPLACED_LABEL in record["metadata"]["labels"]:
                self.replaced.add(name)
        for name in [n for n in self.records if n not in wanted]:
            # Its disk is gone (deleted, or reaped): so is its record. A Retain disk's record
            # stays; so does that of a wanted instance whose disk is missing: it says so.
            if name in self.replaced or (not offer["retain"] and name not in offer["instances"]):
                await kube.delete("persistentdisks", self.namespace, name)
                del self.records[name]
                self.replaced.discard(name)

    async def _write_one(self, name: str, record: dict[str, Any]) -> None:
        assert self.records is not None
        metadata = {"name": name, **record["metadata"]}
        if metadata["ownerReferences"] is None:
            del metadata["ownerReferences"]
        body = {
            "apiVersion": f"{kube.GROUP}/{kube.VERSION}",
            "kind": "PersistentDisk",
            "metadata": metadata,
            "spec": record["spec"],
        }
        stored = None
        if name not in self.records:  # created, or the one already there (409)
            stored = await kube.create("persistentdisks", self.namespace, body)
        if stored is None or _differs(stored, record):
            labels = dict(record["metadata"]["labels"])
            labels.setdefault(ORPHANED_LABEL, None)  # adopted: the reaper's label goes
            meta = {**record["metadata"], "labels": labels}
            patch = {"metadata": meta, "spec": record["spec"]}
            try:
                stored = await kube.patch("persistentdisks", self.namespace, name, patch)
            except kube.ApiException as error:
                if error.status != 404:
                    raise
                stored = await kube.create("persistentdisks", self.namespace, body)  # deleted
        generation = stored["metadata"]["generation"]
        status = {
            **record["status"],
            "observedGeneration": generation,
            "conditions": disk_conditions(
                self.conditions.get(name, []), record["status"], generation
            ),
        }
        for gone in ("attachedTo", "orphanedAt", "expiresAt"):
            status.setdefault(gone, None)  # a merge patch removes what is no longer true
        await kube.patch_status("persistentdisks", self.namespace, name, status)
        self.conditions[name] = status["conditions"]
        self.records[name] = record


def replaced_name(disk_name: str, disk_id: str) -> str:
    """The record name of an instance's old disk, after a copy-migration replaced it."""
    return f"{disk_name}-was-{hashlib.sha256(disk_id.encode()).hexdigest()[:8]}"


def _differs(stored: dict[str, Any], record: dict[str, Any]) -> bool:
    meta = stored.get("metadata", {})
    labels = record["metadata"]["labels"]
    owners = record["metadata"]["ownerReferences"] or []
    stored_owners = [
        {
            k: o.get(k)
            for k in ("apiVersion", "kind", "name", "uid", "controller", "blockOwnerDeletion")
        }
        for o in meta.get("ownerReferences") or []
    ]
    same_labels = all(meta.get("labels", {}).get(k) == v for k, v in labels.items())
    orphan_label_left = ORPHANED_LABEL in meta.get("labels", {}) and ORPHANED_LABEL not in labels
    return (
        stored.get("spec") != record["spec"]
        or not same_labels
        or orphan_label_left
        or stored_owners != owners
    )


def _orphan_status(since: datetime, retention: float) -> dict[str, Any]:
    return {
        "phase": "Orphaned",
        "attachedTo": None,
        "orphanedAt": iso(since),
        "expiresAt": iso(since + timedelta(seconds=retention)),
    }
