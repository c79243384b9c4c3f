"""Session fixtures shared by every test: one real control plane, one Docker engine.

Both are started by the project's own scripts (idempotent; a running one is reused), under a file
lock so parallel pytest-xdist workers start them once.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# tests.leaks: after the whole run, nothing is left on the host; tests.webhook: CRDs, webhook.
pytest_plugins = ["tests.leaks", "tests.webhook"]

REPO = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("DOCKYARD_STATE", "/var/lib/dockyard"))
DEFAULT_KUBECONFIG = STATE / "controlplane" / "admin.kubeconfig"
WORKLOAD_IMAGE = "dockyard/busybox:1"

# The kubernetes client reads $KUBECONFIG when first imported: point it at the local control
# plane before any test module imports kopf or kubernetes. DOCKYARD_TEST_KUBECONFIG overrides.
KUBECONFIG = Path(os.environ.get("DOCKYARD_TEST_KUBECONFIG", str(DEFAULT_KUBECONFIG)))
os.environ["KUBECONFIG"] = str(KUBECONFIG)

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


@contextmanager
def _locked(name: str) -> Iterator[None]:
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run_script(script: str) -> None:
    result = subprocess.run(
        ["bash", str(REPO / "hack" / script)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"hack/{script} failed:\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    """Path of an admin kubeconfig for a running control plane (started when needed)."""
    if "DOCKYARD_TEST_KUBECONFIG" not in os.environ:
        with _locked("controlplane"):
            _run_script("controlplane/up.sh")
    return str(KUBECONFIG)


@pytest.fixture(scope="session")
def kubectl(kubeconfig: str) -> Kubectl:
    def run(
        *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["kubectl", "--kubeconfig", kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
            )
        return result

    return run


@pytest.fixture(scope="session")
def namespace_prefix(worker_id: str) -> str:
    """Namespaces of this pytest-xdist worker: its operator watches only these.
    DOCKYARD_TEST_RUN keeps concurrent pytest runs on one control plane apart."""
    run = os.environ.get("DOCKYARD_TEST_RUN", "")
    return f"dy-{run}{worker_id}-"


@pytest.fixture
def namespace(kubectl: Kubectl, namespace_prefix: str) -> Iterator[str]:
    """A fresh namespace for one test; deleted afterwards (the namespace controller empties it)."""
    name = f"{namespace_prefix}{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def docker_engine() -> None:
    with _locked("docker"):
        _run_script("docker-up.sh")


@pytest.fixture(scope="session")
def docker_client(docker_engine: None) -> Iterator[object]:
    import docker

    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="session")
def workload_image(docker_engine: None) -> str:
    return WORKLOAD_IMAGE
