"""kopf glue for Jobs: one daemon per Job keeps its instances converged, forever.

The daemon wakes on a spec change, on any Docker event from the Job's VMs (the monitor's
watchers), on an upstream Job's container restarts, and on a drift timer; each wake is one
observe → plan → act → report pass of the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import kopf

from dockyard.handlers import kube
from dockyard.handlers.context import (
    ReconcileContext,
    build_context,
    publish_job_status,
    wake,
    wakeup_event,
)
from dockyard.observability import metrics
from dockyard.providers.redaction import redact
from dockyard.runtime.reconciler import FAILURE_KINDS

log = logging.getLogger(__name__)

DRIFT_INTERVAL = 15.0  # seconds between full observations when nothing else wakes the daemon


@kopf.on.update(kube.GROUP, kube.VERSION, "jobs", field="spec")
def spec_changed(body: kopf.Body, **_: Any) -> None:
    wake(body.metadata.namespace or "", body.metadata.name or "")


@kopf.daemon(kube.GROUP, kube.VERSION, "jobs", cancellation_timeout=30)
async def converge(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    event = wakeup_event(namespace, name)
    context: ReconcileContext | None = None
    try:
        while not stopped:
            event.clear()
            started = time.monotonic()
            try:
                context = await build_context(body, context)
                report = await context.reconcile()
                await publish_job_status(body, report, context)
                failed = sorted({a.kind for a in report.actions if a.kind in FAILURE_KINDS})
                if failed:
                    metrics.observe_reconcile("Job", "error", started, reason=failed[0])
                elif report.stalled:
                    metrics.observe_reconcile("Job", "stalled", started)
                else:
                    metrics.observe_reconcile("Job", "success", started)
                delay = report.requeue_after or DRIFT_INTERVAL
            except kopf.TemporaryError as error:
                metrics.observe_reconcile("Job", "retry", started)
                log.warning("retrying in %.0fs: %s", error.delay or 10, error)
                delay = float(error.delay or 10)
            except Exception as error:
                metrics.observe_reconcile("Job", "error", started)
                log.exception("reconcile of Job %s/%s failed", namespace, name)
                kopf.warn(body, reason="ReconcileError", message=redact(str(error))[:1000])
                delay = 10.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=delay)
    finally:
        if context is not None:
            context.close()


@kopf.on.delete(kube.GROUP, kube.VERSION, "jobs")
async def delete_job(body: kopf.Body, **_: Any) -> None:
    """Containers and VMs go; disks go or stay per the persistent disk's reclaimPolicy."""
    context = await build_context(body, None)
    try:
        await context.teardown()
    finally:
        context.close()
    job = context.job
    deployment = job.metadata.labels.get("dockyard.dev/deployment", "")
    metrics.forget_job(job.metadata.namespace or "", deployment, job.job_name)
