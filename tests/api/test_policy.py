"""Policy levels (docs/security.md): what each refuses, naming the field and the level."""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.api.models import DeploymentSpec
from dockyard.api.policy import Level, Policy, host_path_allowed, violations


def spec(**container: Any) -> DeploymentSpec:
    return DeploymentSpec.model_validate(
        {
            "provider": {"type": "local"},
            "jobs": [{"name": "j", "containers": [{"name": "c", "image": "busybox", **container}]}],
        }
    )


def fields(found: list[Any]) -> list[str]:
    return [f.field.removeprefix("spec.jobs[0].containers[0].") for f in found]


@pytest.mark.parametrize(
    ("container", "refused"),
    [
        ({"privileged": True}, ["privileged"]),
        ({"capAdd": ["SYS_ADMIN", "NET_BIND_SERVICE", "CAP_CHOWN"]}, ["capAdd[0]"]),
        ({"capAdd": ["ALL"]}, ["capAdd[0]"]),
        ({"bindVolumes": [{"hostPath": "/", "mountPath": "/r"}]}, ["bindVolumes[0].hostPath"]),
        (
            {"bindVolumes": [{"hostPath": "/dockyard/run", "mountPath": "/r"}]},
            ["bindVolumes[0].hostPath"],
        ),
        (
            {"bindVolumes": [{"hostPath": "/var/vcap/data/../../dockyard", "mountPath": "/r"}]},
            ["bindVolumes[0].hostPath"],
        ),
        (
            {"bindVolumes": [{"hostPath": "/var/vcap/datax", "mountPath": "/r"}]},
            ["bindVolumes[0].hostPath"],
        ),
        ({"bindVolumes": [{"hostPath": "/var/vcap/data/app", "mountPath": "/r"}]}, []),
        ({"bindVolumes": [{"mountPath": "/r"}]}, []),  # a directory of its own
        ({"user": "root", "ports": [{"containerPort": 80, "hostPort": 80}]}, []),
    ],
)
def test_baseline(container: dict[str, Any], refused: list[str]) -> None:
    found = violations(spec(**container), Level.BASELINE)
    assert fields(found) == refused
    assert all("(policy level baseline)" in f.message for f in found)


@pytest.mark.parametrize(
    ("container", "refused"),
    [
        ({"user": "1000"}, []),
        ({"user": "app:staff"}, []),
        ({}, ["user"]),  # the image's user: root, mostly
        ({"user": "0:1000"}, ["user"]),
        ({"user": "root"}, ["user"]),
        (
            {"user": "1000", "bindVolumes": [{"hostPath": "/var/vcap/data/a", "mountPath": "/r"}]},
            ["bindVolumes[0].hostPath"],
        ),
        (
            {"user": "1000", "ports": [{"containerPort": 80, "hostPort": 1023}]},
            ["ports[0].hostPort"],
        ),
        ({"user": "1000", "ports": [{"containerPort": 80, "hostPort": 1024}]}, []),
    ],
)
def test_restricted(container: dict[str, Any], refused: list[str]) -> None:
    assert fields(violations(spec(**container), Level.RESTRICTED)) == refused


def test_privileged_allows_anything() -> None:
    anything = spec(
        privileged=True, capAdd=["ALL"], bindVolumes=[{"hostPath": "/", "mountPath": "/r"}]
    )
    assert violations(anything, Level.PRIVILEGED) == []


def test_a_namespace_label_chooses_the_level_and_a_typo_counts_as_restricted() -> None:
    policy = Policy()
    assert policy.level_of(None) is Level.BASELINE
    assert policy.level_of({"dockyard.dev/enforce": "privileged"}) is Level.PRIVILEGED
    assert policy.level_of({"dockyard.dev/enforce": "priviledged"}) is Level.RESTRICTED
    assert Policy(Level.RESTRICTED).level_of({}) is Level.RESTRICTED


def test_the_operator_chooses_the_allowed_host_paths() -> None:
    policy = Policy(allowed_host_paths=("/srv",))
    ok = spec(bindVolumes=[{"hostPath": "/srv/www", "mountPath": "/r"}])
    assert violations(ok, Level.BASELINE, policy) == []
    assert not host_path_allowed("/srv/../etc", ["/srv"])
    assert host_path_allowed("/srv", ["/srv/"])
