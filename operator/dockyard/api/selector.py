"""Kubernetes label selectors (``dockyard run --selector``), parsed and matched.

The grammar is kubectl's: requirements separated by commas, each ``key``, ``!key``,
``key=value`` (or ``==``), ``key!=value``, ``key in (a,b)`` or ``key notin (a,b)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

#: The label a Deployment's children (Jobs, disk records, snapshots) inherit from it, so a
#: selector on it gives a shard the whole tree.
SHARD_LABEL = "dockyard.dev/shard"

_KEY = r"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*$")
_EQUALS = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # in | notin | exists | missing
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "exists":
            return present
        if self.operator == "missing":
            return not present
        if self.operator == "in":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # notin, as Kubernetes


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return all(r.matches(labels or {}) for r in self.requirements)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(r.key for r in self.requirements)


def _split(text: str) -> list[str]:
    """Requirements split on the commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def parse_selector(text: str) -> Selector:
    """``text`` as a Selector; ValueError naming the requirement it cannot read."""
    requirements: list[Requirement] = []
    if not text.strip():
        return Selector()
    for part in _split(text):
        if found := _SET.match(part):
            values = frozenset(v.strip() for v in found.group(3).split(",") if v.strip())
            bad = [v for v in values if not re.fullmatch(_VALUE, v)]
            if not values or bad:
                raise ValueError(f"selector {part.strip()!r}: a list of label values is expected")
            requirements.append(Requirement(found.group(1), found.group(2), values))
        elif found := _EQUALS.match(part):
            operator = "notin" if found.group(2) == "!=" else "in"
            requirements.append(Requirement(found.group(1), operator, frozenset({found.group(3)})))
        elif found := _EXISTS.match(part):
            operator = "missing" if found.group(1) else "exists"
            requirements.append(Requirement(found.group(2), operator))
        else:
            raise ValueError(
                f"selector {part.strip()!r}: expected key, !key, key=value, key!=value, "
                "key in (a,b) or key notin (a,b)"
            )
    return Selector(tuple(requirements))


def inherited(labels: Mapping[str, str] | None) -> dict[str, str]:
    """The labels a child takes from its parent: the shard label, when the parent has it."""
    labels = labels or {}
    return {SHARD_LABEL: labels[SHARD_LABEL]} if SHARD_LABEL in labels else {}
