"""Dependencies that carry meaning, end to end: dependsOn conditions (Healthy, Completed), links
to every instance of an upstream, and files from ConfigMaps."""

from __future__ import annotations

import json
import textwrap
from datetime import datetime
from typing import Any

import pytest

from dockyard.providers import ProviderConfig, make_provider
from dockyard.providers.base import TAG_INDEX, TAG_OWNER_UID
from tests.conftest import REPO, Kubectl
from tests.e2e.conftest import GetObject
from tests.e2e.test_reconciler import READY_DEADLINE, condition, deployment, wait_ready
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator", "dockyard_cleanup")]


@pytest.fixture(scope="module")
def local() -> Any:
    return make_provider(ProviderConfig(type="local"))


def engine_containers(
    local: Any, get_object: GetObject, job: str, index: int = 0
) -> dict[str, Any]:
    uid = get_object("dyj", job)["metadata"]["uid"]
    vm = next(v for v in local.find_vms({TAG_OWNER_UID: uid}) if v.tags[TAG_INDEX] == str(index))
    found = local.docker_client(vm.id).containers.list(all=True)
    return {c.labels.get("dockyard.dev/container"): c for c in found}


def moment(text: str) -> float:
    """An RFC 3339 time (Docker's has nanoseconds) as epoch seconds."""
    head, _, rest = text.rstrip("Z").partition(".")
    fraction = "".join(ch for ch in rest if ch.isdigit())[:6] or "0"
    return datetime.fromisoformat(f"{head}.{fraction}+00:00").timestamp()


HEALTHY = """
- name: app
  containers:
  - name: db
    image: "dockyard/busybox:1"
    command: [sh, -c, "trap 'exit 0' TERM; sleep 3; date +%s > /tmp/ready; sleep 100000 & wait"]
    healthCheck: {exec: {command: [test, -f, /tmp/ready]}, interval: 1s, retries: 1}
  - name: web
    image: "dockyard/busybox:1"
    command: [sh, -c, "trap 'exit 0' TERM; sleep 100000 & wait"]
    dependsOnConditions: [{name: db, condition: Healthy}]
"""


def test_a_dependent_starts_after_its_upstream_is_healthy(
    kubectl: Kubectl, namespace: str, get_object: GetObject, local: Any
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("hc", HEALTHY))
    wait_ready(get_object, "dyd", "hc")
    found = engine_containers(local, get_object, "hc-app")
    db, web = found["db"].attrs, found["web"].attrs
    passing = [e for e in db["State"]["Health"]["Log"] if e["ExitCode"] == 0]
    first_healthy = min(moment(e["End"]) for e in passing)
    assert moment(web["State"]["StartedAt"]) > first_healthy, (web["State"], db["State"]["Health"])
    ready_at = int(found["db"].exec_run(["cat", "/tmp/ready"]).output)
    assert moment(web["State"]["StartedAt"]) >= ready_at


def migration(code: int) -> str:
    return textwrap.dedent(
        f"""
        - name: app
          containers:
          - name: migrate
            image: "dockyard/busybox:1"
            command: [sh, -c, "sleep 2; exit {code}"]
            restartPolicy: Never
          - name: web
            image: "dockyard/busybox:1"
            command: [sh, -c, "trap 'exit 0' TERM; sleep 100000 & wait"]
            dependsOnConditions: [{{name: migrate, condition: Completed}}]
        """
    )


def test_an_app_starts_after_its_migration_completed_and_never_after_it_failed(
    kubectl: Kubectl, namespace: str, get_object: GetObject, local: Any
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("mg", migration(0)))
    wait_ready(get_object, "dyd", "mg")
    found = engine_containers(local, get_object, "mg-app")
    migrate, web = found["migrate"].attrs["State"], found["web"].attrs["State"]
    assert migrate["Status"] == "exited" and migrate["ExitCode"] == 0
    assert moment(web["StartedAt"]) > moment(migrate["FinishedAt"])

    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("bad", migration(1)))

    def blocked() -> dict[str, Any] | None:
        found = condition(get_object("dyj", "bad-app"), "Stalled")
        return found if found and found["status"] == "True" else None

    said = wait_for(blocked, timeout=READY_DEADLINE, what="the app blocked")
    assert said["reason"] == "UpstreamFailed", said
    assert "container web waits for app/migrate to complete, but it failed" in said["message"]
    assert "web" not in {
        name for name, c in engine_containers(local, get_object, "bad-app").items()
        if c.status == "running"
    }  # fmt: skip


def test_web_reaches_every_backend_instance_through_its_links_and_follows_a_scale_up(
    kubectl: Kubectl, namespace: str, get_object: GetObject, local: Any
) -> None:
    kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "multi-job.yaml"))
    wait_ready(get_object, "dyd", "shop", timeout=300)

    def backend_addresses() -> list[str]:
        status = get_object("dyj", "shop-backend")["status"]["instances"]
        return sorted(i["address"] for i in status)

    def page(expected: list[str]) -> str | None:
        (web,) = [
            c for n, c in engine_containers(local, get_object, "shop-web").items() if n == "web"
        ]
        env = dict(e.split("=", 1) for e in web.attrs["Config"]["Env"])
        listed = sorted(a.rsplit(":", 1)[0] for a in env["DOCKYARD_LINK_BACKEND_API"].split(","))
        shown = web.exec_run(["cat", "/www/index.html"]).output.decode()
        reached = all(f'{a}:8080: {{"orders"' in shown for a in expected)
        return shown if listed == expected and reached else None

    two = backend_addresses()
    assert len(two) == 2
    wait_for(lambda: page(two), timeout=60, what="web reaching both backends")

    def web_started() -> str:
        web = engine_containers(local, get_object, "shop-web")["web"]
        return str(web.attrs["State"]["StartedAt"])

    before = web_started()

    patch = [{"op": "replace", "path": "/spec/jobs/0/instances", "value": 3}]
    kubectl("patch", "dyd", "shop", "-n", namespace, "--type=json", "-p", json.dumps(patch))
    three = wait_for(
        lambda: (lambda a: a if len(a) == 3 else None)(backend_addresses()),
        timeout=120,
        what="a third backend",
    )
    wait_for(lambda: page(three), timeout=120, what="web restarted with three links, reaching each")
    assert web_started() != before, "web was not restarted with the new list"


CONFIGURED = """
- name: app
  containers:
  - name: api
    image: "dockyard/busybox:1"
    command: [sh, -c, "trap 'exit 0' TERM; sleep 100000 & wait"]
    files: [{path: /etc/api/api.conf, configMapRef: {name: api-conf, key: api.conf}, mode: 384}]
  - name: worker
    image: "dockyard/busybox:1"
    command: [sh, -c, "trap 'exit 0' TERM; sleep 100000 & wait"]
    dependsOn: [api]
"""


def test_a_config_file_changes_with_its_config_map_and_the_dependents_restart(
    kubectl: Kubectl, namespace: str, get_object: GetObject, local: Any
) -> None:
    kubectl(
        "create", "configmap", "api-conf", "-n", namespace, "--from-literal=api.conf=level=info"
    )
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("cf", CONFIGURED))
    wait_ready(get_object, "dyd", "cf")

    def content() -> tuple[str, str]:
        api = engine_containers(local, get_object, "cf-app")["api"]
        text = api.exec_run(["cat", "/etc/api/api.conf"]).output.decode()
        mode = api.exec_run(["stat", "-c", "%a", "/etc/api/api.conf"]).output.decode().strip()
        return text, mode

    assert content() == ("level=info", "600")
    before = {
        c["name"]: c["startedAt"]
        for c in get_object("dyj", "cf-app")["status"]["instances"][0]["containers"]
    }
    kubectl(
        "create",
        "configmap",
        "api-conf",
        "-n",
        namespace,
        "--from-literal=api.conf=level=debug",
        "--dry-run=client",
        "-o",
        "yaml",
    )
    kubectl(
        "patch",
        "configmap",
        "api-conf",
        "-n",
        namespace,
        "-p",
        json.dumps({"data": {"api.conf": "level=debug"}}),
    )
    wait_for(lambda: content()[0] == "level=debug", timeout=60, what="the file changed")

    def restarted() -> dict[str, str] | None:
        now = {
            c["name"]: c.get("startedAt")
            for c in get_object("dyj", "cf-app")["status"]["instances"][0]["containers"]
        }
        return now if all(now[n] != before[n] for n in ("api", "worker")) else None

    after = wait_for(restarted, timeout=60, what="api and its dependent restarted")
    assert moment(after["api"]) <= moment(after["worker"])
