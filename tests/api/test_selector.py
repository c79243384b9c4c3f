"""`dockyard run --selector`: kubectl's label selector grammar, matched as Kubernetes does."""

from __future__ import annotations

import pytest

from dockyard.api.selector import SHARD_LABEL, inherited, parse_selector


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("", {}, True),
        ("dockyard.dev/shard=a", {SHARD_LABEL: "a"}, True),
        ("dockyard.dev/shard==a", {SHARD_LABEL: "b"}, False),
        ("dockyard.dev/shard=a", {}, False),
        ("dockyard.dev/shard!=a", {}, True),  # as Kubernetes: a missing key is not equal
        ("dockyard.dev/shard!=a", {SHARD_LABEL: "a"}, False),
        ("!dockyard.dev/shard", {}, True),
        ("!dockyard.dev/shard", {SHARD_LABEL: "a"}, False),
        ("dockyard.dev/shard", {SHARD_LABEL: ""}, True),
        ("dockyard.dev/shard in (a, b)", {SHARD_LABEL: "b"}, True),
        ("dockyard.dev/shard in (a,b),team=x", {SHARD_LABEL: "b"}, False),
        ("dockyard.dev/shard notin (a,b)", {SHARD_LABEL: "c"}, True),
        ("dockyard.dev/shard notin (a,b)", {}, True),
    ],
)
def test_a_selector_matches_as_kubernetes_does(
    selector: str, labels: dict[str, str], expected: bool
) -> None:
    assert parse_selector(selector).matches(labels) is expected


@pytest.mark.parametrize("bad", ["a=b=c", "in (a)", "a in ()", "a in (b c)", "=a", "a b"])
def test_a_selector_it_cannot_read_is_refused_naming_the_part(bad: str) -> None:
    with pytest.raises(ValueError, match="selector"):
        parse_selector(bad)


def test_children_inherit_the_shard_label_only() -> None:
    assert inherited({SHARD_LABEL: "a", "app.kubernetes.io/instance": "x"}) == {SHARD_LABEL: "a"}
    assert inherited({"team": "x"}) == {} == inherited(None)
