"""Dockyard's Prometheus metrics (kopf has none built in).

Every metric lives in ``REGISTRY`` (not prometheus_client's global one, so tests read exactly
ours). Labels stay bounded: namespaces and the names of deployments, jobs and containers, and
small fixed sets of results and reasons. Never uids or provider ids: a resurrected VM must not
start a new series. A Dockyard job is labelled ``job_name`` (as kube-state-metrics does): ``job``
and ``instance`` belong to the scrape. The helpers check the fixed-set labels and raise
``ValueError`` naming the argument, so a typo cannot mint a new series either. docs/metrics.md
describes every metric.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, cast, get_args
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
    start_http_server,
)

P = ParamSpec("P")
R = TypeVar("R")

ReconcileResult = Literal["success", "error", "retry", "stalled"]
RestartReason = Literal["crash", "oom", "unhealthy", "upstream", "spec_change", "drift"]
ResurrectionResult = Literal["success", "failure"]
OperationResult = Literal["success", "error"]
DiskOperation = Literal["create", "attach", "detach", "resize", "delete"]
InstanceState = Literal["ready", "not_ready"]

RECONCILE_RESULTS: tuple[str, ...] = get_args(ReconcileResult)
RESTART_REASONS: tuple[str, ...] = get_args(RestartReason)
RESURRECTION_RESULTS: tuple[str, ...] = get_args(ResurrectionResult)
OPERATION_RESULTS: tuple[str, ...] = get_args(OperationResult)
DISK_OPERATION_KINDS: tuple[str, ...] = get_args(DiskOperation)
INSTANCE_STATES: tuple[str, ...] = get_args(InstanceState)

# 5 ms .. 60 s, as controller-runtime's reconcile histogram.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Provider calls: API round trips (tens of ms) up to VM creation (minutes on a cloud).
PROVIDER_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

REGISTRY = CollectorRegistry()

# A ``_created`` twin per counter and histogram doubles the series for a timestamp that
# Prometheus does not need; off unless asked for (``dockyard run --metrics-created``).
disable_created_metrics()  # type: ignore[no-untyped-call]

RECONCILE_TOTAL = Counter(
    "dockyard_reconcile_total",
    "Reconcile passes by kind and result (success, error, retry, stalled).",
    ["kind", "result"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "dockyard_reconcile_errors_total",
    "Errors met while reconciling, by kind and reason.",
    ["kind", "reason"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "dockyard_reconcile_duration_seconds",
    "Time of one reconcile pass.",
    ["kind"],
    buckets=RECONCILE_BUCKETS,
    registry=REGISTRY,
)
CONTAINER_RESTARTS = Counter(
    "dockyard_container_restarts_total",
    "Container restarts seen or made by Dockyard, by reason "
    "(crash, oom, unhealthy, upstream, spec_change, drift).",
    ["namespace", "deployment", "job_name", "container", "reason"],
    registry=REGISTRY,
)
DEPENDENT_RESTARTS = Counter(
    "dockyard_dependent_restarts_total",
    "Containers restarted because an upstream they depend on restarted or changed.",
    ["namespace", "deployment", "job_name", "container"],
    registry=REGISTRY,
)
VM_RESURRECTIONS = Counter(
    "dockyard_vm_resurrections_total",
    "Attempts to replace a VM that died or stopped answering, by result (success, failure).",
    ["namespace", "deployment", "job_name", "result"],
    registry=REGISTRY,
)
MELTDOWNS = Counter(
    "dockyard_meltdowns_total",
    "Times a job entered meltdown (too many instances down at once: resurrection paused).",
    ["namespace", "deployment", "job_name"],
    registry=REGISTRY,
)
MELTDOWN_ACTIVE = Gauge(
    "dockyard_meltdown_active",
    "1 while resurrection of a job is paused because too many of its instances are down.",
    ["namespace", "deployment", "job_name"],
    registry=REGISTRY,
)
INSTANCES = Gauge(
    "dockyard_instances",
    "Instances of a job by state (ready, not_ready).",
    ["namespace", "deployment", "job_name", "state"],
    registry=REGISTRY,
)
DEPLOYMENT_READY = Gauge(
    "dockyard_deployment_ready",
    "1 when the Deployment is Ready at its current generation, else 0.",
    ["namespace", "deployment"],
    registry=REGISTRY,
)
ROLLOUT_HALTED = Gauge(
    "dockyard_rollout_halted",
    "1 while a job's rollout is halted by a failed canary or batch.",
    ["namespace", "deployment", "job_name"],
    registry=REGISTRY,
)
CONTAINER_CRASHLOOP = Gauge(
    "dockyard_container_crashloop",
    "1 while a container keeps failing (crash-loop back-off), else 0.",
    ["namespace", "deployment", "job_name", "container"],
    registry=REGISTRY,
)
DISK_OPERATIONS = Counter(
    "dockyard_disk_operations_total",
    "Persistent disk operations by provider, operation and result.",
    ["provider", "operation", "result"],
    registry=REGISTRY,
)
PROVIDER_REQUESTS = Counter(
    "dockyard_provider_requests_total",
    "Calls to an IaaS provider by operation and result.",
    ["provider", "operation", "result"],
    registry=REGISTRY,
)
PROVIDER_DURATION = Histogram(
    "dockyard_provider_request_duration_seconds",
    "Time of one call to an IaaS provider.",
    ["provider", "operation"],
    buckets=PROVIDER_BUCKETS,
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "dockyard_build_info",
    "Always 1; the version label says which Dockyard runs.",
    ["version"],
    registry=REGISTRY,
)
OPERATOR_ACTIVE = Gauge(
    "dockyard_operator_active",
    "1 while this replica holds the leader lease and acts; 0 while it stands by.",
    registry=REGISTRY,
)

_lock = threading.Lock()
_in_meltdown: set[tuple[str, str, str]] = set()
_seen: set[tuple[str, ...]] = set()

# The objects that have series: deployments (namespace, deployment), jobs (namespace,
# deployment, job) and the containers of each job, so that their series can be removed exactly.
DeploymentKey = tuple[str, str]
JobKey = tuple[str, str, str]
_deployments: set[DeploymentKey] = set()
_containers: dict[JobKey, set[str]] = {}
# Objects deleted since they were last seen: a pass still in flight must not bring their series
# back. An object made again under the same name is seen again (``seen_deployment``/``seen_job``).
_gone_deployments: set[DeploymentKey] = set()
_gone_jobs: set[JobKey] = set()


def _live(namespace: str, deployment: str, job: str | None = None) -> bool:
    with _lock:
        if deployment and (namespace, deployment) in _gone_deployments:
            return False
        return job is None or (namespace, deployment, job) not in _gone_jobs


def _known_job(key: JobKey) -> None:
    with _lock:
        _containers.setdefault(key, set())


def _check(argument: str, value: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{argument}: {value!r} is not one of {', '.join(allowed)}")


def _check_name(argument: str, value: str) -> None:
    if not value:
        raise ValueError(f"{argument}: must not be empty")


def _first_time(*key: str) -> bool:
    """True once per key. Used to create sibling series at 0 so that ``increase()`` in the alert
    rules sees the first failure (a counter born at 1 shows no increase)."""
    with _lock:
        if key in _seen:
            return False
        _seen.add(key)
        return True


def _touch_reconcile(kind: str) -> None:
    if _first_time("reconcile", kind):
        for result in RECONCILE_RESULTS:
            RECONCILE_TOTAL.labels(kind=kind, result=result)


def _touch_disk(provider: str) -> None:
    if _first_time("disk", provider):
        for operation in DISK_OPERATION_KINDS:
            for result in OPERATION_RESULTS:
                DISK_OPERATIONS.labels(provider=provider, operation=operation, result=result)


def _touch_job(namespace: str, deployment: str, job: str) -> None:
    _known_job((namespace, deployment, job))
    if _first_time("job", namespace, deployment, job):
        for result in RESURRECTION_RESULTS:
            VM_RESURRECTIONS.labels(namespace, deployment, job, result)
        MELTDOWNS.labels(namespace, deployment, job)


def _touch_container(namespace: str, deployment: str, job: str, container: str) -> None:
    with _lock:
        _containers.setdefault((namespace, deployment, job), set()).add(container)
    if _first_time("container", namespace, deployment, job, container):
        for reason in RESTART_REASONS:
            CONTAINER_RESTARTS.labels(namespace, deployment, job, container, reason)
        DEPENDENT_RESTARTS.labels(namespace, deployment, job, container)


# --- the endpoint ----------------------------------------------------------------------------


def dockyard_version() -> str:
    try:
        return importlib.metadata.version("dockyard")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def start_metrics_server(
    port: int, addr: str = "0.0.0.0", *, created: bool = False
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``REGISTRY`` on http://addr:port/metrics in a daemon thread; sets build_info.
    ``created`` also exports the ``_created`` series of counters and histograms.

    Returns the server and its thread (``server.shutdown()`` stops it; port 0 picks a free
    port, see ``server.server_port``)."""
    if created:
        enable_created_metrics()  # type: ignore[no-untyped-call]
    BUILD_INFO.labels(version=dockyard_version()).set(1)
    return start_http_server(port, addr=addr, registry=REGISTRY)


def set_active(active: bool) -> None:
    OPERATOR_ACTIVE.set(1 if active else 0)


# --- reconcile passes ------------------------------------------------------------------------


def observe_reconcile(
    kind: str, result: ReconcileResult, started: float, reason: str = "exception"
) -> None:
    """Count one pass of ``kind`` that began at ``started`` (``time.monotonic()``).

    An ``error`` also counts in dockyard_reconcile_errors_total under ``reason``."""
    _check_name("kind", kind)
    _check("result", result, RECONCILE_RESULTS)
    _touch_reconcile(kind)
    RECONCILE_TOTAL.labels(kind=kind, result=result).inc()
    RECONCILE_DURATION.labels(kind=kind).observe(max(time.monotonic() - started, 0.0))
    if result == "error":
        RECONCILE_ERRORS.labels(kind=kind, reason=reason).inc()


def record_reconcile_error(kind: str, reason: str) -> None:
    """Count an error met during a pass that itself went on (e.g. one container failed)."""
    _check_name("kind", kind)
    _check_name("reason", reason)
    RECONCILE_ERRORS.labels(kind=kind, reason=reason).inc()


@dataclass
class ReconcileTimer:
    """Handle of ``reconcile_timer``: set ``result`` (and ``reason`` for errors) before leaving
    the block to override what the block's outcome says."""

    kind: str
    started: float
    result: ReconcileResult | None = None
    reason: str | None = None


@contextmanager
def reconcile_timer(
    kind: str, *, retry_on: tuple[type[BaseException], ...] = ()
) -> Iterator[ReconcileTimer]:
    """Time and count one reconcile pass of ``kind``.

    Leaving normally counts ``success`` (or ``timer.result``); an exception of a ``retry_on``
    type counts ``retry``; any other ``Exception`` counts ``error`` with its class name as the
    reason (or ``timer.reason``). The exception propagates. Cancellation (BaseException) counts
    nothing: the operator is stopping, not failing."""
    _check_name("kind", kind)
    timer = ReconcileTimer(kind=kind, started=time.monotonic())
    try:
        yield timer
    except retry_on:
        observe_reconcile(kind, "retry", timer.started)
        raise
    except Exception as error:
        observe_reconcile(kind, "error", timer.started, timer.reason or type(error).__name__)
        raise
    observe_reconcile(kind, timer.result or "success", timer.started, timer.reason or "exception")


# --- provider calls --------------------------------------------------------------------------


class ProviderCallObserver:
    """What ``observe_provider_call`` returns: a context manager and a decorator."""

    def __init__(self, provider: str, operation: str) -> None:
        _check_name("provider", provider)
        _check_name("operation", operation)
        self.provider = provider
        self.operation = operation
        self._started: list[float] = []  # a stack: one instance may be re-entered by threads

    def _record(self, started: float, ok: bool) -> None:
        PROVIDER_DURATION.labels(self.provider, self.operation).observe(
            max(time.monotonic() - started, 0.0)
        )
        PROVIDER_REQUESTS.labels(self.provider, self.operation, "success" if ok else "error").inc()

    def __enter__(self) -> ProviderCallObserver:
        for result in OPERATION_RESULTS:
            PROVIDER_REQUESTS.labels(self.provider, self.operation, result)
        self._started.append(time.monotonic())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        started = self._started.pop()
        if exc_type is None or issubclass(exc_type, Exception):
            self._record(started, ok=exc_type is None)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):
            async_fn = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                with ProviderCallObserver(self.provider, self.operation):
                    return await async_fn(*args, **kwargs)

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with ProviderCallObserver(self.provider, self.operation):
                return fn(*args, **kwargs)

        return wrapper


def observe_provider_call(provider: str, operation: str) -> ProviderCallObserver:
    """Count and time calls to a provider, as a context manager or a decorator::

        with observe_provider_call("aws", "create_vm"):
            provider.create_vm(spec)

        @observe_provider_call("local", "resize_disk")
        def resize_disk(...): ...          # also works on ``async def``

    ``result`` is ``success``, or ``error`` when the block raises an Exception (which
    propagates); cancellation counts nothing."""
    return ProviderCallObserver(provider, operation)


# --- disks -----------------------------------------------------------------------------------


def record_disk_operation(provider: str, operation: DiskOperation, ok: bool) -> None:
    _check_name("provider", provider)
    _check("operation", operation, DISK_OPERATION_KINDS)
    _touch_disk(provider)
    DISK_OPERATIONS.labels(provider, operation, "success" if ok else "error").inc()


@contextmanager
def disk_operation(provider: str, operation: DiskOperation) -> Iterator[None]:
    """Count a disk operation: ``error`` when the block raises an Exception, else ``success``."""
    _check_name("provider", provider)
    _check("operation", operation, DISK_OPERATION_KINDS)
    try:
        yield
    except Exception:
        record_disk_operation(provider, operation, ok=False)
        raise
    record_disk_operation(provider, operation, ok=True)


# --- containers, VMs and jobs ----------------------------------------------------------------


def record_container_restart(
    namespace: str, deployment: str, job: str, container: str, reason: RestartReason
) -> None:
    """Count one restart of ``container``; ``upstream`` also counts as a dependent restart."""
    _check("reason", reason, RESTART_REASONS)
    if not _live(namespace, deployment, job):
        return
    _touch_container(namespace, deployment, job, container)
    CONTAINER_RESTARTS.labels(namespace, deployment, job, container, reason).inc()
    if reason == "upstream":
        DEPENDENT_RESTARTS.labels(namespace, deployment, job, container).inc()


def set_container_crashloop(
    namespace: str, deployment: str, job: str, container: str, looping: bool
) -> None:
    if not _live(namespace, deployment, job):
        return
    _touch_container(namespace, deployment, job, container)
    CONTAINER_CRASHLOOP.labels(namespace, deployment, job, container).set(int(looping))


def record_vm_resurrection(namespace: str, deployment: str, job: str, ok: bool) -> None:
    if not _live(namespace, deployment, job):
        return
    _touch_job(namespace, deployment, job)
    VM_RESURRECTIONS.labels(namespace, deployment, job, "success" if ok else "failure").inc()


def set_meltdown(namespace: str, deployment: str, job: str, active: bool) -> None:
    """Set the meltdown gauge; entering meltdown (not staying in it) counts one meltdown."""
    if not _live(namespace, deployment, job):
        return
    _touch_job(namespace, deployment, job)
    key = (namespace, deployment, job)
    with _lock:
        entered = active and key not in _in_meltdown
        if active:
            _in_meltdown.add(key)
        else:
            _in_meltdown.discard(key)
    if entered:
        MELTDOWNS.labels(*key).inc()
    MELTDOWN_ACTIVE.labels(*key).set(int(active))


def set_job_state(
    namespace: str, deployment: str, job: str, ready: int, total: int, halted: bool, meltdown: bool
) -> None:
    """Publish a job's instance counts, rollout halt and meltdown after a pass."""
    if not _live(namespace, deployment, job):
        return
    _touch_job(namespace, deployment, job)
    INSTANCES.labels(namespace, deployment, job, "ready").set(ready)
    INSTANCES.labels(namespace, deployment, job, "not_ready").set(max(total - ready, 0))
    ROLLOUT_HALTED.labels(namespace, deployment, job).set(int(halted))
    set_meltdown(namespace, deployment, job, meltdown)


def set_deployment_ready(namespace: str, deployment: str, ready: bool) -> None:
    if not _live(namespace, deployment):
        return
    with _lock:
        _deployments.add((namespace, deployment))
    DEPLOYMENT_READY.labels(namespace=namespace, deployment=deployment).set(int(ready))


def _remove(metric: Counter | Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never created: nothing to remove
        metric.remove(*labels)


def _remove_container(job: JobKey, container: str) -> None:
    for reason in RESTART_REASONS:
        _remove(CONTAINER_RESTARTS, *job, container, reason)
    _remove(DEPENDENT_RESTARTS, *job, container)
    _remove(CONTAINER_CRASHLOOP, *job, container)
    with _lock:
        _seen.discard(("container", *job, container))


def _remove_job(job: JobKey) -> None:
    with _lock:
        containers = _containers.pop(job, set())
        _in_meltdown.discard(job)
        _seen.discard(("job", *job))
    for container in containers:
        _remove_container(job, container)
    for result in RESURRECTION_RESULTS:
        _remove(VM_RESURRECTIONS, *job, result)
    for state in INSTANCE_STATES:
        _remove(INSTANCES, *job, state)
    for metric in (MELTDOWNS, MELTDOWN_ACTIVE, ROLLOUT_HALTED):
        _remove(metric, *job)


def forget_job(namespace: str, deployment: str, job: str) -> None:
    """A deleted job's series go, counters included (as kube-state-metrics does): it stops
    alerting at the next scrape, and preview environments made and deleted all day cannot grow
    the series without bound. Until the job is seen again, late writes for it are dropped."""
    key = (namespace, deployment, job)
    with _lock:
        _gone_jobs.add(key)
    _remove_job(key)


def forget_deployment(namespace: str, deployment: str) -> None:
    """A deleted deployment's series go, its jobs' included (see ``forget_job``)."""
    with _lock:
        _gone_deployments.add((namespace, deployment))
    _forget_deployment_series(namespace, deployment)


def _forget_deployment_series(namespace: str, deployment: str) -> None:
    with _lock:
        _deployments.discard((namespace, deployment))
        jobs = [key for key in _containers if key[:2] == (namespace, deployment)]
    _remove(DEPLOYMENT_READY, namespace, deployment)
    for job in jobs:
        _remove_job(job)


def seen_deployment(namespace: str, deployment: str) -> None:
    """The deployment exists (a watch event): a deleted one made again may have series again."""
    with _lock:
        _gone_deployments.discard((namespace, deployment))


def seen_job(namespace: str, deployment: str, job: str) -> None:
    with _lock:
        _gone_jobs.discard((namespace, deployment, job))


@dataclass(frozen=True)
class SeriesOwners:
    """The objects that have series, at one moment (what ``retain`` may remove)."""

    deployments: frozenset[DeploymentKey]
    jobs: frozenset[JobKey]

    @property
    def namespaces(self) -> set[str]:
        return {key[0] for key in self.deployments} | {key[0] for key in self.jobs}


def series_owners() -> SeriesOwners:
    with _lock:
        return SeriesOwners(frozenset(_deployments), frozenset(_containers))


def retain(
    before: SeriesOwners, deployments: Iterable[DeploymentKey], jobs: Iterable[JobKey]
) -> int:
    """Remove the series of every object in ``before`` that is not in the live sets (read from
    the API after ``before`` was taken, so an object made meanwhile is never dropped). Catches
    what no delete event told: a watch that missed it, a namespace deleted while the operator
    was away. Returns the number of objects dropped."""
    live_deployments, live_jobs = set(deployments), set(jobs)
    dropped = 0
    for deployment in before.deployments - live_deployments:
        _forget_deployment_series(*deployment)
        dropped += 1
    for job in before.jobs - live_jobs:
        _remove_job(job)
        dropped += 1
    return dropped


def _retain_containers(job: JobKey, containers: set[str]) -> None:
    """The series of containers no longer in the job's spec go."""
    with _lock:
        gone = _containers.get(job, set()) - containers
        if job in _containers:
            _containers[job] -= gone
    for container in gone:
        _remove_container(job, container)


# --- reconciler actions ----------------------------------------------------------------------

_DISK_ACTIONS: dict[str, DiskOperation] = {
    "CreatedDisk": "create",
    "AttachedDisk": "attach",
    "DetachedDisk": "detach",
    "ResizedDisk": "resize",
    "MigratedDisk": "resize",  # grown by copy
    "DeletedDisk": "delete",
    "CreateDiskFailed": "create",
    "AttachDiskFailed": "attach",
    "DetachDiskFailed": "detach",
    "ResizeDiskFailed": "resize",
    "MigrateDiskFailed": "resize",
    "DeleteDiskFailed": "delete",
}


# Why the reconciler (re)started a container, by the planner's cause (its enum values: this
# module imports nothing of ours).
_RESTART_CAUSES: dict[str, RestartReason] = {
    "Upstream": "upstream",
    "Unhealthy": "unhealthy",
    "Exited": "crash",
    "Dead": "crash",
    "SpecChanged": "spec_change",
    "DiskGrown": "spec_change",
    "DiskAttached": "spec_change",
    "DiskMigrated": "spec_change",
}


def restart_reason(kind: str, cause: str) -> RestartReason | None:
    """Why the reconciler (re)started a container, as a metric reason; None for a first start.
    ``cause`` is the planner's Cause value (``Upstream``, ``Exited``, ``SpecChanged``...)."""
    if kind not in ("RestartedContainer", "RecreatedContainer"):
        return None
    return _RESTART_CAUSES.get(cause, "drift")


def record_action(
    namespace: str,
    deployment: str,
    job: str,
    kind: str,
    target: str,
    cause: str,
    ok: bool,
    *,
    provider: str = "unknown",
) -> None:
    """Count what a reconcile pass did: one call per action it reports (runtime ActionRecord,
    with its planner Cause value).

    A first start (``StartedContainer``) is not a restart; see ``restart_reason`` for the rest.
    Failures of a pass are counted by ``observe_reconcile``, not here."""
    why = restart_reason(kind, cause)
    if why is not None:
        record_container_restart(namespace, deployment, job, target, why)
    elif kind in ("ResurrectedVM", "ResurrectionFailed"):
        record_vm_resurrection(namespace, deployment, job, ok and kind == "ResurrectedVM")
    elif kind in _DISK_ACTIONS:
        record_disk_operation(provider, _DISK_ACTIONS[kind], ok)


def record_engine_restarts(
    namespace: str, deployment: str, job: str, container: str, count: int, oom: bool
) -> None:
    """Restarts the container engine made on its own (restart policy): crashes or OOM kills."""
    reason: RestartReason = "oom" if oom else "crash"
    if not _live(namespace, deployment, job):
        return
    _touch_container(namespace, deployment, job, container)
    if count > 0:
        CONTAINER_RESTARTS.labels(namespace, deployment, job, container, reason).inc(count)


def set_crash_looping(
    namespace: str, deployment: str, job: str, containers: Iterable[str], looping: Iterable[str]
) -> None:
    """Publish the crash-loop gauge of every container of a job: 1 for those in ``looping``.

    Also creates each container's restart series at 0, so that its first restart is an increase."""
    if not _live(namespace, deployment, job):
        return
    looping, containers = set(looping), list(containers)
    _retain_containers((namespace, deployment, job), set(containers))
    for container in containers:
        _touch_container(namespace, deployment, job, container)
        set_container_crashloop(namespace, deployment, job, container, container in looping)
