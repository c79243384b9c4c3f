"""End-to-end fixtures: the CRDs, the stemcell, and one Dockyard operator per pytest worker
(running in-process with kopf's KopfRunner, watching only that worker's namespaces)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import REPO, Kubectl, _locked, _run_script


@pytest.fixture(scope="session")
def crds(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"), "--timeout=60s")


@pytest.fixture(scope="session")
def stemcell(docker_engine: None) -> None:
    with _locked("stemcell"):
        _run_script("stemcell.sh")


@pytest.fixture(scope="session")
def operator(crds: None, stemcell: None, namespace_prefix: str) -> Iterator[Any]:
    from kopf.testing import KopfRunner

    args = [
        "run",
        "--standalone",
        "--namespace",
        f"{namespace_prefix}*",
        "-m",
        "dockyard.handlers.main",
    ]
    with KopfRunner(args, timeout=120) as runner:
        yield runner
    assert runner.exception is None, runner.exception


GetObject = Callable[[str, str], dict[str, Any]]


@pytest.fixture
def get_object(kubectl: Kubectl, namespace: str) -> GetObject:
    def get(kind: str, name: str) -> dict[str, Any]:
        result = kubectl("get", kind, name, "-n", namespace, "-o", "json")
        loaded: dict[str, Any] = json.loads(result.stdout)
        return loaded

    return get
