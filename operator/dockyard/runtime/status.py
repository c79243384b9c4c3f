"""Status from observations: derived only from what changed, so a converged Job produces the
same status every pass and the operator makes no API writes at steady state."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dockyard.api.conditions import kstatus
from dockyard.api.models import Job
from dockyard.runtime.engine import ObservedContainer
from dockyard.runtime.reconciler import JobReport


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    moment = datetime.fromtimestamp(stamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _container_state(observed: ObservedContainer | None) -> str:
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
    pending_reasons: dict[tuple[int, str], str] | None = None,
) -> dict[str, Any]:
    """``pending_reasons``: why containers were (re)started by earlier passes whose new start
    was not seen yet (their engine did not answer at the end); the caller keeps the dict across
    passes, this adds the report's reasons and removes those a detected restart consumed.
    ``previous`` is the status last written, when the caller knows it better than ``job``
    (the watch may not have delivered our own last write yet)."""
    if previous is None:
        previous = job.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    previous_instances = {i["index"]: i for i in previous.get("instances", [])}
    restart_reasons = pending_reasons if pending_reasons is not None else {}
    restart_reasons.update(
        {
            (a.index, a.target): a.reason
            for a in report.actions
            if a.ok and a.kind.endswith("Container")
        }
    )
    generation = job.metadata.generation or 0
    wanted = {c.name for c in job.spec.containers}
    instances: list[dict[str, Any]] = []
    ready = 0
    for index in sorted(report.instances):
        world = report.instances[index]
        if index >= job.spec.instances and world.vm is None:
            continue
        old_containers = {
            c["name"]: c for c in previous_instances.get(index, {}).get("containers", [])
        }
        containers = []
        all_ready = world.vm is not None and world.engine_ok
        for spec in job.spec.containers:
            observed = world.containers.get(spec.name)
            old = old_containers.get(spec.name, {})
            if observed is None and world.vm is not None and not world.engine_ok and old:
                # The engine did not answer this time: keep what was known (start times and
                # counts must survive a silent pass, or the next restart would go uncounted).
                containers.append({**old, "state": "unknown", "ready": False})
                all_ready = False
                continue
            started = _iso(observed.started_at if observed else None)
            entry: dict[str, Any] = {
                "name": spec.name,
                "state": "crashLoopBackOff"
                if (index, spec.name) in report.crash_looping
                else _container_state(observed),
                "ready": observed is not None
                and observed.state == "running"
                and observed.health != "unhealthy",
                "restartCount": old.get("restartCount", 0),
                "image": spec.image,
            }
            if observed is not None:
                entry["specHash"] = observed.config_hash
            if started:
                entry["startedAt"] = started
            for key in ("lastRestartTime", "lastRestartReason"):
                if key in old:
                    entry[key] = old[key]
            if started and old.get("startedAt") and started != old["startedAt"]:
                entry["restartCount"] = old.get("restartCount", 0) + 1
                entry["lastRestartTime"] = started
                entry["lastRestartReason"] = restart_reasons.get(
                    (index, spec.name), _death_reason(observed)
                )
            if observed is not None:  # its start is seen: the reason is used or moot
                restart_reasons.pop((index, spec.name), None)
            all_ready = all_ready and entry["ready"]
            containers.append(entry)
        ready += int(all_ready and index < job.spec.instances)
        instance: dict[str, Any] = {
            "index": index,
            "state": "running" if all_ready else ("missing" if world.vm is None else "starting"),
            "containers": [c for c in containers if c["name"] in wanted],
        }
        if world.vm is not None:
            instance["vmId"] = world.vm.id
            if world.vm.address:
                instance["address"] = world.vm.address
        if world.disk is not None:
            instance["disk"] = f"{job.metadata.name}-{index}"
        instances.append(instance)

    conditions = previous.get("conditions", [])
    converged = report.converged and not report.stalled and ready == job.spec.instances
    # Why it is not progressing on its own (kstatus Stalled), most specific first.
    stalled_reason, stalled_message = "Converged", ""
    if report.stalled:
        stalled_reason, stalled_message = "RolloutHalted", report.stalled
    elif report.meltdown:
        stalled_reason, stalled_message = "Meltdown", report.meltdown
    elif report.resurrection_disabled:
        stalled_reason, stalled_message = "ResurrectionDisabled", report.resurrection_disabled
    stalled = bool(stalled_message)
    looping = "; ".join(report.crash_looping[key] for key in sorted(report.crash_looping))
    if converged:
        ready_reason, ready_message = "Converged", f"{ready}/{job.spec.instances} instances ready"
    elif stalled:
        ready_reason, ready_message = stalled_reason, stalled_message
    elif looping:
        ready_reason, ready_message = "CrashLoopBackOff", looping
    elif report.backing_off:
        ready_reason, ready_message = "BackOff", report.backing_off
    else:
        ready_reason, ready_message = "Reconciling", f"{ready}/{job.spec.instances} instances ready"
    result = {
        "observedGeneration": generation,
        "replicas": sum(1 for i in instances if "vmId" in i),
        "readyInstances": ready,
        "instances": instances,
        "conditions": kstatus(
            conditions,
            ready=converged,
            reason=ready_reason,
            message=ready_message,
            generation=generation,
            now=now,
            stalled_reason=stalled_reason,
            stalled_message=stalled_message,
        ),
    }
    return result


def _death_reason(observed: ObservedContainer | None) -> str:
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
