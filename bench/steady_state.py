"""API writes at steady state: N Deployments converged, then a quiet window; prints one JSON.

    .venv/bin/python bench/steady_state.py [--deployments 10] [--window 60]

Starts its own ``dockyard run`` watching only its namespace, applies N copies of
``examples/redis-style.yaml`` (one Deployment each), waits until all are Ready, then counts
during ``--window`` seconds: objects of the namespace whose resourceVersion moved, Events
posted, and the apiserver's own count of write requests to dockyard.dev resources and Events
(``apiserver_request_total``; cluster-wide, so exact only when nothing else writes). Needs the
environment of ``hack/up.sh`` (control plane, Docker, stemcell). Everything is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _harness import KUBECONFIG, REPO, apiserver_requests, kubectl, wait_until

QUIET = ("--metrics-port", "0", "--liveness", "")


def versions(namespace: str) -> dict[str, str]:
    listed = json.loads(kubectl("get", "dyd,dyj,dypd", "-n", namespace, "-o", "json"))
    return {
        f"{item['kind']}/{item['metadata']['name']}": item["metadata"]["resourceVersion"]
        for item in listed["items"]
    }


def event_count(namespace: str) -> int:
    listed = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json"))
    return sum(int(item.get("count") or 1) for item in listed["items"])


def apiserver_writes() -> int:
    """Write requests the apiserver served for dockyard.dev objects and Events, so far."""
    return apiserver_requests()[1]


def all_ready(namespace: str, count: int) -> bool:
    listed = json.loads(kubectl("get", "dyd", "-n", namespace, "-o", "json"))
    ready = 0
    for item in listed["items"]:
        status = item.get("status") or {}
        for condition in status.get("conditions", []):
            if condition["type"] == "Ready" and condition["status"] == "True":
                at = status.get("observedGeneration") == item["metadata"]["generation"]
                ready += int(at)
    return ready == count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deployments", type=int, default=10)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    namespace = f"dy-bench-steady-{uuid.uuid4().hex[:6]}"
    example = (REPO / "examples" / "redis-style.yaml").read_text()
    name = re.search(r"^  name: (\S+)$", example, re.MULTILINE)
    assert name, "examples/redis-style.yaml names its Deployment"
    log = Path(tempfile.mkdtemp(prefix="dockyard-bench-")) / "operator.log"
    kubectl("create", "namespace", namespace)
    with open(log, "wb") as out:
        operator = subprocess.Popen(
            [str(REPO / ".venv/bin/dockyard"), "run", "--namespace", namespace, *QUIET],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": KUBECONFIG},
        )
    result: dict[str, Any] = {
        "benchmark": "steady_state",
        "deployments": args.deployments,
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        wait_until(
            lambda: b"Initial authentication has finished" in log.read_bytes(), 60, "operator"
        )
        started = time.monotonic()
        for number in range(args.deployments):
            manifest = example.replace(f"  name: {name.group(1)}", f"  name: steady-{number}", 1)
            kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest)
        wait_until(lambda: all_ready(namespace, args.deployments), 600, "all Deployments Ready")
        result["all_ready_seconds"] = round(time.monotonic() - started, 1)
        # Let the last status writes and Events land before the window opens.
        time.sleep(5)
        objects_before, events_before = versions(namespace), event_count(namespace)
        writes_before = apiserver_writes()
        time.sleep(args.window)  # the measurement window itself, not a synchronisation
        objects_after, events_after = versions(namespace), event_count(namespace)
        writes = apiserver_writes() - writes_before
        moved = sorted(k for k, v in objects_after.items() if objects_before.get(k) != v)
        result |= {
            "objects": len(objects_after),
            "window_seconds": args.window,
            "objects_changed": len(moved),
            "changed": moved,
            "events_posted": events_after - events_before,
            "apiserver_dockyard_and_event_writes": writes,
            "writes_per_minute": round(writes * 60 / args.window, 2),
        }
    finally:
        kubectl("delete", "dyd", "--all", "-n", namespace, "--timeout=300s", check=False)
        # The operator tears the Jobs' VMs down; only then may it stop.
        wait_until(
            lambda: not kubectl("get", "dyj,dypd", "-n", namespace, "-o", "name").strip(),
            300,
            "Jobs torn down",
        )
        operator.terminate()
        operator.wait(timeout=60)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
