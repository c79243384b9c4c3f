"""The operator's own models hold the edges of tests/api/edges.py as the apiserver does: every
value outside an edge is refused naming its field, every value inside it is accepted."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dockyard.api.models import parse_deployment
from dockyard.api.validation import FieldError, errors_from_validation, validate_spec
from tests.api.edges import (
    EDGES,
    JOB_EDGES,
    OBJECT_EDGES,
    Edge,
    JobEdge,
    job_with,
    one_container,
)
from tests.conftest import REPO


def _problems(manifest: dict[str, Any]) -> list[FieldError]:
    try:
        parsed = parse_deployment(manifest)
    except ValidationError as error:
        return errors_from_validation(error)
    return validate_spec(parsed.spec)


def _names(field: str, problems: list[FieldError]) -> bool:
    """A problem at ``field`` (or inside it), or at the object holding it (a model-wide check)."""
    return any(
        field == p.field or field.startswith(p.field + ".") or p.field.startswith(field)
        for p in problems
    )


@pytest.mark.parametrize("edge", [e for e in EDGES if e.outside], ids=lambda e: e.id)
def test_a_value_outside_the_edge_is_refused_naming_the_field(edge: Edge) -> None:
    field = f"spec.jobs[0].containers[0].{edge.field}"
    for outside in edge.outside:
        problems = _problems(one_container(outside))
        assert _names(field, problems), (outside, problems)


@pytest.mark.parametrize("edge", [e for e in EDGES if e.inside], ids=lambda e: e.id)
def test_the_value_inside_the_edge_is_accepted(edge: Edge) -> None:
    assert edge.inside is not None
    assert _problems(one_container(edge.inside)) == []


@pytest.mark.parametrize("edge", JOB_EDGES, ids=lambda e: e.id)
def test_job_edges(edge: JobEdge) -> None:
    for outside in edge.outside:
        problems = _problems(job_with(outside))
        assert _names(f"spec.jobs[0].{edge.field}", problems), problems
    assert _problems(job_with(edge.inside)) == []


def test_docs_list_every_edge() -> None:
    """docs/api.md's table has a row for each edge (its first column names the rows)."""
    rows = [
        line.split("|")[1]
        for line in (REPO / "docs" / "api.md").read_text().splitlines()
        if line.startswith("| ")
    ]
    named = {name.strip() for row in rows for name in row.split(",")}
    missing = {e.id for e in (*EDGES, *JOB_EDGES, *OBJECT_EDGES)} - named
    assert not missing, f"docs/api.md has no row for {sorted(missing)}"
