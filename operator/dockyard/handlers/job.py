"""kopf glue for Jobs: one daemon per Job keeps its instances converged, forever.

The daemon wakes on a spec change, on any Docker event from the Job's VMs (the monitor's
watchers), when an upstream in another job changes (the fleet's board), and on a drift timer;
each wake is one observe → decide → execute → report pass (``context.JobRuntime``). Its state
lives in kopf's per-object memo; what Jobs share lives in the fleet (the operator's memo).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf

from dockyard.handlers import kube, shard
from dockyard.handlers.context import DRIFT_INTERVAL, FULL_DRIFT_INTERVAL, JobRuntime
from dockyard.handlers.desired import SnapshotSeen, commands_fingerprint
from dockyard.handlers.fleet import fleet_of
from dockyard.observability import metrics
from dockyard.providers.redaction import redact

log = logging.getLogger(__name__)

RUNTIME = "job_runtime"  # the key of a Job's runtime in its kopf memo
DiskIndex = kopf.Index[tuple[str, str], tuple[str, str]]
JOB_LABEL = "dockyard.dev/job"


@kopf.on.update(kube.GROUP, kube.VERSION, "jobs", field="spec", when=shard.owns)
async def spec_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A new spec never waits behind a long pass: the pass in flight is interrupted (it starts
    nothing more, nor waits for a container stop in flight) and the next one runs at once."""
    runtime = memo.get(RUNTIME)
    if isinstance(runtime, JobRuntime):
        runtime.reconciler.interrupt()
    fleet_of(memo).wake((body.metadata.namespace or "", body.metadata.name or ""))


@kopf.on.event(kube.GROUP, kube.VERSION, "jobs", when=shard.owns)
async def commands_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """kubectl annotate of an operator command (restart, recreate, stop, pause...): act now.
    Our annotations are under kopf's own prefix, which kopf leaves out of its diffs: the watch
    events tell, and only a change of the commands wakes the Job (not its own status writes)."""
    runtime = memo.get(RUNTIME)
    if not isinstance(runtime, JobRuntime):
        return
    if commands_fingerprint(body.metadata.annotations) != runtime.commands_seen:
        runtime.wake()


@kopf.on.event("", "v1", "configmaps")
async def config_map_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A ConfigMap a Job's files read changed: the Job reads it again now (and rolls the
    containers whose files changed)."""
    fleet_of(memo).config_map_changed(body.metadata.namespace or "", body.metadata.name or "")


@kopf.index(kube.GROUP, kube.VERSION, "persistentdisks", when=shard.owns)
def disk_records(
    name: str, namespace: str | None, labels: kopf.Labels, status: kopf.Status, **_: Any
) -> dict[tuple[str, str], tuple[str, str]] | None:
    """The disk each Job's instance had, from its PersistentDisk records (the watch cache): a
    recorded disk gone from the IaaS is missing, not replaced by a blank one."""
    job = labels.get(JOB_LABEL)
    if not job:
        return None
    return {(namespace or "", job): (name, str(status.get("diskId") or ""))}


def _records_of(
    index: kopf.Index[tuple[str, str], tuple[str, str]], body: kopf.Body
) -> dict[str, str]:
    key = (body.metadata.namespace or "", body.metadata.name or "")
    return dict(index.get(key, []))


@kopf.daemon(kube.GROUP, kube.VERSION, "jobs", cancellation_timeout=30, when=shard.owns)
async def converge(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    records: DiskIndex = kwargs["disk_records"]  # kopf passes each index by its name
    snapshots: kopf.Index[str, tuple[str, SnapshotSeen]] = kwargs["disk_snapshots"]
    runtime: JobRuntime | None = None
    try:
        while not stopped:
            started = time.monotonic()
            delay = 10.0
            try:
                if runtime is not None and not await runtime.provider_current(body):
                    runtime.close()  # another provider now: start over (a new world)
                    runtime = None
                if runtime is None:
                    runtime = memo[RUNTIME] = await JobRuntime.start(fleet_of(memo), body)
                runtime.woken.clear()
                seen = dict(snapshots.get(body.metadata.namespace or "", []))
                delay = await runtime.run_pass(body, _records_of(records, body), seen)
                _observe(runtime, started)
            except kopf.TemporaryError as error:
                metrics.observe_reconcile("Job", "retry", started)
                log.warning("retrying in %.0fs: %s", error.delay or 10, error)
                delay = float(error.delay or 10)
            except Exception as error:
                metrics.observe_reconcile("Job", "error", started)
                log.exception("reconcile of Job %s failed", body.metadata.name)
                kopf.warn(body, reason="ReconcileError", message=redact(_describe(error))[:1000])
            if runtime is not None and runtime.closed:
                return  # torn down: nothing more to do for this Job
            await _wait(runtime, delay, stopped, since=started)
    finally:
        if runtime is not None:
            runtime.close()


async def _wait(
    runtime: JobRuntime | None, delay: float, stopped: kopf.DaemonStopped, since: float
) -> None:
    """Until the next pass: ``delay``, or a wake-up. A settled Job is looked at cheaply (its
    engines pinged) every ``delay`` and observed in full only every FULL_DRIFT_INTERVAL."""
    woken = runtime.woken if runtime is not None else asyncio.Event()
    while not stopped:
        try:
            await asyncio.wait_for(woken.wait(), timeout=delay)
            return
        except TimeoutError:
            pass
        if runtime is None or not runtime.settled:
            return
        if time.monotonic() - since >= FULL_DRIFT_INTERVAL or not await runtime.engines_answer():
            return


def _observe(runtime: JobRuntime, started: float) -> None:
    report = runtime.last_report
    if report is None:
        return
    failed = sorted({r.kind for r in report.failed})
    if failed:
        metrics.observe_reconcile("Job", "error", started, reason=failed[0])
    elif report.verdict.stalled:
        metrics.observe_reconcile("Job", "stalled", started)
    else:
        metrics.observe_reconcile("Job", "success", started)


def _describe(error: Exception) -> str:
    """An error in words: an API error's reason and message, not only its status code."""
    if isinstance(error, kube.ApiException):
        return kube.describe(error)
    return str(error) or repr(error)


@kopf.on.delete(kube.GROUP, kube.VERSION, "jobs", when=shard.owns)
async def delete_job(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """Containers and VMs go; disks go or stay per the persistent disk's reclaimPolicy. A pass
    in flight starts nothing more, and the teardown waits only for its VM and disk actions."""
    runtime = memo.get(RUNTIME)
    own = not isinstance(runtime, JobRuntime) or runtime.closed
    if own:
        runtime = await JobRuntime.start(fleet_of(memo), body)
    assert isinstance(runtime, JobRuntime)
    try:
        await runtime.teardown(_records_of(kwargs["disk_records"], body))
    finally:
        if own:
            runtime.close()
    job = runtime.job
    deployment = job.metadata.labels.get("dockyard.dev/deployment", "")
    metrics.forget_job(job.metadata.namespace or "", deployment, job.job_name)


__all__ = [
    "DRIFT_INTERVAL",
    "commands_changed",
    "config_map_changed",
    "converge",
    "delete_job",
    "disk_records",
    "fleet_of",
    "spec_changed",
]
