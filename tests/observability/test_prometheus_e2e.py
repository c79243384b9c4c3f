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
# with the metrics module as `m`, acknowledged with "ok".
ENDPOINT = """
import sys
from dockyard.observability import metrics as m
server, _ = m.start_metrics_server(0, "127.0.0.1")
print(server.server_port, flush=True)
for line in sys.stdin:
    exec(line, {"m": m})
    print("ok", flush=True)
"""


class Endpoint:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", ENDPOINT],
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

    # Three OOM kills in a row (the first was already counted): crash looping.
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
