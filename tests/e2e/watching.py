"""Every version of the Jobs and Deployments of a namespace, as a watch delivers them (what
Argo CD, Flux and kubectl wait see), each with the time it arrived and, optionally, what the
real kstatus library says of it."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

KINDS = {"jobs": "Job", "deployments": "Deployment"}


@dataclass(frozen=True)
class Version:
    arrived: float  # wall clock, seconds
    kind: str  # Job | Deployment
    name: str
    body: dict[str, Any]
    kstatus: str = ""  # InProgress | Current | Failed | ... ("" without a checker)

    def condition(self, type_: str) -> dict[str, Any]:
        for c in (self.body.get("status") or {}).get("conditions", []):
            if c.get("type") == type_:
                return dict(c)
        return {}

    @property
    def ready(self) -> bool:
        status = self.body.get("status") or {}
        at_generation = status.get("observedGeneration") == self.body["metadata"]["generation"]
        return at_generation and self.condition("Ready").get("status") == "True"


class Versions:
    def __init__(self, kstatus: str | None) -> None:
        self._lock = threading.Lock()
        self._seen: list[Version] = []
        self._checker = (
            subprocess.Popen(
                [kstatus], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
            )
            if kstatus
            else None
        )

    def add(self, kind: str, body: dict[str, Any]) -> None:
        arrived = time.time()
        with self._lock:  # one question to the checker at a time
            verdict = ""
            if self._checker is not None:
                assert self._checker.stdin is not None and self._checker.stdout is not None
                self._checker.stdin.write(json.dumps(body) + "\n")
                verdict = self._checker.stdout.readline().split(" ", 1)[0]
            self._seen.append(Version(arrived, kind, body["metadata"]["name"], body, verdict))

    def of(self, kind: str, name: str) -> list[Version]:
        with self._lock:
            return [v for v in self._seen if v.kind == kind and v.name == name]

    def close(self) -> None:
        if self._checker is not None:
            self._checker.kill()
            self._checker.wait(timeout=10)


@contextmanager
def watched(kubeconfig: str, namespace: str, kstatus: str | None = None) -> Iterator[Versions]:
    """Watch the namespace's Jobs and Deployments while the block runs."""
    import kubernetes

    client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    api = kubernetes.client.CustomObjectsApi(client)
    versions = Versions(kstatus)
    stop = threading.Event()
    started: list[threading.Event] = []

    def follow(plural: str, ready: threading.Event) -> None:
        listing = api.list_namespaced_custom_object("dockyard.dev", "v1alpha1", namespace, plural)
        for item in listing.get("items", []):
            versions.add(KINDS[plural], item)
        version = listing["metadata"]["resourceVersion"]
        ready.set()
        while not stop.is_set():
            stream = kubernetes.watch.Watch()
            try:
                for event in stream.stream(
                    api.list_namespaced_custom_object,
                    "dockyard.dev",
                    "v1alpha1",
                    namespace,
                    plural,
                    resource_version=version,
                    timeout_seconds=5,
                ):
                    body = event["object"]
                    version = body["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        versions.add(KINDS[plural], body)
                    if stop.is_set():
                        break
            except kubernetes.client.exceptions.ApiException as error:
                if error.status != 410:
                    raise
                break  # expired: the test's window is long gone

    threads = []
    for plural in KINDS:
        ready = threading.Event()
        started.append(ready)
        thread = threading.Thread(target=follow, args=(plural, ready), daemon=True)
        thread.start()
        threads.append(thread)
    for ready in started:
        assert ready.wait(30), "the watch did not start"
    try:
        yield versions
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
        versions.close()
        client.close()
