"""From a container of the API to what the runtime runs."""

from __future__ import annotations

import pytest

from dockyard.api.containers import Container
from dockyard.api.models import Job
from dockyard.handlers.desired import container_want, job_desired
from dockyard.planning import ContainerKey


@pytest.mark.parametrize(("grace", "seconds"), [(None, None), ("0s", 0), ("500ms", 1), ("30s", 30)])
def test_stop_grace_period_is_whole_seconds_rounded_up_and_zero_means_at_once(
    grace: str | None, seconds: int | None
) -> None:
    container = Container(name="a", image="busybox", stop_grace_period=grace)
    assert container_want(container, "spec.containers[0]", {}).config.stop_timeout == seconds


def job_of(*containers: dict[str, object]) -> Job:
    return Job.model_validate(
        {
            "metadata": {"name": "shop-web", "namespace": "ns", "generation": 1},
            "spec": {"name": "web", "provider": {"type": "local"}, "containers": list(containers)},
        }
    )


def test_links_to_another_job_are_in_the_config_and_to_its_own_job_resolved_on_its_vm() -> None:
    web = job_of(
        {"name": "cache", "image": "busybox", "ports": [{"containerPort": 6379, "hostPort": 6379}]},
        {"name": "app", "image": "busybox", "dependsOn": ["cache", "backend/api"]},
    )
    links = {ContainerKey("backend", "api"): ("10.0.0.2:8080", "10.0.0.3:8080")}
    desired = job_desired(web, {}, links=links)
    app = desired.containers[1]
    assert app.config.env["DOCKYARD_LINK_BACKEND_API"] == "10.0.0.2:8080,10.0.0.3:8080"
    assert (
        "/.dockyard/links/backend.api",
        "10.0.0.2:8080\n10.0.0.3:8080\n",
        0o644,
    ) in app.config.files
    assert app.local_links == (("cache", (6379,)),)  # its own VM's address, when it runs
    moved = job_desired(web, {}, links={ContainerKey("backend", "api"): ("10.0.0.9:8080",)})
    assert moved.containers[1].config_hash() != app.config_hash()  # new addresses: recreated
    assert moved.containers[0].config_hash() == desired.containers[0].config_hash()


def test_files_come_from_config_maps_and_secrets_and_a_missing_one_is_named() -> None:
    web = job_of(
        {
            "name": "app",
            "image": "busybox",
            "files": [
                {"path": "/etc/app.conf", "configMapRef": {"name": "conf", "key": "app.conf"}},
                {"path": "/run/token", "secretRef": {"name": "creds", "key": "token"}, "mode": 256},
            ],
        }
    )
    desired = job_desired(
        web, {"creds": {"token": "t0p"}}, config_maps={"conf": {"app.conf": "level=debug"}}
    )
    assert set(desired.containers[0].config.files) == {
        ("/etc/app.conf", "level=debug", 0o644),
        ("/run/token", "t0p", 0o400),
    }
    problems: list[str] = []
    job_desired(web, {}, config_maps={}, problems=problems)
    assert problems == [
        "spec.containers[0].files[0].configMapRef: key 'app.conf' of ConfigMap 'conf' does not exist",
        "spec.containers[0].files[1].secretRef: key 'token' of Secret 'creds' does not exist",
    ]


def test_a_config_without_files_hashes_as_before_files_existed() -> None:
    import hashlib
    import json
    from dataclasses import asdict

    config = container_want(Container(name="a", image="busybox"), "f", {}).config
    described = asdict(config)
    del described["files"]
    before = hashlib.sha256(json.dumps(described, sort_keys=True, default=list).encode())
    assert config.config_hash() == before.hexdigest()[:16]


def test_registry_credentials_come_from_docker_config_secrets_and_a_missing_one_is_named() -> None:
    import base64
    import json

    job = Job.model_validate(
        {
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {
                "provider": {"type": "local"},
                "imagePullSecrets": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "c", "image": "reg.example:5000/app:1"}],
            },
        }
    )
    auth = base64.b64encode(b"alice:pw1").decode()
    secrets = {
        "a": {
            ".dockerconfigjson": json.dumps({"auths": {"https://reg.example:5000": {"auth": auth}}})
        },
        "b": {
            ".dockerconfigjson": json.dumps(
                {
                    "auths": {
                        "reg.example:5000": {"username": "bob", "password": "pw2"},
                        "other.io": {"username": "carol", "password": "pw3"},
                    }
                }
            )
        },
    }
    pull = job_desired(job, secrets).containers[0].pull
    assert pull.auths == {
        "reg.example:5000": {"username": "alice", "password": "pw1"},  # the first Secret wins
        "other.io": {"username": "carol", "password": "pw3"},
    }
    assert pull.auth_for("reg.example:5000/app:1") == {"username": "alice", "password": "pw1"}
    problems: list[str] = []
    job_desired(job, {"a": secrets["a"]}, problems=problems)
    assert problems == [
        "spec.imagePullSecrets[1]: Secret 'b' does not exist or has no .dockerconfigjson "
        "(make it with kubectl create secret docker-registry)"
    ]


def test_a_jobs_commands_combine_its_own_and_its_deployments() -> None:
    from dockyard.handlers.desired import instance_commands

    job = Job.model_validate(
        {
            "metadata": {
                "name": "web",
                "annotations": {
                    "dockyard.dev/restartedAt": "2026-01-01T00:00:10Z",
                    "dockyard.dev/deployment.restartedAt": "2026-01-01T00:00:20Z",
                    "dockyard.dev/restartedAt.1": "2026-01-01T00:00:30Z",
                    "dockyard.dev/deployment.paused": "true",
                    "dockyard.dev/stopped": "0, x",
                },
            },
            "spec": {
                "provider": {"type": "local"},
                "instances": 2,
                "containers": [{"name": "a", "image": "busybox"}],
            },
        }
    )
    commands, paused, problems = instance_commands(job)
    assert commands.restart == {0: 1767225620.0, 1: 1767225630.0}  # the latest of each
    assert paused
    assert problems == [
        'metadata.annotations["dockyard.dev/stopped"]: \'0, x\' is not a list of instance indices such as "0,2"'
    ]
