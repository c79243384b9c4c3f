"""Session fixtures for tests that need the CRDs installed and Dockyard's admission webhook
served (a plugin of tests/conftest.py, so the API and end-to-end tests share them)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Kubectl

REPO = Path(__file__).resolve().parents[1]
CRDS = REPO / "crds"


@pytest.fixture(scope="session")
def crds_installed(kubectl: Kubectl) -> None:
    """The CRDs from crds/ applied and Established (idempotent; left installed afterwards)."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    names = [path.name.removesuffix(".yaml") for path in sorted(CRDS.glob("*.yaml"))]
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *[f"crd/{name}" for name in names],
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def admission_webhook(kubectl: Kubectl, kubeconfig: str, crds_installed: None) -> Iterator[str]:
    """Dockyard's validating webhook served by a kopf operator on 127.0.0.1; kopf installs the
    ValidatingWebhookConfiguration itself. Yields that configuration's name."""
    import kopf
    from kopf.testing import KopfRunner

    # kopf's `run` makes the registry it is given the process's default one: a handler module
    # imported while it runs would register there and be served by this all-namespaces operator
    # (with kopf's default finalizer), next to the real ones. Import them all before it starts,
    # and give the default back as soon as it is up.
    from dockyard.handlers import admission, deployment, disk, job  # noqa: F401
    from tests.waiting import wait_for

    # A registry of its own: no other handler registered in this process runs here, and this
    # runner's settings do not leak into other in-process operators.
    registry = kopf.OperatorRegistry()
    admission.register(registry)

    @kopf.on.login(registry=registry)
    def login(**kwargs: object) -> kopf.ConnectionInfo | None:
        info: kopf.ConnectionInfo | None = kopf.login_with_kubeconfig(**kwargs)
        return info

    # The webhook reads a namespace's labels (its policy level) with the operator's own client.
    os.environ.setdefault("KUBECONFIG", kubeconfig)
    configuration = f"validate-test-{uuid.uuid4().hex[:8]}.dockyard.dev"
    settings = kopf.OperatorSettings()
    admission.configure_webhook(
        settings, port=_free_port(), addr="127.0.0.1", configuration=configuration
    )
    previous = kopf.get_default_registry()
    try:
        with KopfRunner(
            ["run", "--standalone", "--all-namespaces"],
            registry=registry,
            settings=settings,
            timeout=60,
        ) as runner:

            def configured() -> bool:
                got = kubectl(
                    "get",
                    "validatingwebhookconfiguration",
                    configuration,
                    "-o",
                    "jsonpath={.webhooks[*].name}",
                    check=False,
                )
                return got.returncode == 0 and got.stdout.count("-dependencies.") == 2

            wait_for(configured, timeout=60, interval=0.2, what="kopf to install the webhook")
            kopf.set_default_registry(previous)
            yield configuration
        assert runner.exception is None, runner.exception
    finally:
        kopf.set_default_registry(previous)
        kubectl("delete", "validatingwebhookconfiguration", configuration, check=False)
