"""Metric series follow their objects: a Deployment's or Job's series go when a watch says it
was deleted, and a sweep drops those of objects the API no longer has (a delete no event told
of: a watch that missed it, a namespace deleted while the operator was down)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from dockyard.handlers import kube, shard
from dockyard.handlers.disks import DEPLOYMENT_LABEL
from dockyard.observability import metrics

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 60.0  # seconds; deletions seen by the watch go at once, this is the safety net
SWEEPER = "series-sweeper"  # the task's key in the operator's memo


def _job_key(body: kopf.Body | dict[str, Any]) -> metrics.JobKey:
    meta = body.get("metadata", {})
    name = (body.get("spec") or {}).get("name") or meta.get("name", "")
    return meta.get("namespace", ""), (meta.get("labels") or {}).get(DEPLOYMENT_LABEL, ""), name


@kopf.on.event(kube.GROUP, kube.VERSION, "deployments", when=shard.owns)
def deployment_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    if type == "DELETED":
        metrics.forget_deployment(namespace, name)
    elif not body.metadata.deletion_timestamp:
        metrics.seen_deployment(namespace, name)


@kopf.on.event(kube.GROUP, kube.VERSION, "jobs", when=shard.owns)
def job_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    if type == "DELETED":
        metrics.forget_job(*_job_key(body))
    elif not body.metadata.deletion_timestamp:
        metrics.seen_job(*_job_key(body))


async def sweep() -> int:
    """Drop the series of objects gone from the API; returns how many objects were dropped."""
    before = metrics.series_owners()
    deployments: set[metrics.DeploymentKey] = set()
    jobs: set[metrics.JobKey] = set()
    for namespace in sorted(before.namespaces):
        for item in await kube.list_("deployments", namespace):
            deployments.add((namespace, item["metadata"]["name"]))
        jobs.update(_job_key(item) for item in await kube.list_("jobs", namespace))
    return metrics.retain(before, deployments, jobs)


async def sweep_forever(interval: float = SWEEP_INTERVAL) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            dropped = await sweep()
        except kube.ApiException as error:
            log.warning("metric series sweep: %s", kube.describe(error))
            continue
        if dropped:
            log.info("metric series sweep: dropped the series of %d deleted objects", dropped)


def start(memo: kopf.Memo) -> None:
    memo[SWEEPER] = asyncio.get_running_loop().create_task(sweep_forever())


def stop(memo: kopf.Memo) -> None:
    task = memo.get(SWEEPER)
    if isinstance(task, asyncio.Task):
        task.cancel()
