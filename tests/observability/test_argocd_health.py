"""The Argo CD health check (deploy/argocd/health.lua) run by a real Lua interpreter against
objects as the operator writes them. Argo CD embeds gopher-lua (Lua 5.1) and decodes JSON numbers
as floats: the script runs under lua5.1 and lua5.4, with integer and float numbers."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.observability.conftest import DEPLOY

HEALTH = DEPLOY / "argocd" / "health.lua"
INTERPRETERS = ["lua5.4", "lua5.1"]


def lua_literal(value: Any, floats: bool = False) -> str:
    """A Lua table constructor for a JSON-like value (what Argo CD hands the script as `obj`)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(float(value)) if floats else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid Lua escapes for this data
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(item, floats) for item in value) + "}"
    if isinstance(value, dict):
        fields = (
            f"[{json.dumps(key)}] = {lua_literal(item, floats)}" for key, item in value.items()
        )
        return "{" + ", ".join(fields) + "}"
    raise TypeError(f"cannot express {type(value).__name__} in Lua")


def health(obj: dict[str, Any], interpreter: str, floats: bool = False) -> tuple[str, str]:
    path = shutil.which(interpreter)
    if path is None:
        if interpreter == "lua5.4":
            pytest.fail("lua5.4 is not on PATH: apt-get install lua5.4")
        pytest.skip(f"{interpreter} is not installed (apt-get install {interpreter})")
    driver = (
        f"obj = {lua_literal(obj, floats)}\n"
        f"local hs = dofile({json.dumps(str(HEALTH))})\n"
        'io.write(hs.status, "\\n", hs.message)\n'
    )
    result = subprocess.run(
        [path, "-"], input=driver, capture_output=True, text=True, check=False, timeout=10
    )
    assert result.returncode == 0, result.stderr
    status, message = result.stdout.split("\n", 1)
    return status, message


def job(generation: int = 2, status: str | None = None, **metadata: Any) -> dict[str, Any]:
    text = f"""
apiVersion: dockyard.dev/v1alpha1
kind: Job
metadata: {{name: redis, namespace: shop, generation: {generation}}}
spec: {{instances: 3}}
"""
    obj: dict[str, Any] = yaml.safe_load(text)
    obj["metadata"].update(metadata)
    if status is not None:
        obj["status"] = yaml.safe_load(status)
    return obj


def conditions(ready: str, reconciling: str, stalled: str, message: str = "", gen: int = 2) -> str:
    """A status with the three kstatus conditions, as runtime/status.py writes them."""
    return f"""
observedGeneration: {gen}
readyInstances: 1
conditions:
- {{type: Ready, status: "{ready}", reason: {"Converged" if ready == "True" else "Reconciling"},
   message: "{message}", observedGeneration: {gen}, lastTransitionTime: "2025-01-01T00:00:00Z"}}
- {{type: Reconciling, status: "{reconciling}", reason: Progressing, message: "{message}",
   observedGeneration: {gen}, lastTransitionTime: "2025-01-01T00:00:00Z"}}
- {{type: Stalled, status: "{stalled}", reason: RolloutHalted, message: "{message}",
   observedGeneration: {gen}, lastTransitionTime: "2025-01-01T00:00:00Z"}}
"""


CASES = [
    pytest.param(
        job(status=conditions("True", "False", "False", "3/3 instances ready")),
        ("Healthy", "3/3 instances ready"),
        id="ready",
    ),
    pytest.param(
        job(status=conditions("False", "True", "False", "1/3 instances ready")),
        ("Progressing", "1/3 instances ready"),
        id="reconciling",
    ),
    pytest.param(
        job(status=conditions("False", "False", "True", "canary 0 failed: redis exited 1")),
        ("Degraded", "canary 0 failed: redis exited 1"),
        id="stalled",
    ),
    pytest.param(
        job(), ("Progressing", "Waiting for the operator to report status"), id="no-status"
    ),
    pytest.param(
        {
            "apiVersion": "dockyard.dev/v1alpha1",
            "kind": "Job",
            "metadata": {"name": "redis-store", "generation": 2},
            "status": {
                "observedGeneration": 2,
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "Paused", "message": "paused"},
                    {"type": "Reconciling", "status": "False", "reason": "Paused"},
                    {"type": "Stalled", "status": "False", "reason": "Paused"},
                ],
            },
        },
        ("Suspended", "paused"),
        id="paused",
    ),
    pytest.param(
        job(generation=3, status=conditions("True", "False", "False", "3/3 instances ready")),
        ("Progressing", "Waiting for the operator to observe generation 3"),
        id="generation-behind",
    ),
    pytest.param(
        job(status="{observedGeneration: 2}"),
        ("Progressing", "Waiting for the Ready condition"),
        id="no-conditions",
    ),
    pytest.param(
        job(status="{conditions: [{type: Ready, status: 'True', reason: Converged}]}"),
        ("Progressing", "Waiting for the operator to observe generation 2"),
        id="no-observed-generation",
    ),
    pytest.param(
        job(
            status=conditions("True", "False", "False", "ready"),
            deletionTimestamp="2025-01-01T00:00:00Z",
        ),
        ("Progressing", "Being deleted: the operator is releasing its VMs, disks and containers"),
        id="deleting",
    ),
    pytest.param(
        job(status=conditions("False", "False", "False", "")),
        ("Progressing", "Reconciling"),
        id="ready-false-alone",
    ),
    pytest.param(
        job(
            generation=3,
            status=conditions("True", "False", "False", "ready", gen=2).replace(
                "observedGeneration: 2\nreadyInstances", "observedGeneration: 3\nreadyInstances"
            ),
        ),
        ("Progressing", "Ready for an older generation; waiting for the operator"),
        id="ready-condition-of-an-older-generation",
    ),
    pytest.param(
        {
            "apiVersion": "dockyard.dev/v1alpha1",
            "kind": "Deployment",
            "metadata": {"name": "shop", "generation": 5},
            "status": {
                "observedGeneration": 5,
                "instances": 4,
                "readyInstances": 4,
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Converged", "message": ""},
                    {"type": "Stalled", "status": "False", "reason": "Converged"},
                ],
            },
        },
        ("Healthy", "Converged"),
        id="deployment-ready",
    ),
    pytest.param(
        {
            "apiVersion": "dockyard.dev/v1alpha1",
            "kind": "PersistentDisk",
            "metadata": {"name": "redis-0", "generation": 1},
            "status": {"observedGeneration": 1, "phase": "Failed", "conditions": []},
        },
        ("Degraded", "Failed"),
        id="disk-failed",
    ),
]


@pytest.mark.parametrize("interpreter", INTERPRETERS)
@pytest.mark.parametrize(("obj", "expected"), CASES)
def test_health(obj: dict[str, Any], expected: tuple[str, str], interpreter: str) -> None:
    assert health(obj, interpreter) == expected


@pytest.mark.parametrize("interpreter", INTERPRETERS)
@pytest.mark.parametrize(("obj", "expected"), CASES)
def test_health_with_numbers_as_argo_decodes_them(
    obj: dict[str, Any], expected: tuple[str, str], interpreter: str
) -> None:
    assert health(obj, interpreter, floats=True) == expected


def test_the_configmap_carries_the_script_for_each_kind() -> None:
    cm = yaml.safe_load((DEPLOY / "argocd" / "argocd-cm.yaml").read_text())
    keys = {
        f"resource.customizations.health.dockyard.dev_{k}"
        for k in ("Deployment", "Job", "PersistentDisk")
    }
    assert set(cm["data"]) == keys
    assert all(value == HEALTH.read_text() for value in cm["data"].values())
