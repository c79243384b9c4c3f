"""The metrics module: counters move as the operator's helpers are called, labels stay bounded,
and the endpoint serves an exposition that Prometheus' text format parser accepts."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dockyard.observability import metrics
from dockyard.observability.metrics import REGISTRY
from dockyard.planning import Cause

# The brief's contract with dashboards and alert rules: name -> label names.
EXPECTED = {
    "dockyard_reconcile_total": {"kind", "result"},
    "dockyard_reconcile_errors_total": {"kind", "reason"},
    "dockyard_reconcile_duration_seconds": {"kind"},
    "dockyard_container_restarts_total": {
        "namespace",
        "deployment",
        "job_name",
        "container",
        "reason",
    },
    "dockyard_dependent_restarts_total": {"namespace", "deployment", "job_name", "container"},
    "dockyard_vm_resurrections_total": {"namespace", "deployment", "job_name", "result"},
    "dockyard_meltdowns_total": {"namespace", "deployment", "job_name"},
    "dockyard_meltdown_active": {"namespace", "deployment", "job_name"},
    "dockyard_instances": {"namespace", "deployment", "job_name", "state"},
    "dockyard_deployment_ready": {"namespace", "deployment"},
    "dockyard_rollout_halted": {"namespace", "deployment", "job_name"},
    "dockyard_container_crashloop": {"namespace", "deployment", "job_name", "container"},
    "dockyard_disk_operations_total": {"provider", "operation", "result"},
    "dockyard_provider_requests_total": {"provider", "operation", "result"},
    "dockyard_provider_request_duration_seconds": {"provider", "operation"},
    "dockyard_build_info": {"version"},
}
# Label names that would grow without bound (one series per object ever created).
UNBOUNDED = {"uid", "id", "vm", "vm_id", "disk", "disk_id", "instance", "index", "pod", "ip"}


def value(name: str, **labels: str) -> float:
    """Current value of a sample, 0 when the series does not exist (yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def series(name: str) -> list[dict[str, str]]:
    return [
        sample.labels
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == name
    ]


def resurrections(ns: str, result: str) -> float:
    labels = {"namespace": ns, "deployment": "d", "job_name": "web", "result": result}
    return value("dockyard_vm_resurrections_total", **labels)


@pytest.fixture
def ns() -> str:
    """A namespace label of our own: the registry is process-wide."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def server() -> Iterator[int]:
    httpd, thread = metrics.start_metrics_server(0, "127.0.0.1")
    try:
        yield int(httpd.server_port)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def test_every_metric_is_registered_with_its_labels() -> None:
    found = {}
    for family in REGISTRY.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        found[name] = family
    for name, labels in EXPECTED.items():
        assert name in found, f"{name} is not registered"
        collector = REGISTRY._names_to_collectors[name]
        assert set(collector._labelnames) == labels, name


def test_no_label_can_hold_an_object_identity() -> None:
    for collector in set(REGISTRY._names_to_collectors.values()):
        names = set(getattr(collector, "_labelnames", ()))
        assert not names & UNBOUNDED, f"{collector}: {names & UNBOUNDED}"


def test_no_label_is_one_prometheus_sets_on_every_target() -> None:
    """``job`` and ``instance`` are the scrape's own labels: ours would be renamed exported_*.
    (``namespace`` and ``container`` clash only with the Prometheus Operator's target labels: the
    ServiceMonitor sets honorLabels, see docs/metrics.md.)"""
    for collector in set(REGISTRY._names_to_collectors.values()):
        names = set(getattr(collector, "_labelnames", ()))
        assert not names & {"job", "instance"}, f"{collector}: {names}"


def test_vm_and_disk_ids_do_not_become_series(ns: str) -> None:
    """The reconciler reports VM and disk ids as action targets; they must not mint series."""
    before = len(series("dockyard_vm_resurrections_total")) + len(
        series("dockyard_disk_operations_total")
    )
    for i in range(50):
        metrics.record_action(ns, "d", "web", "ResurrectedVM", f"vm-{i}", "VMUnhealthy", True)
        metrics.record_action(
            ns, "d", "web", "ResizedDisk", f"disk-{i}", "DiskGrown", True, provider="local"
        )
    after = len(series("dockyard_vm_resurrections_total")) + len(
        series("dockyard_disk_operations_total")
    )
    # One job's resurrections (success, failure) and, at most, one provider's disk operations.
    assert after - before <= 2 + len(metrics.DISK_OPERATION_KINDS) * 2
    assert resurrections(ns, "success") == 50


def test_reconcile_timer_counts_each_outcome() -> None:
    kind = f"Kind{uuid.uuid4().hex[:6]}"

    class Retry(Exception):
        pass

    with metrics.reconcile_timer(kind):
        pass
    with metrics.reconcile_timer(kind) as timer:
        timer.result = "stalled"
    with pytest.raises(Retry), metrics.reconcile_timer(kind, retry_on=(Retry,)):
        raise Retry
    with pytest.raises(KeyError), metrics.reconcile_timer(kind):
        raise KeyError("x")
    with pytest.raises(asyncio.CancelledError), metrics.reconcile_timer(kind):
        raise asyncio.CancelledError

    for result in ("success", "stalled", "retry", "error"):
        assert value("dockyard_reconcile_total", kind=kind, result=result) == 1, result
    assert value("dockyard_reconcile_errors_total", kind=kind, reason="KeyError") == 1
    # The cancelled pass is not counted: 4 observations, not 5.
    assert value("dockyard_reconcile_duration_seconds_count", kind=kind) == 4
    assert value("dockyard_reconcile_duration_seconds_bucket", kind=kind, le="60.0") == 4


def test_observe_reconcile_measures_the_duration() -> None:
    kind = f"Kind{uuid.uuid4().hex[:6]}"
    metrics.observe_reconcile(kind, "success", started=time.monotonic() - 2.0)
    assert value("dockyard_reconcile_duration_seconds_bucket", kind=kind, le="1.0") == 0
    assert value("dockyard_reconcile_duration_seconds_bucket", kind=kind, le="2.5") == 1
    assert 2.0 <= value("dockyard_reconcile_duration_seconds_sum", kind=kind) < 2.5


def test_first_failure_is_visible_to_increase(ns: str) -> None:
    """A counter born at 1 shows no increase() in Prometheus: siblings start at 0."""
    kind = f"Kind{uuid.uuid4().hex[:6]}"
    metrics.observe_reconcile(kind, "success", 0.0)
    assert (
        REGISTRY.get_sample_value("dockyard_reconcile_total", {"kind": kind, "result": "error"})
        == 0
    )
    metrics.set_job_state(ns, "d", "web", ready=1, total=1, halted=False, meltdown=False)
    labels = {"namespace": ns, "deployment": "d", "job_name": "web", "result": "failure"}
    assert REGISTRY.get_sample_value("dockyard_vm_resurrections_total", labels) == 0
    provider = f"p{uuid.uuid4().hex[:6]}"
    metrics.record_disk_operation(provider, "create", ok=True)
    labels = {"provider": provider, "operation": "resize", "result": "error"}
    assert REGISTRY.get_sample_value("dockyard_disk_operations_total", labels) == 0


def test_provider_calls_as_context_manager_and_decorators() -> None:
    provider = f"p{uuid.uuid4().hex[:6]}"

    with metrics.observe_provider_call(provider, "create_vm"):
        pass
    with pytest.raises(RuntimeError), metrics.observe_provider_call(provider, "create_vm"):
        raise RuntimeError("quota")

    @metrics.observe_provider_call(provider, "resize_disk")
    def resize(size: int) -> int:
        return size * 2

    @metrics.observe_provider_call(provider, "delete_vm")
    async def delete(vm: str) -> str:
        await asyncio.sleep(0)
        raise LookupError(vm)

    assert resize(3) == 6
    with pytest.raises(LookupError):
        asyncio.run(delete("vm-1"))

    def requests(operation: str, result: str) -> float:
        return value(
            "dockyard_provider_requests_total",
            provider=provider,
            operation=operation,
            result=result,
        )

    assert requests("create_vm", "success") == 1
    assert requests("create_vm", "error") == 1
    assert requests("resize_disk", "success") == 1
    assert requests("delete_vm", "error") == 1
    assert requests("delete_vm", "success") == 0
    count = "dockyard_provider_request_duration_seconds_count"
    assert value(count, provider=provider, operation="create_vm") == 2
    assert resize.__name__ == "resize"


def test_record_action_maps_reconciler_actions(ns: str) -> None:
    def restarts(container: str, reason: str) -> float:
        return value(
            "dockyard_container_restarts_total",
            namespace=ns,
            deployment="d",
            job_name="web",
            container=container,
            reason=reason,
        )

    act = metrics.record_action
    # The planner's causes (dockyard.planning.Cause values).
    act(ns, "d", "web", "StartedContainer", "db", Cause.MISSING, True)  # a first start
    act(ns, "d", "web", "RestartedContainer", "app", Cause.UPSTREAM, True)
    act(ns, "d", "web", "RestartedContainer", "db", Cause.EXITED, True)
    act(ns, "d", "web", "RecreatedContainer", "db", Cause.DEAD, True)
    act(ns, "d", "web", "RestartedContainer", "db", Cause.UNHEALTHY, True)
    act(ns, "d", "web", "RecreatedContainer", "db", Cause.SPEC_CHANGED, True)
    act(ns, "d", "web", "RestartedContainer", "db", Cause.DISK_GROWN, True)
    act(ns, "d", "web", "ResurrectedVM", "vm-7", Cause.VM_UNHEALTHY, True)
    act(ns, "d", "web", "ResurrectionFailed", "vm", Cause.VM_UNHEALTHY, False)
    act(ns, "d", "web", "ResizeDiskFailed", "disk", Cause.DISK_GROWN, False, provider="aws")

    assert sum(restarts("db", reason) for reason in metrics.RESTART_REASONS) == 5
    assert restarts("db", "crash") == 2
    assert restarts("db", "unhealthy") == 1
    assert restarts("db", "spec_change") == 2
    assert restarts("app", "upstream") == 1
    dependent = {"namespace": ns, "deployment": "d", "job_name": "web", "container": "app"}
    assert REGISTRY.get_sample_value("dockyard_dependent_restarts_total", dependent) == 1
    assert resurrections(ns, "failure") == 1
    assert resurrections(ns, "success") == 1
    assert (
        value("dockyard_disk_operations_total", provider="aws", operation="resize", result="error")
        >= 1
    )


def test_engine_restarts_count_as_crashes_or_oom_kills(ns: str) -> None:
    labels = {"namespace": ns, "deployment": "d", "job_name": "web", "container": "db"}
    metrics.record_engine_restarts(ns, "d", "web", "db", 2, oom=False)
    metrics.record_engine_restarts(ns, "d", "web", "db", 1, oom=True)
    assert value("dockyard_container_restarts_total", **labels, reason="crash") == 2
    assert value("dockyard_container_restarts_total", **labels, reason="oom") == 1


def test_crash_loop_gauge_follows_the_report(ns: str) -> None:
    def looping(container: str) -> float:
        return value(
            "dockyard_container_crashloop",
            namespace=ns,
            deployment="d",
            job_name="web",
            container=container,
        )

    metrics.set_crash_looping(ns, "d", "web", ["db", "app"], looping={"app"})
    assert (looping("db"), looping("app")) == (0, 1)
    metrics.set_crash_looping(ns, "d", "web", ["db", "app"], looping=set())
    assert looping("app") == 0


def test_meltdown_counts_entries_not_passes(ns: str) -> None:
    labels = {"namespace": ns, "deployment": "d", "job_name": "web"}
    for melted in (True, True, True, False, True):
        metrics.set_job_state(ns, "d", "web", ready=0, total=10, halted=False, meltdown=melted)
    assert value("dockyard_meltdowns_total", **labels) == 2
    assert value("dockyard_meltdown_active", **labels) == 1
    assert value("dockyard_instances", **labels, state="not_ready") == 10


def of(name: str, ns: str, **labels: str) -> list[dict[str, str]]:
    return [
        s
        for s in series(name)
        if s.get("namespace") == ns and all(s.get(k) == v for k, v in labels.items())
    ]


OBJECT_SERIES = (
    "dockyard_meltdown_active",
    "dockyard_meltdowns_total",
    "dockyard_instances",
    "dockyard_rollout_halted",
    "dockyard_vm_resurrections_total",
    "dockyard_container_crashloop",
    "dockyard_container_restarts_total",
    "dockyard_dependent_restarts_total",
)


def test_a_deleted_objects_series_go_counters_included_and_late_writes_are_dropped(
    ns: str,
) -> None:
    metrics.set_job_state(ns, "d", "web", ready=1, total=2, halted=True, meltdown=True)
    metrics.set_job_state(ns, "d", "db", ready=1, total=1, halted=False, meltdown=False)
    metrics.set_crash_looping(ns, "d", "web", ["app"], looping=["app"])
    metrics.record_container_restart(ns, "d", "web", "app", "upstream")
    metrics.record_vm_resurrection(ns, "d", "web", ok=False)
    metrics.set_deployment_ready(ns, "d", False)

    metrics.forget_job(ns, "d", "web")
    for name in OBJECT_SERIES:
        assert not of(name, ns, job_name="web"), name
    assert value("dockyard_instances", namespace=ns, deployment="d", job_name="db", state="ready")
    # A pass still in flight for the deleted job writes nothing back.
    metrics.record_container_restart(ns, "d", "web", "app", "crash")
    metrics.set_job_state(ns, "d", "web", ready=0, total=2, halted=False, meltdown=False)
    assert not of("dockyard_container_restarts_total", ns, job_name="web")
    assert not of("dockyard_instances", ns, job_name="web")

    metrics.forget_deployment(ns, "d")
    assert not of("dockyard_instances", ns) and not of("dockyard_deployment_ready", ns)
    metrics.set_deployment_ready(ns, "d", False)
    assert not of("dockyard_deployment_ready", ns)

    # Made again under the same names: series again, from zero.
    metrics.seen_deployment(ns, "d")
    metrics.seen_job(ns, "d", "web")
    metrics.set_deployment_ready(ns, "d", True)
    metrics.set_job_state(ns, "d", "web", ready=0, total=5, halted=False, meltdown=True)
    assert value("dockyard_deployment_ready", namespace=ns, deployment="d") == 1
    assert value("dockyard_meltdowns_total", namespace=ns, deployment="d", job_name="web") == 1


def test_a_container_that_leaves_the_spec_takes_its_series_with_it(ns: str) -> None:
    metrics.set_crash_looping(ns, "d", "web", ["app", "side"], looping=[])
    metrics.record_container_restart(ns, "d", "web", "side", "crash")
    assert of("dockyard_container_restarts_total", ns, container="side")
    metrics.set_crash_looping(ns, "d", "web", ["app"], looping=[])
    for name in OBJECT_SERIES[5:]:
        assert not of(name, ns, container="side"), name
        assert of(name, ns, container="app"), name


def test_retain_drops_the_series_of_objects_the_api_no_longer_has(ns: str) -> None:
    metrics.set_deployment_ready(ns, "kept", True)
    metrics.set_deployment_ready(ns, "gone", False)
    metrics.set_job_state(ns, "kept", "web", ready=1, total=1, halted=False, meltdown=False)
    metrics.set_job_state(ns, "gone", "web", ready=0, total=1, halted=False, meltdown=False)
    metrics.set_job_state(ns, "", "alone", ready=0, total=1, halted=False, meltdown=False)
    before = metrics.series_owners()
    # Made after the API was read: not in its answer, yet kept.
    metrics.set_deployment_ready(ns, "new", False)

    dropped = metrics.retain(
        before,
        deployments={key for key in before.deployments if key != (ns, "gone")},
        jobs={key for key in before.jobs if key[0] != ns} | {(ns, "kept", "web")},
    )
    assert dropped == 3  # the deployment "gone", its job, the job "alone"
    assert {s["deployment"] for s in of("dockyard_deployment_ready", ns)} == {"kept", "new"}
    assert {s["job_name"] for s in of("dockyard_instances", ns)} == {"web"}
    assert {s["deployment"] for s in of("dockyard_instances", ns)} == {"kept"}
    # Not a deletion: nothing is refused later (a live object it missed comes back).
    metrics.set_deployment_ready(ns, "gone", False)
    assert of("dockyard_deployment_ready", ns, deployment="gone")


def test_no_created_series_unless_asked_for(server: int, ns: str) -> None:
    metrics.record_container_restart(ns, "d", "web", "app", "oom")
    assert "_created" not in scrape(server)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: metrics.observe_reconcile("Job", "failed", 0.0), "result"),  # type: ignore[arg-type]
        (lambda: metrics.record_container_restart("n", "d", "j", "c", "killed"), "reason"),  # type: ignore[arg-type]
        (lambda: metrics.record_disk_operation("aws", "grow", True), "operation"),  # type: ignore[arg-type]
        (lambda: metrics.observe_provider_call("", "create_vm"), "provider"),
    ],
)
def test_a_label_outside_its_set_is_refused_naming_the_argument(
    call: object, argument: str
) -> None:
    with pytest.raises(ValueError, match=f"^{argument}: "):
        call()  # type: ignore[operator]


def test_endpoint_serves_a_parseable_exposition(server: int, ns: str) -> None:
    metrics.set_deployment_ready(ns, "d", True)
    metrics.record_container_restart(ns, "d", "web", "app", "oom")
    text = scrape(server)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    build = [s for s in families["dockyard_build_info"].samples if s.value == 1]
    assert build and build[0].labels["version"] == metrics.dockyard_version() != "unknown"
    ready = families["dockyard_deployment_ready"].samples
    assert any(s.labels == {"namespace": ns, "deployment": "d"} and s.value == 1 for s in ready)
    restarts = families["dockyard_container_restarts"]
    assert restarts.type == "counter"
    assert any(
        s.labels.get("namespace") == ns and s.labels["reason"] == "oom" and s.value == 1
        for s in restarts.samples
        if s.name == "dockyard_container_restarts_total"
    )
    # Only our registry: no process/python collectors of the global default registry.
    assert not [name for name in families if not name.startswith("dockyard_")]
