"""Shared helpers of the observability/deploy tests: tools on PATH and the rendered manifests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "monitoring" / "rules.yaml"
PROMTOOL_TESTS = Path(__file__).resolve().parent / "promtool"


def tool(name: str, package: str) -> str:
    """Path of a command the tests need; a clear failure naming the Debian package if absent."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: apt-get install {package}")
    return path


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, cwd=cwd, timeout=120)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` (client-side, no cluster) of ``directory``, parsed."""
    result = run(tool("kubectl", "kubectl"), "kustomize", str(directory))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def base_objects() -> list[dict[str, Any]]:
    return kustomize(DEPLOY)


@pytest.fixture(scope="session")
def monitoring_objects() -> list[dict[str, Any]]:
    return kustomize(DEPLOY / "monitoring")


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
