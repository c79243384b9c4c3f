"""Dependency validation that CEL cannot do: cycles and references across jobs."""

from __future__ import annotations

from typing import Any

from dockyard.api.models import DeploymentSpec, JobSpec
from dockyard.api.validation import FieldError, resolve_dependency, validate_dependencies


def container(name: str, *depends_on: str) -> dict[str, Any]:
    return {"name": name, "image": "dockyard/busybox:1", "dependsOn": list(depends_on)}


def deployment(**jobs: list[dict[str, Any]]) -> DeploymentSpec:
    return DeploymentSpec.model_validate(
        {
            "provider": {"type": "local"},
            "jobs": [{"name": name, "containers": cs} for name, cs in jobs.items()],
        }
    )


def messages(errors: list[FieldError]) -> list[str]:
    return [str(error) for error in errors]


def test_valid_graph_has_no_errors() -> None:
    spec = deployment(
        backend=[container("db"), container("api", "db")],
        web=[container("web", "backend/api", "backend/db"), container("logs", "web")],
    )
    assert validate_dependencies(spec) == []


def test_two_container_cycle_names_field_and_path() -> None:
    spec = deployment(store=[container("app", "web"), container("web", "app")])
    assert messages(validate_dependencies(spec)) == [
        "spec.jobs[0].containers[0].dependsOn: dependency cycle app -> web -> app"
    ]


def test_longer_cycle_is_reported_once() -> None:
    spec = deployment(
        j=[container("a", "b"), container("b", "c"), container("c", "a"), container("d", "a")]
    )
    assert messages(validate_dependencies(spec)) == [
        "spec.jobs[0].containers[0].dependsOn: dependency cycle a -> b -> c -> a"
    ]


def test_two_separate_cycles_are_both_reported() -> None:
    spec = deployment(
        j=[container("a", "b"), container("b", "a"), container("c", "d"), container("d", "c")]
    )
    assert messages(validate_dependencies(spec)) == [
        "spec.jobs[0].containers[0].dependsOn: dependency cycle a -> b -> a",
        "spec.jobs[0].containers[2].dependsOn: dependency cycle c -> d -> c",
    ]


def test_cycle_across_jobs_uses_qualified_names() -> None:
    spec = deployment(
        backend=[container("db"), container("api", "web/web")],
        web=[container("web", "backend/api")],
    )
    assert messages(validate_dependencies(spec)) == [
        "spec.jobs[0].containers[1].dependsOn:"
        " dependency cycle backend/api -> web/web -> backend/api"
    ]


def test_qualified_reference_to_own_job_closes_a_cycle() -> None:
    spec = deployment(store=[container("a", "store/b"), container("b", "a")])
    assert messages(validate_dependencies(spec)) == [
        "spec.jobs[0].containers[0].dependsOn: dependency cycle a -> b -> a"
    ]


def test_self_dependency() -> None:
    spec = deployment(store=[container("db", "store/db")])
    assert messages(validate_dependencies(spec)) == [
        "spec.jobs[0].containers[0].dependsOn: 'store/db': a container cannot depend on itself"
    ]


def test_unknown_references() -> None:
    spec = deployment(
        backend=[container("api")],
        web=[container("web", "nope", "frontend/x", "backend/db", "backend/api")],
    )
    assert messages(validate_dependencies(spec)) == [
        "spec.jobs[1].containers[0].dependsOn: 'nope': there is no container 'nope' in this job",
        "spec.jobs[1].containers[0].dependsOn: 'frontend/x': there is no job 'frontend' in this"
        " deployment",
        "spec.jobs[1].containers[0].dependsOn: 'backend/db': there is no container 'db' in job"
        " 'backend'",
    ]


def test_standalone_job_checks_its_own_graph_only() -> None:
    spec = JobSpec.model_validate(
        {
            "provider": {"type": "local"},
            "containers": [
                container("a", "b", "other/x"),
                container("b", "shop-web/a"),
            ],
        }
    )
    # "other/x" is another Job object: not checkable here; "shop-web/a" is this Job itself.
    assert messages(validate_dependencies(spec, job_name="shop-web")) == [
        "spec.containers[0].dependsOn: dependency cycle a -> b -> a"
    ]
    assert validate_dependencies(spec, job_name="something-else") == []


def test_spec_name_wins_over_object_name() -> None:
    spec = JobSpec.model_validate(
        {
            "name": "web",
            "provider": {"type": "local"},
            "containers": [container("a", "web/b"), container("b", "a")],
        }
    )
    assert len(validate_dependencies(spec, job_name="shop-web")) == 1


def test_resolve_dependency() -> None:
    assert resolve_dependency("db", "store") == ("store", "db")
    assert resolve_dependency("backend/api", "web") == ("backend", "api")
