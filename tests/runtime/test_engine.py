"""The container layer against a real Docker engine (the host's stands in for a VM's)."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dockyard.runtime.engine import LABEL_JOB, ContainerConfig, Engine
from dockyard.runtime.world import ContainerWant
from tests.waiting import wait_for


@pytest.fixture
def engine(docker_client: Any, workload_image: str) -> Iterator[tuple[Engine, str]]:
    job = f"test-{uuid.uuid4().hex[:8]}"
    yield Engine(docker_client), job
    for container in docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_JOB}={job}"}
    ):
        container.remove(force=True)


def sleeper(name: str, **changes: Any) -> ContainerConfig:
    base: dict[str, Any] = {
        "name": name,
        "image": "dockyard/busybox:1",
        "command": ("sh", "-c", "sleep 100000"),
    }
    return ContainerConfig(**(base | changes))


def test_run_observe_restart_remove(engine: tuple[Engine, str]) -> None:
    eng, job = engine
    name = f"{job}-a"
    config = sleeper(name, env={"A": "1"})
    started = eng.run(config, {LABEL_JOB: job})
    assert started.state == "running" and started.config_hash == config.config_hash()
    assert started.started_at is not None
    assert set(eng.containers({LABEL_JOB: job})) == {name}

    restarted = eng.restart(name, timeout=1)
    assert restarted.started_at is not None and restarted.started_at > started.started_at

    eng.remove(name)
    eng.remove(name)  # removing twice is fine
    assert eng.containers({LABEL_JOB: job}) == {}


def test_engine_restart_policy_brings_a_killed_container_back(
    engine: tuple[Engine, str], docker_client: Any
) -> None:
    eng, job = engine
    name = f"{job}-crash"
    first = eng.run(sleeper(name), {LABEL_JOB: job})
    # SIGKILL the process itself: `docker kill` counts as a manual stop, which Docker never undoes.
    os.kill(docker_client.containers.get(first.id).attrs["State"]["Pid"], signal.SIGKILL)
    again = wait_for(
        lambda: (
            (c := eng.containers({LABEL_JOB: job})[name]).state == "running"
            and c.restart_count >= 1
            and c
        ),
        timeout=20,
        what="docker to restart the container",
    )
    assert again.started_at is not None and first.started_at is not None
    assert again.started_at > first.started_at


def test_config_hash_changes_with_anything_that_needs_a_recreate() -> None:
    base = sleeper("x")
    assert base.config_hash() == sleeper("x").config_hash()
    for change in ({"image": "other"}, {"env": {"A": "2"}}, {"ports": ((80, None, "TCP"),)}):
        assert sleeper("x", **change).config_hash() != base.config_hash()


def want(name: str, *deps: str) -> ContainerWant:
    return ContainerWant(config=sleeper(name), depends_on=deps)
