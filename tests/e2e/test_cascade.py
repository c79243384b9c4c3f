"""A cascade across three jobs with two instances each, end to end: the upstream is killed, its
dependents restart exactly once each, in dependency order, side by side across instances, the
unrelated container stays, and neither the dependents' Job nor the Deployment says Ready while
the cascade runs. Containers ignore SIGTERM (PID 1 `sleep`), so each restart waits its grace."""

from __future__ import annotations

import textwrap
from collections import Counter
from typing import Any

import pytest

from tests.conftest import Kubectl
from tests.e2e.conftest import GetObject
from tests.e2e.test_monitor import events, kill_process, local, started  # noqa: F401
from tests.e2e.test_reconciler import wait_ready
from tests.e2e.watching import watched
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator", "dockyard_cleanup")]

GRACE = 2  # seconds: every dependent restart waits it out (its PID 1 ignores SIGTERM)
MANIFEST = textwrap.dedent(
    f"""
    apiVersion: dockyard.dev/v1alpha1
    kind: Deployment
    metadata: {{name: cascade}}
    spec:
      provider: {{type: local}}
      jobs:
      - name: db
        instances: 1
        containers:
        - {{name: store, image: "dockyard/busybox:1", command: [sleep, "100000"]}}
      - name: cache
        instances: 2
        containers:
        - {{name: cache, image: "dockyard/busybox:1", command: [sleep, "100000"], dependsOn: [db/store], stopGracePeriod: {GRACE}s}}
      - name: web
        instances: 2
        containers:
        - {{name: api, image: "dockyard/busybox:1", command: [sleep, "100000"], dependsOn: [cache/cache], stopGracePeriod: {GRACE}s}}
        - {{name: proxy, image: "dockyard/busybox:1", command: [sleep, "100000"], dependsOn: [api], stopGracePeriod: {GRACE}s}}
        - {{name: side, image: "dockyard/busybox:1", command: [sleep, "100000"]}}
    """
)


def starts(get_object: GetObject, job: str) -> dict[tuple[int, str], float]:
    status = get_object("dyj", f"cascade-{job}")["status"]
    return {
        (i["index"], c["name"]): started(c)
        for i in status["instances"]
        for c in i["containers"]
        if c.get("startedAt")
    }


def test_a_dependent_restarts_once_per_cascade_across_jobs_and_nothing_says_ready_meanwhile(
    kubectl: Kubectl,
    namespace: str,
    get_object: GetObject,
    kubeconfig: str,
    docker_client: Any,
    local: Any,  # noqa: F811
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=MANIFEST)
    wait_ready(get_object, "dyd", "cascade")
    before = {job: starts(get_object, job) for job in ("db", "cache", "web")}
    db_vm = get_object("dyj", "cascade-db")["status"]["instances"][0]["vmId"]
    earlier = {e["metadata"]["name"] for e in events(kubectl, namespace, "RestartedContainer")}

    with watched(kubeconfig, namespace) as versions:
        kill_process(docker_client, local, db_vm, "store")

        def cascade_done() -> dict[str, dict[tuple[int, str], float]] | None:
            now = {job: starts(get_object, job) for job in ("cache", "web")}
            moved = [
                now[job][key] > before[job][key]
                for job, keys in (("cache", ["cache"]), ("web", ["api", "proxy"]))
                for key in [(i, name) for i in (0, 1) for name in keys]
            ]
            return now if all(moved) else None

        after = wait_for(cascade_done, timeout=120, what="cache, api and proxy restarted")
        wait_ready(get_object, "dyd", "cascade")
        deployment = versions.of("Deployment", "cascade")
        web = versions.of("Job", "cascade-web")

    store = starts(get_object, "db")[(0, "store")]
    assert store > before["db"][(0, "store")], "Docker brought the store back"
    cache = [after["cache"][(i, "cache")] for i in (0, 1)]
    api = [after["web"][(i, "api")] for i in (0, 1)]
    proxy = [after["web"][(i, "proxy")] for i in (0, 1)]
    assert min(cache) >= store, "cache restarted before the store was back"
    assert min(api) >= max(cache), "api restarted before every cache instance did"
    assert all(proxy[i] >= api[i] for i in (0, 1)), "proxy restarted before its api"
    assert after["web"][(0, "side")] == before["web"][(0, "side")], "the unrelated one moved"
    assert after["web"][(1, "side")] == before["web"][(1, "side")], "the unrelated one moved"
    # Side by side: the two instances of a level restarted at about the same time, not one
    # grace period after the other.
    assert max(api) - min(api) < GRACE, f"api instances {api} restarted one after the other"

    # Exactly one restart per dependent container, as the Events tell it.
    restarts = [
        e
        for e in events(kubectl, namespace, "RestartedContainer")
        if e["metadata"]["name"] not in earlier
    ]
    targets = Counter(  # "instance 0: api: upstream cache/cache restarted after it"
        (e["involvedObject"]["name"], *e["message"].split(": ")[:2]) for e in restarts
    )
    assert len(targets) == 6, targets
    assert set(targets.values()) == {1}, f"a dependent restarted twice: {targets}"

    # While the cascade ran, nobody said Ready: after the first Ready=False version of the
    # dependents' Job and of the Deployment, the next Ready one came after the last restart.
    last = max(proxy)
    for name, seen in (("web Job", web), ("Deployment", deployment)):
        falling = next((n for n, v in enumerate(seen) if not v.ready), None)
        assert falling is not None, f"the {name} never said it was not Ready"
        back = next((v for v in seen[falling:] if v.ready), None)
        assert back is not None, f"the {name} never said Ready again"
        assert back.arrived >= last, f"the {name} said Ready {last - back.arrived:.2f}s early"
