"""The DiskSnapshots of ``update.snapshotBefore``: the engine snapshots an instance's disk
before a rollout stops its users (``SnapshotDisk``, tagged with the DiskSnapshot's name); here
each such snapshot gets its DiskSnapshot object — whose handler finds the provider snapshot by
that tag rather than taking another — and only the newest ``snapshotsKept`` per disk stay.

They have no owner: a snapshot outlives its Job (delete them with
``kubectl delete dysnap -l dockyard.dev/job=<job>``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from dockyard.api.models import Job
from dockyard.api.selector import inherited
from dockyard.handlers import kube
from dockyard.handlers.disks import DEPLOYMENT_LABEL, JOB_LABEL
from dockyard.runtime.perform import ActionRecord
from dockyard.runtime.world import JobIdentity

log = logging.getLogger(__name__)

SNAPSHOT_BEFORE_LABEL = "dockyard.dev/snapshot-before"
TAKEN = "SnapshotTaken"  # the Event reason of a SnapshotDisk action


async def register(job: Job, identity: JobIdentity, records: Sequence[ActionRecord]) -> None:
    taken = [r for r in records if r.kind == TAKEN and r.ok]
    if not taken:
        return
    namespace = job.metadata.namespace or ""
    labels = {
        JOB_LABEL: job.metadata.name,
        DEPLOYMENT_LABEL: job.metadata.labels.get(DEPLOYMENT_LABEL, ""),
        **inherited(job.metadata.labels),
        SNAPSHOT_BEFORE_LABEL: "true",
    }
    for record in taken:
        body = {
            "apiVersion": f"{kube.GROUP}/{kube.VERSION}",
            "kind": "DiskSnapshot",
            "metadata": {"name": record.target, "labels": labels},
            "spec": {"persistentDisk": identity.disk_name(record.index)},
        }
        try:
            await kube.create("disksnapshots", namespace, body)  # there already (a retry): fine
        except kube.ApiException as error:
            log.warning("DiskSnapshot %s: %s", record.target, kube.describe(error))
    try:
        await prune(job, job.spec.update.snapshots_kept)
    except kube.ApiException as error:
        log.warning("pruning the snapshots of Job %s: %s", job.metadata.name, kube.describe(error))


async def prune(job: Job, kept: int) -> None:
    """Beyond ``kept`` automatic snapshots of a disk, the oldest are deleted (with theirs)."""
    namespace = job.metadata.namespace or ""
    selector = f"{JOB_LABEL}={job.metadata.name},{SNAPSHOT_BEFORE_LABEL}=true"
    by_disk: dict[str, list[dict[str, Any]]] = {}
    for item in await kube.list_("disksnapshots", namespace, selector):
        by_disk.setdefault(item["spec"]["persistentDisk"], []).append(item)
    for items in by_disk.values():
        items.sort(key=_age, reverse=True)
        for old in items[kept:]:
            log.info("deleting snapshot %s: beyond snapshotsKept=%d", old["metadata"]["name"], kept)
            await kube.delete("disksnapshots", namespace, old["metadata"]["name"])


def _age(item: dict[str, Any]) -> tuple[str, int]:
    """Newest first: by creation, then by the generation in the name (``...-g<n>``)."""
    name: str = item["metadata"]["name"]
    suffix = name.rsplit("-g", 1)[-1]
    return item["metadata"].get("creationTimestamp", ""), int(suffix) if suffix.isdigit() else 0
