"""Dockyard in a cluster, as a user installs it: the operator image built here (a Debian Python
base and the repository's Dockerfile), a real node (hack/node.sh: kubelet, containerd,
kube-scheduler), `kubectl apply -k` of deploy/ (restricted Pod Security) and then of deploy/local/
(the local provider's overlay) over it. The pair of operator Pods runs under its ServiceAccount's
RBAC alone, its webhook is called through its Service, and when the active Pod is deleted another
takes over and repairs what broke meanwhile."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, Kubectl, _locked
from tests.e2e.conftest import GetObject, tear_down_deployments
from tests.e2e.test_api_outage import engine_started
from tests.e2e.test_monitor import kill_process, local  # noqa: F401
from tests.e2e.test_reconciler import wait_ready
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("stemcell")]

SYSTEM = "dockyard-system"  # deploy/'s namespace
LEASE = "dockyard"  # deploy/base/operator.yaml: --leader-lease=dockyard-system/dockyard
SELECTOR = "app.kubernetes.io/name=dockyard,app.kubernetes.io/component=operator"
CYCLE = """
apiVersion: dockyard.dev/v1alpha1
kind: Deployment
metadata: {name: cycle}
spec:
  provider: {type: local}
  jobs:
  - name: loop
    instances: 1
    containers:
    - {name: first, image: "dockyard/busybox:1", dependsOn: [second]}
    - {name: second, image: "dockyard/busybox:1", dependsOn: [first]}
"""


def _hack(*args: str, timeout: float = 1200) -> str:
    result = subprocess.run(
        ["bash", str(REPO / "hack" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"hack/{' '.join(args)} failed:\n{result.stderr}"
    return result.stdout.strip()


@pytest.fixture(scope="session")
def node(kubeconfig: str, docker_engine: None) -> Iterator[None]:
    """The local control plane's node, brought up once (unless it already runs) and torn down
    at the end of the session."""
    if "DOCKYARD_TEST_KUBECONFIG" in os.environ:
        pytest.skip("the node is hack/node.sh's, beside the local control plane")
    with _locked("node"):
        was_up = subprocess.run(["bash", str(REPO / "hack" / "node.sh"), "status"]).returncode == 0
        started = time.monotonic()
        _hack("node.sh", "up")
        print(f"node up in {time.monotonic() - started:.1f} s")
    yield
    if not was_up:
        with _locked("node"):
            _hack("node.sh", "down")


@pytest.fixture(scope="session")
def operator_image(node: None) -> str:
    """The operator image, built from the Dockerfile and moved into the node's containerd."""
    started = time.monotonic()
    image = _hack("operator-image.sh")
    _hack("node.sh", "load", image)
    print(f"operator image built and loaded in {time.monotonic() - started:.1f} s")
    return image


def _json(kubectl: Kubectl, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def _active_pod(kubectl: Kubectl) -> str | None:
    """The Ready operator Pod holding the lease (only the active replica is Ready)."""
    holder = _json(kubectl, "lease", LEASE, "-n", SYSTEM)["spec"].get("holderIdentity") or ""
    for pod in _operator_pods(kubectl):
        name = pod["metadata"]["name"]
        ready = any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod["status"].get("conditions", [])
        )
        if ready and holder.startswith(name + "-") and not pod["metadata"].get("deletionTimestamp"):
            return str(name)
    return None


def _standby_pods(kubectl: Kubectl) -> list[str]:
    """Operator Pods running but not Ready: standing by."""
    return [
        p["metadata"]["name"]
        for p in _operator_pods(kubectl)
        if p["status"].get("phase") == "Running"
        and not p["metadata"].get("deletionTimestamp")
        and not any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"]
        )
    ]


def _metric(kubectl: Kubectl, pod: str, name: str, **labels: str) -> float:
    """A series of the Pod's metrics (read at its address on the node's bridge), 0 if absent."""
    address = _json(kubectl, "pod", pod, "-n", SYSTEM)["status"]["podIP"]
    with urllib.request.urlopen(f"http://{address}:9090/metrics", timeout=5) as answer:
        text = answer.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _rejections(kubectl: Kubectl, webhook: str) -> int:
    """How many times the apiserver had the webhook ``webhook`` answer with a refusal."""
    metrics = kubectl("get", "--raw", "/metrics").stdout
    pattern = re.compile(
        r'^apiserver_admission_webhook_request_total\{[^}]*name="'
        + re.escape(webhook)
        + r'"[^}]*rejected="true"[^}]*\} (\d+)',
        re.M,
    )
    return sum(int(count) for count in pattern.findall(metrics))


def _kustomization(directory: Path, source: Path, glob: str, configuration: str) -> Path:
    """``source`` (deploy/ or an overlay) as is, but watching only ``glob`` (the test operators
    of the other workers watch theirs) under a webhook configuration of its own."""
    directory.mkdir()
    base = os.path.relpath(source, directory)
    patch = [
        {
            "op": "add",
            "path": "/spec/template/spec/containers/0/args/-",
            "value": f"--namespace={glob}",
        },
        {
            "op": "add",
            "path": "/spec/template/spec/containers/0/env/-",
            "value": {"name": "DOCKYARD_WEBHOOK_CONFIGURATION", "value": configuration},
        },
    ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base],
        "patches": [
            {"target": {"kind": "Deployment", "name": "dockyard"}, "patch": json.dumps(patch)}
        ],
    }
    (directory / "kustomization.yaml").write_text(json.dumps(kustomization))
    return directory


def _operator_pods(kubectl: Kubectl) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = _json(kubectl, "pods", "-n", SYSTEM, "-l", SELECTOR)["items"]
    return pods


def _privileged(pod: dict[str, Any]) -> bool:
    (container,) = pod["spec"]["containers"]
    return bool((container.get("securityContext") or {}).get("privileged"))


def _uninstall(kubectl: Kubectl, configuration: str) -> None:
    """Everything deploy/ installed but the CRDs (the other workers' tests use them)."""
    kubectl("delete", "namespace", SYSTEM, "--timeout=120s", check=False, timeout=150)
    kubectl(
        "delete",
        "clusterrole,clusterrolebinding",
        "-l",
        "app.kubernetes.io/part-of=dockyard",
        check=False,
    )
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        kubectl("delete", kind, configuration, "--ignore-not-found", check=False)


@pytest.mark.timeout(1200)  # a cold run builds the operator image first (Debian, then pip)
def test_the_operator_runs_in_cluster_from_deploy_and_a_standby_takes_over(
    kubectl: Kubectl,
    namespace_prefix: str,
    operator_image: str,
    tmp_path: Path,
    docker_client: Any,
    local: Any,  # noqa: F811
) -> None:
    prefix = namespace_prefix.rstrip("-") + "incluster-"
    namespace = f"{prefix}{uuid.uuid4().hex[:8]}"
    configuration = f"validate-{prefix}dockyard.dev".replace("--", "-")

    def get_object(kind: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = _json(kubectl, kind, name, "-n", namespace)
        return found

    getter: GetObject = get_object
    base = _kustomization(tmp_path / "base", REPO / "deploy", f"{prefix}*", configuration)
    overlay = _kustomization(
        tmp_path / "local", REPO / "deploy" / "local", f"{prefix}*", configuration
    )
    kubectl("create", "namespace", namespace)
    try:
        # --- deploy/ as is: the pair comes up under restricted Pod Security, one active (Ready),
        # one standing by
        started = time.monotonic()
        kubectl("apply", "-k", str(base), timeout=120)
        labels = _json(kubectl, "namespace", SYSTEM)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        wait_for(lambda: _active_pod(kubectl), timeout=120, what="an active operator Pod")
        wait_for(lambda: _standby_pods(kubectl), timeout=60, what="a standby operator Pod")
        print(f"deploy/: operator pair up (one Ready) in {time.monotonic() - started:.1f} s")

        # --- deploy/local/ over it: a rollout that ends (both Pods replaced, the old ones gone
        # at once: a standby stops on SIGTERM), one active again
        started = time.monotonic()
        kubectl("apply", "-k", str(overlay), timeout=120)

        def rolled_out() -> bool:
            pods = _operator_pods(kubectl)
            return len(pods) == 2 and all(_privileged(p) for p in pods)

        # Under the Pods' 60 s grace period: a standby that ignored SIGTERM would be still there.
        wait_for(rolled_out, timeout=55, what="deploy/local/ rolled out, the old Pods gone")
        wait_for(lambda: _active_pod(kubectl), timeout=60, what="an active operator Pod")
        wait_for(lambda: _standby_pods(kubectl), timeout=60, what="a standby operator Pod")
        print(f"deploy/local/: rolled out in {time.monotonic() - started:.1f} s")

        # --- the admission webhook, called through its Service, refuses what CRDs cannot
        webhook = f"deployments-dependencies.{configuration}"

        def configured() -> bool:
            found = _json(kubectl, "validatingwebhookconfiguration", configuration)
            services = [w["clientConfig"].get("service") for w in found.get("webhooks") or []]
            return bool(services) and all(
                s and (s["namespace"], s["name"]) == (SYSTEM, "dockyard-webhook") for s in services
            )

        wait_for(configured, timeout=60, what="the webhook configuration naming its Service")

        def refused_by_it() -> bool:
            before = _rejections(kubectl, webhook)
            result = kubectl("apply", "-n", namespace, "-f", "-", input=CYCLE, check=False)
            if result.returncode == 0:
                # Failed open (Ignore) while the new active Pod was putting its certificate in
                # the configuration: take it back and try again.
                kubectl("delete", "dyd", "cycle", "-n", namespace, "--timeout=60s", timeout=90)
                return False
            assert "dependency cycle" in result.stderr, result.stderr
            # Other webhooks (another worker's) may refuse it too: it must be this one.
            return _rejections(kubectl, webhook) > before

        wait_for(refused_by_it, timeout=60, interval=1, what="the in-cluster webhook refusing")

        # --- the example converges through the in-cluster operator (nothing else watches here)
        kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "redis-style.yaml"))
        wait_ready(getter, "dyd", "redis")
        active = wait_for(lambda: _active_pod(kubectl), timeout=30, what="the active Pod")
        wait_for(
            lambda: (
                _metric(
                    kubectl,
                    active,
                    "dockyard_deployment_ready",
                    namespace=namespace,
                    deployment="redis",
                )
                == 1
            ),
            timeout=30,
            what="the active Pod's metrics saying it made the example Ready",
        )
        vm_id = get_object("dyj", "redis-store")["status"]["instances"][0]["vmId"]
        app_before = engine_started(local, vm_id, "app")

        # --- the active Pod deleted, a container killed meanwhile: another Pod takes over and
        # restarts the killed container's dependent (the standby, or the Pod replacing the
        # deleted one if it finds the released lease first)
        kubectl("delete", "pod", "-n", SYSTEM, active, "--wait=false")
        kill_process(docker_client, local, vm_id, "db")
        killed = time.time()
        new_active = wait_for(
            lambda: (pod := _active_pod(kubectl)) != active and pod,
            timeout=60,
            what="another operator Pod active",
        )
        took_over = time.time()
        app_back = wait_for(
            lambda: (t := engine_started(local, vm_id, "app")) > app_before and t,
            timeout=60,
            what="the new active Pod restarting db's dependent",
        )
        wait_for(
            lambda: (
                _metric(
                    kubectl,
                    new_active,
                    "dockyard_dependent_restarts_total",
                    namespace=namespace,
                    container="app",
                )
                >= 1
            ),
            timeout=30,
            what="the new active Pod's metrics counting the dependent's restart",
        )
        print(
            f"in-cluster failover: another Pod active {took_over - killed:.1f} s, "
            f"dependent repaired {app_back - killed:.1f} s after the kill"
        )
        wait_ready(getter, "dyd", "redis")
        # The Deployment replaces the deleted Pod: a new standby.
        wait_for(lambda: _standby_pods(kubectl), timeout=120, what="a new standby Pod")
    finally:
        active_left = None
        with contextlib.suppress(AssertionError):  # nothing to read when it never came up
            for pod in _operator_pods(kubectl):
                name = pod["metadata"]["name"]
                logs = kubectl("logs", "-n", SYSTEM, name, check=False).stdout
                (tmp_path / f"{name}.log").write_text(logs)
            print(f"operator Pods' logs: {tmp_path}")
            active_left = _active_pod(kubectl)
        if active_left is not None:  # the teardown of VMs and disks needs it
            tear_down_deployments(kubectl, namespace)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        _uninstall(kubectl, configuration)
