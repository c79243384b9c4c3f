"""The operator image's recipe. The python:3.11-slim base cannot be pulled here, so the test builds
what the Dockerfile's `pip install .` builds — from exactly the files .dockerignore lets in — and
checks the Dockerfile against the Deployment that runs it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.observability.conftest import REPO, run

DOCKERFILE = (REPO / "Dockerfile").read_text()


def _regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regular expression."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def build_context() -> list[str]:
    """Repository files that survive .dockerignore: the last matching rule wins, and a rule that
    matches a directory matches everything under it (Docker's semantics)."""
    rules = [
        (line.startswith("!"), _regex(line.lstrip("!").strip("/")))
        for line in map(str.strip, (REPO / ".dockerignore").read_text().splitlines())
        if line and not line.startswith("#")
    ]
    listed = run("git", "ls-files", "--cached", "--others", "--exclude-standard")
    assert listed.returncode == 0, listed.stderr
    kept = []
    for path in listed.stdout.split():
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        included = True
        for negated, regex in rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                included = negated
        if included and (REPO / path).is_file():
            kept.append(path)
    return kept


def test_build_context_is_the_package_and_nothing_else() -> None:
    context = build_context()
    assert {"pyproject.toml", "README.md"} <= set(context)
    sources = {str(p.relative_to(REPO)) for p in (REPO / "operator" / "dockyard").rglob("*.py")}
    assert sources <= set(context)
    assert not [p for p in context if p.startswith(("tests/", "hack/", ".venv/", "bench/"))]


def test_pip_install_dot_builds_from_that_context(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for path in build_context():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / path, source / path)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", ".", "-w", str(tmp_path / "out")],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "out").glob("dockyard-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    assert "dockyard/observability/metrics.py" in names and "dockyard/py.typed" in names
    # ENTRYPOINT runs this console script.
    assert "dockyard = dockyard.cli:main" in scripts


def test_dockerfile_runs_the_operator_as_a_numeric_non_root_user() -> None:
    entrypoint = re.findall(r"^ENTRYPOINT (.+)$", DOCKERFILE, re.MULTILINE)
    assert [json.loads(e) for e in entrypoint] == [["dockyard", "run"]]
    users = re.findall(r"^USER (\d+):(\d+)$", DOCKERFILE, re.MULTILINE)
    assert len(users) == 1 and int(users[0][0]) > 0, "USER must be numeric for runAsNonRoot"
    # The package itself, last (its dependencies come in a layer of their own before it).
    assert re.search(r"^RUN .*pip install (--\S+ )*\.$", DOCKERFILE, re.MULTILINE)


@pytest.mark.parametrize("port", ["9090", "8080", "8081", "9443"])
def test_dockerfile_exposes_the_deployment_ports(port: str) -> None:
    operator = (REPO / "deploy" / "base" / "operator.yaml").read_text()
    assert f"containerPort: {port}" in operator
    assert re.search(rf"^EXPOSE .*\b{port}\b", DOCKERFILE, re.MULTILINE)
