"""What a Job's daemon keeps between passes — its reconciler, watchers, cached Secrets, status
publisher — and how a pass's results reach the outside: Events, metrics, the board of upstream
reports, and the status (offered to the publisher, written off the path of the actions).

A pass reads nothing from the API: the Job comes from kopf's live body (the watch), Secrets from
a cache refreshed in the background, upstreams from the fleet's board.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import docker
import kopf

from dockyard.api.models import Job, ProviderSpec, parse_job
from dockyard.api.policy import Level, violations
from dockyard.api.quantities import parse_duration
from dockyard.api.validation import validate_spec
from dockyard.handlers import autosnapshots, kube
from dockyard.handlers.desired import (
    ACCEPT_DISK_LOSS,
    SnapshotSeen,
    commands_fingerprint,
    config_map_names,
    cross_job_upstreams,
    instance_commands,
    job_desired,
    known_disks,
    known_vms,
    provider_config,
    restore_source,
    resurrection_policy,
    secret_names,
)
from dockyard.handlers.disks import DiskRecords
from dockyard.handlers.fleet import Fleet, Group, JobRef
from dockyard.handlers.publisher import Publisher
from dockyard.handlers.reporting import post_report
from dockyard.handlers.status import job_status, starting_status
from dockyard.monitor.watch import WatcherSet
from dockyard.planning import ContainerKey
from dockyard.planning.cascade import reports_of
from dockyard.planning.verdict import UpstreamState
from dockyard.providers import PermanentError, Provider, ProviderError
from dockyard.providers.base import ProviderConfig
from dockyard.providers.redaction import protect, redact
from dockyard.runtime import diskfs
from dockyard.runtime.executor import ActionPool
from dockyard.runtime.reconciler import (
    DiskFate,
    JobReconciler,
    JobReport,
    PassInputs,
    planning_job,
)
from dockyard.runtime.world import JobIdentity, JobWorld

log = logging.getLogger(__name__)

DEPLOYMENT_LABEL = "dockyard.dev/deployment"
LOCAL_HELPER_IMAGE = "dockyard/busybox:1"  # built by hack/docker-up.sh
SECRETS_REFRESH = 30.0  # seconds between background re-reads of a Job's Secrets
MIN_REQUEUE = 0.05  # a pass that leaves work runs again at once, but never in a hot loop


class JobRuntime:
    """One Job's daemon state. Made by :meth:`start`; a pass is :meth:`run_pass`."""

    def __init__(self, fleet: Fleet, job: Job, world: JobWorld, pool: ActionPool) -> None:
        self.fleet = fleet
        self.job = job
        self.world = world
        self.ref: JobRef = (job.metadata.namespace or "", job.metadata.name)
        self.group: Group = (self.ref[0], job.metadata.labels.get(DEPLOYMENT_LABEL, ""))
        self.reconciler = JobReconciler(world, pool)
        self.woken = asyncio.Event()
        self.watchers = WatcherSet(world.provider.docker_client, lambda _vm, _what: self.wake())
        self.secrets: dict[str, dict[str, str]] = {}
        self.config_maps: dict[str, dict[str, str]] = {}  # read and refreshed with the Secrets
        self._config_stale = False  # a ConfigMap the files read changed (the watch said)
        #: The namespace's labels (its policy level), re-read with the Secrets; None: unread.
        self.namespace_labels: dict[str, str] | None = None
        self._secrets_read = (0.0, -1)  # (monotonic, generation) of the last read
        self._refreshing: asyncio.Task[None] | None = None
        stored = {
            k: v
            for k, v in job.status.model_dump(mode="json", by_alias=True, exclude_none=True).items()
            if k != "kopf"
        }
        self.last_status: dict[str, Any] = stored
        self.pending_reasons: dict[tuple[int, str], str] = {}
        self.last_report: JobReport | None = None
        self.commands_seen = ""  # the operator commands (annotations) the last pass acted on
        self.status = Publisher(self._write_status, f"status of Job {self.ref[1]}", stored)
        self.disks = DiskRecords(job, world.identity)
        fleet.register(self.ref, self.woken.set)

    # --- lifecycle ------------------------------------------------------------------------------

    @classmethod
    async def start(cls, fleet: Fleet, body: Mapping[str, Any]) -> JobRuntime:
        job = parse_job(body)
        secrets = await _read_secrets(job)
        world, pool = await _world(fleet, job, secrets)
        runtime = cls(fleet, job, world, pool)
        runtime.secrets = secrets
        runtime.config_maps = await _read_config_maps(job)
        runtime._secrets_read = (time.monotonic(), job.metadata.generation or 0)
        runtime.namespace_labels = await cached_namespace_labels(
            fleet, job.metadata.namespace or ""
        )
        if job.status.observed_generation != job.metadata.generation:
            runtime._offer(starting_status(job, datetime.now(UTC)))
        return runtime

    def wake(self) -> None:
        """From any thread: run a pass soon."""
        self.fleet.wake(self.ref)

    @property
    def closed(self) -> bool:
        return self.reconciler.closed

    def close(self) -> None:
        """Instant (kopf cancels a Job's daemon when the Job is deleted, and waits for it)."""
        self.fleet.unregister(self.ref)
        self.watchers.stop()
        if self._refreshing is not None:
            self._refreshing.cancel()
        self.status.close()
        self.disks.close()

    async def teardown(self, disk_records: Mapping[str, str]) -> None:
        """Containers and VMs go; disks stay (Retain), are orphaned for their retention or
        deleted (Delete). A pass in flight starts nothing more; its VM and disk actions in
        flight finish first. ``disk_records``: the Job's PersistentDisk records (name -> id)."""
        policy = self.job.spec.persistent_disk
        retention = parse_duration(policy.orphan_retention) if policy else 0.0
        fate: DiskFate = "delete"
        if policy is not None and policy.reclaim_policy == "Retain":
            fate = "keep"
        elif retention > 0:
            fate = "orphan"
        indices = sorted(known_disks(self.job, disk_records))
        # What is missing (a Secret gone) only leaves a value empty: the drains still run.
        desired = job_desired(self.job, self.secrets, config_maps=self.config_maps, problems=[])
        await self.reconciler.teardown(fate, indices, desired)
        self.woken.set()  # the daemon sees it is closed and ends
        if fate == "keep":
            await self.disks.detached()
        elif fate == "orphan":
            await self.disks.orphaned(retention)
        name = self.job.job_name
        self.fleet.withdraw(
            self.group, [ContainerKey(name, c.name) for c in self.job.spec.containers]
        )

    async def provider_current(self, body: Mapping[str, Any]) -> bool:
        """False when the spec or its credentials now name another provider configuration:
        the daemon then starts over with a new runtime."""
        job = parse_job(body)
        await self._refresh_secrets(job)
        try:
            config = provider_config(job.spec.provider, self.secrets)
        except PermanentError as error:
            raise kopf.PermanentError(str(error)) from error
        provider, _ = await _make_provider(self.fleet, config)
        return provider is self.world.provider

    # --- between passes -------------------------------------------------------------------------

    @property
    def settled(self) -> bool:
        """The last pass had nothing left to do and nothing to look at again soon."""
        report = self.last_report
        return report is not None and report.verdict.requeue_after is None

    async def engines_answer(self) -> bool:
        """The cheap look between full observations: every VM's event stream is open and its
        engine answers a ping within ENGINE_PING_TIMEOUT."""
        if not self.watchers.all_connected():
            return False

        def ping(vm_id: str) -> bool:
            return bool(self.world.engine(vm_id).client.ping())

        for vm_id in self.watchers.vm_ids():
            try:
                answered = await asyncio.wait_for(
                    self.reconciler.pool.look(functools.partial(ping, vm_id)),
                    ENGINE_PING_TIMEOUT,
                )
            except Exception as error:  # a hung or gone engine: a full pass finds out
                log.info("engine of VM %s did not answer a ping: %s", vm_id, error)
                return False
            if not answered:
                return False
        return True

    # --- a pass ---------------------------------------------------------------------------------

    async def run_pass(
        self,
        body: Mapping[str, Any],
        disk_records: Mapping[str, str],
        snapshots: Mapping[str, SnapshotSeen] | None = None,
    ) -> float:
        """One observe → decide → execute → report pass; the seconds until the next one.
        ``disk_records``: this Job's PersistentDisk records (name -> disk id); ``snapshots``:
        the namespace's DiskSnapshots by name — both from the watch."""
        job = parse_job(body)
        self.job = job
        self.commands_seen = commands_fingerprint(job.metadata.annotations)
        restore = restore_source(job, snapshots or {})
        upstreams = self.fleet.upstreams(self.group, self.ref, cross_job_upstreams(job))
        links = {key: state.endpoints for key, state in upstreams.items()}
        missing: list[str] = []  # references to Secrets or ConfigMaps that are not there
        desired = job_desired(
            job,
            self.secrets,
            restore.snapshot_id,
            self.host_paths_within(),
            links,
            self.config_maps,
            missing,
        )
        # An upstream whose Job has not reported yet: its dependents' links are not known, so
        # nothing (re)starts for it until it has (no container recreated with an empty list).
        for key in cross_job_upstreams(job) - set(upstreams):
            upstreams[key] = UpstreamState(None, settled=False)
        inputs = PassInputs(
            resurrection=resurrection_policy(job),
            known_vms=known_vms(job),
            upstreams=upstreams,
            known_disks=known_disks(job, disk_records),
            restore_problem=restore.problem,
            restore_stalled=restore.stalled,
            spec_problem="; ".join(filter(None, [spec_problem(job), *missing])),
            policy_problem=self.policy_problem(job),
        )
        report = await self.reconciler.reconcile(desired, inputs, lambda r: self._publish(job, r))
        self.last_report = report
        await self._consume_accepted_losses(job, report)
        await autosnapshots.register(job, self.world.identity, report.records)
        self.watchers.sync(
            i.vm_id for i in report.observation.instances.values() if i.vm_id and i.has_vm
        )
        self._publish(job, report)
        post_report(body, job, report)
        if report.verdict.requeue_after is None:
            return DRIFT_INTERVAL
        return max(report.verdict.requeue_after, MIN_REQUEUE)

    def _publish(self, job: Job, report: JobReport) -> None:
        """The board, the status and the disk records after a decision (before its actions
        run, when ``report.acting``, and after)."""
        planned = planning_job(
            job_desired(job, self.secrets, config_maps=self.config_maps, problems=[])
        )
        self.fleet.report(
            self.group, self.ref, reports_of(planned, report.verdict, report.upstreams_seen)
        )
        status = job_status(job, report, datetime.now(UTC), self.last_status, self.pending_reasons)
        self._offer(status)
        if not report.acting:
            self.disks.offer(job, report)

    async def _consume_accepted_losses(self, job: Job, report: JobReport) -> None:
        """An accepted disk loss is accepted once: the blank disk made, the index leaves the
        annotation (should that disk vanish too, it is missing again, not silently replaced)."""
        accepted = job.metadata.annotations.get(ACCEPT_DISK_LOSS)
        made = {str(r.index) for r in report.records if r.kind == "CreatedDisk" and r.ok}
        if not accepted or not made & {p.strip() for p in accepted.split(",")}:
            return
        rest = ",".join(p.strip() for p in accepted.split(",") if p.strip() not in made)
        patch = {"metadata": {"annotations": {ACCEPT_DISK_LOSS: rest or None}}}
        try:
            await kube.patch("jobs", self.ref[0], self.ref[1], patch)
        except kube.ApiException as error:
            log.warning(
                "clearing %s of Job %s: %s", ACCEPT_DISK_LOSS, self.ref[1], kube.describe(error)
            )

    def _offer(self, status: dict[str, Any]) -> None:
        status = _redacted(status)
        self.last_status = status
        self.status.offer(status)

    async def _write_status(self, status: dict[str, Any]) -> None:
        await kube.patch_status("jobs", self.ref[0], self.ref[1], status)

    def host_paths_within(self) -> tuple[str, ...]:
        """Where host paths may lead under the namespace's level (empty: anywhere)."""
        policy = self.fleet.policy
        if policy.level_of(self.namespace_labels) is Level.PRIVILEGED:
            return ()
        return policy.allowed_host_paths or ("/nowhere",)

    def policy_problem(self, job: Job) -> str:
        """What the namespace's policy level refuses in the Job, naming fields and the level."""
        policy = self.fleet.policy
        level = policy.level_of(self.namespace_labels)
        return "; ".join(str(e) for e in violations(job.spec, level, policy))

    # --- Secrets --------------------------------------------------------------------------------

    async def _refresh_secrets(self, job: Job) -> None:
        """A new spec may name new Secrets: read them now. Otherwise the cache serves and is
        re-read in the background now and then (a changed value wakes the daemon)."""
        generation = job.metadata.generation or 0
        read_at, read_for = self._secrets_read
        self.fleet.read_config_maps(self.ref, config_map_names(job), self._config_changed)
        if self._config_stale:
            self._config_stale = False
            self.config_maps = await _read_config_maps(job)
        if (
            generation != read_for
            or not secret_names(job) <= set(self.secrets)
            or not config_map_names(job) <= set(self.config_maps)
        ):
            self._set_secrets(await _read_secrets(job), generation)
            self.config_maps = await _read_config_maps(job)
        elif time.monotonic() - read_at >= SECRETS_REFRESH and self._refreshing is None:
            self._refreshing = asyncio.create_task(self._refresh_in_background(job))

    async def _refresh_in_background(self, job: Job) -> None:
        # ConfigMaps are not re-read here: their watch tells when one changes.
        try:
            fresh = await _read_secrets(job)
            labels = await cached_namespace_labels(self.fleet, job.metadata.namespace or "")
        except Exception as error:  # the API is away: the cache serves on
            log.warning("re-reading the Secrets of Job %s failed: %s", self.ref[1], error)
            self._secrets_read = (time.monotonic(), self._secrets_read[1])
        else:
            changed = (fresh, labels) != (self.secrets, self.namespace_labels)
            self._set_secrets(fresh, self._secrets_read[1])
            self.namespace_labels = labels
            if changed:
                self.woken.set()
        finally:
            self._refreshing = None

    def _config_changed(self) -> None:
        self._config_stale = True
        self.wake()

    def _set_secrets(self, secrets: dict[str, dict[str, str]], generation: int) -> None:
        protect(value for secret in secrets.values() for value in secret.values())
        self.secrets = secrets
        self._secrets_read = (time.monotonic(), generation)


DRIFT_INTERVAL = 15.0  # seconds between looks at a settled Job when nothing wakes the daemon
# A settled Job whose VMs' event streams are open and whose engines answer a ping is observed
# in full only this often: a dead container or VM is heard through its stream at once, a hung
# engine fails the ping. (Full observations of 100 VMs every 15 s cost most of the operator's
# CPU at steady state.)
FULL_DRIFT_INTERVAL = 60.0
ENGINE_PING_TIMEOUT = 5.0


def spec_problem(job: Job) -> str:
    """What only the operator can find wrong with a Job (its spec, its command annotations),
    naming the field: nothing is done for it until it is mended."""
    problems = [str(e) for e in validate_spec(job.spec, job_name=job.metadata.name)]
    return "; ".join(problems + instance_commands(job)[2])


async def cached_namespace_labels(fleet: Fleet, namespace: str) -> dict[str, str] | None:
    """A namespace's labels; None when they cannot be read (the default level then). One read
    per namespace and refresh period, whatever the number of its Jobs and Deployments."""
    cached = fleet.namespace_labels.get(namespace)
    if cached is not None and time.monotonic() - cached[0] < SECRETS_REFRESH / 2:
        return cached[1]
    try:
        labels = await kube.namespace_labels(namespace)
    except kube.ApiException as error:
        log.warning("reading namespace %s for its policy level: %s", namespace, error)
        return None
    fleet.namespace_labels[namespace] = (time.monotonic(), labels)
    return labels


async def _read_config_maps(job: Job) -> dict[str, dict[str, str]]:
    return await _read_each(job, config_map_names(job), kube.read_config_map)


async def _read_secrets(job: Job) -> dict[str, dict[str, str]]:
    secrets = await _read_each(job, secret_names(job), kube.read_secret)
    protect(value for secret in secrets.values() for value in secret.values())
    return secrets


async def _read_each(
    job: Job, names: set[str], read: Callable[[str, str], Awaitable[dict[str, str]]]
) -> dict[str, dict[str, str]]:
    """Each named object of the Job's namespace (name -> data); those not there are left out."""
    namespace = job.metadata.namespace or ""
    found: dict[str, dict[str, str]] = {}
    for name in names:
        try:
            found[name] = await read(namespace, name)
        except kube.ApiException as error:
            if error.status != 404:
                raise
    return found


async def _world(
    fleet: Fleet, job: Job, secrets: dict[str, dict[str, str]]
) -> tuple[JobWorld, ActionPool]:
    try:
        config = provider_config(job.spec.provider, secrets)
    except PermanentError as error:
        raise kopf.PermanentError(str(error)) from error
    provider, pool = await _make_provider(fleet, config)
    identity = JobIdentity(
        namespace=job.metadata.namespace or "",
        name=job.metadata.name,
        uid=job.metadata.uid or "",
        deployment=job.metadata.labels.get(DEPLOYMENT_LABEL, ""),
        job=job.job_name,
    )
    image_source = _host_docker() if config.type == "local" else None
    return JobWorld(provider, identity, image_source, disk_helper_image(config.type)), pool


async def _make_provider(fleet: Fleet, config: ProviderConfig) -> tuple[Provider, ActionPool]:
    config = await fleet.engine_ca.with_engine_ca(config)
    try:
        return await asyncio.to_thread(fleet.provider, _freeze(config))
    except PermanentError as error:
        raise kopf.PermanentError(str(error)) from error
    except ProviderError as error:
        raise kopf.TemporaryError(str(error), delay=10) from error


async def provider_for(fleet: Fleet, spec: ProviderSpec, namespace: str) -> Provider:
    """The provider a spec names, with credentials from its Secret — for an action about to
    run outside a Job's pass (a disk record's, a snapshot's): only while this replica is active."""
    if not fleet.fence():
        raise kopf.TemporaryError("not the active operator (fenced)", delay=5)
    secrets: dict[str, dict[str, str]] = {}
    ref = spec.credentials_secret_ref
    if ref is not None:
        secrets[ref.name] = await kube.read_secret(namespace, ref.name)
    try:
        config = provider_config(spec, secrets)
    except PermanentError as error:
        raise kopf.PermanentError(str(error)) from error
    provider, _ = await _make_provider(fleet, config)
    return provider


def _freeze(config: ProviderConfig) -> ProviderConfig:
    # ProviderConfig holds Mappings; make it hashable for the fleet's cache.
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


def disk_helper_image(provider_type: str) -> str:
    """The image of the short-lived disk helper on VMs (mount, grow, migration copy): any image
    with ``sh`` and ``nsenter``. Local VMs take it from the host, which has no registry: there it
    is the busybox image the bring-up builds. Air-gapped clouds set their registry's copy."""
    default = LOCAL_HELPER_IMAGE if provider_type == "local" else diskfs.DEFAULT_HELPER_IMAGE
    return os.environ.get("DOCKYARD_DISK_HELPER_IMAGE") or default


def _redacted(value: Any) -> Any:
    """``value`` (a status) with secret values masked in every string it holds."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    return value
