"""Whatever the models allow survives the real apiserver unchanged: no field is pruned, renamed or
defaulted differently from the models (spec through create, status through the status
subresource)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dockyard.api.crds import openapi_schema
from dockyard.api.models import (
    Deployment,
    Job,
    PersistentDisk,
    parse_deployment,
    parse_job,
    parse_persistent_disk,
)
from dockyard.api.schema import API_VERSION, GROUP, VERSION, ApiModel
from dockyard.api.validation import validate_dependencies
from tests.api.strategies import from_schema, repair_spec
from tests.conftest import Kubectl

KINDS: dict[str, tuple[type[ApiModel], str, Callable[[dict[str, Any]], Any]]] = {
    "Deployment": (Deployment, "deployments", parse_deployment),
    "Job": (Job, "jobs", parse_job),
    "PersistentDisk": (PersistentDisk, "persistentdisks", parse_persistent_disk),
}
_names = itertools.count()


def objects(kind: str) -> st.SearchStrategy[tuple[dict[str, Any], dict[str, Any]]]:
    """(spec, status) pairs of ``kind`` that the models accept."""
    model, _, parse = KINDS[kind]
    properties = openapi_schema(model)["properties"]
    specs = from_schema(properties["spec"]).map(lambda spec: repair_spec(kind, spec))
    statuses = from_schema(properties["status"])

    def valid(pair: tuple[dict[str, Any], dict[str, Any]]) -> bool:
        try:
            parsed = parse({"metadata": {"name": "x"}, "spec": pair[0], "status": pair[1]})
        except ValidationError:
            return False
        return kind == "PersistentDisk" or not validate_dependencies(parsed.spec, job_name="x")

    return st.tuples(specs, statuses).filter(valid)


@pytest.fixture
def namespace(namespace: str, kubectl: Kubectl) -> str:
    """The API tests' namespace, at policy level privileged: whatever the models allow must
    round-trip, privileged containers and host paths included (a webhook of another test may
    be serving)."""
    kubectl("label", "namespace", namespace, "dockyard.dev/enforce=privileged")
    return namespace


@pytest.fixture(scope="module")
def custom_api(kubeconfig: str) -> Any:
    import kubernetes

    client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    yield kubernetes.client.CustomObjectsApi(client)
    client.close()


@pytest.mark.e2e
@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(
    max_examples=25,
    deadline=None,
    # No shrinking: each step costs apiserver calls and a failure could shrink for minutes; the
    # failing example is printed as drawn.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_models_round_trip_through_the_apiserver(
    kind: str, data: st.DataObject, custom_api: Any, crds_installed: None, namespace: str
) -> None:
    _, plural, parse = KINDS[kind]
    spec, status = data.draw(objects(kind), label="spec, status")
    name = f"rt-{next(_names)}"
    body = {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}

    created = custom_api.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
    stored = custom_api.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    assert created["spec"] == stored["spec"]
    assert parse(stored).spec == parse(body).spec

    created["status"] = status
    custom_api.replace_namespaced_custom_object_status(
        GROUP, VERSION, namespace, plural, name, created
    )
    stored = custom_api.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    assert parse(stored).status == parse({"spec": spec, "status": status}).status
    assert parse(stored).spec == parse(body).spec  # a status write leaves spec alone
