"""The ClusterRole of deploy/ is enough: the real operator, authenticated as a ServiceAccount bound
to exactly those rules (a token from the TokenRequest API, no admin rights), converges a
Deployment (its Job, a persistent disk, a Secret-fed env var, status, Events, finalizers), then
tears it down — without a single Forbidden. The webhook rules are not exercised here: a webhook registered by a test would
intercept every other test's objects."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Kubectl
from tests.e2e.conftest import crds, stemcell  # noqa: F401 (fixtures)
from tests.observability.conftest import DEPLOY, kustomize, one
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

MANIFEST = """
apiVersion: v1
kind: Secret
metadata: {name: store-password}
stringData: {password: s3cret}
---
apiVersion: dockyard.dev/v1alpha1
kind: Deployment
metadata: {name: rbac}
spec:
  provider: {type: local}
  jobs:
  - name: store
    instances: 1
    persistentDisk: {size: 64Mi, reclaimPolicy: Delete}
    containers:
    - name: db
      image: "dockyard/busybox:1"
      command: [sh, -c, "sleep 100000"]
      env:
      - name: PASSWORD
        valueFrom: {secretKeyRef: {name: store-password, key: password}}
"""


@pytest.fixture
def rbac_namespace(kubectl: Kubectl) -> Iterator[str]:
    """A namespace outside the per-worker prefix, so only this test's operator watches it."""
    name = f"dyrbac-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def service_account_kubeconfig(
    kubectl: Kubectl, kubeconfig: str, rbac_namespace: str, tmp_path: Path
) -> Iterator[str]:
    """A kubeconfig holding only a token of ServiceAccount `dockyard`, bound to deploy/'s rules."""
    role = one(kustomize(DEPLOY), "ClusterRole", "dockyard")
    secrets = one(kustomize(DEPLOY), "ClusterRole", "dockyard-secrets")
    name = f"dockyard-rbac-test-{rbac_namespace}"
    objects = [
        # Scoped to its namespaces, the operator reads Secrets only there (docs/security.md).
        {**secrets, "metadata": {"name": f"{name}-secrets"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "dockyard-secrets", "namespace": rbac_namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{name}-secrets",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": "dockyard", "namespace": rbac_namespace}
            ],
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "dockyard"}},
        {**role, "metadata": {"name": name}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": "dockyard", "namespace": rbac_namespace}
            ],
        },
    ]
    try:
        kubectl("apply", "-n", rbac_namespace, "-f", "-", input=yaml.safe_dump_all(objects))
        token = kubectl(
            "create", "token", "dockyard", "-n", rbac_namespace, "--duration=3600s"
        ).stdout.strip()
        admin = yaml.safe_load(Path(kubeconfig).read_text())
        cluster = admin["clusters"][0]["cluster"]
        if "certificate-authority" in cluster:  # inline it: the file path is relative to admin's
            ca = Path(kubeconfig).parent / cluster.pop("certificate-authority")
            cluster["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "dockyard", "user": {"token": token}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "dockyard"}}],
            "current-context": "c",
        }
        path = tmp_path / "dockyard.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        yield str(path)
    finally:
        kubectl("delete", "clusterrolebinding,clusterrole", name, check=False)
        kubectl("delete", "clusterrole", f"{name}-secrets", check=False)


@pytest.fixture
def operator_as_service_account(
    crds: None,  # noqa: F811
    stemcell: None,  # noqa: F811
    service_account_kubeconfig: str,
    rbac_namespace: str,
    tmp_path: Path,
) -> Iterator[tuple[Path, str]]:
    log_path = tmp_path / "operator.log"
    command = [
        str(REPO / ".venv" / "bin" / "dockyard"),
        "run",
        "--namespace",
        f"{rbac_namespace}*",  # a glob: kopf then watches namespaces too, as cluster-wide does
        "--metrics-port",
        "0",
        "--liveness",
        "",
    ]
    env = {**os.environ, "KUBECONFIG": service_account_kubeconfig}
    env.pop("DOCKYARD_WEBHOOK_PORT", None)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(
            lambda: (
                process.poll() is not None
                or b"Initial authentication has finished" in log_path.read_bytes()
            ),
            timeout=60,
            what="the operator to start",
        )
        assert process.poll() is None, log_path.read_text()
        yield log_path, service_account_kubeconfig
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _get(kubectl: Kubectl, namespace: str, kind: str, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
    )
    return loaded


def _ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    ready = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
    return (
        bool(ready)
        and ready[0]["status"] == "True"
        and status.get("observedGeneration") == obj["metadata"]["generation"]
    )


def test_the_cluster_role_is_enough_to_converge_and_tear_down(
    kubectl: Kubectl, rbac_namespace: str, operator_as_service_account: tuple[Path, str]
) -> None:
    log, service_account = operator_as_service_account

    def can_i(*args: str) -> str:
        result = subprocess.run(
            ["kubectl", "--kubeconfig", service_account, "auth", "can-i", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout.strip()

    # The operator really runs without admin rights: only what the ClusterRole grants.
    assert can_i("get", "secrets", "-n", rbac_namespace) == "yes"
    assert can_i("get", "secrets", "-n", "default") == "no"  # scoped: only where it works
    assert can_i("list", "secrets", "-n", rbac_namespace) == "no"
    assert can_i("create", "pods", "-n", rbac_namespace) == "no"
    assert can_i("delete", "customresourcedefinitions") == "no"
    kubectl("apply", "-n", rbac_namespace, "-f", "-", input=textwrap.dedent(MANIFEST))
    try:
        wait_for(
            lambda: _ready(_get(kubectl, rbac_namespace, "dyd", "rbac")),
            timeout=180,
            what="Deployment rbac Ready",
        )
        (job,) = json.loads(kubectl("get", "dyj", "-n", rbac_namespace, "-o", "json").stdout)[
            "items"
        ]
        (instance,) = job["status"]["instances"]
        assert instance.get("disk"), instance  # the persistent disk is attached
        assert [c["ready"] for c in instance["containers"]] == [True]
    finally:
        kubectl("delete", "dyd", "rbac", "-n", rbac_namespace, "--timeout=120s", check=False)
        wait_for(
            lambda: not kubectl("get", "dyj", "-n", rbac_namespace, "-o", "name").stdout.strip(),
            timeout=120,
            what="the Job torn down",
        )
        # Its disk was orphaned: deleting the orphan's record deletes it now (as the operator
        # does with the cluster role under test).
        kubectl("delete", "dypd", "-l", "dockyard.dev/orphaned=true", "-n", rbac_namespace)
        wait_for(
            lambda: (
                not kubectl(
                    "get", "dyd,dyj,dypd", "-n", rbac_namespace, "-o", "name"
                ).stdout.strip()
            ),
            timeout=120,
            what="everything torn down",
        )
    text = log.read_text()
    assert "Forbidden" not in text and " 403" not in text, text[-3000:]
