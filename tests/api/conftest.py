"""Fixtures for the API tests (the CRDs and the webhook are in tests/webhook.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import Kubectl


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A namespace no test operator watches: objects made here only test the API (a random Job
    reconciled by an operator would start real VMs, hundreds of them for a large ``instances``)."""
    run = os.environ.get("DOCKYARD_TEST_RUN", "")
    name = f"dyapi-{run}{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    # Proof that none did: an operator puts its finalizer on what it handles.
    handled = kubectl(
        "get", "dyd,dyj,dypd", "-n", name, "-o", "jsonpath={.items[*].metadata.finalizers}"
    ).stdout.strip()
    kubectl("delete", "namespace", name, "--wait=false", check=False)
    assert not handled, f"an operator handled the API test objects of {name}: {handled}"
