"""A real Prometheus (the Debian `prometheus` package) scrapes a real Dockyard metrics endpoint
and evaluates deploy/monitoring/rules.yaml — with every `for:` cut to 1 s so that alerts fire
within the test (the rules' expressions are unchanged). It checks what promtool cannot: the
exposition, the scrape labels (honor_labels keeps Dockyard's `namespace`/`container`) and that a
first failure is visible to increase() thanks to the series the helpers create at 0."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.observability.prometheus import Prometheus
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

# The metrics endpoint of an operator, driven by the test: one Python statement per line, run
# with the metrics module as `m`, acknowledged with "ok". `busy()` starts Job passes every
# 0.1 s in the background (a working operator), failing while `failing` is set.
ENDPOINT = """
import sys, threading
from dockyard.observability import metrics as m
server, _ = m.start_metrics_server(int(sys.argv[1]), "127.0.0.1")
print(server.server_port, flush=True)
failing = threading.Event()
def passes():
    pace = threading.Event()
    while not pace.wait(0.1):
        m.observe_reconcile("Job", "error" if failing.is_set() else "success", 0.0)
def busy():
    threading.Thread(target=passes, daemon=True).start()
for line in sys.stdin:
    exec(line)
    print("ok", flush=True)
"""


class Endpoint:
    def __init__(self, port: int = 0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", ENDPOINT, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def do(self, statement: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(statement + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "ok", statement

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    started = Endpoint()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def prometheus(tmp_path: Path, endpoint: Endpoint) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path, endpoint.port)
    try:
        yield server
    finally:
        server.stop()


def test_alerts_fire_on_a_scraped_operator(prometheus: Prometheus, endpoint: Endpoint) -> None:
    def scraped(expr: str) -> list[dict[str, Any]]:
        return wait_for(lambda: prometheus.query(expr), timeout=20, what=f"{expr} to be scraped")

    (build,) = scraped("dockyard_build_info")
    assert build["metric"]["job"] == "dockyard"

    # Dockyard's own namespace/container labels survive the scrape (honor_labels).
    endpoint.do("m.set_deployment_ready('shop', 'redis', False)")
    endpoint.do("m.record_container_restart('shop', 'redis', 'cache', 'redis', 'oom')")
    (ready,) = scraped("dockyard_deployment_ready")
    assert ready["metric"]["namespace"] == "shop" and "exported_namespace" not in ready["metric"]
    restarts = scraped('dockyard_container_restarts_total{reason="oom"}')
    assert {r["metric"]["container"] for r in restarts} == {"redis"}

    firing = wait_for(
        lambda: prometheus.firing("DockyardDeploymentNotReady"), timeout=30, what="NotReady"
    )
    assert firing[0]["namespace"] == "shop" and firing[0]["deployment"] == "redis"
    assert not prometheus.firing("DockyardDiskResizeFailed")
    assert not prometheus.firing("DockyardOperatorDown")

    # One successful disk operation creates the provider's series at 0 ...
    endpoint.do("m.record_disk_operation('aws', 'create', ok=True)")
    scraped('dockyard_disk_operations_total{provider="aws", operation="resize", result="error"}')
    # ... so a single failed resize is an increase Prometheus sees.
    endpoint.do("m.record_disk_operation('aws', 'resize', ok=False)")
    firing = wait_for(
        lambda: prometheus.firing("DockyardDiskResizeFailed"), timeout=30, what="ResizeFailed"
    )
    assert firing[0]["provider"] == "aws"

    # Three OOM kills in a row (the first was already counted): crash looping. (The operator
    # publishes the crash-loop gauge of every container it runs; the rule counts only those.)
    endpoint.do("m.set_crash_looping('shop', 'redis', 'cache', ['redis'], looping=[])")
    for _ in range(2):
        endpoint.do("m.record_container_restart('shop', 'redis', 'cache', 'redis', 'oom')")
    firing = wait_for(
        lambda: prometheus.firing("DockyardContainerCrashLooping"), timeout=30, what="CrashLoop"
    )
    assert {(f["job_name"], f["container"]) for f in firing} == {("cache", "redis")}

    # The operator goes away.
    endpoint.stop()
    wait_for(lambda: prometheus.firing("DockyardOperatorDown"), timeout=30, what="OperatorDown")


def test_a_healthy_operator_raises_no_alert(prometheus: Prometheus, endpoint: Endpoint) -> None:
    for statement in (
        "m.set_deployment_ready('shop', 'redis', True)",
        "m.set_job_state('shop', 'redis', 'cache', ready=3, total=3, halted=False, meltdown=False)",
        "m.observe_reconcile('Job', 'success', 0.0)",
        "m.record_container_restart('shop', 'redis', 'cache', 'app', 'upstream')",
        "m.record_disk_operation('local', 'resize', ok=True)",
        "m.record_vm_resurrection('shop', 'redis', 'cache', ok=True)",
    ):
        endpoint.do(statement)
    wait_for(
        lambda: prometheus.query('dockyard_vm_resurrections_total{result="success"} == 1'),
        timeout=20,
        what="the last statement to be scraped",
    )
    # Every series is in; let the rules be evaluated a few more times (1 s apart), then look.
    now = float(prometheus._get("/api/v1/query", query="time()")["data"]["result"][1])
    wait_for(
        lambda: prometheus.last_evaluation() > now + 3,
        timeout=20,
        what="three more rule evaluations",
    )
    alerts = prometheus._get("/api/v1/alerts")["data"]["alerts"]
    assert alerts == [], alerts  # neither firing nor pending


# --- every alert fires on its condition and resolves when it goes --------------------------
# Windows scaled from minutes to seconds (see tests/observability/prometheus.py); the same
# expressions, edges at their real sizes in tests/observability/promtool/.

DEADLINE = 60.0


@pytest.fixture
def scaled(tmp_path: Path, endpoint: Endpoint) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path, endpoint.port, scaled_windows=True)
    try:
        yield server
    finally:
        server.stop()


def fires(prometheus: Prometheus, alert: str, **labels: str) -> list[dict[str, str]]:
    def firing() -> list[dict[str, str]]:
        found = prometheus.firing(alert)
        return [a for a in found if all(a.get(k) == v for k, v in labels.items())]

    return wait_for(firing, timeout=DEADLINE, what=f"{alert} {labels} to fire")


def resolves(prometheus: Prometheus, alert: str, within: float = DEADLINE) -> None:
    wait_for(lambda: not prometheus.alerts(alert), timeout=within, what=f"{alert} to resolve")


# A deleted object's alert resolves at the next scrape and evaluation (1 s each here), well
# before its counters' window (15 s here) would have let it go.
AT_ONCE = 8.0


def scraped(prometheus: Prometheus, expr: str) -> None:
    wait_for(lambda: prometheus.query(expr), timeout=20, what=f"{expr} to be scraped")


JOB = "'shop', 'redis', 'cache'"


def test_not_ready_fires_and_resolves_when_ready_and_when_deleted(
    scaled: Prometheus, endpoint: Endpoint
) -> None:
    endpoint.do("m.set_deployment_ready('shop', 'redis', False)")
    fires(scaled, "DockyardDeploymentNotReady", deployment="redis")
    endpoint.do("m.set_deployment_ready('shop', 'redis', True)")
    resolves(scaled, "DockyardDeploymentNotReady")
    endpoint.do("m.set_deployment_ready('shop', 'redis', False)")
    fires(scaled, "DockyardDeploymentNotReady", deployment="redis")
    endpoint.do("m.forget_deployment('shop', 'redis')")
    resolves(scaled, "DockyardDeploymentNotReady", within=AT_ONCE)


def test_crash_looping_fires_and_resolves_when_it_stops_and_when_deleted(
    scaled: Prometheus, endpoint: Endpoint
) -> None:
    endpoint.do(f"m.set_crash_looping({JOB}, ['redis', 'sentinel'], looping=['redis'])")
    assert {a["container"] for a in fires(scaled, "DockyardContainerCrashLooping")} == {"redis"}
    endpoint.do(f"m.set_crash_looping({JOB}, ['redis', 'sentinel'], looping=[])")
    resolves(scaled, "DockyardContainerCrashLooping")
    # Counted restarts (the series exist at 0 since the pass above), then the job is deleted.
    # ... older than the (15 s) window, as a container's series are, so that its restarts are
    # counted by increase() and only the rule's tie to the live gauge can resolve it at once.
    scraped(
        scaled, 'dockyard_container_restarts_total{container="sentinel", reason="oom"} offset 16s'
    )
    for _ in range(3):
        endpoint.do(f"m.record_container_restart({JOB}, 'sentinel', 'oom')")
    fires(scaled, "DockyardContainerCrashLooping", container="sentinel")
    endpoint.do(f"m.forget_job({JOB})")
    resolves(scaled, "DockyardContainerCrashLooping", within=AT_ONCE)


def test_meltdown_fires_and_resolves_when_it_ends_and_when_deleted(
    scaled: Prometheus, endpoint: Endpoint
) -> None:
    state = f"m.set_job_state({JOB}, ready=0, total=4, halted=False, meltdown={{}})"
    endpoint.do(state.format(True))
    fires(scaled, "DockyardResurrectionMeltdown", job_name="cache")
    endpoint.do(state.format(False))
    resolves(scaled, "DockyardResurrectionMeltdown")
    endpoint.do(state.format(True))
    fires(scaled, "DockyardResurrectionMeltdown", job_name="cache")
    endpoint.do("m.forget_deployment('shop', 'redis')")
    resolves(scaled, "DockyardResurrectionMeltdown", within=AT_ONCE)


def test_resurrection_failing_fires_resolves_after_its_window_and_when_deleted(
    scaled: Prometheus, endpoint: Endpoint
) -> None:
    endpoint.do(f"m.set_job_state({JOB}, ready=0, total=1, halted=False, meltdown=False)")
    scraped(scaled, 'dockyard_vm_resurrections_total{result="failure"} == 0')
    for _ in range(2):
        endpoint.do(f"m.record_vm_resurrection({JOB}, ok=False)")
    fires(scaled, "DockyardVMResurrectionFailing", job_name="cache")
    resolves(scaled, "DockyardVMResurrectionFailing")  # no new failure in the (15 s) window
    for _ in range(2):
        endpoint.do(f"m.record_vm_resurrection({JOB}, ok=False)")
    fires(scaled, "DockyardVMResurrectionFailing", job_name="cache")
    endpoint.do(f"m.forget_job({JOB})")
    resolves(scaled, "DockyardVMResurrectionFailing", within=AT_ONCE)


def test_disk_resize_failed_fires_and_resolves_after_its_window(
    scaled: Prometheus, endpoint: Endpoint
) -> None:
    endpoint.do("m.record_disk_operation('gce', 'create', ok=True)")
    scraped(scaled, 'dockyard_disk_operations_total{operation="resize", result="error"} == 0')
    endpoint.do("m.record_disk_operation('gce', 'resize', ok=False)")
    fires(scaled, "DockyardDiskResizeFailed", provider="gce")
    resolves(scaled, "DockyardDiskResizeFailed")  # no new failure in the (30 s) window


def test_reconcile_errors_fire_and_resolve_when_passes_succeed_again(
    scaled: Prometheus, endpoint: Endpoint
) -> None:
    endpoint.do("busy()")
    scraped(scaled, 'dockyard_reconcile_total{kind="Job", result="success"} > 0')
    endpoint.do("failing.set()")
    fires(scaled, "DockyardReconcileErrors", kind="Job")
    endpoint.do("failing.clear()")
    resolves(scaled, "DockyardReconcileErrors")


def test_operator_down_fires_and_resolves_when_it_is_back(
    scaled: Prometheus, endpoint: Endpoint
) -> None:
    scraped(scaled, 'up{job="dockyard"} == 1')
    endpoint.stop()
    fires(scaled, "DockyardOperatorDown")
    back = Endpoint(endpoint.port)
    try:
        resolves(scaled, "DockyardOperatorDown")
    finally:
        back.stop()
