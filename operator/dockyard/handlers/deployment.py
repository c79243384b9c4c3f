"""kopf glue for Deployments: materialise one Job per ``spec.jobs[]`` and roll their status up.

With ``update.serial`` the Jobs get their new spec one after another: the next only once the
previous is Ready at its new generation (BOSH's serial instance groups).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from dockyard.api.conditions import kstatus
from dockyard.api.models import Deployment, parse_deployment
from dockyard.api.policy import violations
from dockyard.api.selector import SHARD_LABEL, inherited
from dockyard.api.validation import FieldError, validate_spec
from dockyard.handlers import kube, shard
from dockyard.handlers.context import cached_namespace_labels
from dockyard.handlers.desired import (
    DEPLOYMENT_WIDE,
    PAUSED,
    commands_fingerprint,
    is_paused,
    passed_on,
)
from dockyard.handlers.fleet import Fleet, fleet_of
from dockyard.observability import metrics

log = logging.getLogger(__name__)

DEPLOYMENT_LABEL = "dockyard.dev/deployment"
_PASSED_ON = "commands_passed_on"  # a Deployment's memo: the commands last passed to its Jobs
JOB_LABEL = "dockyard.dev/job"
ROLL_UP_RETRY_FIRST, ROLL_UP_RETRY_MAX = 0.5, 30.0


def job_object_name(deployment: str, job: str) -> str:
    return f"{deployment}-{job}"


def child_job(deployment: Deployment, index: int) -> dict[str, Any]:
    spec = deployment.spec
    template = spec.jobs[index].to_dict()
    child_spec = {
        **template,
        "provider": spec.provider.to_dict(),
        "update": spec.update.to_dict(),
        "resurrection": spec.resurrection.to_dict(),
    }
    if spec.stemcell:
        child_spec["stemcell"] = spec.stemcell
    if spec.image_pull_secrets:
        child_spec["imagePullSecrets"] = [ref.to_dict() for ref in spec.image_pull_secrets]
    name = deployment.metadata.name
    body: dict[str, Any] = {
        "apiVersion": f"{kube.GROUP}/{kube.VERSION}",
        "kind": "Job",
        "metadata": {
            "name": job_object_name(name, spec.jobs[index].name),
            "labels": {
                DEPLOYMENT_LABEL: name,
                JOB_LABEL: spec.jobs[index].name,
                "app.kubernetes.io/part-of": "dockyard",
                **inherited(deployment.metadata.labels),
            },
            "annotations": deployment_commands(deployment.metadata.annotations),
        },
        "spec": child_spec,
    }
    return body


def deployment_commands(annotations: Mapping[str, str]) -> dict[str, str]:
    """The Deployment-wide operator commands (pause, restart, recreate), as its Jobs carry
    them: under keys of their own (``dockyard.dev/deployment.restartedAt``), which only the
    Deployment writes, so a Job's own commands are never overwritten."""
    return {passed_on(key): annotations[key] for key in DEPLOYMENT_WIDE if key in annotations}


def _commands_patch(current: dict[str, Any], wanted: Mapping[str, str]) -> dict[str, Any]:
    """The annotations patch that makes a Job carry ``wanted`` (None removes one)."""
    have = (current.get("metadata") or {}).get("annotations") or {}
    keys = [passed_on(key) for key in DEPLOYMENT_WIDE]
    patch: dict[str, str | None] = {
        key: wanted.get(key) for key in keys if have.get(key) != wanted.get(key)
    }
    return {"metadata": {"annotations": patch}} if patch else {}


def _ready_at_generation(job: dict[str, Any]) -> bool:
    """Ready at its spec and at the operator commands it carries (a restart or recreate asked
    after its last pass is not done yet)."""
    status = job.get("status") or {}
    metadata = job.get("metadata") or {}
    if status.get("observedGeneration") != metadata.get("generation"):
        return False
    if status.get("observedCommands", "") != commands_fingerprint(metadata.get("annotations")):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
    )


async def reconcile_deployment(body: dict[str, Any], fleet: Fleet) -> None:
    """``fleet``: this operator's board of upstream reports; a Deployment is not Ready while a
    container of one of its jobs is not settled (a cascade runs, or is about to)."""
    namespace = body["metadata"]["namespace"]
    name = body["metadata"]["name"]
    if body["metadata"].get("deletionTimestamp"):
        return
    async with fleet.lock(("deployment", namespace, name)):
        deployment = parse_deployment(body)
        generation = deployment.metadata.generation or 0
        errors = validate_spec(deployment.spec)
        existing = {
            j["metadata"]["labels"].get(JOB_LABEL): j
            for j in await kube.list_("jobs", namespace, f"{DEPLOYMENT_LABEL}={name}")
        }
        refused = await _policy_violations(deployment, fleet)
        if errors or refused:
            reason = "InvalidSpec" if errors else "PolicyViolation"
            message = "; ".join(str(e) for e in errors or refused)
            if not errors:
                message = f"refused by policy: {message}"
            kopf.warn(kube.as_body(body), reason=reason, message=message)
            await _publish(
                deployment, body, list(existing.values()), message, fleet, stalled_reason=reason
            )
            return

        wanted = {job.name for job in deployment.spec.jobs}
        for job_name, job in list(existing.items()):
            if job_name not in wanted:
                kopf.info(
                    kube.as_body(body),
                    reason="DeletingJob",
                    message=f"job {job_name} left the spec",
                )
                await kube.delete("jobs", namespace, job["metadata"]["name"])
                del existing[job_name]

        for index, template in enumerate(deployment.spec.jobs):
            current = await _apply_job(deployment, body, index, existing.get(template.name))
            if current is None:
                continue  # paused before it was made
            existing[template.name] = current  # as made or patched: no second listing
            if deployment.spec.update.serial and not _ready_at_generation(current):
                break  # later jobs wait for this one (the Job's status change wakes us)
        children = list(existing.values())
        await _publish(deployment, body, children, stalled="", fleet=fleet)
        metrics.set_deployment_ready(namespace, name, _all_ready(deployment, children))
        del generation


async def _apply_job(
    deployment: Deployment, body: dict[str, Any], index: int, current: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Make (or update) the Deployment's ``index``-th Job: its spec, and the commands passed on
    to it. A paused Deployment makes none and passes no spec change (only the pause)."""
    namespace, job = deployment.metadata.namespace or "", deployment.spec.jobs[index].name
    child = child_job(deployment, index)
    kopf.adopt(child, owner=kube.as_body(body))
    paused = is_paused(deployment.metadata.annotations)
    if current is None:
        if paused:
            return None
        kopf.info(kube.as_body(body), reason="CreatingJob", message=f"job {job}")
        created: dict[str, Any] = await kube.create("jobs", namespace, child)
        return created
    object_name = child["metadata"]["name"]
    commands = _commands_patch(current, child["metadata"]["annotations"])
    shard = inherited(deployment.metadata.labels).get(SHARD_LABEL)
    if current["metadata"].get("labels", {}).get(SHARD_LABEL) != shard:  # moved to a shard
        commands.setdefault("metadata", {})["labels"] = {SHARD_LABEL: shard}
    changed = not paused and _spec_differs(current.get("spec", {}), child["spec"])
    if changed:
        kopf.info(kube.as_body(body), reason="UpdatingJob", message=f"job {job}")
        commands = {**commands, "spec": child["spec"]}
    if commands:
        await kube.patch("jobs", namespace, object_name, commands)
        current = await kube.get("jobs", namespace, object_name) or current
    return current


def _spec_differs(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    # The apiserver adds defaults; compare only what we set.
    def subset(want: Any, have: Any) -> bool:
        if isinstance(want, dict):
            return isinstance(have, dict) and all(subset(v, have.get(k)) for k, v in want.items())
        if isinstance(want, list):
            return (
                isinstance(have, list)
                and len(want) == len(have)
                and all(subset(w, h) for w, h in zip(want, have, strict=True))
            )
        return bool(want == have)

    return not subset(wanted, current)


def _all_ready(deployment: Deployment, children: list[dict[str, Any]]) -> bool:
    by_job = {c["metadata"]["labels"].get(JOB_LABEL): c for c in children}
    return all(
        job.name in by_job and _ready_at_generation(by_job[job.name])
        for job in deployment.spec.jobs
    )


async def _policy_violations(deployment: Deployment, fleet: Fleet) -> list[FieldError]:
    """What the namespace's policy level refuses: no Job is made or changed for it."""
    labels = await cached_namespace_labels(fleet, deployment.metadata.namespace or "")
    return violations(deployment.spec, fleet.policy.level_of(labels), fleet.policy)


async def _publish(
    deployment: Deployment,
    body: dict[str, Any],
    children: list[dict[str, Any]],
    stalled: str,
    fleet: Fleet,
    stalled_reason: str = "InvalidSpecOrHaltedRollout",
) -> None:
    by_job = {c["metadata"]["labels"].get(JOB_LABEL): c for c in children}
    counts = []
    halted = []
    for job in deployment.spec.jobs:
        status = (by_job.get(job.name) or {}).get("status") or {}
        counts.append(
            {"name": job.name, "instances": job.instances, "ready": status.get("readyInstances", 0)}
        )
        for c in status.get("conditions", []):
            if c.get("type") == "Stalled" and c.get("status") == "True":
                halted.append(f"job {job.name}: {c.get('message', '')}")
    stalled = stalled or "; ".join(halted)
    group = (deployment.metadata.namespace or "", deployment.metadata.name)
    unsettled = sorted(str(key) for key in fleet.unsettled(group))
    ready = not stalled and not unsettled and _all_ready(deployment, children)
    previous = (body.get("status") or {}).get("conditions", [])
    generation = deployment.metadata.generation or 0
    now = datetime.now(UTC)
    total = sum(c["instances"] for c in counts)
    ready_instances = sum(c["ready"] for c in counts)
    progress = f"{ready_instances}/{total} instances ready"
    paused = is_paused(deployment.metadata.annotations)
    if paused:
        ready, progress = False, f"{progress}; paused ({PAUSED}): nothing is done until resumed"
    elif not ready and not stalled:
        settling = [f"a cascade runs: {', '.join(unsettled)} not settled"] if unsettled else []
        progress = "; ".join([progress, *settling, *_not_ready(deployment, by_job)])
    status = {
        "observedGeneration": generation,
        "jobs": counts,
        "instances": total,
        "readyInstances": ready_instances,
        "conditions": kstatus(
            previous,
            ready=ready,
            reason="Converged"
            if ready
            else ("Stalled" if stalled else "Paused" if paused else "Reconciling"),
            message=stalled or progress,
            generation=generation,
            now=now,
            stalled_reason=stalled_reason,
            stalled_message=stalled,
        ),
    }
    current = {k: v for k, v in (body.get("status") or {}).items() if k != "kopf"}
    if status != current:
        meta = deployment.metadata
        await kube.patch_status("deployments", meta.namespace or "", meta.name, status)


def _not_ready(deployment: Deployment, by_job: dict[str | None, dict[str, Any]]) -> list[str]:
    """Per job that is not Ready at its generation: what its own Ready condition says."""
    waiting = []
    for job in deployment.spec.jobs:
        child = by_job.get(job.name)
        if child is None:
            waiting.append(f"job {job.name}: not created yet")
        elif not _ready_at_generation(child):
            status = child.get("status") or {}
            generation = child.get("metadata", {}).get("generation")
            ready = next(
                (c for c in status.get("conditions", []) if c.get("type") == "Ready"), None
            )
            if status.get("observedGeneration") != generation or ready is None:
                waiting.append(f"job {job.name}: generation {generation} not observed yet")
            else:
                waiting.append(f"job {job.name}: {ready.get('reason')}: {ready.get('message', '')}")
    return waiting


async def _roll_up(fleet: Fleet, group: tuple[str, str]) -> None:
    """A Job changed, or the board settled again: the Deployment may be Ready now.

    At most one roll-up per Deployment waits behind the running one: it reads the Deployment
    and its Jobs when it starts, so it covers every change that asked for one meanwhile (a
    ramp of 100 instances otherwise read every Job of the namespace once per status write)."""
    if group in fleet.roll_ups_waiting:
        return
    fleet.roll_ups_waiting.add(group)
    lock = fleet.lock(("roll-up", *group))
    try:
        await lock.acquire()
    finally:
        fleet.roll_ups_waiting.discard(group)
    try:
        await _roll_up_until_done(fleet, group)
    finally:
        lock.release()


async def _roll_up_until_done(fleet: Fleet, group: tuple[str, str]) -> None:
    """While the API is away this tries again with a back-off: no Job event may follow to do
    it later."""
    delay = ROLL_UP_RETRY_FIRST
    while True:
        try:
            parent = await kube.get("deployments", *group)
            if parent is not None:
                await reconcile_deployment(parent, fleet)
            return
        except Exception as error:
            log.warning(
                "rolling up Deployment %s/%s failed (again in %.1fs): %s", *group, delay, error
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, ROLL_UP_RETRY_MAX)


def _fleet(memo: kopf.Memo) -> Fleet:
    fleet = fleet_of(memo)
    fleet.on_settled(_roll_up)
    return fleet


@kopf.on.resume(kube.GROUP, kube.VERSION, "deployments", when=shard.owns)
@kopf.on.create(kube.GROUP, kube.VERSION, "deployments", when=shard.owns)
@kopf.on.update(kube.GROUP, kube.VERSION, "deployments", field="spec", when=shard.owns)
async def deployment_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile_live(body, memo)


async def _reconcile_live(body: kopf.Body, memo: kopf.Memo) -> None:
    # kopf retries a failed handler with the body it had: the Deployment may be gone since (its
    # Jobs would be made again, orphans the garbage collector deletes later). Act on it as it is.
    live = await kube.get("deployments", body.metadata.namespace or "", body.metadata.name or "")
    if live is not None and live["metadata"].get("uid") == body.metadata.uid:
        await reconcile_deployment(live, _fleet(memo))


@kopf.on.event(kube.GROUP, kube.VERSION, "deployments", when=shard.owns)
async def commands_changed(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    """kubectl annotate of a Deployment-wide command (pause, restart, recreate): its Jobs carry
    it too (in order, job after job when the Deployment is serial). Our annotations are under
    kopf's own prefix, which kopf leaves out of its diffs: the watch events tell."""
    commands = deployment_commands(body.metadata.annotations)
    if type in (None, "DELETED") or memo.get(_PASSED_ON) == commands:
        memo[_PASSED_ON] = commands
        return
    memo[_PASSED_ON] = commands
    await _reconcile_live(body, memo)


@kopf.on.event(kube.GROUP, kube.VERSION, "jobs", when=shard.owns)
async def job_changed(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    """A child changed (kopf keeps no diff of status, so this follows raw watch events): roll
    its status up, continue a serial rollout. (Its cross-job dependents learn of its containers
    from the fleet's board, not from here.)"""
    # A listing (type None) too: after the watch reconnects, a change made while it was away
    # shows only there (at the operator's start the Deployment's resume handler does the same).
    namespace = body.metadata.namespace or ""
    deployment_name = body.get("metadata", {}).get("labels", {}).get(DEPLOYMENT_LABEL)
    if not deployment_name:
        return
    await _roll_up(_fleet(memo), (namespace, deployment_name))
