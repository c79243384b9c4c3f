"""Dockyard's Prometheus metrics (kopf has none built in). Labels stay bounded: names of
deployments, jobs and containers, never uids or VM ids."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()

RECONCILE_TOTAL = Counter(
    "dockyard_reconcile_total",
    "Reconcile passes by kind and result (success, error, retry, stalled).",
    ["kind", "result"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "dockyard_reconcile_errors_total",
    "Reconcile passes that failed, by kind and reason.",
    ["kind", "reason"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "dockyard_reconcile_duration_seconds",
    "Time of one reconcile pass.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
CONTAINER_RESTARTS = Counter(
    "dockyard_container_restarts_total",
    "Containers (re)started by Dockyard, by reason (created, spec_change, upstream, drift).",
    ["namespace", "deployment", "job", "container", "reason"],
    registry=REGISTRY,
)
DEPENDENT_RESTARTS = Counter(
    "dockyard_dependent_restarts_total",
    "Containers restarted because an upstream restarted or changed.",
    ["namespace", "deployment", "job", "container"],
    registry=REGISTRY,
)
VM_RESURRECTIONS = Counter(
    "dockyard_vm_resurrections_total",
    "VMs replaced because they died or stopped answering, by result.",
    ["namespace", "deployment", "job", "result"],
    registry=REGISTRY,
)
MELTDOWN_ACTIVE = Gauge(
    "dockyard_meltdown_active",
    "1 while resurrection is paused because too many instances are down at once.",
    ["namespace", "deployment", "job"],
    registry=REGISTRY,
)
INSTANCES = Gauge(
    "dockyard_instances",
    "Instances by state (ready, not_ready).",
    ["namespace", "deployment", "job", "state"],
    registry=REGISTRY,
)
DEPLOYMENT_READY = Gauge(
    "dockyard_deployment_ready",
    "1 when the Deployment is Ready at its current generation.",
    ["namespace", "deployment"],
    registry=REGISTRY,
)
DISK_OPERATIONS = Counter(
    "dockyard_disk_operations_total",
    "Disk operations by kind and result.",
    ["operation", "result"],
    registry=REGISTRY,
)
ROLLOUT_HALTED = Gauge(
    "dockyard_rollout_halted",
    "1 while a Job's rollout is halted by a failed canary or batch.",
    ["namespace", "deployment", "job"],
    registry=REGISTRY,
)
BUILD_INFO = Gauge("dockyard_build_info", "Dockyard's version.", ["version"], registry=REGISTRY)


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> None:
    from dockyard import __version__

    BUILD_INFO.labels(version=__version__).set(1)
    start_http_server(port, addr=addr, registry=REGISTRY)


def observe_reconcile(kind: str, result: str, started: float) -> None:
    """Count a pass that began at ``started`` (time.monotonic())."""
    RECONCILE_TOTAL.labels(kind=kind, result=result).inc()
    RECONCILE_DURATION.labels(kind=kind).observe(time.monotonic() - started)
    if result == "error":
        RECONCILE_ERRORS.labels(kind=kind, reason="exception").inc()


@contextmanager
def disk_operation(operation: str) -> Iterator[None]:
    try:
        yield
    except Exception:
        DISK_OPERATIONS.labels(operation=operation, result="error").inc()
        raise
    DISK_OPERATIONS.labels(operation=operation, result="success").inc()


_ACTION_REASONS = {
    "StartedContainer": "created",
    "RecreatedContainer": "spec_change",
    "RestartedContainer": "upstream",
}


def record_action(
    namespace: str, deployment: str, job: str, kind: str, target: str, reason: str, ok: bool
) -> None:
    """Count what a reconcile pass did (one call per action it reports)."""
    labels = {"namespace": namespace, "deployment": deployment, "job": job}
    if kind in _ACTION_REASONS:
        why = _ACTION_REASONS[kind]
        if kind == "RestartedContainer" and not reason.startswith("upstream"):
            why = "drift"
        CONTAINER_RESTARTS.labels(**labels, container=target, reason=why).inc()
        if why == "upstream":
            DEPENDENT_RESTARTS.labels(**labels, container=target).inc()
    elif kind == "ResurrectedVM":
        VM_RESURRECTIONS.labels(**labels, result="success" if ok else "failure").inc()
    elif kind in ("CreatedDisk", "ResizedDisk", "DeletedDisk", "AttachedDisk"):
        DISK_OPERATIONS.labels(operation=kind.removesuffix("Disk").lower(), result="success").inc()
    elif kind == "ContainerFailed":
        RECONCILE_ERRORS.labels(kind="Job", reason="container").inc()
    elif kind == "InstanceFailed":
        RECONCILE_ERRORS.labels(kind="Job", reason="instance").inc()


def set_job_state(
    namespace: str, deployment: str, job: str, ready: int, total: int, halted: bool, meltdown: bool
) -> None:
    labels = {"namespace": namespace, "deployment": deployment, "job": job}
    INSTANCES.labels(**labels, state="ready").set(ready)
    INSTANCES.labels(**labels, state="not_ready").set(max(total - ready, 0))
    ROLLOUT_HALTED.labels(**labels).set(int(halted))
    MELTDOWN_ACTIVE.labels(**labels).set(int(meltdown))


def set_deployment_ready(namespace: str, deployment: str, ready: bool) -> None:
    DEPLOYMENT_READY.labels(namespace=namespace, deployment=deployment).set(int(ready))
