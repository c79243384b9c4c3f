"""What a Job's daemon keeps between passes (provider, world, watchers), and how its results
reach the API: status patched only when it changed, an Event per action."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import docker
import kopf

from dockyard.api.models import Job, ProviderSpec, parse_job
from dockyard.api.quantities import format_quantity, parse_duration
from dockyard.handlers import kube
from dockyard.monitor.watch import WatcherSet
from dockyard.observability import metrics
from dockyard.providers import PermanentError, Provider, ProviderError, make_provider
from dockyard.providers.base import ProviderConfig
from dockyard.providers.redaction import protect, redact
from dockyard.runtime import diskfs
from dockyard.runtime.desired import job_desired, provider_config, secret_names
from dockyard.runtime.reconciler import JobReconciler, JobReport, ResurrectionWant
from dockyard.runtime.status import disk_conditions, job_status
from dockyard.runtime.world import JobIdentity, JobWorld

log = logging.getLogger(__name__)

JOB_LABEL = "dockyard.dev/job"
DEPLOYMENT_LABEL = "dockyard.dev/deployment"
MIB = 1024 * 1024
LOCAL_HELPER_IMAGE = "dockyard/busybox:1"  # built by hack/docker-up.sh

# --- wake-ups -------------------------------------------------------------------------------------
_events: dict[tuple[str, str], asyncio.Event] = {}
_loop: asyncio.AbstractEventLoop | None = None


def wakeup_event(namespace: str, name: str) -> asyncio.Event:
    global _loop
    _loop = asyncio.get_running_loop()
    return _events.setdefault((namespace, name), asyncio.Event())


def wake(namespace: str, name: str) -> None:
    event = _events.get((namespace, name))
    if event is not None:
        event.set()


def wake_threadsafe(namespace: str, name: str) -> None:
    if _loop is not None and not _loop.is_closed():
        _loop.call_soon_threadsafe(wake, namespace, name)


# --- one pass at a time per Job, and none after its teardown -----------------------------------
_pass_locks: dict[str, threading.Lock] = {}
_pass_locks_guard = threading.Lock()
_torn_down: set[str] = set()  # Job uids whose world was torn down


def _pass_lock(uid: str) -> threading.Lock:
    with _pass_locks_guard:
        return _pass_locks.setdefault(uid, threading.Lock())


# --- providers are shared by every Job with the same configuration -----------------------------
_providers: dict[ProviderConfig, Provider] = {}
_providers_guard = threading.Lock()


def _provider(config: ProviderConfig) -> Provider:
    # One instance per configuration, even when Jobs start at once in threads (functools.cache
    # would build two and keep one: the other Job's context then looked stale every pass and was
    # rebuilt, losing what its reconciler remembered, e.g. back-offs).
    with _providers_guard:
        if config not in _providers:
            _providers[config] = make_provider(config)
        return _providers[config]


def _freeze(config: ProviderConfig) -> ProviderConfig:
    # ProviderConfig holds Mappings; make it hashable for the cache.
    return ProviderConfig(
        type=config.type,
        region=config.region,
        zone=config.zone,
        endpoint=config.endpoint,
        options=_FrozenMap(config.options),
        credentials=_FrozenMap(config.credentials),
    )


class _FrozenMap(dict[str, str]):
    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


@functools.cache
def _host_docker() -> docker.DockerClient:
    return docker.from_env()


class ReconcileContext:
    def __init__(self, job: Job, world: JobWorld, watchers: WatcherSet) -> None:
        self.job = job
        self.world = world
        self.watchers = watchers
        self.reconciler = JobReconciler(world)
        self.secrets: dict[str, dict[str, str]] = {}
        self.last_status: dict[str, Any] | None = None  # what we last wrote
        self.pending_reasons: dict[tuple[int, str], str] = {}  # restarts not yet seen
        self.disk_records: dict[str, dict[str, Any]] | None = None  # PersistentDisk name -> body
        self.disk_conditions: dict[str, list[dict[str, Any]]] = {}  # what its status last said

    async def reconcile(self) -> JobReport:
        desired = job_desired(self.job, self.secrets, await _upstream_starts(self.job))
        policy = self.job.spec.resurrection
        resurrection = ResurrectionWant(
            enabled=policy.enabled,
            meltdown_min_down=policy.meltdown_min_down,
            meltdown_percent=policy.meltdown_percent,
            unresponsive_timeout=parse_duration(policy.unresponsive_timeout),
        )
        known_vms = {i.index: i.vm_id for i in self.job.status.instances if i.vm_id}
        uid = self.job.metadata.uid or ""

        def one_pass() -> JobReport:
            # A cancelled daemon cannot stop its thread: the lock makes the delete handler's
            # teardown wait for a pass in flight, and no pass runs after the teardown.
            with _pass_lock(uid):
                if uid in _torn_down:
                    return JobReport(instances={}, actions=[], updated_indices=set())
                return self.reconciler.reconcile(desired, resurrection, known_vms)

        report = await asyncio.to_thread(one_pass)
        self.watchers.sync(i.vm.id for i in report.instances.values() if i.vm is not None)
        await self.record_disks(report)
        return report

    async def record_disks(self, report: JobReport) -> None:
        """Keep a PersistentDisk object per instance disk (``<job>-<index>``), so disks show in
        ``kubectl get dypd``. Written only when what it says changed: no writes at steady state."""
        job = self.job
        namespace = job.metadata.namespace or ""
        if self.disk_records is None:  # first pass: learn which records exist
            found = await kube.list_(
                "persistentdisks", namespace, f"{JOB_LABEL}={job.metadata.name}"
            )
            self.disk_records = {item["metadata"]["name"]: {} for item in found}
            self.disk_conditions = {
                item["metadata"]["name"]: (item.get("status") or {}).get("conditions") or []
                for item in found
            }
        template = job.spec.persistent_disk
        wanted: dict[str, dict[str, Any]] = {}
        for index, instance in sorted(report.instances.items()):
            disk = instance.disk
            if disk is None or template is None:
                continue
            wanted[self.world.identity.disk_name(index)] = {
                "spec": {
                    "provider": job.spec.provider.model_dump(
                        mode="json", by_alias=True, exclude_none=True
                    ),
                    "size": template.size,
                    "reclaimPolicy": template.reclaim_policy,
                    **({"type": template.type} if template.type else {}),
                },
                "status": {
                    "diskId": disk.id,
                    "capacity": format_quantity(disk.size_mib * MIB),
                    "phase": "Attached" if disk.attached_to else "Detached",
                    **({"attachedTo": disk.attached_to} if disk.attached_to else {}),
                },
            }
        for name, record in wanted.items():
            if self.disk_records.get(name) == record:
                continue
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
            if name not in self.disk_records:  # created, or the one already there (409)
                stored = await kube.create("persistentdisks", namespace, body)
            if stored is None or stored.get("spec") != body["spec"]:
                patch = {"spec": body["spec"]}
                stored = await kube.patch("persistentdisks", namespace, name, patch)
            generation = stored["metadata"]["generation"]
            status = {
                **record["status"],
                "observedGeneration": generation,
                "conditions": disk_conditions(
                    self.disk_conditions.get(name, []), record["status"], generation
                ),
            }
            await kube.patch_status("persistentdisks", namespace, name, status)
            self.disk_conditions[name] = status["conditions"]
            self.disk_records[name] = record
        gone = [n for n in self.disk_records if n not in wanted]
        for name in gone:
            # Its instance was scaled away. A Retain disk still exists: keep its record.
            if template is None or template.reclaim_policy == "Delete":
                await kube.delete("persistentdisks", namespace, name)
                del self.disk_records[name]

    async def teardown(self) -> None:
        policy = self.job.spec.persistent_disk
        keep_disks = policy is not None and policy.reclaim_policy == "Retain"
        uid = self.job.metadata.uid or ""

        def teardown() -> None:
            with _pass_lock(uid):
                _torn_down.add(uid)
                self.reconciler.teardown(keep_disks)

        await asyncio.to_thread(teardown)

    def close(self) -> None:
        self.watchers.stop()


async def _read_secrets(job: Job, namespace: str) -> dict[str, dict[str, str]]:
    secrets: dict[str, dict[str, str]] = {}
    for name in secret_names(job):
        try:
            secrets[name] = await kube.read_secret(namespace, name)
        except kube.ApiException as error:
            if error.status != 404:
                raise
    return secrets


async def _upstream_starts(job: Job) -> dict[str, float]:
    """Latest start of every cross-job upstream container, read from its Job's status."""
    deployment = job.metadata.labels.get("dockyard.dev/deployment")
    namespace = job.metadata.namespace or ""
    wanted = {d for c in job.spec.containers for d in c.depends_on if "/" in d}
    starts: dict[str, float] = {}
    for upstream_job in sorted({d.split("/", 1)[0] for d in wanted}):
        name = f"{deployment}-{upstream_job}" if deployment else upstream_job
        body = await kube.get("jobs", namespace, name)
        if body is None:
            continue
        for instance in (body.get("status") or {}).get("instances", []):
            for container in instance.get("containers", []):
                key = f"{upstream_job}/{container['name']}"
                started = container.get("startedAt")
                if key in wanted and started:
                    stamp = datetime.fromisoformat(started).timestamp()
                    starts[key] = max(starts.get(key, 0.0), stamp)
    return starts


async def _make_provider(config: ProviderConfig) -> Provider:
    try:
        return await asyncio.to_thread(_provider, _freeze(config))
    except PermanentError as error:
        raise kopf.PermanentError(str(error)) from error
    except ProviderError as error:
        raise kopf.TemporaryError(str(error), delay=10) from error


async def provider_for(spec: ProviderSpec, namespace: str) -> Provider:
    """The provider a spec names, with credentials from its Secret."""
    secrets: dict[str, dict[str, str]] = {}
    ref = spec.credentials_secret_ref
    if ref is not None:
        secrets[ref.name] = await kube.read_secret(namespace, ref.name)
    try:
        config = provider_config(spec, secrets)
    except PermanentError as error:
        raise kopf.PermanentError(str(error)) from error
    return await _make_provider(config)


async def build_context(
    body: Mapping[str, Any], previous: ReconcileContext | None
) -> ReconcileContext:
    job = parse_job(body)
    namespace = job.metadata.namespace or ""
    secrets = await _read_secrets(job, namespace)
    protect(value for secret in secrets.values() for value in secret.values())
    try:
        config = provider_config(job.spec.provider, secrets)
    except PermanentError as error:
        raise kopf.PermanentError(str(error)) from error
    provider = await _make_provider(config)
    if previous is not None and previous.world.provider is provider:
        previous.job, previous.secrets = job, secrets
        return previous
    if previous is not None:
        previous.close()
    identity = JobIdentity(
        namespace=namespace,
        name=job.metadata.name,
        uid=job.metadata.uid or "",
        deployment=job.metadata.labels.get("dockyard.dev/deployment", ""),
        job=job.job_name,
    )
    image_source = _host_docker() if config.type == "local" else None
    world = JobWorld(provider, identity, image_source, disk_helper_image(config.type))
    watchers = WatcherSet(
        provider.docker_client,
        lambda _vm, _what: wake_threadsafe(namespace, job.metadata.name),
    )
    context = ReconcileContext(job, world, watchers)
    context.secrets = secrets
    return context


def disk_helper_image(provider_type: str) -> str:
    """The image of the short-lived disk helper on VMs (mount, grow, migration copy): any image
    with ``sh`` and ``nsenter``. Local VMs take it from the host, which has no registry: there it
    is the busybox image the bring-up builds. Air-gapped clouds set their registry's copy."""
    default = LOCAL_HELPER_IMAGE if provider_type == "local" else diskfs.DEFAULT_HELPER_IMAGE
    return os.environ.get("DOCKYARD_DISK_HELPER_IMAGE") or default


async def publish_job_status(body: kopf.Body, report: JobReport, context: ReconcileContext) -> None:
    """An Event per action; the status patched only when it differs from what is stored."""
    job = parse_job(body)
    for action in report.actions:
        post = kopf.info if action.ok else kopf.warn
        detail = f" ({action.message})" if action.message else ""
        post(
            body,
            reason=action.kind,
            message=redact(f"instance {action.index}: {action.target}: {action.reason}{detail}"),
        )
    namespace = job.metadata.namespace or ""
    deployment = job.metadata.labels.get("dockyard.dev/deployment", "")
    for (index, container), (count, oom) in sorted(report.engine_restarts.items()):
        why = "OOM-killed" if oom else "exited"
        times = "once" if count == 1 else f"{count} times"
        kopf.warn(
            body,
            reason="ContainerCrashed",
            message=f"instance {index}: {container}: {why}; the engine restarted it {times}",
        )
        metrics.record_engine_restarts(namespace, deployment, job.job_name, container, count, oom)
    for action in report.actions:
        metrics.record_action(
            namespace,
            deployment,
            job.job_name,
            action.kind,
            action.target,
            action.reason,
            action.ok,
            provider=job.spec.provider.type,
        )
    metrics.set_crash_looping(
        namespace,
        deployment,
        job.job_name,
        containers=[c.name for c in job.spec.containers],
        looping={name for _, name in report.crash_looping},
    )
    status = job_status(
        job,
        report,
        now=datetime.now(UTC),
        previous=context.last_status,
        pending_reasons=context.pending_reasons,
    )
    metrics.set_job_state(
        namespace,
        deployment,
        job.job_name,
        ready=status["readyInstances"],
        total=job.spec.instances,
        halted=bool(report.stalled),
        meltdown=bool(report.meltdown),
    )
    current = context.last_status or {
        k: v for k, v in (body.get("status") or {}).items() if k != "kopf"
    }
    status = _redacted(status)
    if status != current:
        await kube.patch_status("jobs", job.metadata.namespace or "", job.metadata.name, status)
    context.last_status = status


def _redacted(value: Any) -> Any:
    """``value`` (a status) with secret values masked in every string it holds."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    return value
