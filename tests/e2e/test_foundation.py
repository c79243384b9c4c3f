"""The ground everything stands on: a real apiserver with RBAC, and kopf handling objects on it."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from tests.conftest import Kubectl
from tests.waiting import wait_for

SMOKE_CRD = textwrap.dedent(
    """
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata: {name: smokes.smoke.dockyard.dev}
    spec:
      group: smoke.dockyard.dev
      scope: Namespaced
      names: {plural: smokes, singular: smoke, kind: Smoke}
      versions:
      - name: v1
        served: true
        storage: true
        subresources: {status: {}}
        schema:
          openAPIV3Schema:
            type: object
            properties:
              spec:
                type: object
                properties: {message: {type: string}}
              status:
                type: object
                x-kubernetes-preserve-unknown-fields: true
    """
)


@pytest.fixture(scope="module")
def smoke_crd(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", input=SMOKE_CRD)
    kubectl("wait", "--for=condition=Established", "crd/smokes.smoke.dockyard.dev")


def test_rbac_is_enforced(kubectl: Kubectl, namespace: str) -> None:
    assert kubectl("auth", "can-i", "create", "deployments.apps").stdout.strip() == "yes"
    kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    denied = kubectl(
        "auth",
        "can-i",
        "create",
        "deployments.apps",
        "-n",
        namespace,
        "--as",
        f"system:serviceaccount:{namespace}:nobody",
        check=False,
    )
    assert denied.stdout.strip() == "no"
    # and a real request as that identity is refused by the authorizer, not just predicted
    forbidden = kubectl(
        "get",
        "secrets",
        "-n",
        namespace,
        "--as",
        f"system:serviceaccount:{namespace}:nobody",
        check=False,
    )
    assert forbidden.returncode != 0 and "forbidden" in forbidden.stderr.lower()


def apply_smoke(kubectl: Kubectl, namespace: str, name: str) -> None:
    smoke = f"apiVersion: smoke.dockyard.dev/v1\nkind: Smoke\nmetadata: {{name: {name}}}\n"
    kubectl("apply", "-n", namespace, "-f", "-", input=smoke + "spec: {message: ahoy}\n")


def test_applied_object_reads_back_through_python_client(
    kubectl: Kubectl, namespace: str, smoke_crd: None
) -> None:
    import kubernetes

    apply_smoke(kubectl, namespace, "hello")
    api = kubernetes.client.CustomObjectsApi(kubernetes.config.new_client_from_config())
    obj = api.get_namespaced_custom_object("smoke.dockyard.dev", "v1", namespace, "smokes", "hello")
    assert obj["spec"] == {"message": "ahoy"}


def test_kopf_handles_an_object_on_the_real_apiserver(
    kubectl: Kubectl, namespace: str, smoke_crd: None
) -> None:
    import kopf
    from kopf.testing import KopfRunner

    # A private registry: other in-process operators of this test session stay out of it.
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.create("smoke.dockyard.dev", "v1", "smokes", registry=registry)
    def echo(spec: kopf.Spec, patch: kopf.Patch, **_: object) -> None:
        patch.status["echo"] = str(spec["message"]).upper()

    args = ["run", "--standalone", "--namespace", namespace]
    previous = kopf.get_default_registry()  # `run` makes ours the default: given back below
    try:
        with KopfRunner(args, timeout=60, registry=registry) as runner:
            apply_smoke(kubectl, namespace, "watched")

            def echoed() -> bool:
                got = kubectl("get", "smoke", "watched", "-n", namespace, "-o", "json")
                return json.loads(got.stdout).get("status", {}).get("echo") == "AHOY"

            wait_for(echoed, timeout=30, what="kopf to write status.echo")
    finally:
        kopf.set_default_registry(previous)
    assert runner.exception is None, runner.exception
    assert runner.exit_code == 0
