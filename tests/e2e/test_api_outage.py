"""Repairs never wait for the Kubernetes API: an operator whose API server stops answering
(its only way there is a TCP relay the test cuts) still restarts a crashed upstream's dependents
within Docker's own restart time, and the status catches up once the API is back."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.conftest import Kubectl
from tests.e2e.conftest import own_operator_namespace
from tests.e2e.test_monitor import kill_process, local  # noqa: F401
from tests.e2e.test_reconciler import containers, deployment, started, wait_ready
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e]


RUN = "trap 'exit 0' TERM; sleep 100000 & wait"  # stops on SIGTERM, as real workloads do
PAIR = f"""
- name: chain
  instances: 1
  containers:
  - {{name: db, image: "dockyard/busybox:1", command: [sh, -c, "{RUN}"]}}
  - {{name: app, image: "dockyard/busybox:1", command: [sh, -c, "{RUN}"], dependsOn: [db]}}
"""


class Relay:
    """127.0.0.1:<port> → the API server, byte for byte (TLS passes through). ``cut()`` drops
    every connection and refuses new ones, as a stopped API server would."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()  # refused
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            for connection in self.connections:
                with suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self.connections.clear()

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


@contextmanager
def relayed_kubeconfig(kubeconfig: str, directory: Path) -> Iterator[tuple[str, Relay]]:
    config: dict[str, Any] = yaml.safe_load(Path(kubeconfig).read_text())
    server = urlparse(config["clusters"][0]["cluster"]["server"])
    relay = Relay((server.hostname or "127.0.0.1", server.port or 443))
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{relay.port}"
    path = directory / "relayed.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    try:
        yield str(path), relay
    finally:
        relay.close()


def engine_started(local: Any, vm_id: str, name: str) -> float:  # noqa: F811
    engine = local.docker_client(vm_id)
    try:
        (found,) = engine.containers.list(filters={"label": f"dockyard.dev/container={name}"})
        stamp = found.attrs["State"]["StartedAt"]
    finally:
        engine.close()
    return started({"startedAt": stamp[:26].rstrip("Z") + "+00:00"})


def test_dependents_restart_while_the_api_server_is_away_and_status_catches_up(
    kubectl: Kubectl,
    kubeconfig: str,
    namespace_prefix: str,
    tmp_path: Path,
    docker_client: Any,
    local: Any,  # noqa: F811
    crds: None,
    stemcell: None,
) -> None:
    with (
        relayed_kubeconfig(kubeconfig, tmp_path) as (relayed, relay),
        own_operator_namespace(kubectl, relayed, namespace_prefix, "a", tmp_path) as (
            own,
            namespace,
            get_object,
        ),
    ):
        own.start()
        kubectl("apply", "-n", namespace, "-f", "-", input=deployment("outage", PAIR))
        wait_ready(get_object, "dyd", "outage")
        vm_id = get_object("dyj", "outage-chain")["status"]["instances"][0]["vmId"]
        app_before = engine_started(local, vm_id, "app")
        relay.cut()
        try:
            kill_process(docker_client, local, vm_id, "db")
            killed = time.time()
            db_back = wait_for(
                lambda: (t := engine_started(local, vm_id, "db")) > killed and t,
                timeout=30,
                what="Docker restarting db",
            )
            app_back = wait_for(
                lambda: (t := engine_started(local, vm_id, "app")) > app_before and t,
                timeout=30,
                what="the operator restarting app without the API",
            )
            assert app_back >= db_back
            # Before: 10.5 s, waiting on API calls that time out; now a restart's time.
            assert app_back - db_back < 5.0, f"app restarted {app_back - db_back:.1f}s after db"
        finally:
            relay.restore()
        wait_for(
            lambda: started(containers(get_object, "outage-chain")["app"]) >= app_back - 0.01,
            timeout=90,
            what="the Job's status showing app's new start once the API is back",
        )
        wait_ready(get_object, "dyd", "outage")
