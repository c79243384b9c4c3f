"""From a Job object (the API model) to what the runtime converges on: the runtime never sees
the API models."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from dockyard.api.containers import Container, HealthCheck, LifecycleHook
from dockyard.api.models import Job, ProviderSpec
from dockyard.api.quantities import (
    format_quantity,
    parse_duration,
    parse_quantity,
    parse_watch_time,
    resolve_max_in_flight,
)
from dockyard.planning import ContainerKey, InstanceCommands, parse_dependency
from dockyard.planning.decide import ResurrectionPolicy
from dockyard.providers import PermanentError, ProviderConfig
from dockyard.providers.redaction import protect
from dockyard.runtime.engine import ContainerConfig, Pull
from dockyard.runtime.reconciler import DiskWant, JobDesired
from dockyard.runtime.world import BindVolume, ContainerWant, Hook, VolumeMount, link

MIB = 1024 * 1024

Secrets = Mapping[str, Mapping[str, str]]  # Secret name -> decoded data


def secret_names(job: Job) -> set[str]:
    """Secrets the Job reads: env valueFrom, files and provider credentials."""
    names = {
        env.value_from.secret_key_ref.name
        for container in job.spec.containers
        for env in container.env
        if env.value_from is not None
    }
    names |= {f.secret_ref.name for c in job.spec.containers for f in c.files if f.secret_ref}
    names |= {ref.name for ref in job.spec.image_pull_secrets}
    if job.spec.provider.credentials_secret_ref is not None:
        names.add(job.spec.provider.credentials_secret_ref.name)
    return names


def config_map_names(job: Job) -> set[str]:
    """ConfigMaps the Job reads: files."""
    return {f.config_map_ref.name for c in job.spec.containers for f in c.files if f.config_map_ref}


def _missing(problem: str, problems: list[str] | None) -> str:
    """A reference that is not there: an error, or (``problems`` given) said there and an
    empty value in its place (the Job is then Stalled naming it, and nothing runs)."""
    if problems is None:
        raise PermanentError(problem)
    problems.append(problem)
    return ""


def _files(
    container: Container,
    field: str,
    secrets: Secrets,
    config_maps: Secrets,
    problems: list[str] | None = None,
) -> tuple[tuple[str, str, int], ...]:
    files = []
    for number, entry in enumerate(container.files):
        source, ref, kind = (
            (config_maps, entry.config_map_ref, "configMapRef")
            if entry.config_map_ref is not None
            else (secrets, entry.secret_ref, "secretRef")
        )
        assert ref is not None
        content = source.get(ref.name, {}).get(ref.key)
        if content is None:
            what = "ConfigMap" if kind == "configMapRef" else "Secret"
            content = _missing(
                f"{field}.files[{number}].{kind}: key {ref.key!r} of {what} {ref.name!r} "
                "does not exist",
                problems,
            )
        files.append((entry.path, content, entry.mode))
    return tuple(files)


DOCKER_CONFIG_KEY = ".dockerconfigjson"  # the key of a kubernetes.io/dockerconfigjson Secret


def registry_auths(
    job: Job, secrets: Secrets, problems: list[str] | None = None
) -> dict[str, dict[str, str]]:
    """registry host -> {username, password}, from the Job's imagePullSecrets (the first
    Secret that names a registry wins, as the kubelet does). Credentials: masked in logs."""
    auths: dict[str, dict[str, str]] = {}
    for number, ref in enumerate(job.spec.image_pull_secrets):
        field = f"spec.imagePullSecrets[{number}]"
        text = secrets.get(ref.name, {}).get(DOCKER_CONFIG_KEY)
        if text is None:
            _missing(
                f"{field}: Secret {ref.name!r} does not exist or has no {DOCKER_CONFIG_KEY} "
                "(make it with kubectl create secret docker-registry)",
                problems,
            )
            continue
        try:
            entries = json.loads(text).get("auths") or {}
        except (ValueError, AttributeError):
            _missing(f"{field}: Secret {ref.name!r}: {DOCKER_CONFIG_KEY} is not JSON", problems)
            continue
        for server, entry in entries.items():
            host = server.removeprefix("https://").removeprefix("http://").split("/")[0]
            user, password = _credentials(entry)
            if host and user and host not in auths:
                auths[host] = {"username": user, "password": password}
                protect([password])
    return auths


def _credentials(entry: Mapping[str, str]) -> tuple[str, str]:
    if entry.get("username"):
        return entry["username"], entry.get("password", "")
    user, _, password = base64.b64decode(entry.get("auth", "")).decode().partition(":")
    return user, password


def provider_config(spec: ProviderSpec, secrets: Secrets) -> ProviderConfig:
    credentials: dict[str, str] = {}
    ref = spec.credentials_secret_ref
    if ref is not None:
        data = secrets.get(ref.name)
        if data is None:
            raise PermanentError(
                f"spec.provider.credentialsSecretRef: Secret {ref.name!r} does not exist"
            )
        mapping = ref.keys or {key: key for key in data}
        credentials = {ours: data[theirs] for ours, theirs in mapping.items() if theirs in data}
    return ProviderConfig(
        type=spec.type,
        region=spec.region or "",
        zone=spec.zone or "",
        endpoint=spec.endpoint or "",
        options=dict(spec.options),
        credentials=credentials,
    )


def _env(
    container: Container, field: str, secrets: Secrets, problems: list[str] | None = None
) -> dict[str, str]:
    env: dict[str, str] = {}
    for number, var in enumerate(container.env):
        if var.value is not None:
            env[var.name] = var.value
            continue
        assert var.value_from is not None
        ref = var.value_from.secret_key_ref
        value = secrets.get(ref.name, {}).get(ref.key)
        if value is None:
            value = _missing(
                f"{field}.env[{number}].valueFrom.secretKeyRef: "
                f"key {ref.key!r} of Secret {ref.name!r} does not exist",
                problems,
            )
        env[var.name] = value
    return env


# tcp and http probes run inside the container with the stemcell's static busybox, bound in
# read-only, so they work whatever the image has (or lacks).
PROBE_TOOL = "/.dockyard/busybox"
PROBE_BIND = f"/bin/busybox:{PROBE_TOOL}:ro"


def _healthcheck(check: HealthCheck | None) -> dict[str, object]:
    if check is None:
        return {}
    timeout = max(int(parse_duration(check.timeout)), 1)
    binds: tuple[str, ...] = ()
    if check.exec is not None:
        command = list(check.exec.command)
    elif check.tcp is not None:
        command = [PROBE_TOOL, "nc", "-w", str(timeout), "127.0.0.1", str(check.tcp.port)]
        binds = (PROBE_BIND,)
    else:
        assert check.http is not None
        url = f"http://127.0.0.1:{check.http.port}{check.http.path}"
        # No -T: the engine times the check out (and busybox 1.35's wget crashes with it).
        command = [PROBE_TOOL, "wget", "-q", "-O", "/dev/null", url]
        binds = (PROBE_BIND,)
    ns = 1_000_000_000
    return {
        "binds": binds,
        "healthcheck_command": tuple(command),
        "healthcheck_interval_ns": int(parse_duration(check.interval) * ns),
        "healthcheck_timeout_ns": int(parse_duration(check.timeout) * ns),
        "healthcheck_retries": check.retries,
        "healthcheck_start_period_ns": int(parse_duration(check.start_period) * ns),
    }


def _hook(hook: LifecycleHook | None) -> Hook | None:
    if hook is None:
        return None
    return Hook(tuple(hook.exec.command), parse_duration(hook.timeout))


Links = Mapping[ContainerKey, tuple[str, ...]]  # upstream in another job -> its endpoints


def _links(
    container: Container, job: str, own: Mapping[str, tuple[int, ...]], links: Links
) -> tuple[
    dict[str, str], tuple[tuple[str, str, int], ...], tuple[tuple[str, tuple[int, ...]], ...]
]:
    """A container's links: to other jobs' upstreams as env and files of its config (so a
    change of their addresses recreates it), and its own job's (resolved on its VM)."""
    env: dict[str, str] = {}
    files: list[tuple[str, str, int]] = []
    local: list[tuple[str, tuple[int, ...]]] = []
    for reference in container.upstream_refs:
        key = parse_dependency(reference, job)
        if key.job == job:
            local.append((key.container, own.get(key.container, ())))
            continue
        endpoints = links.get(key, ())
        name, value, path = link(key.job, key.container, endpoints)
        env[name] = value
        files.append((path, "".join(f"{e}\n" for e in endpoints), 0o644))
    return env, tuple(files), tuple(local)


def container_want(
    container: Container,
    field: str,
    secrets: Secrets,
    host_paths_within: tuple[str, ...] = (),
    job: str = "",
    own: Mapping[str, tuple[int, ...]] | None = None,
    links: Links | None = None,
    config_maps: Secrets | None = None,
    problems: list[str] | None = None,
    auths: Mapping[str, Mapping[str, str]] | None = None,
) -> ContainerWant:
    """``job``: its job's name; ``own``: the host ports each container of that job publishes;
    ``links``: the endpoints of its upstreams in other jobs; ``config_maps``: the ConfigMaps
    its files read (name -> data)."""
    resources = container.resources
    link_env, link_files, local_links = _links(container, job, own or {}, links or {})
    config = ContainerConfig(
        name=container.name,
        image=container.image,
        entrypoint=tuple(container.command) or None,
        command=tuple(container.args) or None,
        env={**_env(container, field, secrets, problems), **link_env},
        ports=tuple((p.container_port, p.host_port, p.protocol) for p in container.ports),
        restart_policy=container.restart_policy,
        memory_bytes=parse_quantity(resources.memory) if resources and resources.memory else None,
        cpu_shares=resources.cpu_shares if resources else None,
        privileged=container.privileged,
        cap_add=tuple(container.cap_add),
        cap_drop=tuple(container.cap_drop),
        working_dir=container.working_dir,
        user=container.user,
        stop_signal=container.stop_signal,
        stop_timeout=math.ceil(parse_duration(container.stop_grace_period))
        if container.stop_grace_period is not None
        else None,
        labels=dict(container.labels),
        files=_files(container, field, secrets, config_maps or {}, problems) + link_files,
        **_healthcheck(container.health_check),  # type: ignore[arg-type]
    )
    return ContainerWant(
        config=config,
        depends_on=tuple(container.upstream_refs),
        conditions=tuple((r, c) for r, c in container.dependencies() if c != "Started"),
        volumes=tuple(
            VolumeMount(sub_path=v.sub_path or v.name or "", mount_path=v.mount_path)
            for v in container.volumes
        ),
        bind_volumes=tuple(
            BindVolume(host_path=b.host_path or "", mount_path=b.mount_path, read_only=b.read_only)
            for b in container.bind_volumes
        ),
        pre_stop=_hook(container.lifecycle.pre_stop if container.lifecycle else None),
        post_start=_hook(container.lifecycle.post_start if container.lifecycle else None),
        host_paths_within=host_paths_within,
        local_links=local_links,
        pull=Pull(container.image_pull_policy, auths or {}),
    )


def job_desired(
    job: Job,
    secrets: Secrets,
    restore_snapshot: str = "",
    host_paths_within: tuple[str, ...] = (),
    links: Links | None = None,
    config_maps: Secrets | None = None,
    problems: list[str] | None = None,
) -> JobDesired:
    """``restore_snapshot``: the provider snapshot ``persistentDisk.restoreFrom`` names;
    ``host_paths_within``: where bind volumes' host paths may lead (the namespace's policy);
    ``links``: where its upstreams in other jobs are reached (their Jobs report it)."""
    spec = job.spec
    disk = None
    if spec.persistent_disk is not None:
        disk = DiskWant(
            size_mib=-(-spec.persistent_disk.size_bytes // MIB),
            disk_type=spec.persistent_disk.type or "",
            reclaim_policy=spec.persistent_disk.reclaim_policy,
            orphan_retention=parse_duration(spec.persistent_disk.orphan_retention),
            restore_snapshot=restore_snapshot,
        )
    update = spec.update
    watch = update.update_watch_time
    commands, paused, _ = instance_commands(job)
    own = {c.name: tuple(p.host_port for p in c.ports if p.host_port) for c in spec.containers}
    auths = registry_auths(job, secrets, problems)
    return JobDesired(
        instances=spec.instances,
        containers=tuple(
            container_want(
                c,
                f"spec.containers[{n}]",
                secrets,
                host_paths_within,
                job.job_name,
                own,
                links,
                config_maps,
                problems,
                auths,
            )
            for n, c in enumerate(spec.containers)
        ),
        stemcell=spec.stemcell or "",
        machine_type=spec.vm_type or "",
        disk=disk,
        canaries=update.canaries,
        max_in_flight=resolve_max_in_flight(update.max_in_flight, max(spec.instances, 1)),
        watch_time=parse_watch_time(watch),
        canary_watch_time=parse_watch_time(update.canary_watch_time),
        generation=job.metadata.generation or 0,
        name=job.job_name,
        snapshot_before=update.snapshot_before,
        vm_strategy=update.vm_strategy,
        skip_drain=update.skip_drain,
        commands=commands,
        paused=paused,
    )


# Operator commands, kubectl-native: annotations on a Job (or on its Deployment, which copies
# the Deployment-wide ones to its Jobs). Times are RFC 3339, as `kubectl rollout restart`
# writes kubectl.kubernetes.io/restartedAt; index lists are "0,2".
PAUSED = "dockyard.dev/paused"  # "true": nothing is done
RESTARTED_AT = "dockyard.dev/restartedAt"  # every instance's containers restart once, rolling
RECREATED_AT = "dockyard.dev/recreatedAt"  # every instance gets a new VM (disk kept), rolling
STOPPED = "dockyard.dev/stopped"  # these instances' containers stop; their VMs stay
STOPPED_HARD = "dockyard.dev/stopped-hard"  # ...and their VMs go; their disks stay
IGNORED = "dockyard.dev/ignored"  # left out of rollouts and repairs
#: What a Deployment passes on to its Jobs (as :func:`passed_on` keys).
DEPLOYMENT_WIDE = (PAUSED, RESTARTED_AT, RECREATED_AT)
_FROM_DEPLOYMENT = "dockyard.dev/deployment."
_COMMAND_PREFIXES = (
    PAUSED,
    RESTARTED_AT,
    RECREATED_AT,
    STOPPED,
    STOPPED_HARD,
    IGNORED,
    _FROM_DEPLOYMENT,
)


def passed_on(annotation: str) -> str:
    """A Deployment-wide command on one of its Jobs: dockyard.dev/deployment.restartedAt"""
    return _FROM_DEPLOYMENT + annotation.removeprefix("dockyard.dev/")


def commands_fingerprint(annotations: Mapping[str, str] | None) -> str:
    """A short digest of the command annotations: a Job's status records the one its last
    pass acted on, so a Deployment can wait for its Jobs to have done what it passed on."""
    ours = sorted(
        (key, value)
        for key, value in (annotations or {}).items()
        if key.startswith(_COMMAND_PREFIXES)
    )
    return hashlib.sha256(repr(ours).encode()).hexdigest()[:12] if ours else ""


def instance_key(annotation: str, index: int) -> str:
    """The annotation for one instance: dockyard.dev/restartedAt.2"""
    return f"{annotation}.{index}"


def _when(annotations: Mapping[str, str], key: str, problems: list[str]) -> float | None:
    text = annotations.get(key)
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        problems.append(f'metadata.annotations["{key}"]: {text!r} is not an RFC 3339 time')
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return float(int(moment.timestamp()))  # whole seconds: VMs are tagged with them


def _indices(annotations: Mapping[str, str], key: str, problems: list[str]) -> frozenset[int]:
    parts = [p.strip() for p in annotations.get(key, "").split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        problems.append(
            f'metadata.annotations["{key}"]: {annotations[key]!r} is not a list of instance '
            'indices such as "0,2"'
        )
        return frozenset()
    return frozenset(int(p) for p in parts)


def _per_instance(
    annotations: Mapping[str, str], key: str, instances: int, problems: list[str]
) -> dict[int, float]:
    """index -> the latest of the Deployment's, the Job-wide and the instance's own request."""
    everyone = [_when(annotations, k, problems) for k in (key, passed_on(key))]
    requests: dict[int, float] = {}
    for index in range(instances):
        times = [*everyone, _when(annotations, instance_key(key, index), problems)]
        latest = max((t for t in times if t is not None), default=None)
        if latest is not None:
            requests[index] = latest
    return requests


def instance_commands(job: Job) -> tuple[InstanceCommands, bool, list[str]]:
    """The operator's commands in a Job's annotations: (commands, paused, problems naming the
    annotation)."""
    annotations = job.metadata.annotations
    problems: list[str] = []
    instances = job.spec.instances
    commands = InstanceCommands(
        restart=_per_instance(annotations, RESTARTED_AT, instances, problems),
        recreate=_per_instance(annotations, RECREATED_AT, instances, problems),
        stopped=_indices(annotations, STOPPED, problems),
        detached=_indices(annotations, STOPPED_HARD, problems),
        ignored=_indices(annotations, IGNORED, problems),
    )
    return commands, is_paused(annotations), problems


def is_paused(annotations: Mapping[str, str]) -> bool:
    """Paused itself, or (a Job) by its Deployment."""
    return any(
        annotations.get(key, "").strip().lower() in ("true", "yes", "1")
        for key in (PAUSED, passed_on(PAUSED))
    )


def resurrection_policy(job: Job) -> ResurrectionPolicy:
    policy = job.spec.resurrection
    return ResurrectionPolicy(
        enabled=policy.enabled,
        meltdown_min_down=policy.meltdown_min_down,
        meltdown_percent=policy.meltdown_percent,
        unresponsive_timeout=parse_duration(policy.unresponsive_timeout),
    )


def known_vms(job: Job) -> dict[int, str]:
    """The VM each instance had when this Job's status was last written."""
    return {i.index: i.vm_id for i in job.status.instances if i.vm_id}


def cross_job_upstreams(job: Job) -> set[ContainerKey]:
    """The ``job/name`` containers of other jobs this Job's containers depend on."""
    keys = {
        parse_dependency(ref, job.job_name) for c in job.spec.containers for ref in c.upstream_refs
    }
    return {key for key in keys if key.job != job.job_name}


ACCEPT_DISK_LOSS = "dockyard.dev/accept-disk-loss"  # "0,2": make blank disks for these indices


def known_disks(job: Job, records: Mapping[str, str]) -> dict[int, str]:
    """index -> the disk id its PersistentDisk record (``<job>-<index>``) names, minus the
    instances whose loss the user accepted (the Job's ``dockyard.dev/accept-disk-loss``)."""
    accepted = {
        part.strip() for part in job.metadata.annotations.get(ACCEPT_DISK_LOSS, "").split(",")
    }
    prefix = f"{job.metadata.name}-"
    known: dict[int, str] = {}
    for name, disk_id in records.items():
        index = name[len(prefix) :]
        if name.startswith(prefix) and index.isdigit() and index not in accepted and disk_id:
            known[int(index)] = disk_id
    return known


@dataclass(frozen=True)
class SnapshotSeen:
    """A DiskSnapshot as the watch last showed it."""

    snapshot_id: str
    ready: bool
    restore_bytes: int


@dataclass(frozen=True)
class Restore:
    snapshot_id: str = ""
    problem: str = ""  # why it cannot be used (yet)
    stalled: bool = False  # only a change of spec (or of the snapshot) mends it


def restore_source(job: Job, snapshots: Mapping[str, SnapshotSeen]) -> Restore:
    """What ``spec.persistentDisk.restoreFrom`` names, from the namespace's DiskSnapshots."""
    template = job.spec.persistent_disk
    name = template.restore_from if template else None
    if template is None or not name:
        return Restore()
    field = "spec.persistentDisk.restoreFrom"
    seen = snapshots.get(name)
    if seen is None:
        return Restore(problem=f"{field}: no DiskSnapshot {name!r} in this namespace", stalled=True)
    if not seen.ready or not seen.snapshot_id:
        return Restore(problem=f"{field}: waiting for DiskSnapshot {name!r} to be ready to use")
    if seen.restore_bytes > template.size_bytes:
        return Restore(
            problem=f"spec.persistentDisk.size: {template.size} is smaller than DiskSnapshot "
            f"{name!r} ({format_quantity(seen.restore_bytes)}), which it restores from",
            stalled=True,
        )
    return Restore(snapshot_id=seen.snapshot_id)
