"""A PersistentDisk record per instance disk (``<job>-<index>``), so disks show in
``kubectl get dypd``; written off the path of the actions, only when what it says changed (no
writes at steady state)."""

from __future__ import annotations

import logging
from typing import Any

from dockyard.api.models import Job
from dockyard.api.quantities import format_quantity
from dockyard.handlers import kube
from dockyard.handlers.publisher import Publisher
from dockyard.handlers.status import disk_conditions
from dockyard.runtime.reconciler import JobReport
from dockyard.runtime.world import JobIdentity

log = logging.getLogger(__name__)

JOB_LABEL = "dockyard.dev/job"
DEPLOYMENT_LABEL = "dockyard.dev/deployment"
MIB = 1024 * 1024


class DiskRecords:
    def __init__(self, job: Job, identity: JobIdentity) -> None:
        self.job = job
        self.identity = identity
        self.namespace = job.metadata.namespace or ""
        self.records: dict[str, dict[str, Any]] | None = None  # name -> what it says
        self.conditions: dict[str, list[dict[str, Any]]] = {}  # what its status last said
        self.publisher = Publisher(self._write, f"disk records of Job {job.metadata.name}")

    def offer(self, job: Job, report: JobReport) -> None:
        self.job = job
        self.publisher.offer(self._wanted(report))

    def close(self) -> None:
        self.publisher.close()

    async def detached(self) -> None:
        """After a teardown that kept the disks (Retain): their records say Detached, not
        attached to a VM that is gone."""
        found = await kube.list_(
            "persistentdisks", self.namespace, f"{JOB_LABEL}={self.job.metadata.name}"
        )
        for item in found:
            status = item.get("status") or {}
            if status.get("phase") == "Attached" or status.get("attachedTo"):
                name, generation = item["metadata"]["name"], item["metadata"]["generation"]
                fixed = {**status, "phase": "Detached", "attachedTo": None}
                fixed["conditions"] = disk_conditions(
                    status.get("conditions") or [], fixed, generation
                )
                await kube.patch_status("persistentdisks", self.namespace, name, fixed)

    def _wanted(self, report: JobReport) -> dict[str, Any]:
        job = self.job
        template = job.spec.persistent_disk
        wanted: dict[str, dict[str, Any]] = {}
        for index, instance in sorted(report.observation.instances.items()):
            disk = instance.disk
            if disk is None or template is None:
                continue
            capacity = disk.size_mib * MIB
            # A disk larger than asked (git holds an older size) is kept as it is: its record
            # says its real size, never a smaller one (the CRD refuses a shrink).
            size = template.size if template.size_bytes >= capacity else format_quantity(capacity)
            wanted[self.identity.disk_name(index)] = {
                "spec": {
                    "provider": job.spec.provider.model_dump(
                        mode="json", by_alias=True, exclude_none=True
                    ),
                    "size": size,
                    "reclaimPolicy": template.reclaim_policy,
                    **({"type": template.type} if template.type else {}),
                },
                "status": {
                    "diskId": disk.id,
                    "capacity": format_quantity(capacity),
                    "phase": "Attached" if disk.attached_to else "Detached",
                    **({"attachedTo": disk.attached_to} if disk.attached_to else {}),
                },
            }
        retain = template is not None and template.reclaim_policy == "Retain"
        kept = [self.identity.disk_name(i) for i in range(job.spec.instances)]
        return {"retain": retain, "disks": wanted, "instances": kept}

    async def _write(self, offer: dict[str, Any]) -> None:
        if self.records is None:  # first time: learn which records exist
            found = await kube.list_(
                "persistentdisks", self.namespace, f"{JOB_LABEL}={self.job.metadata.name}"
            )
            self.records = {item["metadata"]["name"]: {} for item in found}
            self.conditions = {
                item["metadata"]["name"]: (item.get("status") or {}).get("conditions") or []
                for item in found
            }
        wanted: dict[str, dict[str, Any]] = offer["disks"]
        for name, record in wanted.items():
            if self.records.get(name) != record:
                await self._write_one(name, record)
        for name in [n for n in self.records if n not in wanted]:
            # Its instance was scaled away (a Retain disk still exists: keep its record). The
            # record of a wanted instance whose disk is missing stays: it is what says so.
            if not offer["retain"] and name not in offer["instances"]:
                await kube.delete("persistentdisks", self.namespace, name)
                del self.records[name]

    async def _write_one(self, name: str, record: dict[str, Any]) -> None:
        assert self.records is not None
        job = self.job
        metadata: dict[str, Any] = {
            "name": name,
            "labels": {
                JOB_LABEL: job.metadata.name,
                DEPLOYMENT_LABEL: job.metadata.labels.get(DEPLOYMENT_LABEL, ""),
            },
        }
        if record["spec"]["reclaimPolicy"] == "Delete":  # Retain: the record outlives us
            metadata["ownerReferences"] = [
                {
                    "apiVersion": f"{kube.GROUP}/{kube.VERSION}",
                    "kind": "Job",
                    "name": job.metadata.name,
                    "uid": job.metadata.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
        body = {
            "apiVersion": f"{kube.GROUP}/{kube.VERSION}",
            "kind": "PersistentDisk",
            "metadata": metadata,
            "spec": record["spec"],
        }
        stored = None
        if name not in self.records:  # created, or the one already there (409)
            stored = await kube.create("persistentdisks", self.namespace, body)
        if stored is None or stored.get("spec") != body["spec"]:
            try:
                stored = await kube.patch(
                    "persistentdisks", self.namespace, name, {"spec": body["spec"]}
                )
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
        await kube.patch_status("persistentdisks", self.namespace, name, status)
        self.conditions[name] = status["conditions"]
        self.records[name] = record
