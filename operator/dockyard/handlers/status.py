"""Status from a pass's report: derived only from what changed, so a converged Job produces
the same status every pass and the operator makes no API writes at steady state."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dockyard.api.conditions import kstatus
from dockyard.api.containers import Container
from dockyard.api.models import Job
from dockyard.handlers.desired import commands_fingerprint
from dockyard.planning.observation import ContainerObservation, InstanceObservation
from dockyard.planning.verdict import Phase
from dockyard.runtime.reconciler import JobReport
from dockyard.runtime.world import vm_fingerprint

RestartReasons = dict[tuple[int, str], str]


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    moment = datetime.fromtimestamp(stamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _container_state(observed: ContainerObservation | None) -> str:
    if observed is None:
        return "missing"
    if observed.state == "running" and observed.health == "unhealthy":
        return "unhealthy"
    return observed.state


def job_status(
    job: Job,
    report: JobReport,
    now: datetime,
    previous: dict[str, Any] | None = None,
    pending_reasons: RestartReasons | None = None,
) -> dict[str, Any]:
    """``pending_reasons``: why containers were (re)started by earlier passes whose new start
    was not seen yet (their engine did not answer at the end); the caller keeps the dict across
    passes, this adds the report's reasons and removes those a detected restart consumed.
    ``previous`` is the status last computed, when the caller knows it better than ``job``
    (the watch may not have delivered our own last write yet)."""
    if previous is None:
        previous = job.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    reasons = pending_reasons if pending_reasons is not None else {}
    reasons.update(
        {
            (r.index, r.target): r.reason
            for r in report.records
            if r.ok and r.kind.endswith("Container")
        }
    )
    old = {i["index"]: i for i in previous.get("instances", [])}
    instances = [
        _instance(job, index, report, old.get(index, {}), reasons)
        for index in sorted(report.observation.instances)
        if index < job.spec.instances or report.observation.instances[index].has_vm
    ]
    generation = job.metadata.generation or 0
    verdict = report.verdict
    ready = verdict.converged and not report.acting
    stalled = verdict.phase.stalled
    return {
        "observedGeneration": generation,
        "observedCommands": commands_fingerprint(job.metadata.annotations),
        "replicas": sum(1 for i in instances if report.observation.instances[i["index"]].has_vm),
        "readyInstances": verdict.ready_instances,
        "instances": instances,
        "conditions": kstatus(
            previous.get("conditions", []),
            ready=ready,
            reason=verdict.phase.value if not ready else Phase.CONVERGED.value,
            message=verdict.message,
            generation=generation,
            now=now,
            stalled_reason=verdict.phase.value if stalled else "",
            stalled_message=verdict.message if stalled else "",
        ),
    }


def starting_status(job: Job, now: datetime) -> dict[str, Any]:
    """What a Job says before its first pass: its generation is seen, work is ahead."""
    previous = job.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    generation = job.metadata.generation or 0
    conditions = kstatus(
        previous.get("conditions", []),
        ready=False,
        reason=Phase.RECONCILING.value,
        message=f"generation {generation} seen; looking at the world",
        generation=generation,
        now=now,
    )
    return {**previous, "observedGeneration": generation, "conditions": conditions}


def _instance(
    job: Job, index: int, report: JobReport, old: Mapping[str, Any], reasons: RestartReasons
) -> dict[str, Any]:
    seen = report.observation.instances[index]
    old_containers = {c["name"]: c for c in old.get("containers", [])}
    containers = [
        _container(index, spec, seen, old_containers.get(spec.name, {}), report, reasons)
        for spec in job.spec.containers
    ]
    all_ready = seen.has_vm and seen.engine_ok and all(c["ready"] for c in containers)
    instance: dict[str, Any] = {
        "index": index,
        "state": _commanded(report, index)
        or ("running" if all_ready else ("missing" if not seen.has_vm else "starting")),
        "containers": containers,
    }
    if seen.vm_id is not None and seen.has_vm:
        instance["vmId"] = seen.vm_id
        if seen.address:
            instance["address"] = seen.address
        instance.update(_made_from(job, seen, old, report.vm_config))
    elif old.get("vmId") and instance["state"] != "stopped-hard":
        # Gone from the IaaS behind our back: remembered until a VM replaces it, so a pass
        # whose clean-up of it failed is followed by one that resurrects it again (deletes
        # what it left: volumes, folders, attachments), not by one that makes a new instance.
        instance["vmId"] = old["vmId"]
    if seen.disk is not None:
        instance["disk"] = f"{job.metadata.name}-{index}"
    return instance


def _commanded(report: JobReport, index: int) -> str:
    """What an operator asked of the instance, as its state ("" : nothing)."""
    commands = report.commands
    for which, state in (
        (commands.ignored, "ignored"),
        (commands.detached, "stopped-hard"),
        (commands.stopped, "stopped"),
    ):
        if index in which:
            return state
    return ""


def _made_from(
    job: Job, seen: InstanceObservation, old: Mapping[str, Any], current: str = ""
) -> dict[str, str]:
    """The stemcell and VM type of the instance's VM: the spec's when its fingerprint says so
    (or it has none: made before they were recorded), else what the status said of that VM."""
    stemcell, vm_type = job.spec.stemcell or "default", job.spec.vm_type or "default"
    current = current or vm_fingerprint(job.spec.stemcell or "", job.spec.vm_type or "")
    if seen.vm_config in (None, current):
        return {"stemcell": stemcell, "vmType": vm_type}
    if old.get("vmId") == seen.vm_id:
        return {key: old[key] for key in ("stemcell", "vmType") if key in old}
    return {}


def _container(
    index: int,
    spec: Container,
    seen: InstanceObservation,
    old: Mapping[str, Any],
    report: JobReport,
    reasons: RestartReasons,
) -> dict[str, Any]:
    name = spec.name
    observed = seen.containers.get(name)
    if observed is None and seen.has_vm and not seen.engine_ok and old:
        # The engine did not answer this time: keep what was known (start times and counts
        # must survive a silent pass, or the next restart would go uncounted).
        return {**old, "state": "unknown", "ready": False}
    looping = (index, name) in report.crash_looping
    entry: dict[str, Any] = {
        "name": name,
        "state": "crashLoopBackOff" if looping else _container_state(observed),
        "ready": observed is not None and observed.done_its_part(spec.restart_policy),
        "restartCount": old.get("restartCount", 0),
        "image": spec.image,
    }
    if observed is not None:
        entry["specHash"] = observed.config_hash
    started = _iso(observed.started_at if observed else None)
    if started:
        entry["startedAt"] = started
    for key in ("lastRestartTime", "lastRestartReason"):
        if key in old:
            entry[key] = old[key]
    if started and old.get("startedAt") and started != old["startedAt"]:
        entry["restartCount"] = old.get("restartCount", 0) + 1
        entry["lastRestartTime"] = started
        entry["lastRestartReason"] = reasons.get((index, name), _death_reason(observed))
    if observed is not None:  # its start is seen: the reason is used or moot
        reasons.pop((index, name), None)
    return entry


def _death_reason(observed: ContainerObservation | None) -> str:
    if observed is None:
        return "Missing"
    if observed.oom_killed:
        return "OOMKilled"
    if observed.health == "unhealthy":
        return "Unhealthy"
    return f"Exited({observed.exit_code})" if observed.exit_code else "Restarted"


def disk_conditions(
    previous: list[dict[str, Any]], status: Mapping[str, Any], generation: int, problem: str = ""
) -> list[dict[str, Any]]:
    """A PersistentDisk is Ready once its provider disk exists (attached or not), so GitOps
    tools see it Healthy; the reason is its phase. ``problem``: what only a change of its spec
    can mend (Stalled)."""
    phase = status.get("phase") or "Pending"
    return kstatus(
        previous,
        ready=phase in ("Attached", "Detached") and not problem,
        reason=phase,
        message=problem or f"{status.get('capacity', '?')} disk {status.get('diskId', '?')}",
        generation=generation,
        now=datetime.now(UTC),
        stalled_reason=phase,
        stalled_message=problem,
    )
