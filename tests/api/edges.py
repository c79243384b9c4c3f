"""The edges of what the API accepts, each paired with what the engine does at that edge.

Every row is one constraint the engine (Docker 20.10+ and runc, on a VM) puts on a field: values
just outside it must be refused at ``kubectl apply`` naming the field, and the value just inside
it must be accepted and then *run* on a real engine (``tests/e2e/test_parity.py``). docs/api.md
lists the same rows (a test keeps the two in step).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

IMAGE = "dockyard/busybox:1"
LONGEST_TAG = "t" * 128  # Docker's longest tag; the parity test tags the host's image with it
SLEEP = ["sh", "-c", "sleep 100000"]
NUL, SOH = "\u0000", "\u0001"

Inspect = Mapping[str, Any]  # what the VM's engine shows of the running container


@dataclass(frozen=True)
class Edge:
    """``outside``: container fields (each merged into a plain container) that must be refused,
    naming ``field`` (relative to the container); ``inside``: the fields just inside the edge,
    which must run; ``shows``: what the engine must show of it then."""

    id: str
    field: str
    rule: str
    outside: tuple[Mapping[str, Any], ...]
    inside: Mapping[str, Any] | None
    shows: Callable[[Inspect], bool] | None = None
    webhook: bool = False


def _host(inspect: Inspect) -> Mapping[str, Any]:
    host: Mapping[str, Any] = inspect["HostConfig"]
    return host


def _config(inspect: Inspect) -> Mapping[str, Any]:
    config: Mapping[str, Any] = inspect["Config"]
    return config


def _mounted(inspect: Inspect, path: str) -> bool:
    return any(m["Destination"] == path for m in inspect["Mounts"])


EDGES: tuple[Edge, ...] = (
    Edge(
        "name-one-letter",
        "name",
        "a DNS label: Docker wants 2+ characters, so the engine's name gets a suffix",
        ({"name": "A"}, {"name": "a_"}),
        {"name": "a"},
    ),
    Edge(
        "name-longest",
        "name",
        "at most 63 characters",
        ({"name": "n" * 64},),
        {"name": "n" * 63},
    ),
    Edge(
        "image-reference",
        "image",
        "Docker's reference grammar: lowercase repository, tag of at most 128 [A-Za-z0-9_.-]",
        (
            {"image": "Dockyard/Busybox:1"},
            {"image": "dockyard/busybox:"},
            {"image": f"dockyard/busybox:{LONGEST_TAG}t"},
            {"image": "dockyard//busybox"},
        ),
        {"image": f"dockyard/busybox:{LONGEST_TAG}"},
        lambda i: _config(i)["Image"] == f"dockyard/busybox:{LONGEST_TAG}",
    ),
    Edge(
        "memory-minimum",
        "resources.memory",
        'at least 6Mi ("Minimum memory limit allowed is 6MB")',
        ({"resources": {"memory": "1"}}, {"resources": {"memory": "6291455"}}),
        {"resources": {"memory": "6Mi"}},
        lambda i: _host(i)["Memory"] == 6 * 1024 * 1024,
    ),
    Edge(
        "cpu-shares-minimum",
        "resources.cpuShares",
        'at least 2 ("the minimum allowed cpu-shares is 2")',
        ({"resources": {"cpuShares": 1}},),
        {"resources": {"cpuShares": 2}},
        lambda i: _host(i)["CpuShares"] == 2,
    ),
    Edge(
        "cpu-shares-maximum",
        "resources.cpuShares",
        "at most 262144 (the kernel's largest weight)",
        ({"resources": {"cpuShares": 262145}},),
        {"resources": {"cpuShares": 262144}},
        lambda i: _host(i)["CpuShares"] == 262144,
    ),
    Edge(
        "capability-add",
        "capAdd[0]",
        'a capability Docker knows, with or without CAP_, or ALL ("unknown capability")',
        ({"capAdd": ["NOT_A_CAP"]}, {"capAdd": ["PERFMON"]}),
        {"capAdd": ["AUDIT_READ", "CAP_NET_ADMIN"]},
        lambda i: {"AUDIT_READ", "CAP_NET_ADMIN"} <= set(_host(i)["CapAdd"]),
    ),
    Edge(
        "capability-drop",
        "capDrop[0]",
        "the same names as capAdd",
        ({"capDrop": ["EVERYTHING"]},),
        {"capDrop": ["ALL"]},
        lambda i: _host(i)["CapDrop"] == ["ALL"],
    ),
    Edge(
        "capability-all",
        "capAdd",
        "ALL: every capability the VM can grant",
        (),
        {"capAdd": ["ALL"]},
        lambda i: "ALL" in _host(i)["CapAdd"],
    ),
    Edge(
        "privileged",
        "privileged",
        "runs; where the VM withholds capabilities it gets every other one",
        (),
        {"privileged": True},
    ),
    Edge(
        "stop-signal-name",
        "stopSignal",
        'a signal name, SIG optional, up to SIGRTMIN+15 / SIGRTMAX-14 ("Invalid signal")',
        ({"stopSignal": "SIGRTMIN+16"}, {"stopSignal": "SIGFOO"}),
        {"stopSignal": "SIGRTMIN+15"},
        lambda i: _config(i)["StopSignal"] == "SIGRTMIN+15",
    ),
    Edge(
        "stop-signal-number",
        "stopSignal",
        "or a number 1..64 (0 is no signal)",
        ({"stopSignal": "0"}, {"stopSignal": "65"}),
        {"stopSignal": "64"},
        lambda i: _config(i)["StopSignal"] == "64",
    ),
    Edge(
        "user",
        "user",
        'name or id, then optionally :group; ids 0..2147483647 ("uids and gids must be in range")',
        ({"user": "root:"}, {"user": "2147483648"}, {"user": "a b"}, {"user": ":0"}),
        {"user": "2147483647:2147483647"},
        lambda i: _config(i)["User"] == "2147483647:2147483647",
    ),
    Edge(
        "volume-mount-path",
        "volumes[0].mountPath",
        "absolute, not / (\"destination can't be '/'\"), no '.', '..' or empty part, no ':',"
        " not under /proc, /sys, /dev (the kernel's) or /.dockyard (Dockyard's probes)",
        (
            {"volumes": [{"mountPath": "/"}]},
            {"volumes": [{"mountPath": "/proc"}]},
            {"volumes": [{"mountPath": "/a/../b"}]},
            {"volumes": [{"mountPath": "/data/"}]},
        ),
        {"volumes": [{"mountPath": "/procs"}]},
        lambda i: _mounted(i, "/procs"),
    ),
    Edge(
        "bind-mount-path",
        "bindVolumes[0].mountPath",
        "as volumes[].mountPath",
        (
            {"bindVolumes": [{"mountPath": "/sys/x"}]},
            {"bindVolumes": [{"mountPath": "/a:b"}]},
            {"bindVolumes": [{"mountPath": "/.dockyard/x"}]},
            {"bindVolumes": [{"mountPath": "/dev"}]},
        ),
        {"bindVolumes": [{"mountPath": "/.dockyardx"}]},
        lambda i: _mounted(i, "/.dockyardx"),
    ),
    Edge(
        "mount-path-once",
        "volumes",
        'each volume and bind volume at a path of its own ("Duplicate mount point")',
        (
            {"volumes": [{"mountPath": "/d"}], "bindVolumes": [{"mountPath": "/d"}]},
            {"volumes": [{"mountPath": "/d", "subPath": "a"}, {"mountPath": "/d"}]},
        ),
        {"volumes": [{"mountPath": "/d"}], "bindVolumes": [{"mountPath": "/d2"}]},
        lambda i: _mounted(i, "/d") and _mounted(i, "/d2"),
        webhook=True,
    ),
    Edge(
        "bind-host-path",
        "bindVolumes[0].hostPath",
        "absolute, no ':' (the engine's bind syntax)",
        ({"bindVolumes": [{"hostPath": "/srv/a:b", "mountPath": "/x"}]},),
        {"bindVolumes": [{"hostPath": "/srv/a-b", "mountPath": "/x"}]},
        lambda i: _mounted(i, "/x"),
    ),
    Edge(
        "volume-sub-path",
        "volumes[0].subPath",
        "relative, no '..', no ':'",
        (
            {"volumes": [{"subPath": "a:b", "mountPath": "/x"}]},
            {"volumes": [{"subPath": "../x", "mountPath": "/x"}]},
        ),
        {"volumes": [{"subPath": "a.b", "mountPath": "/x"}]},
        lambda i: _mounted(i, "/x"),
    ),
    Edge(
        "probe-interval",
        "healthCheck.interval",
        "at least 1s (0 would mean Docker's default)",
        (
            {"healthCheck": {"exec": {"command": ["true"]}, "interval": "0s"}},
            {"healthCheck": {"exec": {"command": ["true"]}, "interval": "999ms"}},
        ),
        {"healthCheck": {"exec": {"command": ["true"]}, "interval": "1s", "timeout": "1s"}},
        lambda i: _config(i)["Healthcheck"]["Interval"] == 10**9,
    ),
    Edge(
        "probe-timeout",
        "healthCheck.timeout",
        "at least 1s",
        ({"healthCheck": {"exec": {"command": ["true"]}, "timeout": "0s"}},),
        None,  # the inside value runs in probe-interval
    ),
    Edge(
        "labels",
        "labels",
        "keys not empty and not under dockyard.dev/ (Dockyard's own labels)",
        ({"labels": {"dockyard.dev/job": "x"}}, {"labels": {"": "x"}}),
        {"labels": {"example.com/team": "a", "dockyard.devx": "b"}},
        lambda i: _config(i)["Labels"].get("example.com/team") == "a",
    ),
    Edge(
        "env-value",
        "env[0].value",
        'no NUL ("environment variable value can\'t contain null")',
        ({"env": [{"name": "A", "value": f"a{NUL}b"}]},),
        {"env": [{"name": "A", "value": f"a{SOH}b"}]},
        lambda i: f"A=a{SOH}b" in _config(i)["Env"],
    ),
    Edge(
        "args",
        "args[0]",
        "no NUL (exec(2) would cut the argument there)",
        ({"args": [f"a{NUL}b"]},),
        {"args": [f"a{SOH}b"]},
    ),
)


@dataclass(frozen=True)
class JobEdge:
    """A constraint on a job's containers together: ``outside``/``inside`` are its whole
    container list (names are given)."""

    id: str
    field: str
    rule: str
    outside: tuple[list[dict[str, Any]], ...]
    inside: list[dict[str, Any]]
    webhook: bool = True


JOB_EDGES: tuple[JobEdge, ...] = (
    JobEdge(
        "host-port-once",
        "containers[1].ports[0].hostPort",
        'a host port and protocol published once per job ("port is already allocated")',
        (
            [
                {"name": "p1", "ports": [{"containerPort": 80, "hostPort": 8080}]},
                {"name": "p2", "ports": [{"containerPort": 81, "hostPort": 8080}]},
            ],
        ),
        [
            {"name": "p1", "ports": [{"containerPort": 80, "hostPort": 8080}]},
            {"name": "p2", "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]},
        ],
    ),
)


@dataclass(frozen=True)
class ObjectEdge:
    """A constraint on a whole object: ``outside`` manifests refused, naming ``field``."""

    id: str
    field: str
    rule: str
    outside: tuple[dict[str, Any], ...]
    inside: tuple[dict[str, Any], ...] = field(default=())


def container(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": IMAGE, "command": list(SLEEP), **copy.deepcopy(fields)}


def deployment(name: str, jobs: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dockyard.dev/v1alpha1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"provider": {"type": "local"}, "jobs": jobs, **spec},
    }


def job(name: str, containers: list[dict[str, Any]], disk: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "instances": 1, "containers": containers}
    if disk:
        body["persistentDisk"] = {"size": "64Mi"}
    return body


def one_container(fields: Mapping[str, Any], name: str = "edge") -> dict[str, Any]:
    """A Deployment whose only container has ``fields`` (a disk, for volumes)."""
    fields = dict(fields)
    return deployment("edges", [job("j", [container(fields.pop("name", name), **fields)])])


def job_with(containers: list[dict[str, Any]]) -> dict[str, Any]:
    return deployment("edges", [job("j", [container(**c) for c in containers])])


#: The longest Job name: it prefixes its disk records <job>-<index>, an orphaned copy's
#: <job>-<index>-was-<8 hex> and snapshots <job>-<index>-g<generation>.
LONGEST_JOB = 46

OBJECT_EDGES: tuple[ObjectEdge, ...] = (
    ObjectEdge(
        "job-name-length",
        "spec.jobs",
        f"<deployment>-<job> at most {LONGEST_JOB} characters (names derived from it stay DNS"
        " labels); checked for new jobs",
        (deployment("d" * 40, [job("jobs12", [container("a")])]),),
        (deployment("d" * 40, [job("jobs1", [container("a")])]),),
    ),
    ObjectEdge(
        "job-object-name-length",
        "metadata.name",
        f"a Job's own name at most {LONGEST_JOB} characters; checked on create",
        (
            {
                "apiVersion": "dockyard.dev/v1alpha1",
                "kind": "Job",
                "metadata": {"name": "j" * (LONGEST_JOB + 1)},
                "spec": {"provider": {"type": "local"}, "containers": [container("a")]},
            },
        ),
    ),
    ObjectEdge(
        "unresponsive-timeout",
        "spec.resurrection.unresponsiveTimeout",
        "longer than 0s",
        (
            deployment(
                "edges", [job("j", [container("a")])], resurrection={"unresponsiveTimeout": "0s"}
            ),
        ),
        (
            deployment(
                "edges", [job("j", [container("a")])], resurrection={"unresponsiveTimeout": "1ms"}
            ),
        ),
    ),
)


def engine_deployment(name: str) -> dict[str, Any]:
    """Every inside value of the table, each in a container of its own (named by its row, or by
    the row's own ``name``), across two jobs (at most 20 containers per job)."""
    containers = []
    for edge in EDGES:
        if edge.inside is None:
            continue
        fields = dict(edge.inside)
        containers.append(container(fields.pop("name", short(edge.id)), **fields))
    jobs = [job("edges", containers[:20]), job("more", containers[20:])]
    for edge in JOB_EDGES:
        jobs[1]["containers"] += [container(**c) for c in edge.inside]
    return deployment(name, jobs)


def short(edge_id: str) -> str:
    """The engine deployment's container for a row."""
    return edge_id[:63]


def engine_container(edge: Edge) -> tuple[str, str]:
    """(job, container) that runs ``edge``'s inside value in :func:`engine_deployment`."""
    inside = [e for e in EDGES if e.inside is not None]
    position = inside.index(edge)
    name = str((edge.inside or {}).get("name", short(edge.id)))
    return ("edges" if position < 20 else "more"), name
