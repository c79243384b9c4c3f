"""The generated CRDs: up to date, structural, documented, and accepted by the real apiserver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dockyard.api.crds import build_crds, render_crds, write_crds
from tests.conftest import Kubectl

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_crds_directory_is_up_to_date() -> None:
    expected = render_crds()
    on_disk = {path.name: path.read_text() for path in (REPO / "crds").glob("*.yaml")}
    stale = sorted(name for name in expected if on_disk.get(name) != expected[name])
    assert not stale and set(on_disk) == set(expected), (
        f"crds/ is stale ({stale or sorted(set(on_disk) ^ set(expected))}): run "
        "`.venv/bin/python -m dockyard.api.crds` and commit the result"
    )


def test_write_crds_writes_what_render_returns(tmp_path: Path) -> None:
    paths = write_crds(tmp_path / "out")
    assert sorted(p.name for p in paths) == [
        "deployments.dockyard.dev.yaml",
        "disksnapshots.dockyard.dev.yaml",
        "jobs.dockyard.dev.yaml",
        "persistentdisks.dockyard.dev.yaml",
    ]
    rendered = render_crds()
    for path in paths:
        assert path.read_text() == rendered[path.name]


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _schemas() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, crd in build_crds().items():
        yield name, crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_schemas_are_structural_and_bounded() -> None:
    problems = []
    for crd_name, schema in _schemas():
        for path, node in _walk(schema, crd_name):
            if "$ref" in node or "allOf" in node or "oneOf" in node:
                problems.append(f"{path}: $ref/allOf/oneOf")
            if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
                problems.append(f"{path}: anyOf outside int-or-string")
            if "type" not in node and not node.get("x-kubernetes-int-or-string"):
                problems.append(f"{path}: no type")
            unbounded = node.get("type") == "string" and not {"maxLength", "enum"} & set(node)
            # CEL never reads timestamps or the apiserver-owned apiVersion/kind
            exempt = node.get("format") == "date-time" or path in {
                f"{crd_name}.apiVersion",
                f"{crd_name}.kind",
            }
            if unbounded and not exempt:
                problems.append(f"{path}: string without maxLength")
            if node.get("type") == "array" and "maxItems" not in node:
                problems.append(f"{path}: array without maxItems")
            if "title" in node or node.get("default", "") is None:
                problems.append(f"{path}: title or null default")
    assert problems == []


def test_every_field_has_a_description() -> None:
    missing = [
        f"{path}.{name}"
        for crd_name, schema in _schemas()
        for path, node in _walk(schema, crd_name)
        for name, child in node.get("properties", {}).items()
        if not child.get("description") and name != "metadata"
    ]
    assert missing == []


def test_kinds_names_and_subresources() -> None:
    crds = build_crds()
    names = {c["spec"]["names"]["kind"]: c["spec"]["names"] for c in crds.values()}
    assert {k: n["shortNames"] for k, n in names.items()} == {
        "Deployment": ["dyd"],
        "Job": ["dyj"],
        "PersistentDisk": ["dypd"],
        "DiskSnapshot": ["dysnap"],
    }
    assert all(n["categories"] == ["dockyard"] for n in names.values())
    job = crds["jobs.dockyard.dev.yaml"]["spec"]["versions"][0]
    assert job["subresources"]["scale"] == {
        "specReplicasPath": ".spec.instances",
        "statusReplicasPath": ".status.replicas",
    }
    for crd in crds.values():
        version = crd["spec"]["versions"][0]
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["properties"]["kopf"]["x-kubernetes-preserve-unknown-fields"] is True
        assert "status" in version["subresources"]
        assert version["additionalPrinterColumns"][-1]["name"] == "Age"


def test_max_in_flight_and_sizes_are_int_or_string() -> None:
    _, schema = next(s for s in _schemas() if s[0].startswith("deployments"))
    spec = schema["properties"]["spec"]["properties"]
    max_in_flight = spec["update"]["properties"]["maxInFlight"]
    assert max_in_flight["x-kubernetes-int-or-string"] is True and "pattern" in max_in_flight
    size = spec["jobs"]["items"]["properties"]["persistentDisk"]["properties"]["size"]
    assert size["x-kubernetes-int-or-string"] is True and "pattern" in size
    assert spec["jobs"]["x-kubernetes-list-map-keys"] == ["name"]


# --- against the real apiserver ----------------------------------------------------------------


@pytest.mark.e2e
def test_crds_are_established(kubectl: Kubectl, crds_installed: None) -> None:
    for name in build_crds():
        crd = json.loads(kubectl("get", "crd", name.removesuffix(".yaml"), "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True"
        assert conditions.get("NonStructuralSchema") is None


@pytest.mark.e2e
def test_kubectl_explain_prints_descriptions(kubectl: Kubectl, crds_installed: None) -> None:
    from tests.waiting import wait_for

    # The OpenAPI document is republished asynchronously after a CRD change.
    def explained() -> str | None:
        result = kubectl("explain", "dyd.spec.jobs", check=False)
        return result.stdout if result.returncode == 0 else None

    text = wait_for(explained, timeout=60, interval=0.5, what="kubectl explain dyd.spec.jobs")
    assert "Jobs (instance groups); each becomes a Job object." in text
    assert "persistentDisk" in text and "A persistent disk for each instance" in text
    nested = kubectl("explain", "dyd.spec.jobs.containers.dependsOn").stdout
    assert "Containers that must run before this one" in nested


@pytest.mark.e2e
def test_get_dockyard_category_lists_all_kinds(
    kubectl: Kubectl, crds_installed: None, namespace: str
) -> None:
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES[0]))
    listed = kubectl("get", "dockyard", "-n", namespace)
    assert "deployment.dockyard.dev/" in listed.stdout
    for kind in ("dyd", "dyj", "dypd"):
        kubectl("get", kind, "-n", namespace)
    headers = kubectl("get", "dyd", "-n", namespace).stdout.splitlines()[0].split()
    assert headers == ["NAME", "READY", "INSTANCES", "READY-INSTANCES", "PROVIDER", "AGE"]


@pytest.mark.e2e
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_accepted(
    kubectl: Kubectl, crds_installed: None, namespace: str, example: Path
) -> None:
    kubectl("apply", "-n", namespace, "-f", str(example))
    for document in yaml.safe_load_all(example.read_text()):
        name = document["metadata"]["name"]
        stored = json.loads(kubectl("get", "dyd", name, "-n", namespace, "-o", "json").stdout)
        # defaults were filled in by the apiserver, as the models would
        assert stored["spec"]["resurrection"]["meltdownPercent"] == 20
        assert all(
            c["restartPolicy"] == "Always" for j in stored["spec"]["jobs"] for c in j["containers"]
        )
