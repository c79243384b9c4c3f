"""Health checks and crash loops, end to end: real apiserver, Docker, local provider, operator."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Kubectl
from tests.e2e.conftest import GetObject
from tests.e2e.test_reconciler import (
    READY_DEADLINE,
    condition,
    containers,
    deployment,
    started,
    wait_ready,
)
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator", "dockyard_cleanup")]

# `web` serves http://127.0.0.1:8080/ok until /tmp/break exists; `client` depends on it.
PROBED = """
- name: probed
  instances: 1
  containers:
  - name: web
    image: "dockyard/busybox:1"
    command: [sh, -c, "mkdir -p /www && touch /www/ok && httpd -f -p 8080 -h /www"]
    healthCheck: {http: {port: 8080, path: /ok}, interval: 1s, timeout: 1s, retries: 2}
  - name: tcp
    image: "dockyard/busybox:1"
    command: [sh, -c, "httpd -f -p 9090 -h /"]
    healthCheck: {tcp: {port: 9090}, interval: 1s, timeout: 1s, retries: 2}
  - {name: client, image: "dockyard/busybox:1", command: [sh, -c, "sleep 100000"], dependsOn: [web]}
"""


def test_failing_http_check_restarts_the_container_and_its_dependents(
    kubectl: Kubectl, namespace: str, get_object: GetObject
) -> None:
    """The probes run with the stemcell's busybox (the image needs no nc/wget); a container
    whose check fails `retries` times is restarted by the operator, dependents after it."""
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("probed", PROBED))
    wait_ready(get_object, "dyd", "probed")

    def healthy() -> dict[str, dict[str, Any]] | None:
        now = containers(get_object, "probed-probed")
        return now if all(c["ready"] for c in now.values()) else None

    before = wait_for(healthy, timeout=READY_DEADLINE, what="all containers healthy")
    # Break the health endpoint from inside the container: httpd keeps running, /ok is gone.
    from dockyard.providers import ProviderConfig, make_provider
    from dockyard.providers.base import TAG_OWNER_UID

    provider = make_provider(ProviderConfig(type="local"))
    uid = get_object("dyj", "probed-probed")["metadata"]["uid"]
    (vm,) = provider.find_vms({TAG_OWNER_UID: uid})
    (web,) = provider.docker_client(vm.id).containers.list(
        filters={"label": "dockyard.dev/container=web"}
    )
    code, _ = web.exec_run(["rm", "/www/ok"])
    assert code == 0

    def restarted() -> dict[str, dict[str, Any]] | None:
        now = containers(get_object, "probed-probed")
        moved = all(started(now[n]) > started(before[n]) for n in ("web", "client"))
        return now if moved else None

    after = wait_for(restarted, timeout=READY_DEADLINE, what="web and client restarted")
    assert started(after["web"]) <= started(after["client"])
    # "unhealthy" from the operator's own restart, "Unhealthy" when a pass saw it happen
    assert after["web"]["lastRestartReason"].lower() == "unhealthy"
    assert after["client"]["lastRestartReason"].startswith("upstream probed/web")
    assert after["tcp"]["startedAt"] == before["tcp"]["startedAt"], "healthy tcp-probed moved"
    assert after["tcp"]["ready"], "the tcp probe passes against a listening port"

    def told() -> str | None:
        said = kubectl("get", "events", "-n", namespace, "-o", "jsonpath={.items[*].message}")
        return said.stdout if "web: unhealthy" in said.stdout else None

    wait_for(told, timeout=30, what="the Event of web's restart")  # Events are posted after


def test_crash_loop_is_reported_and_backs_off(
    kubectl: Kubectl, namespace: str, get_object: GetObject
) -> None:
    jobs = """
    - name: loop
      instances: 1
      containers:
      - {name: crasher, image: "dockyard/busybox:1", command: [sh, -c, "exit 7"]}
      - {name: steady, image: "dockyard/busybox:1", command: [sh, -c, "sleep 100000"]}
    """
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("loop", jobs))

    def looping() -> dict[str, Any] | None:
        job = get_object("dyj", "loop-loop")
        ready = condition(job, "Ready")
        if ready and ready["status"] == "False" and ready["reason"] == "CrashLoopBackOff":
            return job
        return None

    job = wait_for(looping, timeout=READY_DEADLINE, what="Ready=False CrashLoopBackOff")
    message = condition(job, "Ready")["message"]  # type: ignore[index]
    assert "container crasher" in message and "exit code 7" in message
    entries = containers(get_object, "loop-loop")
    assert entries["crasher"]["state"] == "crashLoopBackOff"
    assert entries["steady"]["state"] != "crashLoopBackOff", "only the crasher loops"
    # The engine's back-off: restarts slow down instead of spinning (Docker doubles the delay).
    from dockyard.providers import ProviderConfig, make_provider
    from dockyard.providers.base import TAG_OWNER_UID

    provider = make_provider(ProviderConfig(type="local"))
    (vm,) = provider.find_vms({TAG_OWNER_UID: job["metadata"]["uid"]})
    engine = provider.docker_client(vm.id)
    (crasher,) = engine.containers.list(
        all=True, filters={"label": "dockyard.dev/container=crasher"}
    )
    first = crasher.attrs["RestartCount"]

    def later_count() -> int | None:
        crasher.reload()
        count = int(crasher.attrs["RestartCount"])
        return count if count > first else None

    wait_for(later_count, timeout=60, what="one more engine restart")
    crasher.reload()
    # After a handful of restarts the delay has grown past a second: far fewer than one per
    # 100 ms over the container's life (a restart loop without back-off would be ~10/s).
    assert crasher.attrs["RestartCount"] < 40
    assert condition(get_object("dyd", "loop"), "Ready")["status"] == "False"  # type: ignore[index]
