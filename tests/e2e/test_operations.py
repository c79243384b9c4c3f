"""Operating Dockyard the BOSH way, end to end on the local provider: stemcell rollouts, drain
and post-start hooks, instance commands through the kubectl plugin, and the default stack's
admission webhook."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockyard.handlers.desired import commands_fingerprint
from dockyard.providers import ProviderConfig, make_provider
from dockyard.providers.base import TAG_DISK, TAG_INDEX, TAG_OWNER_UID, TAG_VM_CONFIG
from dockyard.runtime.world import vm_fingerprint
from tests.conftest import REPO, Kubectl
from tests.e2e.conftest import GetObject
from tests.e2e.test_monitor import kill_process
from tests.e2e.test_reconciler import READY_DEADLINE, condition, deployment, wait_ready
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator", "dockyard_cleanup")]

# PID 1 of these containers ends on SIGTERM, so a stop takes milliseconds, not the grace period.
SERVE = "trap 'exit 0' TERM; {body} sleep 100000 & wait"


def update(extra: str = "") -> str:
    """One canary, then one instance at a time, each watched 1 s (20 s at most)."""
    watch = "canaries: 1, maxInFlight: 1, canaryWatchTime: 1s-20s, updateWatchTime: 1s-20s"
    return f"\nupdate: {{{watch}{extra}}}\n"


WATCH = update()


def job_of(name: str, instances: int = 2, reclaim: str = "Delete") -> str:
    """Job ``db`` of ``instances``: cfg <- db <- app, db keeping its data on the disk and
    counting its drains there."""
    body = SERVE.format(body="test -f /data/x || head -c 100000 /dev/urandom > /data/x;")
    plain = SERVE.format(body="")
    return textwrap.dedent(
        f"""
        - name: {name}
          instances: {instances}
          persistentDisk: {{size: 64Mi, reclaimPolicy: {reclaim}}}
          containers:
          - name: cfg
            image: "dockyard/busybox:1"
            command: [sh, -c, "{plain}"]
            env: [{{name: V, value: "1"}}]
          - name: db
            image: "dockyard/busybox:1"
            command: [sh, -c, "{body}"]
            dependsOn: [cfg]
            env: [{{name: V, value: "1"}}]
            volumes: [{{mountPath: /data}}]
            lifecycle:
              preStop: {{exec: {{command: [sh, -c, "echo drained >> /data/drains"]}}}}
          - name: app
            image: "dockyard/busybox:1"
            command: [sh, -c, "{plain}"]
            dependsOn: [db]
        """
    )


@pytest.fixture(scope="module")
def local() -> Iterator[Any]:
    provider = make_provider(ProviderConfig(type="local"))
    yield provider
    provider.close()


def uid_of(get_object: GetObject, job: str) -> str:
    return str(get_object("dyj", job)["metadata"]["uid"])


def vms(local: Any, uid: str) -> dict[int, Any]:
    """index -> the running VM of that index (a swap's replacement not swapped in yet is not
    counted: its predecessor is still there)."""
    every = local.find_vms({TAG_OWNER_UID: uid})
    ids = {vm.id for vm in every}
    found = {}
    for vm in every:
        if vm.state.value == "running" and vm.tags.get("replaces") not in ids:
            found[int(vm.tags[TAG_INDEX])] = vm
    return found


def in_db(local: Any, uid: str, index: int, command: str) -> str:
    engine = local.docker_client(vms(local, uid)[index].id)
    (db,) = engine.containers.list(filters={"label": "dockyard.dev/container=db"})
    code, out = db.exec_run(["sh", "-c", command])
    assert code == 0, out
    return str(out.decode())


def drains(local: Any, uid: str, index: int) -> int:
    return int(in_db(local, uid, index, "cat /data/drains 2>/dev/null | wc -l").strip())


def disks_of(local: Any, namespace: str) -> set[str]:
    """The namespace's disks (the other test worker's come and go in the same provider root)."""
    return {
        d.id for d in local.find_disks({}) if d.tags.get(TAG_DISK, "").startswith(f"{namespace}.")
    }


def data(local: Any, uid: str, index: int) -> str:
    return in_db(local, uid, index, "md5sum /data/x").split()[0]


def done(get_object: GetObject, job: str, timeout: float = READY_DEADLINE) -> dict[str, Any]:
    """Its Deployment Ready at its generation (it passed its changes on), and the Job Ready at
    its generation and at the commands (annotations) it carries now."""
    deployment = get_object("dyj", job)["metadata"]["labels"]["dockyard.dev/deployment"]
    wait_ready(get_object, "dyd", deployment, timeout)

    def finished() -> dict[str, Any] | None:
        found = get_object("dyj", job)
        ready = condition(found, "Ready")
        commands = commands_fingerprint(found["metadata"].get("annotations"))
        return (
            found
            if ready
            and ready["status"] == "True"
            and found["status"].get("observedGeneration") == found["metadata"]["generation"]
            and found["status"].get("observedCommands", "") == commands
            else None
        )

    return wait_for(finished, timeout=timeout, what=f"{job} done")


def patch(kubectl: Kubectl, namespace: str, name: str, *ops: dict[str, Any]) -> None:
    kubectl("patch", "dyd", name, "-n", namespace, "--type=json", "-p", json.dumps(list(ops)))


# --- stemcell rollouts -------------------------------------------------------------------------


class Sampler:
    """Samples, in the background, which indices have a running VM (never sleeps the test)."""

    def __init__(self, local: Any, uid: str) -> None:
        self.local, self.uid = local, uid
        self.samples: list[set[int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(set(vms(self.local, self.uid)))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("strategy", ["DeleteCreate", "CreateSwapDelete"])
def test_a_new_stemcell_rolls_each_vm_in_turn_with_its_data_and_a_missing_one_halts(
    strategy: str,
    kubectl: Kubectl,
    namespace: str,
    get_object: GetObject,
    local: Any,
    docker_client: Any,
) -> None:
    tag = f"dockyard/stemcell:e2e-{uuid.uuid4().hex[:6]}"
    docker_client.images.get("dockyard/stemcell:latest").tag(tag)
    rolling = update(f", vmStrategy: {strategy}")
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("sc", job_of("db"), rolling))
    wait_ready(get_object, "dyd", "sc")
    uid = uid_of(get_object, "sc-db")
    before = vms(local, uid)
    sums = {i: data(local, uid, i) for i in before}

    with Sampler(local, uid) as sampler:
        patch(kubectl, namespace, "sc", {"op": "add", "path": "/spec/stemcell", "value": tag})
        done(get_object, "sc-db")
    after = vms(local, uid)
    assert not set(v.id for v in before.values()) & set(v.id for v in after.values())
    assert all(vm.tags[TAG_VM_CONFIG] == vm_fingerprint(tag, "") for vm in after.values())
    assert {
        docker_client.containers.get(vm.id).attrs["Config"]["Image"] for vm in after.values()
    } == {tag}
    assert all(sample for sample in sampler.samples), "both instances were down at once"
    made = sorted(after, key=lambda i: docker_client.containers.get(after[i].id).attrs["Created"])
    assert made == [0, 1], "the canary first, then the other"
    assert {i: data(local, uid, i) for i in after} == sums, "data lost"
    assert {i: drains(local, uid, i) for i in after} == {0: 1, 1: 1}
    status = get_object("dyj", "sc-db")["status"]["instances"]
    assert {i["stemcell"] for i in status} == {tag}

    patch(
        kubectl,
        namespace,
        "sc",
        {"op": "replace", "path": "/spec/stemcell", "value": "dockyard/stemcell:nope"},
    )

    def halted() -> dict[str, Any] | None:
        found = condition(get_object("dyj", "sc-db"), "Stalled")
        return found if found and found["reason"] == "RolloutHalted" else None

    said = wait_for(halted, timeout=120, what="the rollout halted")
    assert "canary instance 0" in said["message"] and "does not exist" in said["message"]
    assert vms(local, uid).get(1) is not None and vms(local, uid)[1].id == after[1].id


def test_a_failing_post_start_fails_the_canary_and_the_rest_keeps_its_spec(
    kubectl: Kubectl, namespace: str, get_object: GetObject, local: Any
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("ps", job_of("db"), WATCH))
    wait_ready(get_object, "dyd", "ps")
    uid = uid_of(get_object, "ps-db")
    hook = {"postStart": {"exec": {"command": ["sh", "-c", "test -f /nope"]}, "timeout": "5s"}}
    patch(
        kubectl,
        namespace,
        "ps",
        {"op": "add", "path": "/spec/jobs/0/containers/0/lifecycle", "value": hook},
        {"op": "replace", "path": "/spec/jobs/0/containers/0/env/0/value", "value": "2"},
    )

    def halted() -> dict[str, Any] | None:
        found = condition(get_object("dyj", "ps-db"), "Stalled")
        return found if found and found["reason"] == "RolloutHalted" else None

    said = wait_for(halted, timeout=120, what="the canary failed")
    assert "canary instance 0" in said["message"] and "postStart of cfg failed" in said["message"]
    status = {i["index"]: i for i in get_object("dyj", "ps-db")["status"]["instances"]}
    hashes = {i: {c["name"]: c.get("specHash") for c in s["containers"]} for i, s in status.items()}
    assert hashes[1]["cfg"] != hashes[0]["cfg"], "instance 1 was updated past a failed canary"
    assert vms(local, uid)[1] is not None


# --- drains ------------------------------------------------------------------------------------


def test_pre_stop_runs_before_every_kind_of_stop_the_operator_makes(
    kubectl: Kubectl, namespace: str, get_object: GetObject, local: Any, docker_client: Any
) -> None:
    retained = deployment("dr", job_of("db", reclaim="Retain"), WATCH)
    kubectl("apply", "-n", namespace, "-f", "-", input=retained)
    wait_ready(get_object, "dyd", "dr")
    uid = uid_of(get_object, "dr-db")
    assert {i: drains(local, uid, i) for i in (0, 1)} == {0: 0, 1: 0}

    # A rollout of db itself.
    patch(
        kubectl,
        namespace,
        "dr",
        {"op": "replace", "path": "/spec/jobs/0/containers/1/env/0/value", "value": "2"},
    )
    done(get_object, "dr-db")
    assert {i: drains(local, uid, i) for i in (0, 1)} == {0: 1, 1: 1}

    # A dependent restart: cfg crashes on instance 0 (the engine restarts it), db follows.
    before = {
        c["name"]: c["startedAt"]
        for c in get_object("dyj", "dr-db")["status"]["instances"][0]["containers"]
    }
    kill_process(docker_client, local, vms(local, uid)[0].id, "cfg")
    wait_for(
        lambda: (
            next(
                c
                for c in get_object("dyj", "dr-db")["status"]["instances"][0]["containers"]
                if c["name"] == "db"
            )["startedAt"]
            != before["db"]
        ),
        timeout=60,
        what="db restarted after cfg",
    )
    done(get_object, "dr-db")
    assert {i: drains(local, uid, i) for i in (0, 1)} == {0: 2, 1: 1}

    # A VM recreate of instance 1.
    moment = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
    kubectl("annotate", "dyj", "dr-db", "-n", namespace, f"dockyard.dev/recreatedAt.1={moment}")
    done(get_object, "dr-db")
    assert {i: drains(local, uid, i) for i in (0, 1)} == {0: 2, 1: 2}

    # A scale-down (instance 1 goes; its disk stays), and back.
    patch(kubectl, namespace, "dr", {"op": "replace", "path": "/spec/jobs/0/instances", "value": 1})
    done(get_object, "dr-db")
    patch(kubectl, namespace, "dr", {"op": "replace", "path": "/spec/jobs/0/instances", "value": 2})
    done(get_object, "dr-db")
    assert {i: drains(local, uid, i) for i in (0, 1)} == {0: 2, 1: 3}

    # A delete: the disks are kept (Retain) and come back with the same Deployment.
    kubectl("delete", "dyd", "dr", "-n", namespace, "--timeout=120s")
    wait_for(lambda: not vms(local, uid), timeout=120, what="the VMs gone")
    kubectl("apply", "-n", namespace, "-f", "-", input=retained)
    wait_ready(get_object, "dyd", "dr")
    again = uid_of(get_object, "dr-db")
    assert {i: drains(local, again, i) for i in (0, 1)} == {0: 3, 1: 4}
    # The disks are the test's to let go: Delete, so the teardown orphans them.
    patch(
        kubectl,
        namespace,
        "dr",
        {"op": "replace", "path": "/spec/jobs/0/persistentDisk/reclaimPolicy", "value": "Delete"},
    )
    done(get_object, "dr-db")


# --- instance commands, through the kubectl plugin ---------------------------------------------


def plugin(kubeconfig: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``kubectl dockyard ...`` as a user runs it: kubectl finds the plugin on PATH."""
    path = f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"
    env = {**os.environ, "PATH": path, "KUBECONFIG": kubeconfig}
    return subprocess.run(
        ["kubectl", "dockyard", "-n", namespace, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def starts(get_object: GetObject, job: str) -> dict[tuple[int, str], str]:
    return {
        (i["index"], c["name"]): c.get("startedAt", "")
        for i in get_object("dyj", job)["status"]["instances"]
        for c in i["containers"]
    }


def test_each_instance_command_does_what_it_says_and_nothing_else(
    kubectl: Kubectl, kubeconfig: str, namespace: str, get_object: GetObject, local: Any
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("ic", job_of("db"), WATCH))
    wait_ready(get_object, "dyd", "ic")
    uid = uid_of(get_object, "ic-db")

    def ok(*args: str) -> str:
        result = plugin(kubeconfig, namespace, *args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def step(*args: str) -> tuple[dict[int, str], dict[tuple[int, str], str]]:
        vm_ids, started = {i: v.id for i, v in vms(local, uid).items()}, starts(get_object, "ic-db")
        ok(*args)
        done(get_object, "ic-db")
        return vm_ids, started

    # restart one instance: its containers restart, nothing else moves
    vm_ids, started = step("restart", "ic-db/1")
    now = starts(get_object, "ic-db")
    assert {key for key in now if now[key] != started[key]} == {(1, "cfg"), (1, "db"), (1, "app")}
    assert {i: v.id for i, v in vms(local, uid).items()} == vm_ids

    # recreate one instance: a new VM for it only, its disk and data kept
    disks = disks_of(local, namespace)
    checksum = data(local, uid, 0)
    vm_ids, _ = step("recreate", "ic-db/0")
    now_ids = {i: v.id for i, v in vms(local, uid).items()}
    assert now_ids[0] != vm_ids[0] and now_ids[1] == vm_ids[1]
    assert disks_of(local, namespace) == disks and data(local, uid, 0) == checksum

    # stop: containers stopped, VM kept; start: running again
    vm_ids, _ = step("stop", "ic-db/1")
    stopped = {
        c["state"] for c in get_object("dyj", "ic-db")["status"]["instances"][1]["containers"]
    }
    assert stopped == {"exited"} and vms(local, uid)[1].id == vm_ids[1]
    assert get_object("dyj", "ic-db")["status"]["instances"][1]["state"] == "stopped"
    step("start", "ic-db/1")
    assert vms(local, uid)[1].id == vm_ids[1]

    # stop --hard: the VM goes, the disk stays; start: a new VM with the same disk
    vm_ids, _ = step("stop", "ic-db/1", "--hard")
    assert 1 not in vms(local, uid) and disks_of(local, namespace) == disks
    step("start", "ic-db/1")
    assert vms(local, uid)[1].id != vm_ids[1]

    # ignore: a spec change rolls everywhere else; unignore: it catches up
    step("ignore", "ic-db/1")
    patch(
        kubectl,
        namespace,
        "ic",
        {
            "op": "replace",
            "path": "/spec/jobs/0/containers/2/env",
            "value": [{"name": "V", "value": "2"}],
        },
    )
    done(get_object, "ic-db")
    hashes = {
        i["index"]: i["containers"][2]["specHash"]
        for i in get_object("dyj", "ic-db")["status"]["instances"]
    }
    assert hashes[0] != hashes[1]
    step("unignore", "ic-db/1")
    hashes = {
        i["index"]: i["containers"][2]["specHash"]
        for i in get_object("dyj", "ic-db")["status"]["instances"]
    }
    assert hashes[0] == hashes[1]

    # pause: a spec change waits, the status says Paused; resume: it is applied
    ok("pause", "ic")
    wait_for(
        lambda: condition(get_object("dyj", "ic-db"), "Ready")["reason"] == "Paused",
        timeout=60,
        what="Paused",
    )
    before = starts(get_object, "ic-db")
    patch(
        kubectl,
        namespace,
        "ic",
        {"op": "replace", "path": "/spec/jobs/0/containers/2/env/0/value", "value": "3"},
    )
    assert wait_for(
        lambda: condition(get_object("dyd", "ic"), "Ready")["reason"] == "Paused",
        timeout=60,
        what="the Deployment says Paused",
    )
    assert get_object("dyj", "ic-db")["spec"]["containers"][2]["env"][0]["value"] == "2", (
        "a paused Deployment changed its Job"
    )
    assert starts(get_object, "ic-db") == before
    ok("resume", "ic")
    wait_for(
        lambda: get_object("dyj", "ic-db")["spec"]["containers"][2]["env"][0]["value"] == "3",
        timeout=60,
        what="the change applied",
    )
    done(get_object, "ic-db")

    events = ok("events", "ic")
    for reason in ("RestartedContainer", "CreatedVM", "DeletedVM", "StoppedContainer"):
        assert reason in events, (reason, events)


def test_kubectl_dockyard_instances_and_logs_on_the_example(
    kubectl: Kubectl, kubeconfig: str, namespace: str, get_object: GetObject
) -> None:
    example = REPO / "examples" / "redis-style.yaml"
    kubectl("apply", "-n", namespace, "-f", str(example))
    wait_ready(get_object, "dyd", "redis", timeout=240)
    listed = plugin(kubeconfig, namespace, "instances", "redis", "--ps")
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()
    assert rows[0].split()[:4] == ["INSTANCE", "STATE", "VM", "ADDRESS"]
    assert rows[1].startswith("redis-store/0") and "running" in rows[1]
    assert any(r.strip().startswith("db") for r in rows) and any(
        r.strip().startswith("app") for r in rows
    )

    def logged() -> str | None:
        shown = plugin(kubeconfig, namespace, "logs", "store/0", "app", "-d", "redis")
        return shown.stdout if shown.returncode == 0 and shown.stdout.strip() else None

    assert wait_for(logged, timeout=60, what="app's log")
    missing = plugin(kubeconfig, namespace, "logs", "redis-store/3", "db")
    assert missing.returncode == 1 and "has no instance 3" in missing.stderr
    absent = plugin(kubeconfig, namespace, "instances", "nope")
    assert absent.returncode == 1 and "no Deployment 'nope'" in absent.stderr


# --- the default stack's webhook ---------------------------------------------------------------


CYCLE = """
- name: store
  containers:
  - {name: db, image: "dockyard/busybox:1", dependsOn: [app]}
  - {name: app, image: "dockyard/busybox:1", dependsOn: [db]}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_stack_hack_up_starts_refuses_a_cycle_at_apply(
    kubectl: Kubectl, kubeconfig: str, namespace_prefix: str, tmp_path: Path
) -> None:
    """hack/up.sh runs the operator through hack/operator.sh: that script serves the webhook."""
    namespace = f"{namespace_prefix.rstrip('-')}w-{uuid.uuid4().hex[:6]}"
    configuration = f"validate-{uuid.uuid4().hex[:8]}.dockyard.dev"
    kubectl("create", "namespace", namespace)
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig,
        "DOCKYARD_WEBHOOK_PORT": str(_free_port()),
        "DOCKYARD_WEBHOOK_CONFIGURATION": configuration,
    }
    log = tmp_path / "operator.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["bash", str(REPO / "hack" / "operator.sh"), "--namespace", namespace,
             "--metrics-port", "0", "--liveness", ""],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        wait_for(
            lambda: "dependencies" in kubectl(
                "get", "validatingwebhookconfiguration", configuration,
                "-o", "jsonpath={.webhooks[*].name}", check=False,
            ).stdout,
            timeout=60,
            what="the webhook configured",
        )  # fmt: skip
        refused = kubectl(
            "apply", "-n", namespace, "-f", "-", input=deployment("loop", CYCLE), check=False
        )
        assert refused.returncode != 0, refused.stdout
        assert "spec.jobs[0].containers[0].dependsOn" in refused.stderr, refused.stderr
        assert "dependency cycle db -> app -> db" in refused.stderr, refused.stderr
    finally:
        process.terminate()
        process.wait(timeout=30)
        kubectl("delete", "validatingwebhookconfiguration", configuration, check=False)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
