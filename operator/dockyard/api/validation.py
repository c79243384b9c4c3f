"""What CEL cannot check (or only at a cost the apiserver refuses): dependency cycles,
references to containers of other jobs, host ports two containers of one job would both publish
on their VM, a path a container mounts twice, and names of Jobs too long for what is derived
from them.

Pure functions of a parsed spec, used by the admission webhook (to reject) and by the reconciler
(to set Stalled when an object got in anyway, e.g. while the webhook was down).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from dockyard.api.containers import Container
from dockyard.api.models import MAX_JOB_OBJECT_NAME, DeploymentSpec, JobSpec

Node = tuple[str, str]  # (job, container)


@dataclass(frozen=True)
class FieldError:
    """A problem with one field, e.g. ``spec.jobs[0].containers[1].dependsOn``."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def resolve_dependency(reference: str, job: str) -> Node:
    """(job, container) named by a dependsOn entry of a container in ``job``."""
    other_job, slash, container = reference.partition("/")
    return (other_job, container) if slash else (job, reference)


@dataclass(frozen=True)
class _Group:
    job: str
    path: str  # e.g. "spec.jobs[0]" or "spec"
    containers: list[Container]


def validate_spec(
    spec: DeploymentSpec | JobSpec, *, job_name: str | None = None
) -> list[FieldError]:
    """Every problem CEL cannot catch, in document order (see :func:`validate_dependencies`)."""
    return (
        validate_dependencies(spec, job_name=job_name)
        + host_port_clashes(spec)
        + mount_path_clashes(spec)
    )


def _groups(spec: DeploymentSpec | JobSpec) -> list[tuple[str, list[Container]]]:
    if isinstance(spec, DeploymentSpec):
        return [(f"spec.jobs[{n}]", job.containers) for n, job in enumerate(spec.jobs)]
    return [("spec", spec.containers)]


def mount_path_clashes(spec: DeploymentSpec | JobSpec) -> list[FieldError]:
    """A container path both a volume and a bind volume mount ("Duplicate mount point")."""
    errors = []
    for path, containers in _groups(spec):
        for index, container in enumerate(containers):
            bound = {b.mount_path for b in container.bind_volumes}
            for number, volume in enumerate(container.volumes):
                if volume.mount_path in bound:
                    errors.append(
                        FieldError(
                            f"{path}.containers[{index}].volumes[{number}].mountPath",
                            f"{volume.mount_path} is also a bindVolumes mountPath "
                            "(each mount needs a path of its own)",
                        )
                    )
    return errors


def job_names_too_long(
    deployment: str, spec: DeploymentSpec, existing: Iterable[str] = ()
) -> list[FieldError]:
    """Jobs (other than ``existing`` ones, made before the rule) whose Job object's name,
    <deployment>-<job>, would be longer than ``MAX_JOB_OBJECT_NAME``."""
    old = set(existing)
    return [
        FieldError(
            f"spec.jobs[{n}].name",
            f"the Job {deployment}-{job.name} would be {len(deployment) + 1 + len(job.name)} "
            f"characters, more than {MAX_JOB_OBJECT_NAME} (it prefixes its disks' names)",
        )
        for n, job in enumerate(spec.jobs)
        if job.name not in old and len(deployment) + 1 + len(job.name) > MAX_JOB_OBJECT_NAME
    ]


def host_port_clashes(spec: DeploymentSpec | JobSpec) -> list[FieldError]:
    """A host port (and protocol) published twice on one VM: every container of a job runs on
    each of its VMs, so the engine would refuse the second one ("port is already allocated")."""
    errors: list[FieldError] = []
    for path, containers in _groups(spec):
        first: dict[tuple[int, str], str] = {}
        for c_index, container in enumerate(containers):
            for p_index, port in enumerate(container.ports):
                if port.host_port is None:
                    continue
                field = f"{path}.containers[{c_index}].ports[{p_index}].hostPort"
                key = (port.host_port, port.protocol)
                if key in first:
                    errors.append(
                        FieldError(
                            field,
                            f"{port.host_port}/{port.protocol} is already published by "
                            f"{first[key]} (the job's containers share each VM)",
                        )
                    )
                else:
                    first[key] = f"{path}.containers[{c_index}] ({container.name})"
    return errors


def validate_dependencies(
    spec: DeploymentSpec | JobSpec, *, job_name: str | None = None
) -> list[FieldError]:
    """Every dependency problem of a Deployment or Job spec, in document order.

    For a Job, "job/container" references to other jobs cannot be checked here (those Jobs are
    separate objects); references to its own name (``spec.name`` or ``job_name``, normally
    metadata.name) are.
    """
    if isinstance(spec, DeploymentSpec):
        groups = [
            _Group(job.name, f"spec.jobs[{index}]", job.containers)
            for index, job in enumerate(spec.jobs)
        ]
        closed = True
    else:
        groups = [_Group(spec.name or job_name or "", "spec", spec.containers)]
        closed = False
    known = {group.job: {c.name for c in group.containers} for group in groups}
    specs = {(group.job, c.name): c for group in groups for c in group.containers}
    fields = {
        (group.job, container.name): f"{group.path}.containers[{index}].dependsOn"
        for group in groups
        for index, container in enumerate(group.containers)
    }
    errors: list[FieldError] = []
    graph: dict[Node, list[Node]] = {}
    for group in groups:
        for container in group.containers:
            node = (group.job, container.name)
            graph[node] = []
            for reference, condition, field in _references(container, fields[node]):
                target = resolve_dependency(reference, group.job)
                problem = _reference_problem(reference, node, target, known, closed)
                problem = problem or _condition_problem(reference, condition, specs.get(target))
                if problem:
                    errors.append(FieldError(field, problem))
                elif target in fields:
                    graph[node].append(target)
    single_job = len(groups) == 1
    for cycle in _cycles(graph):
        names = [name if single_job else f"{job}/{name}" for job, name in cycle]
        errors.append(FieldError(fields[cycle[0]], "dependency cycle " + " -> ".join(names)))
    return errors


def _references(container: Container, field: str) -> Iterable[tuple[str, str, str]]:
    """(reference, condition, the field naming it) of each upstream of ``container``."""
    for reference in container.depends_on:
        yield reference, "Started", field
    base = field.removesuffix("dependsOn") + "dependsOnConditions"
    for number, entry in enumerate(container.depends_on_conditions):
        yield entry.name, entry.condition, f"{base}[{number}].name"


def _condition_problem(reference: str, condition: str, upstream: Container | None) -> str | None:
    """What the upstream must be for the condition to ever hold."""
    if upstream is None:
        return None  # another Job object: checked when the Deployment is
    if condition == "Healthy" and upstream.health_check is None:
        return f"{reference!r} has no healthCheck: condition Healthy would never hold"
    if condition == "Completed" and upstream.restart_policy == "Always":
        return (
            f"{reference!r} has restartPolicy Always: it never completes "
            "(condition Completed needs Never or OnFailure)"
        )
    return None


def _reference_problem(
    reference: str, node: Node, target: Node, known: dict[str, set[str]], closed: bool
) -> str | None:
    if target == node:
        return f"{reference!r}: a container cannot depend on itself"
    job, container = target
    if job not in known:
        if not closed:
            return None  # another Job object: checked when the Deployment is
        return f"{reference!r}: there is no job {job!r} in this deployment"
    if container not in known[job]:
        where = "this job" if job == node[0] else f"job {job!r}"
        return f"{reference!r}: there is no container {container!r} in {where}"
    return None


def _cycles(graph: dict[Node, list[Node]]) -> Iterable[list[Node]]:
    """Each cycle found by a depth-first search in document order, as [a, b, ..., a]."""
    done: set[Node] = set()
    seen: set[frozenset[Node]] = set()
    for start in graph:
        if start in done:
            continue
        stack: list[Node] = [start]
        on_stack = {start}
        branches = [iter(graph[start])]
        while branches:
            target = next(branches[-1], None)
            if target is None:
                finished = stack.pop()
                on_stack.discard(finished)
                done.add(finished)
                branches.pop()
            elif target in on_stack:
                cycle = stack[stack.index(target) :]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    yield [*cycle, target]
            elif target not in done:
                stack.append(target)
                on_stack.add(target)
                branches.append(iter(graph[target]))


def errors_from_validation(error: ValidationError) -> list[FieldError]:
    """pydantic's errors as FieldErrors with Kubernetes-style paths (``spec.jobs[0].name``)."""
    result = []
    for item in error.errors():
        path = ""
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        result.append(FieldError(path or "<object>", item["msg"]))
    return result
