"""Private registries with real parts: Debian's docker-registry (the Distribution registry) with
htpasswd authentication on the host, an image pushed to it, and a Job pulling it on its VM's
engine — refused without its imagePullSecret, running with it."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from dockyard.providers import ProviderConfig, make_provider
from tests.conftest import Kubectl
from tests.e2e.conftest import GetObject
from tests.e2e.test_reconciler import READY_DEADLINE, condition, wait_ready
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator", "dockyard_cleanup")]

USER, PASSWORD = "dockyard", "s3cret-pull"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def registry(tmp_path_factory: Any, docker_client: Any) -> Iterator[tuple[str, str]]:
    """A registry on the host, with an image pushed to it: (its address from the VMs, the
    image reference the VMs pull)."""
    home = tmp_path_factory.mktemp("registry")
    port = _free_port()
    htpasswd = subprocess.run(
        ["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True
    ).stdout
    (home / "htpasswd").write_text(htpasswd)
    config = {
        "version": 0.1,
        "storage": {"filesystem": {"rootdirectory": str(home / "data")}},
        "http": {"addr": f"0.0.0.0:{port}"},
        "auth": {"htpasswd": {"realm": "dockyard", "path": str(home / "htpasswd")}},
    }
    (home / "config.yml").write_text(yaml.safe_dump(config))
    with open(home / "registry.log", "wb") as log:
        server = subprocess.Popen(
            ["docker-registry", "serve", str(home / "config.yml")], stdout=log, stderr=log
        )
    try:
        wait_for(lambda: _answers(port), timeout=30, what="the registry to listen")
        local = make_provider(ProviderConfig(type="local"))
        subnet, gateway = local._ensure_network()  # the VMs reach the host at its gateway
        assert subnet is not None
        host = (gateway or str(next(subnet.hosts()))).split("/")[0]
        address = f"{host}:{port}"
        pushed = f"127.0.0.1:{port}/private/app"  # the host's engine trusts the loopback
        docker_client.images.get("dockyard/busybox:1").tag(pushed, "1")
        said = docker_client.images.push(
            pushed, "1", auth_config={"username": USER, "password": PASSWORD}
        )
        assert '"error"' not in said, said
        docker_client.images.remove(f"{pushed}:1")
        yield address, f"{address}/private/app:1"
    finally:
        server.terminate()
        server.wait(timeout=10)


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def manifest(image: str, address: str, secret: bool) -> str:
    spec: dict[str, Any] = {
        "provider": {"type": "local", "options": {"insecure_registries": address}},
        "jobs": [
            {
                "name": "app",
                "containers": [
                    {
                        "name": "app",
                        "image": image,
                        "imagePullPolicy": "Always",
                        "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"],
                    }
                ],
            }
        ],
    }
    if secret:
        spec["imagePullSecrets"] = [{"name": "pull"}]
    body = {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Deployment"}
    return yaml.safe_dump({**body, "metadata": {"name": "private"}, "spec": spec})


def test_a_private_image_is_pulled_with_its_secret_and_not_without(
    registry: tuple[str, str], kubectl: Kubectl, namespace: str, get_object: GetObject
) -> None:
    address, image = registry
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest(image, address, secret=False))

    def backing_off() -> dict[str, Any] | None:
        ready = condition(get_object("dyj", "private-app"), "Ready")
        return ready if ready and ready["reason"] == "BackOff" else None

    said = wait_for(backing_off, timeout=READY_DEADLINE, what="the Job backing off")
    assert "unauthorized" in said["message"].lower() or "no basic auth" in said["message"]

    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    docker_config = json.dumps({"auths": {address: {"auth": auth}}})
    kubectl(
        "create", "secret", "generic", "pull", "-n", namespace,
        "--type=kubernetes.io/dockerconfigjson", f"--from-literal=.dockerconfigjson={docker_config}",
    )  # fmt: skip
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest(image, address, secret=True))
    job = wait_ready(get_object, "dyj", "private-app")
    (instance,) = job["status"]["instances"]
    assert instance["containers"][0]["image"] == image and instance["containers"][0]["ready"]
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert PASSWORD not in events and PASSWORD not in json.dumps(job["status"])
