"""What the API accepts, the engine runs: each edge of tests/api/edges.py against the real
apiserver (values outside it refused at apply, naming the field; the value inside it accepted)
and against a real engine (the value inside it runs in a local VM, and the engine shows it).

And what only the engine can know (a user the image lacks, a command it does not have) makes
the Job Stalled at once, in the engine's words, until a spec change mends it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from dockyard.providers import ProviderConfig, make_provider
from dockyard.providers.base import TAG_OWNER_UID
from tests.api.edges import (
    EDGES,
    IMAGE,
    JOB_EDGES,
    LONGEST_JOB,
    LONGEST_TAG,
    OBJECT_EDGES,
    Edge,
    JobEdge,
    ObjectEdge,
    container,
    deployment,
    engine_container,
    engine_deployment,
    job,
    job_with,
    one_container,
)
from tests.conftest import Kubectl
from tests.e2e.conftest import tear_down_deployments
from tests.e2e.test_reconciler import condition, wait_ready
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e]

ENGINE_DEPLOYMENT = "parity-" + "x" * (LONGEST_JOB - len("-edges") - len("parity-"))


@pytest.fixture(scope="module")
def edge_namespace(kubectl: Kubectl, namespace_prefix: str, operator: Any) -> Iterator[str]:
    name = f"{namespace_prefix}{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    # The edges of the engine, privileged and host paths among them: the policy allows all.
    kubectl("label", "namespace", name, "dockyard.dev/enforce=privileged")
    yield name
    tear_down_deployments(kubectl, name)
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def get(kubectl: Kubectl, namespace: str, kind: str, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
    )
    return loaded


@pytest.fixture(scope="module")
def running(kubectl: Kubectl, edge_namespace: str, docker_client: Any) -> dict[str, Any]:
    """The engine deployment, Ready: every inside value at once. -> {job: its VM's engine}."""
    docker_client.images.get(IMAGE).tag("dockyard/busybox", LONGEST_TAG)
    manifest = yaml.safe_dump(engine_deployment(ENGINE_DEPLOYMENT))
    kubectl("apply", "-n", edge_namespace, "-f", "-", input=manifest)
    wait_ready(
        lambda kind, name: get(kubectl, edge_namespace, kind, name), "dyd", ENGINE_DEPLOYMENT
    )
    provider = make_provider(ProviderConfig(type="local"))
    engines = {}
    for name in ("edges", "more"):
        uid = get(kubectl, edge_namespace, "dyj", f"{ENGINE_DEPLOYMENT}-{name}")["metadata"]["uid"]
        (vm,) = provider.find_vms({TAG_OWNER_UID: uid})
        engines[name] = provider.docker_client(vm.id)
    return engines


def refused(kubectl: Kubectl, namespace: str, manifest: dict[str, Any], field: str) -> None:
    result = kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-",
        input=yaml.safe_dump(manifest), check=False,
    )  # fmt: skip
    assert result.returncode != 0, f"accepted: {manifest}"
    assert field in result.stderr, f"the error does not name {field}:\n{result.stderr}"


def accepted(kubectl: Kubectl, namespace: str, manifest: dict[str, Any]) -> None:
    kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))


def inspect(engines: dict[str, Any], edge: Edge) -> dict[str, Any]:
    job_name, name = engine_container(edge)
    (found,) = engines[job_name].containers.list(
        all=True, filters={"label": f"dockyard.dev/container={name}"}
    )
    attrs: dict[str, Any] = found.attrs
    return attrs


@pytest.mark.parametrize("edge", EDGES, ids=lambda e: e.id)
def test_container_edge(
    edge: Edge,
    kubectl: Kubectl,
    edge_namespace: str,
    running: dict[str, Any],
    request: pytest.FixtureRequest,
) -> None:
    if edge.webhook:
        request.getfixturevalue("admission_webhook")
    for outside in edge.outside:
        refused(kubectl, edge_namespace, one_container(outside), f"containers[0].{edge.field}")
    if edge.inside is None:
        return
    accepted(kubectl, edge_namespace, one_container(edge.inside))
    attrs = inspect(running, edge)
    assert attrs["State"]["Status"] == "running", attrs["State"]
    if edge.shows is not None:
        assert edge.shows(attrs), (edge.id, attrs["Config"], attrs["HostConfig"])


@pytest.mark.parametrize("edge", JOB_EDGES, ids=lambda e: e.id)
def test_job_edge(
    edge: JobEdge,
    kubectl: Kubectl,
    edge_namespace: str,
    running: dict[str, Any],
    admission_webhook: str,
) -> None:
    for outside in edge.outside:
        refused(kubectl, edge_namespace, job_with(outside), f"spec.jobs[0].{edge.field}")
    accepted(kubectl, edge_namespace, job_with(edge.inside))
    for spec in edge.inside:
        (found,) = running["more"].containers.list(
            all=True, filters={"label": f"dockyard.dev/container={spec['name']}"}
        )
        assert found.status == "running"


@pytest.mark.parametrize("edge", OBJECT_EDGES, ids=lambda e: e.id)
def test_object_edge(edge: ObjectEdge, kubectl: Kubectl, edge_namespace: str) -> None:
    for outside in edge.outside:
        refused(kubectl, edge_namespace, outside, edge.field)
    for inside in edge.inside:
        accepted(kubectl, edge_namespace, inside)


def test_the_longest_job_name_runs(running: dict[str, Any]) -> None:
    """The engine deployment's first Job has the longest name allowed: its disk record too."""
    assert len(f"{ENGINE_DEPLOYMENT}-edges") == LONGEST_JOB
    assert running["edges"].containers.list()


# --- what only the engine can know ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "words", "mended"),
    [
        ({"user": "nosuchuser"}, "unable to find user nosuchuser", {"user": "65534"}),
        ({"command": ["no-such-binary"]}, "no-such-binary", {"command": ["sleep", "100000"]}),
    ],
    ids=["user-the-image-lacks", "command-the-image-lacks"],
)
def test_a_refusal_only_the_engine_knows_is_stalled_in_its_words_until_mended(
    fields: dict[str, Any],
    words: str,
    mended: dict[str, Any],
    kubectl: Kubectl,
    edge_namespace: str,
    operator: Any,
) -> None:
    name = f"refused-{uuid.uuid4().hex[:6]}"
    manifest = deployment(name, [job("j", [container("app", **fields)], disk=False)])
    kubectl("apply", "-n", edge_namespace, "-f", "-", input=yaml.safe_dump(manifest))
    job_name = f"{name}-j"

    def stalled() -> dict[str, Any] | None:
        found = condition(get(kubectl, edge_namespace, "dyj", job_name), "Stalled")
        return found if found and found["status"] == "True" else None

    # At the first refusal, not after a series of back-offs (10 s, 20 s...).
    said = wait_for(stalled, timeout=30, what="the Job Stalled")
    assert said["reason"] == "Refused", said
    assert words in said["message"], said
    ready = condition(get(kubectl, edge_namespace, "dyj", job_name), "Ready")
    assert ready is not None and ready["status"] == "False" and words in ready["message"]

    manifest = deployment(name, [job("j", [container("app", **mended)], disk=False)])
    kubectl("apply", "-n", edge_namespace, "-f", "-", input=yaml.safe_dump(manifest))
    wait_ready(lambda kind, n: get(kubectl, edge_namespace, kind, n), "dyj", job_name)
    after = condition(get(kubectl, edge_namespace, "dyj", job_name), "Stalled")
    assert after is None or after["status"] == "False", after
    kubectl("delete", "dyd", name, "-n", edge_namespace, "--timeout=120s")


def test_a_capability_the_vm_withholds_is_stalled_naming_it(
    kubectl: Kubectl, edge_namespace: str, operator: Any
) -> None:
    """On a host that refuses --privileged, local VMs lack SYS_RESOURCE: a container asking for
    it is refused by the runtime itself, in words that name the field."""
    if not make_provider(ProviderConfig(type="local")).withheld_capabilities:
        pytest.skip("this host's local VMs can grant every capability")
    name = f"capped-{uuid.uuid4().hex[:6]}"
    app = container("app", capAdd=["SYS_RESOURCE"])
    manifest = deployment(name, [job("j", [app], disk=False)])
    kubectl("apply", "-n", edge_namespace, "-f", "-", input=yaml.safe_dump(manifest))

    def stalled() -> dict[str, Any] | None:
        found = condition(get(kubectl, edge_namespace, "dyj", f"{name}-j"), "Stalled")
        return found if found and found["status"] == "True" else None

    said = wait_for(stalled, timeout=30, what="the Job Stalled")
    assert "capAdd SYS_RESOURCE: this provider's VMs cannot grant it" in said["message"], said
    kubectl("delete", "dyd", name, "-n", edge_namespace, "--timeout=120s")
