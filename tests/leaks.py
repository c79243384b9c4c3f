"""After the whole run: nothing the tests made is left on the host.

A snapshot of Docker containers, volumes and networks, loop devices and mounts, and of what
hack/node.sh runs and makes (its processes, network interfaces and namespaces, iptables rules) is
taken when the session starts (on the xdist controller, before any worker runs) and compared when it ends; what
appeared and is still there after a grace period (teardown is asynchronous: the operator deletes
VMs after their namespace goes) fails the run. Set DOCKYARD_LEAK_CHECK=0 to skip it, e.g. while
another test run shares this host.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from dockyard.providers.local.provider import DEFAULT_NETWORK

GRACE_SECONDS = 120.0
_ENABLED = os.environ.get("DOCKYARD_LEAK_CHECK", "1") != "0"
_baseline: dict[str, set[str]] | None = None


def _lines(*command: str) -> set[str]:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


STATE = Path(os.environ.get("DOCKYARD_STATE", "/var/lib/dockyard"))


def _node_processes() -> set[str]:
    """hack/node.sh's processes that run (by their PID files)."""
    found = set()
    for pidfile in (STATE / "node").glob("*.pid"):
        try:
            os.kill(int(pidfile.read_text()), 0)
        except (OSError, ValueError):
            continue
        found.add(pidfile.stem)
    return found


def snapshot() -> dict[str, set[str]]:
    mounts = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) > 4 and "/docker/" not in fields[4] and "/netns/" not in fields[4]:
            mounts.add(fields[4])  # the mount point
    return {
        "containers (docker ps -a)": _lines(
            "docker", "ps", "-a", "--format", "{{.Names}} {{.Image}} {{.Status}}"
        ),
        "volumes (docker volume ls)": _lines("docker", "volume", "ls", "-q"),
        "networks (docker network ls)": _lines("docker", "network", "ls", "--format", "{{.Name}}")
        - {DEFAULT_NETWORK},  # the default root's VM network: made once per host, like a stemcell
        "loop devices (losetup -a)": {
            line.split(":", 1)[0] + ": " + line.rsplit("(", 1)[-1].rstrip(")")
            for line in _lines("losetup", "-a")
        },
        "mounts": mounts,
        "node processes (hack/node.sh)": _node_processes(),
        # Docker's own (veth*, br-*, docker0) come and go with what is checked above.
        "network interfaces (ip link)": {
            name
            for line in _lines("ip", "-o", "link", "show")
            if (name := line.split(":")[1].strip().split("@")[0])
            and not name.startswith(("veth", "br-", "docker"))
        },
        "network namespaces (ip netns)": {
            line.split()[0] for line in _lines("ip", "netns", "list")
        },
        # The node's Service rule and what CNI plugins and a kubelet add (Docker's are its own).
        "iptables rules (iptables-save)": {
            line
            for table in ("nat", "filter")
            for line in _lines("iptables-save", "-t", table)
            if re.search(r"DOCKYARD|CNI-|KUBE-", line) and not line.startswith("#")
        },
    }


def _names(entries: set[str]) -> set[str]:
    # A container's status text changes over time ("Up 3 seconds"): compare by name.
    return {entry.split(" ", 1)[0] for entry in entries}


def leaked(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for kind, entries in after.items():
        old = _names(before.get(kind, set()))
        new = sorted(entry for entry in entries if entry.split(" ", 1)[0] not in old)
        if new:
            found[kind] = new
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    global _baseline
    if _ENABLED and not hasattr(session.config, "workerinput"):
        _baseline = snapshot()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _baseline is None or hasattr(session.config, "workerinput"):
        return
    if session.config.option.collectonly:
        return
    deadline = time.monotonic() + GRACE_SECONDS
    while True:
        found = leaked(_baseline, snapshot())
        if not found or time.monotonic() >= deadline:
            break
        time.sleep(2)  # poll until teardown finishes or the grace period ends
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not found:
        if reporter is not None:
            reporter.write_line("leak check: nothing left behind on the host")
        return
    lines = [
        "leak check: the tests left these behind on the host (DOCKYARD_LEAK_CHECK=0 skips this"
        " check when another test run shares the host):"
    ]
    for kind, entries in found.items():
        lines.append(f"  {kind}:")
        lines += [f"    {entry}" for entry in entries[:50]]
    if reporter is not None:
        reporter.write_line("\n".join(lines), red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
