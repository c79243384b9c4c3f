"""``kubectl dockyard``: BOSH's instance commands for Dockyard, as a kubectl plugin.

Installed with the package as the ``kubectl-dockyard`` console script, so kubectl finds it on
PATH (``kubectl plugin list``). It talks to the cluster through ``kubectl`` itself (the user's
kubeconfig, context and credentials), and to a VM's engine through the provider its Job names
(``logs``, ``exec``). Every command that changes something writes an annotation the operator
acts on (docs/operations.md), so ``kubectl annotate`` does the same without the plugin.

Targets: ``NAME`` or ``deployment/NAME`` (a Deployment), ``job/NAME`` (a Job object), and
``JOB/INDEX`` for one instance (``JOB`` a Job object name, or a job of ``-d DEPLOYMENT``).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dockyard.handlers.desired import (
    IGNORED,
    PAUSED,
    RECREATED_AT,
    RESTARTED_AT,
    STOPPED,
    STOPPED_HARD,
    instance_key,
    provider_config,
)

DEPLOYMENT_LABEL = "dockyard.dev/deployment"
_KINDS = {"dyd": "Deployment", "dyj": "Job"}


Command = Callable[["Kubectl", argparse.Namespace], int]


class PluginError(Exception):
    """What the user did not have right: printed as ``error: ...``, exit status 1."""


# --- kubectl ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kubectl:
    """``kubectl`` with the user's flags (namespace, context, kubeconfig)."""

    namespace: str | None = None
    context: str | None = None
    kubeconfig: str | None = None

    def _flags(self) -> list[str]:
        flags = []
        for name, value in (("--context", self.context), ("--kubeconfig", self.kubeconfig)):
            if value:
                flags += [name, value]
        return flags + (["-n", self.namespace] if self.namespace else [])

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["kubectl", *self._flags(), *args], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise PluginError(done.stderr.strip() or f"kubectl {' '.join(args)} failed")
        return done.stdout

    def get(self, kind: str, name: str) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads(self.run("get", kind, name, "-o", "json"))
        except PluginError as error:
            if "NotFound" in str(error) or "not found" in str(error):
                where = self.namespace or "the current namespace"
                what = _KINDS.get(kind, kind)
                raise PluginError(f"there is no {what} {name!r} in {where}") from None
            raise
        return loaded

    def items(self, kind: str, *selector: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(self.run("get", kind, *selector, "-o", "json"))[
            "items"
        ]
        return found

    def annotate(self, kind: str, name: str, changes: dict[str, str | None]) -> None:
        pairs = [f"{key}-" if value is None else f"{key}={value}" for key, value in changes.items()]
        self.run("annotate", "--overwrite", kind, name, *pairs)


# --- targets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    kind: str  # "dyd" or "dyj"
    name: str


def target(text: str) -> Target:
    kind, slash, name = text.partition("/")
    if not slash:
        return Target("dyd", text)
    if kind in ("deployment", "deployments", "dyd"):
        return Target("dyd", name)
    if kind in ("job", "jobs", "dyj"):
        return Target("dyj", name)
    raise PluginError(f"{text!r}: name a Deployment (NAME, deployment/NAME) or a job (job/NAME)")


def instance(text: str, deployment: str | None) -> tuple[str, int]:
    """``JOB/INDEX`` -> (Job object name, index)."""
    job, slash, index = text.rpartition("/")
    if not slash or not job or not index.isdigit():
        raise PluginError(f"{text!r}: name an instance as JOB/INDEX, e.g. store/0")
    return (f"{deployment}-{job}" if deployment else job), int(index)


def jobs_of(kubectl: Kubectl, chosen: Target) -> list[dict[str, Any]]:
    if chosen.kind == "dyj":
        return [kubectl.get("dyj", chosen.name)]
    kubectl.get("dyd", chosen.name)  # says so when there is none
    return kubectl.items("dyj", "-l", f"{DEPLOYMENT_LABEL}={chosen.name}")


def job_instance(
    kubectl: Kubectl, job_name: str, index: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    job = kubectl.get("dyj", job_name)
    found = {i["index"]: i for i in (job.get("status") or {}).get("instances", [])}
    if index not in found:
        have = ", ".join(map(str, sorted(found))) or "none"
        raise PluginError(f"job {job_name} has no instance {index} (instances: {have})")
    return job, found[index]


# --- instances ----------------------------------------------------------------------------------


def instance_rows(jobs: Sequence[dict[str, Any]], processes: bool) -> Iterator[list[str]]:
    yield ["INSTANCE", "STATE", "VM", "ADDRESS", "DISK", "STEMCELL", "READY"]
    for job in sorted(jobs, key=lambda j: j["metadata"]["name"]):
        for entry in (job.get("status") or {}).get("instances", []):
            containers = entry.get("containers", [])
            ready = sum(1 for c in containers if c.get("ready"))
            yield [
                f"{job['metadata']['name']}/{entry['index']}",
                entry.get("state", "-"),
                entry.get("vmId", "-"),
                entry.get("address", "-"),
                entry.get("disk", "-"),
                entry.get("stemcell", "-"),
                f"{ready}/{len(containers)}",
            ]
            for container in containers if processes else ():
                yield [
                    f"  {container['name']}",
                    container.get("state", "-"),
                    f"restarts={container.get('restartCount', 0)}",
                    container.get("lastRestartReason", "-"),
                    "",
                    container.get("image", "-"),
                    "yes" if container.get("ready") else "no",
                ]


def table(rows: Iterator[list[str]]) -> str:
    rows_ = list(rows)
    widths = [max(len(row[n]) for row in rows_) for n in range(len(rows_[0]))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows_
    )


def cmd_instances(kubectl: Kubectl, args: argparse.Namespace) -> int:
    jobs = jobs_of(kubectl, target(args.target)) if args.target else kubectl.items("dyj")
    if not jobs:
        raise PluginError("no Dockyard jobs here")
    print(table(instance_rows(jobs, args.ps)))
    return 0


# --- the VM's engine ----------------------------------------------------------------------------


def _secrets(kubectl: Kubectl, job: dict[str, Any]) -> dict[str, dict[str, str]]:
    ref = (job["spec"].get("provider") or {}).get("credentialsSecretRef")
    if not ref:
        return {}
    data = kubectl.get("secret", ref["name"]).get("data") or {}
    return {ref["name"]: {k: base64.b64decode(v).decode() for k, v in data.items()}}


def container_on_vm(kubectl: Kubectl, job_name: str, index: int, name: str | None) -> Any:
    """The Docker SDK container of ``name`` on the instance's VM (the only one when unnamed)."""
    from dockyard.api.models import parse_job
    from dockyard.providers import make_provider

    job, entry = job_instance(kubectl, job_name, index)
    names = [c["name"] for c in job["spec"]["containers"]]
    if name is None and len(names) == 1:
        name = names[0]
    if name not in names:
        raise PluginError(f"name a container of {job_name}: {', '.join(names)}")
    if not entry.get("vmId") or entry.get("state") == "missing":
        raise PluginError(f"instance {job_name}/{index} has no VM ({entry.get('state', '?')})")
    spec = parse_job(job).spec.provider
    provider = make_provider(provider_config(spec, _secrets(kubectl, job)))
    engine = provider.docker_client(entry["vmId"])
    found = engine.containers.list(all=True, filters={"label": f"dockyard.dev/container={name}"})
    if not found:
        raise PluginError(f"container {name} is not on instance {job_name}/{index} now")
    return found[0]


def cmd_logs(kubectl: Kubectl, args: argparse.Namespace) -> int:
    job_name, index = instance(args.instance, args.deployment)
    container = container_on_vm(kubectl, job_name, index, args.container)
    tail: int | str = args.tail if args.tail >= 0 else "all"
    if args.follow:
        for chunk in container.logs(stream=True, follow=True, tail=tail):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
    else:
        sys.stdout.buffer.write(container.logs(tail=tail))
    return 0


def cmd_exec(kubectl: Kubectl, args: argparse.Namespace) -> int:
    job_name, index = instance(args.instance, args.deployment)
    if not args.argv:
        raise PluginError("give the command after --, e.g. exec store/0 db -- cat /data/x")
    container = container_on_vm(kubectl, job_name, index, args.container)
    code, output = container.exec_run(list(args.argv))
    sys.stdout.buffer.write(output or b"")
    return int(code or 0)


# --- commands (annotations) ---------------------------------------------------------------------


def _now() -> str:
    """Now, rounded up to the second: a container that started earlier in this second is
    restarted too (the request is compared with start times)."""
    moment = datetime.fromtimestamp(math.ceil(datetime.now(UTC).timestamp()), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _indices(job: dict[str, Any], key: str) -> set[int]:
    text = (job["metadata"].get("annotations") or {}).get(key, "")
    return {int(part) for part in text.split(",") if part.strip().isdigit()}


def _listed(indices: set[int]) -> str | None:
    return ",".join(map(str, sorted(indices))) or None


def cmd_rolling(annotation: str, verb: str) -> Command:
    """restart / recreate: every instance of a Deployment or Job (rolling, through its
    canaries), or one instance (JOB/INDEX)."""

    def run(kubectl: Kubectl, args: argparse.Namespace) -> int:
        if args.target.rpartition("/")[2].isdigit():
            job_name, index = instance(args.target, args.deployment)
            job_instance(kubectl, job_name, index)
            kubectl.annotate("dyj", job_name, {instance_key(annotation, index): _now()})
            print(f"{job_name}/{index}: {verb} requested")
            return 0
        chosen = target(args.target)
        kubectl.get(chosen.kind, chosen.name)
        kubectl.annotate(chosen.kind, chosen.name, {annotation: _now()})
        print(f"{chosen.name}: rolling {verb} requested (canaries first)")
        return 0

    return run


def cmd_stop(kubectl: Kubectl, args: argparse.Namespace) -> int:
    job_name, index = instance(args.instance, args.deployment)
    job, _ = job_instance(kubectl, job_name, index)
    key, other = (STOPPED_HARD, STOPPED) if args.hard else (STOPPED, STOPPED_HARD)
    kubectl.annotate(
        "dyj",
        job_name,
        {
            key: _listed(_indices(job, key) | {index}),
            other: _listed(_indices(job, other) - {index}),
        },
    )
    print(f"{job_name}/{index}: stop{' --hard' if args.hard else ''} requested")
    return 0


def cmd_start(kubectl: Kubectl, args: argparse.Namespace) -> int:
    job_name, index = instance(args.instance, args.deployment)
    job, _ = job_instance(kubectl, job_name, index)
    changes = {key: _listed(_indices(job, key) - {index}) for key in (STOPPED, STOPPED_HARD)}
    kubectl.annotate("dyj", job_name, changes)
    print(f"{job_name}/{index}: start requested")
    return 0


def cmd_ignore(ignore: bool) -> Command:
    def run(kubectl: Kubectl, args: argparse.Namespace) -> int:
        job_name, index = instance(args.instance, args.deployment)
        job, _ = job_instance(kubectl, job_name, index)
        indices = _indices(job, IGNORED)
        indices = indices | {index} if ignore else indices - {index}
        kubectl.annotate("dyj", job_name, {IGNORED: _listed(indices)})
        print(f"{job_name}/{index}: {'ignored' if ignore else 'no longer ignored'}")
        return 0

    return run


def cmd_pause(pause: bool) -> Command:
    def run(kubectl: Kubectl, args: argparse.Namespace) -> int:
        chosen = target(args.target)
        kubectl.get(chosen.kind, chosen.name)
        kubectl.annotate(chosen.kind, chosen.name, {PAUSED: "true" if pause else None})
        print(f"{chosen.name}: {'paused' if pause else 'resumed'}")
        return 0

    return run


def cmd_events(kubectl: Kubectl, args: argparse.Namespace) -> int:
    chosen = target(args.target)
    names = {j["metadata"]["name"] for j in jobs_of(kubectl, chosen)}
    if chosen.kind == "dyd":
        names.add(chosen.name)
    events = [
        e for e in kubectl.items("events") if (e.get("involvedObject") or {}).get("name") in names
    ]
    events.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    rows = [["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]]
    for event in events:
        involved = event.get("involvedObject") or {}
        rows.append(
            [
                event.get("lastTimestamp") or event.get("eventTime") or "-",
                event.get("type", "-"),
                event.get("reason", "-"),
                f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
                event.get("message", ""),
            ]
        )
    print(table(iter(rows)))
    return 0


# --- the command line ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kubectl dockyard", description=__doc__.split("\n\n")[0])
    top.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    top.add_argument("--context", help="kubeconfig context")
    top.add_argument("--kubeconfig", help="kubeconfig file")
    sub = top.add_subparsers(dest="verb", required=True)

    def add(name: str, run: Command, text: str) -> Any:
        command = sub.add_parser(name, help=text, description=text)
        command.add_argument("-d", "--deployment", help="JOB in JOB/INDEX is a job of it")
        command.set_defaults(run=run)
        return command

    listing = add("instances", cmd_instances, "one row per instance (and container, --ps)")
    listing.add_argument("target", nargs="?", help="a Deployment or job/NAME (default: all)")
    listing.add_argument("--ps", action="store_true", help="a row per container too")
    engine_commands: tuple[tuple[str, Command, str], ...] = (
        ("logs", cmd_logs, "a container's log, from its VM's engine"),
        ("exec", cmd_exec, "run a command in a container, through its VM's engine"),
    )
    for name, run, text in engine_commands:
        command = add(name, run, text)
        command.add_argument("instance", help="JOB/INDEX")
        command.add_argument("container", nargs="?", help="container (the only one by default)")
        if name == "logs":
            command.add_argument("-f", "--follow", action="store_true")
            command.add_argument("--tail", type=int, default=-1, help="last N lines")
        else:
            command.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    for name, annotation in (("restart", RESTARTED_AT), ("recreate", RECREATED_AT)):
        what = "containers restart" if name == "restart" else "VMs are recreated (disks kept)"
        command = add(name, cmd_rolling(annotation, name), f"rolling: {what}, canaries first")
        command.add_argument("target", help="a Deployment, job/NAME, or one instance JOB/INDEX")
    stop = add("stop", cmd_stop, "stop an instance's containers (--hard: and delete its VM)")
    stop.add_argument("instance", help="JOB/INDEX")
    stop.add_argument("--hard", action="store_true", help="delete the VM too; the disk stays")
    instance_commands: tuple[tuple[str, Command, str], ...] = (
        ("start", cmd_start, "start a stopped instance again"),
        ("ignore", cmd_ignore(True), "leave an instance out of rollouts and repairs"),
        ("unignore", cmd_ignore(False), "look after an ignored instance again"),
    )
    for name, run, text in instance_commands:
        add(name, run, text).add_argument("instance", help="JOB/INDEX")
    object_commands: tuple[tuple[str, Command, str], ...] = (
        ("pause", cmd_pause(True), "the operator does nothing for it until resumed"),
        ("resume", cmd_pause(False), "undo pause"),
        ("events", cmd_events, "the Events of a Deployment and its Jobs, oldest first"),
    )
    for name, run, text in object_commands:
        add(name, run, text).add_argument("target", help="a Deployment or job/NAME")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.verb == "exec" and args.argv[:1] == ["--"]:
        args.argv = args.argv[1:]
    kubectl = Kubectl(args.namespace, args.context, args.kubeconfig)
    try:
        result: int = args.run(kubectl, args)
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
