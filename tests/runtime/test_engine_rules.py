"""How the engine layer maps a container's privileges onto what a VM can grant, and which of an
engine's errors are refusals (Stalled at once) rather than hiccups — without an engine."""

from __future__ import annotations

import docker.errors
import pytest
import requests

from dockyard.providers import TransientError
from dockyard.runtime.engine import ContainerConfig, Engine, EngineRefusedError, _start_error


def config(**changes: object) -> ContainerConfig:
    return ContainerConfig(**{"name": "app", "image": "busybox", **changes})  # type: ignore[arg-type]


def test_where_nothing_is_withheld_privileges_pass_through() -> None:
    engine = Engine(client=None)  # type: ignore[arg-type]
    assert engine._privileges(config(privileged=True, cap_add=("NET_ADMIN",))) == {
        "privileged": True,
        "cap_add": ["NET_ADMIN"],
        "cap_drop": None,
    }


def test_a_privileged_container_gets_everything_but_what_the_vm_withholds() -> None:
    engine = Engine(client=None, withheld_capabilities=frozenset({"SYS_RESOURCE"}))  # type: ignore[arg-type]
    flags = engine._privileges(config(privileged=True))
    assert "privileged" not in flags
    assert flags["cap_add"] == ["ALL"] and flags["cap_drop"] == ["SYS_RESOURCE"]
    assert "seccomp=unconfined" in flags["security_opt"]
    everything = engine._privileges(config(cap_add=("ALL",), cap_drop=("NET_RAW",)))
    assert everything["cap_drop"] == ["NET_RAW", "SYS_RESOURCE"]


def test_asking_for_a_withheld_capability_is_a_refusal_naming_it() -> None:
    engine = Engine(client=None, withheld_capabilities=frozenset({"SYS_RESOURCE"}))  # type: ignore[arg-type]
    with pytest.raises(EngineRefusedError, match="capAdd SYS_RESOURCE"):
        engine._privileges(config(cap_add=("CAP_SYS_RESOURCE",)))


def api_error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("error", response=response, explanation=explanation)


@pytest.mark.parametrize(
    ("status", "explanation"),
    [
        (400, "Minimum memory limit allowed is 6MB"),
        (500, "OCI runtime create failed: unable to apply caps: operation not permitted"),
        (500, "unable to find user nobody: no matching entries in passwd file"),
        (500, "invalid volume specification: '/tmp:/'"),
    ],
)
def test_what_the_engine_will_refuse_again_is_a_refusal(status: int, explanation: str) -> None:
    assert isinstance(_start_error("app", api_error(status, explanation)), EngineRefusedError)


@pytest.mark.parametrize(
    ("status", "explanation"),
    [
        (409, "Conflict. The container name is already in use"),
        (500, "driver failed programming external connectivity: port is already allocated"),
        (500, "write /var/lib/docker/x: no space left on device"),
        (500, 'Get "https://registry-1.docker.io/v2/": dial tcp: lookup x: no such host'),
    ],
)
def test_a_busy_or_short_engine_is_a_hiccup(status: int, explanation: str) -> None:
    error = _start_error("app", api_error(status, explanation))
    assert isinstance(error, TransientError) and not isinstance(error, EngineRefusedError)


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("busybox", "docker.io"),
        ("library/busybox:1", "docker.io"),
        ("reg.example:5000/app:1", "reg.example:5000"),
        ("localhost/app", "localhost"),
        ("10.0.0.1:5000/a/b@sha256:" + "0" * 64, "10.0.0.1:5000"),
    ],
)
def test_the_registry_an_image_names(image: str, registry: str) -> None:
    from dockyard.runtime.engine import registry_of

    assert registry_of(image) == registry


class _RefusingRegistry:
    """A client whose engine lacks every image and whose pulls fail with ``error``."""

    def __init__(self, error: docker.errors.APIError) -> None:
        self.error = error
        self.images = self

    def get(self, image: str) -> None:
        raise docker.errors.ImageNotFound(image)

    def pull(self, image: str, auth_config: object = None) -> None:
        raise self.error


@pytest.mark.parametrize(
    "explanation",
    [
        "manifest for busybox:9 not found: manifest unknown",
        'Get "https://registry-1.docker.io/v2/": dial tcp: lookup x on 127.0.0.11:53: no such host',
    ],
)
def test_an_image_that_cannot_be_had_is_a_refusal(explanation: str) -> None:
    engine = Engine(client=_RefusingRegistry(api_error(404, explanation)))  # type: ignore[arg-type]
    with pytest.raises(EngineRefusedError, match="pulling busybox:9"):
        engine.ensure_image("busybox:9")


@pytest.mark.parametrize(
    "explanation",
    [
        "toomanyrequests: You have reached your pull rate limit",
        "Get https://r.example/v2/: net/http: TLS handshake timeout",
        "unauthorized: authentication required",  # no credentials yet: its Secret may come
        'Head "http://10.0.0.1:5000/v2/private/app/manifests/1": no basic auth credentials',
        "pull access denied for busybox, repository does not exist or may require 'docker login'",
    ],
)
def test_a_busy_registry_or_missing_credentials_is_a_hiccup(explanation: str) -> None:
    engine = Engine(client=_RefusingRegistry(api_error(500, explanation)))  # type: ignore[arg-type]
    with pytest.raises(TransientError) as raised:
        engine.ensure_image("busybox:9")
    assert not isinstance(raised.value, EngineRefusedError)
