"""Observability end to end: a real Prometheus scrapes a real `dockyard run` that reconciles
real Deployments; what users and their alerts see when a container cannot start or crashes, and
that a credential from a Secret shows up in none of it (logs, Events, status, metrics)."""

from __future__ import annotations

import json
import time
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
