"""Observability end to end: a real Prometheus scrapes a real `dockyard run` that reconciles
real Deployments; what users and their alerts see when a container cannot start or crashes, and
that a credential from a Secret shows up in none of it (logs, Events, status, metrics)."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Kubectl
from tests.e2e.conftest import own_operator_namespace
from tests.e2e.test_monitor import IMAGE, SLEEP, kill_process, local, manifest, wait_ready
from tests.observability.prometheus import Prometheus, free_port
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e]
__all__ = ["local"]  # the fixture, used below

DEADLINE = 120


def with_secret_env(container: dict[str, Any]) -> dict[str, Any]:
    token = {"secretKeyRef": {"name": "app-secret", "key": "token"}}
    return {**container, "env": [{"name": "TOKEN", "valueFrom": token}]}


def restarts(prometheus: Prometheus, container: str, reason: str) -> float:
    found = prometheus.query(
        f'sum(dockyard_container_restarts_total{{container="{container}", reason="{reason}"}})'
    )
    return float(found[0]["value"][1]) if found else 0.0


@pytest.mark.usefixtures("crds", "stemcell")
def test_prometheus_fires_on_reconcile_errors_and_counts_crashes_without_leaking_secrets(
    kubectl: Kubectl,
    kubeconfig: str,
    namespace_prefix: str,
    tmp_path: Path,
    docker_client: Any,
    local: Any,
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    port = free_port()
    with own_operator_namespace(
        kubectl, kubeconfig, namespace_prefix, "o", tmp_path, metrics_port=port, log_level="DEBUG"
    ) as (own, namespace, get_object):
        kubectl(
            "create", "secret", "generic", "app-secret", f"--from-literal=token={canary}",
            "-n", namespace,
        )  # fmt: skip
        own.start()
        (tmp_path / "prometheus").mkdir()
        prometheus = Prometheus(tmp_path / "prometheus", port)
        try:
            steady = {
                "name": "web",
                "instances": 1,
                "containers": [with_secret_env({"name": "srv", "image": IMAGE, "command": SLEEP})],
            }
            # The image is there, its entrypoint is not: every start fails in the engine.
            broken = {
                "name": "web",
                "instances": 1,
                "containers": [
                    with_secret_env(
                        {"name": "bad", "image": IMAGE, "command": ["/no/such/program"]}
                    )
                ],
            }
            kubectl("apply", "-n", namespace, "-f", "-", input=manifest("steady", steady))
            kubectl("apply", "-n", namespace, "-f", "-", input=manifest("broken", broken))
            wait_ready(get_object, "dyd", "steady")

            firing = wait_for(
                lambda: prometheus.firing("DockyardReconcileErrors"),
                timeout=DEADLINE,
                what="DockyardReconcileErrors to fire",
            )
            assert {alert["kind"] for alert in firing} == {"Job"}
            errors = prometheus.query(
                'sum by (reason) (dockyard_reconcile_errors_total{kind="Job"}) > 0'
            )
            assert {e["metric"]["reason"] for e in errors} == {"ContainerFailed"}, errors
            # The user sees why, on the object, without Prometheus.
            failed = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)[
                "items"
            ]
            assert any(
                e["reason"] == "ContainerFailed" and "/no/such/program" in e["message"]
                for e in failed
            ), [e["message"] for e in failed]

            # Failed starts back off (10 s, 20 s, …) rather than hammer the engine ...
            def failed_starts() -> list[float]:
                found = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)[
                    "items"
                ]
                return sorted(
                    datetime.fromisoformat(e["firstTimestamp"]).timestamp()
                    for e in found
                    if e["reason"] == "ContainerFailed"
                )

            times = wait_for(
                lambda: (lambda t: t if len(t) >= 3 else None)(failed_starts()),
                timeout=DEADLINE,
                what="three failed starts",
            )
            assert times[2] - times[0] >= 25, f"no back-off between failed starts: {times}"
            conditions = get_object("dyj", "broken-web")["status"]["conditions"]
            ready = next(c for c in conditions if c["type"] == "Ready")
            assert ready["status"] == "False" and ready["reason"] == "BackOff", ready
            assert "container bad failed to start" in ready["message"], ready
            # ... and a fixed spec is tried at once, not after the back-off.
            fixed = {**broken, "containers": [{**broken["containers"][0], "command": SLEEP}]}
            kubectl("apply", "-n", namespace, "-f", "-", input=manifest("broken", fixed))
            fixed_at = time.monotonic()
            wait_ready(get_object, "dyd", "broken")
            assert time.monotonic() - fixed_at < 30, "the fixed spec waited out the back-off"

            # A crash the engine repairs on its own is counted, as a crash.
            body = get_object("dyj", "steady-web")
            (vm,) = local.find_vms({"owner-uid": body["metadata"]["uid"]})
            engine = local.docker_client(vm.id)
            try:
                (srv,) = engine.containers.list(filters={"label": "dockyard.dev/container=srv"})
                assert srv.exec_run(["sh", "-c", "echo $TOKEN"]).output.decode().strip() == canary
            finally:
                engine.close()
            wait_for(
                lambda: prometheus.query('dockyard_container_restarts_total{container="srv"}'),
                timeout=DEADLINE,
                what="srv's restart series to be scraped",
            )
            before = restarts(prometheus, "srv", "crash")
            kill_process(docker_client, local, vm.id, "srv")
            wait_for(
                lambda: restarts(prometheus, "srv", "crash") >= before + 1,
                timeout=DEADLINE,
                what="the crash of srv counted",
            )
            assert restarts(prometheus, "srv", "spec_change") == 0
            crashed = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)[
                "items"
            ]
            # (the engine restarts it, or Dockyard does when it sees it down first)
            assert any(
                e["reason"] in ("ContainerCrashed", "RestartedContainer") and "srv" in e["message"]
                for e in crashed
            ), [(e["reason"], e["message"]) for e in crashed]
            scraped = prometheus.query('{__name__=~"dockyard_.+"}')
        finally:
            prometheus.stop()
            everything = {
                "log": "".join(p.read_text() for p in sorted(tmp_path.glob("operator-*.log"))),
                "events": kubectl("get", "events", "-n", namespace, "-o", "json").stdout,
                "objects": kubectl("get", "dyd,dyj", "-n", namespace, "-o", "json").stdout,
            }
        everything["metrics"] = json.dumps(scraped)
        for where, text in everything.items():
            assert canary not in text, f"the Secret's value is in the {where}"


def series_lines(port: int) -> list[str]:
    """The samples the operator exports now (the exposition without its comments)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def of_deployment(lines: list[str], namespace: str, deployment: str) -> list[str]:
    return [
        line
        for line in lines
        if f'namespace="{namespace}"' in line and f'deployment="{deployment}"' in line
    ]


# What the ServiceMonitor scrapes at (deploy/monitoring/servicemonitor.yaml): "within a scrape".
SCRAPE_INTERVAL = 30


@pytest.mark.usefixtures("crds", "stemcell")
def test_a_deleted_deployments_series_go_within_a_scrape_and_its_alert_resolves(
    kubectl: Kubectl, kubeconfig: str, namespace_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    with own_operator_namespace(
        kubectl, kubeconfig, namespace_prefix, "m", tmp_path, metrics_port=port
    ) as (own, namespace, get_object):
        own.start()
        (tmp_path / "prometheus").mkdir()
        prometheus = Prometheus(tmp_path / "prometheus", port)
        try:
            srv = {"name": "srv", "image": IMAGE, "command": SLEEP}
            two = {"name": "web", "instances": 1, "containers": [srv, {**srv, "name": "side"}]}
            never = {"name": "web", "instances": 1, "containers": [{**srv, "name": "bad"}]}
            never["containers"][0]["command"] = ["/no/such/program"]
            kubectl("apply", "-n", namespace, "-f", "-", input=manifest("steady", two))
            kubectl("apply", "-n", namespace, "-f", "-", input=manifest("broken", never))
            wait_ready(get_object, "dyd", "steady")
            wait_for(
                lambda: [
                    a
                    for a in prometheus.firing("DockyardDeploymentNotReady")
                    if a["deployment"] == "broken"
                ],
                timeout=DEADLINE,
                what="DockyardDeploymentNotReady for broken",
            )
            assert of_deployment(series_lines(port), namespace, "broken")

            # A container leaves the spec: its series go with it, its sibling's stay.
            kubectl("apply", "-n", namespace, "-f", "-", input=manifest("steady", {**two, "containers": [srv]}))  # fmt: skip
            wait_ready(get_object, "dyd", "steady")
            wait_for(
                lambda: (
                    not [
                        line
                        for line in of_deployment(series_lines(port), namespace, "steady")
                        if 'container="side"' in line
                    ]
                ),
                timeout=SCRAPE_INTERVAL,
                what="the series of the removed container gone",
            )
            assert [
                line
                for line in of_deployment(series_lines(port), namespace, "steady")
                if 'container="srv"' in line
            ]

            # The not-Ready Deployment is deleted: its series, its jobs' and containers' go.
            kubectl("delete", "dyd", "broken", "-n", namespace, "--wait=false")
            wait_for(
                lambda: not of_deployment(series_lines(port), namespace, "broken"),
                timeout=SCRAPE_INTERVAL,
                what="every series of the deleted Deployment gone",
            )
            wait_for(
                lambda: not prometheus.alerts("DockyardDeploymentNotReady"),
                timeout=SCRAPE_INTERVAL,
                what="DockyardDeploymentNotReady resolved",
            )
            # Its Job's teardown (VM, containers) wrote nothing back.
            wait_for(
                lambda: (
                    not kubectl(
                        "get", "dyj", "broken-web", "-n", namespace, check=False
                    ).stdout.strip()
                ),
                timeout=DEADLINE,
                what="the Job of broken torn down",
            )
            assert not of_deployment(series_lines(port), namespace, "broken")
            assert of_deployment(series_lines(port), namespace, "steady")
        finally:
            prometheus.stop()


@pytest.mark.usefixtures("crds", "stemcell")
def test_fifty_deployments_made_and_deleted_leave_the_series_at_their_baseline(
    kubectl: Kubectl, kubeconfig: str, namespace_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    with own_operator_namespace(
        kubectl, kubeconfig, namespace_prefix, "c", tmp_path, metrics_port=port
    ) as (own, namespace, get_object):
        own.start()
        job = {"name": "web", "instances": 1, "containers": [{"name": "srv", "image": IMAGE, "command": SLEEP}]}  # fmt: skip
        kubectl("apply", "-n", namespace, "-f", "-", input=manifest("steady", job))
        wait_ready(get_object, "dyd", "steady")

        def cycle(names: list[str]) -> None:
            """Made, seen by the operator (their series exported), deleted, torn down."""
            items = [json.loads(manifest(name, job)) for name in names]
            listed = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
            kubectl("apply", "-n", namespace, "-f", "-", input=listed)
            wait_for(
                lambda: all(of_deployment(series_lines(port), namespace, n) for n in names),
                timeout=DEADLINE,
                what=f"series of {len(names)} new Deployments",
            )
            kubectl("delete", "dyd", *names, "-n", namespace, "--wait=false")
            wait_for(
                lambda: (
                    not kubectl("get", "dyj", "-n", namespace, "-o", "name").stdout.count("churn-")
                ),
                timeout=DEADLINE,
                what="their Jobs torn down",
            )

        job = {**job, "instances": 0}  # no VMs: a delete racing a VM's creation leaks it (filed)
        cycle(["churn-warm"])  # the first VM teardown's provider series, made once for good
        baseline = series_lines(port)
        for batch in range(5):
            cycle([f"churn-{batch}-{n}" for n in range(10)])
        after = series_lines(port)
        assert not [line for line in after if 'deployment="churn-' in line]
        labelled = [line for line in after if "deployment=" in line]
        assert len(labelled) == len([line for line in baseline if "deployment=" in line])
        # The rest is per kind, provider operation and result: bounded by those sets.
        assert len(after) - len(baseline) <= 10, sorted(set(after) - set(baseline))
