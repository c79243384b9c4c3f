"""Every manifest under invalid/ is refused by the real apiserver with an error naming its field.

Each file starts with comments: ``# field: <path the error must name>``, optionally
``# message: <text the error must contain>`` and ``# webhook: true`` (only the admission webhook
catches it). A file with two documents is an update: the first is valid and applied, the second
must be refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from dockyard.api.models import (
    parse_deployment,
    parse_disk_snapshot,
    parse_job,
    parse_persistent_disk,
)
from dockyard.api.policy import Level, violations
from dockyard.api.validation import validate_spec
from tests.conftest import Kubectl

CORPUS = Path(__file__).resolve().parent / "invalid"


@dataclass(frozen=True)
class Case:
    path: Path
    field: str
    message: str | None
    webhook: bool
    documents: list[dict[str, Any]]
    texts: list[str]  # the documents as written, sent to kubectl unchanged

    @property
    def is_update(self) -> bool:
        return len(self.documents) == 2


def load(path: Path) -> Case:
    text = path.read_text()
    header = dict(re.findall(r"^# (field|message|webhook): (.*)$", text, flags=re.MULTILINE))
    assert "field" in header, f"{path.name} has no '# field:' line"
    texts = [part for part in re.split(r"^---$", text, flags=re.MULTILINE) if part.strip()]
    documents = [yaml.safe_load(part) for part in texts]
    assert len(documents) in (1, 2), path.name
    return Case(
        path=path,
        field=header["field"].strip(),
        message=header.get("message", "").strip() or None,
        webhook=header.get("webhook", "").startswith("true"),
        documents=documents,
        texts=texts,
    )


CASES = [load(path) for path in sorted(CORPUS.glob("*.yaml"))]


def test_corpus_is_large_and_varied() -> None:
    assert len(CASES) >= 30
    kinds = {case.documents[-1]["kind"] for case in CASES}
    assert kinds == {"Deployment", "Job", "PersistentDisk", "DiskSnapshot"}
    assert sum(case.is_update for case in CASES) >= 5
    assert sum(case.webhook for case in CASES) >= 5


# Refused only by the apiserver: field validation of unknown fields, metadata rules, and
# transition rules (which need the old object).
APISERVER_ONLY = {"unknown-field", "bad-deployment-name", "job-name-too-long"}


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if not c.is_update and c.path.stem not in APISERVER_ONLY],
    ids=lambda c: c.path.stem,
)
def test_models_refuse_it_too(case: Case) -> None:
    """The operator's own parsing agrees with the apiserver, so nothing slips through either."""
    document = case.documents[-1]
    parse = {
        "Deployment": parse_deployment,
        "Job": parse_job,
        "PersistentDisk": parse_persistent_disk,
        "DiskSnapshot": parse_disk_snapshot,
    }[document["kind"]]
    try:
        parsed = parse(document)
    except ValidationError:
        return
    job_name = document["metadata"]["name"] if document["kind"] == "Job" else None
    spec: Any = parsed.spec
    # The webhook also applies the namespace's policy level: baseline, by default.
    errors = validate_spec(spec, job_name=job_name) + violations(spec, Level.BASELINE)
    assert any(error.field.startswith(case.field) for error in errors), errors


@pytest.mark.e2e
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.path.stem)
def test_apiserver_refuses_it_naming_the_field(
    case: Case,
    kubectl: Kubectl,
    crds_installed: None,
    namespace: str,
    request: pytest.FixtureRequest,
) -> None:
    if case.webhook:
        request.getfixturevalue("admission_webhook")
    *originals, invalid = case.documents
    for original in originals:
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(original))
    result = kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(invalid), check=False
    )
    assert result.returncode != 0, f"{case.path.name} was accepted:\n{result.stdout}"
    assert case.field in result.stderr, f"error does not name {case.field}:\n{result.stderr}"
    if case.message:
        assert case.message in result.stderr, result.stderr
