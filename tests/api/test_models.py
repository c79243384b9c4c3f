"""The pydantic models: defaults, camelCase JSON, parsing kopf bodies, and their own checks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from dockyard.api.conditions import READY, STALLED, Condition, condition
from dockyard.api.models import (
    DeploymentSpec,
    JobSpec,
    parse_deployment,
    parse_job,
    parse_persistent_disk,
)
from dockyard.api.validation import errors_from_validation

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def minimal_deployment() -> dict[str, Any]:
    return {
        "metadata": {"name": "d", "namespace": "ns", "generation": 3, "uid": "u-1"},
        "spec": {
            "provider": {"type": "local"},
            "jobs": [{"name": "store", "containers": [{"name": "db", "image": "busybox"}]}],
        },
    }


def test_defaults_match_the_documented_ones() -> None:
    deployment = parse_deployment(minimal_deployment())
    update, resurrection = deployment.spec.update, deployment.spec.resurrection
    assert (update.canaries, update.max_in_flight, update.serial) == (1, 1, True)
    assert update.canary_watch_time == update.update_watch_time == "1s-30s"
    assert (resurrection.enabled, resurrection.meltdown_min_down) == (True, 5)
    assert (resurrection.meltdown_percent, resurrection.unresponsive_timeout) == (20, "5s")
    job = deployment.spec.jobs[0]
    assert job.instances == 1 and job.persistent_disk is None and job.vm_type is None
    container = job.containers[0]
    assert container.restart_policy == "Always"
    assert (container.restart_backoff.initial, container.restart_backoff.max) == ("1s", "5m")
    assert container.privileged is False
    assert container.depends_on == [] and container.env == [] and container.labels == {}
    assert deployment.status.conditions == [] and deployment.status.instances == 0


def test_health_check_and_disk_defaults() -> None:
    spec = JobSpec.model_validate(
        {
            "provider": {"type": "aws", "region": "eu-west-1"},
            "persistentDisk": {"size": "10Gi"},
            "containers": [{"name": "c", "image": "i", "healthCheck": {"http": {"port": 80}}}],
        }
    )
    assert spec.persistent_disk is not None
    assert spec.persistent_disk.reclaim_policy == "Delete"
    assert spec.persistent_disk.size_bytes == 10 * 1024**3
    check = spec.containers[0].health_check
    assert check is not None and check.http is not None
    assert (check.interval, check.timeout, check.retries, check.start_period) == (
        "10s",
        "1s",
        3,
        "0s",
    )
    assert check.http.path == "/"


def test_json_is_camel_case_and_python_is_snake_case() -> None:
    body = minimal_deployment()
    body["spec"]["update"] = {"maxInFlight": "25%", "canaryWatchTime": "5s"}
    body["spec"]["jobs"][0]["containers"][0]["bindVolumes"] = [{"mountPath": "/x"}]
    deployment = parse_deployment(body)
    assert deployment.spec.update.max_in_flight == "25%"
    dumped = deployment.spec.to_dict()
    assert dumped["update"]["maxInFlight"] == "25%"
    assert dumped["update"]["canaryWatchTime"] == "5s"
    assert dumped["jobs"][0]["containers"][0]["bindVolumes"] == [
        {"mountPath": "/x", "readOnly": False}
    ]
    assert "persistentDisk" not in dumped["jobs"][0]  # None is left out, not sent as null
    # snake_case names are accepted too (populate_by_name)
    same = DeploymentSpec.model_validate(
        {
            "provider": {"type": "local"},
            "update": {"max_in_flight": "25%"},
            "jobs": [{"name": "a", "containers": [{"name": "c", "image": "i"}]}],
        }
    )
    assert same.update.max_in_flight == "25%"


def test_parse_kopf_body_with_status() -> None:
    body = {
        "apiVersion": "dockyard.dev/v1alpha1",
        "kind": "Job",
        "metadata": {"name": "redis-store", "namespace": "ns", "generation": 2},
        "spec": {
            "provider": {"type": "local"},
            "instances": 2,
            "containers": [{"name": "db", "image": "i"}],
        },
        "status": {
            "replicas": 2,
            "readyInstances": 1,
            "observedGeneration": 2,
            "instances": [
                {
                    "index": 0,
                    "vmId": "vm-1",
                    "containers": [{"name": "db", "state": "running", "restartCount": 4}],
                }
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "Rolling",
                    "lastTransitionTime": "2025-01-02T03:04:05Z",
                }
            ],
            "kopf": {"progress": {"x": 1}},
        },
    }
    job = parse_job(body)
    assert job.job_name == "redis-store"
    assert job.status.instances[0].containers[0].restart_count == 4
    assert job.status.conditions[0].last_transition_time == datetime(
        2025, 1, 2, 3, 4, 5, tzinfo=UTC
    )
    assert job.status.kopf == {"progress": {"x": 1}}
    # a brand-new object has status null
    body["status"] = None
    assert parse_job(body).status.replicas == 0


def test_persistent_disk_quantities_from_integers() -> None:
    disk = parse_persistent_disk(
        {"metadata": {"name": "d"}, "spec": {"size": 1073741824, "provider": {"type": "gce"}}}
    )
    assert disk.spec.size == "1073741824"
    assert disk.spec.size_bytes == 1024**3


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (lambda j: j.update(instances=-1), "spec.jobs[0].instances", "greater than or equal"),
        (lambda j: j.update(name="Bad_Name"), "spec.jobs[0].name", "pattern"),
        (
            lambda j: j["containers"].append({"name": "db", "image": "x"}),
            "spec.jobs[0]",
            "unique",
        ),
        (
            lambda j: j["containers"][0].update(volumes=[{"mountPath": "/d"}]),
            "spec.jobs[0]",
            "no persistentDisk",
        ),
        (
            lambda j: j["containers"][0].update(dependsOn=["db"]),
            "spec.jobs[0].containers[0]",
            "cannot depend on itself",
        ),
        (
            lambda j: j["containers"][0].update(
                healthCheck={"tcp": {"port": 1}, "exec": {"command": ["true"]}}
            ),
            "spec.jobs[0].containers[0].healthCheck",
            "exactly one",
        ),
        (
            lambda j: j["containers"][0].update(env=[{"name": "A"}]),
            "spec.jobs[0].containers[0].env[0]",
            "exactly one of value or valueFrom",
        ),
        (
            lambda j: j.update(persistentDisk={"size": "1GB"}),
            "spec.jobs[0].persistentDisk.size",
            "pattern",
        ),
        (
            lambda j: j["containers"][0].update(restartPolicy="Sometimes"),
            "spec.jobs[0].containers[0].restartPolicy",
            "Always",
        ),
    ],
)
def test_models_refuse_bad_specs_naming_the_field(change: Any, field: str, message: str) -> None:
    body = minimal_deployment()
    change(body["spec"]["jobs"][0])
    with pytest.raises(ValidationError) as caught:
        parse_deployment(body)
    errors = errors_from_validation(caught.value)
    assert any(e.field == field and message in e.message for e in errors), errors


def test_bad_max_in_flight_and_watch_time() -> None:
    body = minimal_deployment()
    body["spec"]["update"] = {"maxInFlight": "150%"}
    with pytest.raises(ValidationError, match="maxInFlight"):
        parse_deployment(body)
    body["spec"]["update"] = {"updateWatchTime": "30s-1s"}
    with pytest.raises(ValidationError, match="low end"):
        parse_deployment(body)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_parse(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        assert document["kind"] == "Deployment"
        deployment = parse_deployment(document)
        assert all(
            c.image == "dockyard/busybox:1" for j in deployment.spec.jobs for c in j.containers
        )


def test_condition_moves_transition_time_only_when_its_status_flips() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    t1 = datetime(2025, 1, 2, tzinfo=UTC)
    first = condition([], READY, False, "Creating", "0/1", 1, t0)
    assert first["lastTransitionTime"] == "2025-01-01T00:00:00Z"
    same = condition([first], READY, False, "Rolling", "1/2", 2, t1)
    assert same["lastTransitionTime"] == "2025-01-01T00:00:00Z" and same["reason"] == "Rolling"
    assert same["observedGeneration"] == 2
    flipped = condition([same], READY, True, "Converged", "", 2, t1)
    assert flipped["status"] == "True" and flipped["lastTransitionTime"] == "2025-01-02T00:00:00Z"
    other = condition([flipped], STALLED, False, "Converged", "", 2, t1)
    assert other["lastTransitionTime"] == "2025-01-02T00:00:00Z"  # its own, not Ready's
    Condition.model_validate(flipped)  # the wire form the CRD schema accepts
