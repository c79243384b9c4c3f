"""Shared plumbing of the operator benchmarks (container_repair.py, vm_resurrection.py).

A benchmark gets its own namespace (``dy-bench-<what>-<hex>``), its own ``dockyard run`` watching
only that namespace, and its own local-provider root (``/var/lib/dockyard/bench-<hex>``, named in
the Deployment's provider options), so nothing it makes mixes with tests or other benchmarks and
everything can be removed at the end: the Deployment is deleted (the operator tears its VMs and
disks down), then the namespace, then whatever the root still holds is purged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import docker

from dockyard.providers.base import ProviderConfig
from dockyard.providers.local import LocalProvider

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")
STATE = Path(os.environ.get("DOCKYARD_STATE", "/var/lib/dockyard"))
KUBECONFIG = os.environ.get("KUBECONFIG", str(STATE / "controlplane" / "admin.kubeconfig"))
IMAGE = "dockyard/busybox:1"
# A workload that stops on SIGTERM, as real ones do (a shell as PID 1 ignores it otherwise and
# every graceful restart would wait out the grace period).
RUN = "trap 'exit 0' TERM; sleep 100000 & wait"
SLEEP = ["sh", "-c", RUN]
LABEL_CONTAINER = "dockyard.dev/container"
LABEL_OWNER = "dockyard.dev/owner-uid"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def kubectl(*args: str, stdin: str | None = None, check: bool = True, timeout: float = 180) -> str:
    result = subprocess.run(
        ["kubectl", "--kubeconfig", KUBECONFIG, *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if check and result.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Call ``probe`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except Exception as error:  # the world is converging; keep the reason for the timeout
            last = error
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}") from last
        time.sleep(interval)


def summary(samples: list[float]) -> dict[str, Any]:
    """Percentiles by nearest rank (p99 of 50 samples is the largest), in seconds."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)

    def rank(p: float) -> float:
        return ordered[max(math.ceil(p * len(ordered)) - 1, 0)]

    return {
        "n": len(ordered),
        "min": round(ordered[0], 3),
        "p50": round(rank(0.50), 3),
        "p95": round(rank(0.95), 3),
        "p99": round(rank(0.99), 3),
        "max": round(ordered[-1], 3),
        "mean": round(sum(ordered) / len(ordered), 3),
    }


def job_manifest(name: str, root: str, job: dict[str, Any]) -> str:
    body = {
        "apiVersion": "dockyard.dev/v1alpha1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"provider": {"type": "local", "options": {"root": root}}, "jobs": [job]},
    }
    return json.dumps(body)


def get(kind: str, name: str, namespace: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json"))
    return loaded


def ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


def status_containers(job: dict[str, Any], index: int = 0) -> dict[str, dict[str, Any]]:
    for instance in (job.get("status") or {}).get("instances", []):
        if instance["index"] == index:
            return {c["name"]: c for c in instance.get("containers", [])}
    return {}


# --- Docker events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    at_ns: int  # the engine's timeNano
    action: str  # die, start, kill, stop, restart, ...
    name: str  # Dockyard's container name (its label), else the container's name
    exit_code: str = ""


def to_event(raw: dict[str, Any]) -> Event:
    attributes = (raw.get("Actor") or {}).get("Attributes") or {}
    return Event(
        int(raw.get("timeNano", 0)),
        str(raw.get("Action", "")).split(":")[0],
        attributes.get(LABEL_CONTAINER) or attributes.get("name", ""),
        attributes.get("exitCode", ""),
    )


class EventLog:
    """Container events of one Docker engine, recorded by a thread as they arrive."""

    def __init__(self, client: docker.DockerClient, filters: dict[str, Any] | None = None) -> None:
        self._client = client
        self._filters = {"type": "container", **(filters or {})}
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> EventLog:
        self._thread.start()
        self._connected.wait(10)
        return self

    def _run(self) -> None:
        try:
            stream = self._client.events(decode=True, filters=self._filters)
            self._connected.set()
            for raw in stream:
                self.add(raw)
        except Exception:  # the engine went away, or close() ended the stream
            self._connected.set()

    def add(self, raw: dict[str, Any]) -> None:
        event = to_event(raw)
        with self._lock:
            self._events.append(event)

    def since(self, at_ns: int) -> list[Event]:
        with self._lock:
            return [e for e in self._events if e.at_ns > at_ns]

    def first(self, action: str, name: str, after_ns: int) -> Event | None:
        return next((e for e in self.since(after_ns) if (e.action, e.name) == (action, name)), None)

    def last_at(self) -> int:
        with self._lock:
            return self._events[-1].at_ns if self._events else 0

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a dead connection; we are leaving anyway
            self._client.close()


def quiet_for(events: EventLog, seconds: float) -> bool:
    """No event for ``seconds`` (wall clock, as the engine stamps its events)."""
    return time.time_ns() - events.last_at() >= seconds * 1e9


# --- the operator and the benchmark's world -------------------------------------------------------


class Operator:
    """The real ``dockyard run`` watching one namespace, logging to a file with timestamps."""

    def __init__(
        self,
        namespace: str,
        log_path: Path,
        args: Sequence[str] = (),
        started: bytes = b"Initial authentication has finished",
    ) -> None:
        self.namespace = namespace
        self.log_path = log_path
        self.args, self.started = args, started
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        level = os.environ.get("DOCKYARD_BENCH_LOG_LEVEL", "INFO")
        env = {**os.environ, "KUBECONFIG": KUBECONFIG, "DOCKYARD_LOG_LEVEL": level}
        command = [
            str(REPO / ".venv" / "bin" / "dockyard"),
            "run",
            "--namespace",
            self.namespace,
            "--metrics-port",
            "0",
            "--liveness",
            "",
            *self.args,
        ]
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        process = self.process
        wait_until(
            lambda: process.poll() is not None or self.started in self.log_path.read_bytes(),
            60,
            "the operator to start",
            interval=0.2,
        )
        if process.poll() is not None:
            raise RuntimeError(f"the operator exited: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


@dataclass
class World:
    namespace: str
    root: str
    scratch: Path
    operator: Operator | None = None
    _provider: LocalProvider | None = None
    leftovers: list[str] | None = None

    @property
    def provider(self) -> LocalProvider:
        """The same root the Deployment names: the benchmark's view of its VMs and disks."""
        if self._provider is None:
            self._provider = LocalProvider(
                ProviderConfig(type="local", options={"root": self.root})
            )
        return self._provider

    def cleanup(self) -> None:
        log("cleaning up")
        # The operator tears the Deployment's Jobs down (their finalizers are its own).
        kubectl("delete", "dyd", "--all", "-n", self.namespace, "--timeout=120s", check=False)
        try:
            wait_until(
                lambda: not kubectl("get", "dyj", "-n", self.namespace, "-o", "name").strip(),
                120,
                "the Jobs torn down",
                interval=0.5,
            )
            # Their orphaned disks: deleting an orphan's record deletes the disk now.
            orphans = ["-l", "dockyard.dev/orphaned=true", "-n", self.namespace]
            kubectl("delete", "dypd", *orphans, "--timeout=120s", check=False)
            wait_until(
                lambda: not kubectl("get", "dyj,dypd", "-n", self.namespace, "-o", "name").strip(),
                120,
                "the Jobs torn down",
                interval=0.5,
            )
        except TimeoutError as error:
            log(f"{error}: removing their finalizers, the root is purged below")
            for item in kubectl("get", "dyj,dypd", "-n", self.namespace, "-o", "name").split():
                kubectl(
                    "patch",
                    item,
                    "-n",
                    self.namespace,
                    "--type=merge",
                    "-p",
                    '{"metadata":{"finalizers":null}}',
                    check=False,
                )
        if self.operator is not None:
            self.operator.stop()
        kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)
        provider = self.provider
        try:
            provider.purge()
            self.leftovers = provider.leftovers()
        finally:
            provider.close()
        if not self.leftovers:
            shutil.rmtree(self.root, ignore_errors=True)  # only its lock file is left
        else:
            log(f"left behind: {self.leftovers}")


class _Interrupted(BaseException):
    pass


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted(f"signal {signum}")


@contextmanager
def bench_world(what: str) -> Iterator[World]:
    """A namespace, an operator watching only it and a provider root of its own; all of it
    removed on the way out, also after an exception, Ctrl-C or SIGTERM (the operator's log is
    kept only when the benchmark failed)."""
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    token = uuid.uuid4().hex[:8]
    world = World(
        namespace=f"dy-bench-{what}-{token}",
        root=str(STATE / f"bench-{token}"),
        scratch=Path(tempfile.mkdtemp(prefix=f"dockyard-bench-{what}-")),
    )
    failed = True
    try:
        kubectl("apply", "-f", str(REPO / "crds"))
        kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"), "--timeout=60s")
        kubectl("create", "namespace", world.namespace)
        world.operator = Operator(world.namespace, world.scratch / "operator.log")
        world.operator.start()
        log(f"namespace {world.namespace}, operator log {world.operator.log_path}")
        yield world
        failed = False
    finally:
        world.cleanup()
        signal.signal(signal.SIGTERM, previous)
        if failed or os.environ.get("DOCKYARD_BENCH_KEEP_LOG"):
            log(f"{'failed; ' if failed else ''}the operator's log stays in {world.scratch}")
        else:
            shutil.rmtree(world.scratch, ignore_errors=True)


def machine_facts() -> dict[str, Any]:
    def out(*command: str) -> str:
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return result.stdout.rstrip()

    memory = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    return {
        "nproc": os.cpu_count(),
        "memory_mib": int(memory) // 1024,
        "kernel": os.uname().release,
        "docker": out("docker", "version", "--format", "{{.Server.Version}}"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": out("git", "-C", str(REPO), "rev-parse", "HEAD"),
        # The benchmark runs the working tree: say when it is not the commit.
        "operator_changes_not_committed": [
            line[3:]
            for line in out(
                "git", "-C", str(REPO), "status", "--porcelain", "--", "operator"
            ).splitlines()
        ],
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")


def apiserver_requests() -> tuple[int, int]:
    """(all requests, writes to dockyard.dev objects and Events) the apiserver served so far."""
    total = writes = 0
    pattern = re.compile(r"^apiserver_request_total\{(.*)\} (\S+)$")
    for line in kubectl("get", "--raw", "/metrics").splitlines():
        match = pattern.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        count = int(float(match.group(2)))
        total += count
        ours = labels.get("group") == "dockyard.dev" or labels.get("resource") == "events"
        if ours and labels.get("verb") in WRITE_VERBS:
            writes += count
    return total, writes
