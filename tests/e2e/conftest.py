"""End-to-end fixtures: the CRDs, the stemcell, and one Dockyard operator per pytest worker
(the real `dockyard run`, watching only that worker's namespaces)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, Kubectl, _locked, _run_script
from tests.waiting import wait_for


@pytest.fixture(scope="session")
def crds(kubectl: Kubectl) -> None:
    # Server-side: several workers applying at once on a fresh control plane all succeed.
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"), "--timeout=60s")


@pytest.fixture(scope="session")
def stemcell(docker_engine: None) -> None:
    with _locked("stemcell"):
        _run_script("stemcell.sh")


def start_operator(
    kubeconfig: str,
    glob: str,
    log_path: Path,
    metrics_port: int = 0,
    log_level: str = "INFO",
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    started: bytes = b"Initial authentication has finished",
) -> subprocess.Popen[bytes]:
    """The real `dockyard run`, as a user runs it, watching only namespaces matching ``glob``
    (metrics served on ``metrics_port``, 0: none; ``env`` added to its environment; ``args``
    added to its command line); returns once its log says ``started``."""
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig,
        "DOCKYARD_LOG_LEVEL": log_level,
        **(env or {}),
    }
    command = [str(REPO / ".venv" / "bin" / "dockyard"), "run", "--namespace", glob]
    command += ["--metrics-port", str(metrics_port), "--liveness", "", *args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_for(
        lambda: process.poll() is not None or started in log_path.read_bytes(),
        timeout=60,
        what="the operator to start",
    )
    assert process.poll() is None, log_path.read_text()
    return process


def stop_operator(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


GetObject = Callable[[str, str], dict[str, Any]]


def tear_down_deployments(kubectl: Kubectl, namespace: str) -> None:
    """Delete the namespace's Deployments and wait until the operator tore their Jobs down;
    their orphaned disks go too (deleting an orphan's record deletes the disk at once)."""
    kubectl("delete", "dyd", "--all", "-n", namespace, "--timeout=120s", check=False)
    wait_for(
        lambda: not kubectl("get", "dyj", "-n", namespace, "-o", "name").stdout.strip(),
        timeout=120,
        what=f"Jobs of {namespace} torn down",
    )
    orphans = ["-l", "dockyard.dev/orphaned=true", "-n", namespace]
    kubectl("delete", "dypd", *orphans, "--timeout=120s", check=False)
    wait_for(
        lambda: not kubectl("get", "dyj,dypd", "-n", namespace, "-o", "name").stdout.strip(),
        timeout=120,
        what=f"Jobs and disk records of {namespace} gone",
    )


@pytest.fixture(scope="session")
def operator(
    crds: None, stemcell: None, kubeconfig: str, namespace_prefix: str, tmp_path_factory: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """One operator per pytest worker, watching only this worker's namespaces."""
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    process = start_operator(kubeconfig, f"{namespace_prefix}*", log_path)
    yield process
    stop_operator(process)
    print(f"operator log: {log_path}")


@pytest.fixture
def get_object(kubectl: Kubectl, namespace: str) -> GetObject:
    def get(kind: str, name: str) -> dict[str, Any]:
        result = kubectl("get", kind, name, "-n", namespace, "-o", "json")
        loaded: dict[str, Any] = json.loads(result.stdout)
        return loaded

    return get


@pytest.fixture
def dockyard_cleanup(operator: Any, namespace: str, kubectl: Kubectl) -> Iterator[None]:
    """Tests leave nothing behind: their Deployments are deleted, and the operator tears the VMs
    down, before the namespace goes (a namespace deleted after the operator stopped would keep
    its Jobs' finalizers, and their VMs, forever)."""
    yield
    tear_down_deployments(kubectl, namespace)


class OwnOperator:
    """A `dockyard run` of this test's own, started and killed at will, watching ``glob``."""

    def __init__(
        self,
        kubeconfig: str,
        glob: str,
        logs: Path,
        metrics_port: int = 0,
        log_level: str = "INFO",
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        started: bytes = b"Initial authentication has finished",
        name: str = "operator",
    ) -> None:
        self.kubeconfig, self.glob, self.logs = kubeconfig, glob, logs
        self.metrics_port, self.log_level, self.env = metrics_port, log_level, env
        self.args, self.started, self.name = args, started, name
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.logs / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.process = start_operator(
            self.kubeconfig,
            self.glob,
            self.log_path,
            self.metrics_port,
            self.log_level,
            self.env,
            self.args,
            self.started,
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_operator(self.process)
        self.process = None


@contextmanager
def own_operator_namespace(
    kubectl: Kubectl,
    kubeconfig: str,
    namespace_prefix: str,
    tag: str,
    logs: Path,
    metrics_port: int = 0,
    log_level: str = "INFO",
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    started: bytes = b"Initial authentication has finished",
) -> Iterator[tuple[OwnOperator, str, GetObject]]:
    """A namespace outside the shared operator's glob, watched only by an operator of the
    test's own (not started yet); torn down afterwards by a running operator."""
    prefix = namespace_prefix.rstrip("-") + tag + "-"
    namespace = f"{prefix}{uuid.uuid4().hex[:8]}"
    own = OwnOperator(kubeconfig, f"{prefix}*", logs, metrics_port, log_level, env, args, started)
    kubectl("create", "namespace", namespace)

    def get_object(kind: str, name: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(
            kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
        )
        return loaded

    try:
        yield own, namespace, get_object
    finally:
        if own.process is None:
            own.start()  # the teardown needs an operator
        tear_down_deployments(kubectl, namespace)
        own.stop()
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
