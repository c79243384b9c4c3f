"""Hot standby and sharding, with real `dockyard run` processes against the real API server and
local VMs: a standby takes over from a killed active one and repairs what broke meanwhile; an
active one that was frozen past its lease never acts again; shards never touch each other's
objects or VMs."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Kubectl
from tests.e2e.conftest import GetObject, OwnOperator, own_operator_namespace
from tests.e2e.test_api_outage import PAIR, engine_started
from tests.e2e.test_monitor import kill_process, local  # noqa: F401
from tests.e2e.test_reconciler import deployment, wait_ready
from tests.waiting import wait_for
from tests.webhook import _free_port

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("crds", "stemcell")]

LEASE_LOGGED = b"the lease"  # "standby ...: waiting for the lease", then "holding the lease"


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except urllib.error.HTTPError as error:
        assert error.code == 503, error
        return False


def glob_of(namespace_prefix: str, tag: str) -> str:
    """The namespaces own_operator_namespace(..., tag) makes and its operator watches."""
    return f"{namespace_prefix.rstrip('-')}{tag}-*"


def replica_args(lease: str, port: int) -> list[str]:
    return ["--leader-lease", lease, "--probe-port", str(port)]


def holder(kubectl: Kubectl, lease: str) -> str:
    namespace, name = lease.split("/")
    found = json.loads(kubectl("get", "lease", name, "-n", namespace, "-o", "json").stdout)
    return str(found["spec"].get("holderIdentity") or "")


@dataclass
class Pair:
    """Two replicas sharing the lease ``namespace/dockyard``: ``first`` active, ``second``
    standing by; ``ports`` their probe ports."""

    first: OwnOperator
    second: OwnOperator
    namespace: str
    get_object: GetObject
    ports: tuple[int, int]
    lease: str


@contextmanager
def replica_pair(
    kubectl: Kubectl, kubeconfig: str, namespace_prefix: str, tag: str, logs: Path
) -> Iterator[Pair]:
    ports = (_free_port(), _free_port())
    with ExitStack() as stack:
        second = OwnOperator(
            kubeconfig, glob_of(namespace_prefix, tag), logs, started=LEASE_LOGGED, name="second"
        )
        stack.callback(second.stop)  # after the namespace's teardown, which may need it
        first, namespace, get_object = stack.enter_context(
            own_operator_namespace(
                kubectl, kubeconfig, namespace_prefix, tag, logs, started=LEASE_LOGGED
            )
        )
        lease = f"{namespace}/dockyard"  # in the test's namespace: its own lease
        first.args = replica_args(lease, ports[0])
        second.args = replica_args(lease, ports[1])
        first.start()
        wait_for(lambda: ready(ports[0]), timeout=60, what="the first replica active")
        second.start()
        wait_for(
            lambda: b"waiting for the lease" in second.log_path.read_bytes(),
            timeout=30,
            what="the second replica standing by",
        )
        yield Pair(first, second, namespace, get_object, ports, lease)


def test_a_standby_takes_over_from_a_killed_active_operator_and_repairs_what_broke_meanwhile(
    kubectl: Kubectl,
    kubeconfig: str,
    namespace_prefix: str,
    tmp_path: Path,
    docker_client: Any,
    local: Any,  # noqa: F811
) -> None:
    with replica_pair(kubectl, kubeconfig, namespace_prefix, "h", tmp_path) as pair:
        first, namespace, get_object = pair.first, pair.namespace, pair.get_object
        second_port, lease = pair.ports[1], pair.lease
        assert not ready(second_port), "two replicas ready at once"
        first_identity = holder(kubectl, lease)

        kubectl("apply", "-n", namespace, "-f", "-", input=deployment("ha", PAIR))
        wait_ready(get_object, "dyd", "ha")
        vm_id = get_object("dyj", "ha-chain")["status"]["instances"][0]["vmId"]
        app_before = engine_started(local, vm_id, "app")

        first.kill()  # SIGKILL: no release of the lease, as a node failure
        kill_process(docker_client, local, vm_id, "db")
        killed = time.time()
        wait_for(lambda: ready(second_port), timeout=60, what="the standby active")
        took_over = time.time()
        assert holder(kubectl, lease) not in ("", first_identity)
        app_back = wait_for(
            lambda: (t := engine_started(local, vm_id, "app")) > app_before and t,
            timeout=60,
            what="the new active operator restarting db's dependent",
        )
        print(
            f"failover: standby active {took_over - killed:.1f} s, "
            f"dependent repaired {app_back - killed:.1f} s after the kill"
        )
        wait_ready(get_object, "dyd", "ha")


def test_an_active_operator_frozen_past_its_lease_is_fenced_and_exits(
    kubectl: Kubectl,
    kubeconfig: str,
    namespace_prefix: str,
    tmp_path: Path,
    local: Any,  # noqa: F811
) -> None:
    with replica_pair(kubectl, kubeconfig, namespace_prefix, "f", tmp_path) as pair:
        first, namespace, get_object = pair.first, pair.namespace, pair.get_object
        second_port = pair.ports[1]
        assert first.process is not None
        os.kill(first.process.pid, signal.SIGSTOP)  # a long pause: GC, a frozen node, a partition
        try:
            wait_for(lambda: ready(second_port), timeout=60, what="the standby active")
            kubectl("apply", "-n", namespace, "-f", "-", input=deployment("fenced", PAIR))
        finally:
            os.kill(first.process.pid, signal.SIGCONT)
        # Back, it finds the lease held by another: it starts nothing and exits non-zero.
        code = wait_for(
            lambda: first.process is not None and first.process.poll(),
            timeout=60,
            what="the old active replica to exit",
        )
        assert code == 1, first.log_path.read_text()
        log = first.log_path.read_text()
        assert "lost the lease" in log and "fenced" in log, log
        first.process = None
        job = wait_ready(get_object, "dyj", "fenced-chain")  # the new active one did the work
        assert len(local.find_vms({"owner-uid": job["metadata"]["uid"]})) == 1  # one VM


def test_two_shards_never_touch_each_others_objects_or_vms(
    kubectl: Kubectl,
    kubeconfig: str,
    namespace_prefix: str,
    tmp_path: Path,
    local: Any,  # noqa: F811
) -> None:
    shard = "dockyard.dev/shard"
    with ExitStack() as stack:
        second = OwnOperator(
            kubeconfig,
            glob_of(namespace_prefix, "s"),
            tmp_path,
            args=["--selector", f"{shard}!=a"],
            name="second",
        )
        stack.callback(second.stop)  # after the namespace's teardown, which needs it
        first, namespace, get_object = stack.enter_context(
            own_operator_namespace(
                kubectl,
                kubeconfig,
                namespace_prefix,
                "s",
                tmp_path,
                args=["--selector", f"{shard}=a"],
            )
        )
        first.start()
        vms_before = {vm.id for vm in local.find_vms({"deployment": "right"})}
        for name, value in (("left", "a"), ("right", "b")):
            manifest = deployment(name, PAIR).replace(
                f"metadata: {{name: {name}}}",
                f"metadata: {{name: {name}, labels: {{{shard}: {value}}}}}",
            )
            assert shard in manifest, manifest
            kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
        wait_ready(get_object, "dyd", "left")
        left_job = get_object("dyj", "left-chain")
        assert left_job["metadata"]["labels"][shard] == "a"  # the child carries its shard
        # Shard a alone: b's Deployment untouched — no finalizer, no status, no Job, no VM.
        right = get_object("dyd", "right")
        assert not right["metadata"].get("finalizers"), right
        assert not right.get("status", {}).get("observedGeneration"), right  # only defaults
        jobs = kubectl("get", "dyj", "-n", namespace, "-o", "name").stdout.split()
        assert jobs == ["job.dockyard.dev/left-chain"], jobs
        assert {vm.id for vm in local.find_vms({"deployment": "right"})} == vms_before
        # Shard b alone (a stopped): right converges, left is never written to.
        left_versions = {
            kind: get_object(kind, name)["metadata"]["resourceVersion"]
            for kind, name in (("dyd", "left"), ("dyj", "left-chain"))
        }
        first.stop()
        second.start()
        wait_ready(get_object, "dyd", "right")
        assert get_object("dyj", "right-chain")["metadata"]["labels"][shard] == "b"
        for kind, name in (("dyd", "left"), ("dyj", "left-chain")):
            version = get_object(kind, name)["metadata"]["resourceVersion"]
            assert version == left_versions[kind], f"shard b wrote to {kind}/{name}"
        first.start()  # both again: the teardown deletes both trees, each by its shard
