"""A pass's report as Events (one per action, per notice, per engine restart) and metrics.

kopf queues Events and posts them from its own task, so none of this waits for the API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from dockyard.api.models import Job
from dockyard.handlers import kube
from dockyard.observability import metrics
from dockyard.planning.verdict import Phase
from dockyard.providers.redaction import redact
from dockyard.runtime.reconciler import JobReport

DEPLOYMENT_LABEL = "dockyard.dev/deployment"


def post_report(body: Mapping[str, Any], job: Job, report: JobReport) -> None:
    target = kube.as_body(body)
    namespace = job.metadata.namespace or ""
    deployment = job.metadata.labels.get(DEPLOYMENT_LABEL, "")
    for record in report.records:
        post = kopf.info if record.ok else kopf.warn
        detail = f" ({record.message})" if record.message else ""
        message = f"instance {record.index}: {record.target}: {record.reason}{detail}"
        post(target, reason=record.kind, message=redact(message))
        metrics.record_action(
            namespace,
            deployment,
            job.job_name,
            record.kind,
            record.target,
            record.cause.value,
            record.ok,
            provider=job.spec.provider.type,
        )
    for (index, container), (count, oom) in sorted(report.engine_restarts.items()):
        why = "OOM-killed" if oom else "exited"
        times = "once" if count == 1 else f"{count} times"
        kopf.warn(
            target,
            reason="ContainerCrashed",
            message=f"instance {index}: {container}: {why}; the engine restarted it {times}",
        )
        metrics.record_engine_restarts(namespace, deployment, job.job_name, container, count, oom)
    metrics.set_crash_looping(
        namespace,
        deployment,
        job.job_name,
        containers=[c.name for c in job.spec.containers],
        looping={name for _, name in report.crash_looping},
    )
    verdict = report.verdict
    metrics.set_job_state(
        namespace,
        deployment,
        job.job_name,
        ready=verdict.ready_instances,
        total=job.spec.instances,
        halted=verdict.phase is Phase.ROLLOUT_HALTED,
        meltdown=verdict.phase is Phase.MELTDOWN,
    )
