"""Hypothesis strategies for Dockyard objects, built from the models' own schema.

``from_schema`` turns the structural schema generated from the pydantic models into a strategy
(types, bounds, patterns, enums, unique list keys); ``repair_*`` then makes the few cross-field
rules hold (dependencies point at earlier containers, volumes only with a disk, exactly one probe)
so that almost every draw is a valid object.
"""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any

from hypothesis import strategies as st

from dockyard.api.quantities import parse_duration, parse_quantity

# Printable text, no surrogates or control characters (JSON and the apiserver take any Unicode,
# but these are not what users write and only slow generation down).
_ALPHABET = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
# Two items still exercise list keys and uniqueness; three per level made Deployments (jobs of
# containers of lists) so large that most draws overran Hypothesis' buffer (Unsatisfiable).
_MAX_ITEMS = 2


def _string(node: dict[str, Any]) -> st.SearchStrategy[str]:
    low, high = node.get("minLength", 0), min(node.get("maxLength", 24), 24)
    pattern = node.get("pattern")
    if pattern is None:
        return st.text(alphabet=_ALPHABET, min_size=low, max_size=high)
    # Kubernetes (Go) and pydantic (Rust) anchor "$" at the very end; Python also before "\n".
    strict = re.compile(pattern.replace("$", r"\Z"))
    return (
        st.from_regex(pattern, alphabet=_ALPHABET)
        .filter(lambda s: low <= len(s) <= node.get("maxLength", 10**6))
        .filter(lambda s: strict.search(s) is not None)
    )


def _list_key(keys: list[str], item_schema: dict[str, Any]) -> Any:
    defaults = {k: item_schema["properties"][k].get("default") for k in keys}
    return lambda item: tuple(item.get(k, defaults[k]) for k in keys)


def from_schema(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that satisfy a structural schema node (CEL rules excepted)."""
    if node.get("x-kubernetes-int-or-string"):
        return st.one_of(
            st.integers(min_value=node.get("minimum", 0), max_value=2**40), _string(node)
        )
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 9), max_size=2)
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node["type"]
    if kind == "string":
        if node.get("format") == "date-time":
            return st.datetimes(timezones=st.just(UTC)).map(
                lambda t: t.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
            )
        return _string(node)
    if kind == "integer":
        low = node.get("minimum", -(2**31))
        return st.integers(min_value=low, max_value=node.get("maximum", max(low, 0) + 2**31))
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        items = node["items"]
        size = {"min_size": node.get("minItems", 0), "max_size": min(node["maxItems"], _MAX_ITEMS)}
        if node.get("x-kubernetes-list-type") == "map":
            key = _list_key(node["x-kubernetes-list-map-keys"], items)
            return st.lists(from_schema(items), unique_by=key, **size)
        if node.get("x-kubernetes-list-type") == "set":
            return st.lists(from_schema(items), unique=True, **size)
        return st.lists(from_schema(items), **size)
    if kind == "object" and "properties" in node:
        required = set(node.get("required", []))
        properties = node["properties"]
        return st.fixed_dictionaries(
            {name: from_schema(properties[name]) for name in properties if name in required},
            optional={
                name: from_schema(properties[name]) for name in properties if name not in required
            },
        )
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        keys = st.from_regex(r"\A[a-z0-9]([-a-z0-9./]{0,10}[a-z0-9])?\Z")
        return st.dictionaries(keys, from_schema(node["additionalProperties"]), max_size=2)
    raise ValueError(f"no strategy for schema node {node}")


# --- cross-field rules -------------------------------------------------------------------------


def _seconds(duration: str) -> float:
    try:
        return parse_duration(duration)
    except ValueError:  # too long for Go: the models refuse it, and so does the filter
        return 0.0


def _repair_container(container: dict[str, Any], allowed: list[str], has_disk: bool) -> None:
    # Map each drawn name onto an allowed one (deterministically, so shrinking still works).
    drawn = container.get("dependsOn", [])
    picked = {allowed[len(name) % len(allowed)] for name in drawn} if allowed else set()
    container["dependsOn"] = [name for name in allowed if name in picked]
    if not has_disk:
        container.pop("volumes", None)
    for volume in container.get("volumes", []):
        if ".." in volume.get("subPath", ""):
            volume.pop("subPath")
    check = container.get("healthCheck")
    if check is not None:
        probes = [k for k in ("exec", "tcp", "http") if k in check]
        for extra in probes[1:]:
            del check[extra]
        if not probes:
            check["tcp"] = {"port": 1}
    for var in container.get("env", []):
        if "value" in var and "valueFrom" in var:
            del var["valueFrom"]
        elif "value" not in var and "valueFrom" not in var:
            var["value"] = ""
    backoff = container.get("restartBackoff")
    ordered = not backoff or "initial" not in backoff or "max" not in backoff
    if not ordered and _seconds(backoff["initial"]) > _seconds(backoff["max"]):
        backoff["initial"], backoff["max"] = backoff["max"], backoff["initial"]


def repair_group(group: dict[str, Any], earlier: list[str] | None = None) -> None:
    """Make an instance group (a Deployment's job or a Job's spec) satisfy the CEL rules.

    Dependencies may only point at earlier containers (of this job, or ``earlier`` "job/name"
    references), so the graph stays acyclic."""
    disk = group.get("persistentDisk")
    if disk is not None:
        _repair_disk(disk)
    names: list[str] = []
    for container in group["containers"]:
        _repair_container(container, names + (earlier or []), disk is not None)
        names.append(container["name"])


def _repair_disk(disk: dict[str, Any]) -> None:
    try:
        usable = parse_quantity(disk["size"]) > 0
    except ValueError:  # beyond int64
        usable = False
    if not usable:
        disk["size"] = "1Gi"


def _repair_policies(spec: dict[str, Any]) -> None:
    for key in ("canaryWatchTime", "updateWatchTime"):
        value = spec.get("update", {}).get(key)
        if value and "-" in value:
            low, high = value.split("-")
            if _seconds(low) > _seconds(high):
                spec["update"][key] = f"{high}-{low}"


def repair_spec(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    _repair_policies(spec)
    if kind == "Deployment":
        earlier: list[str] = []
        for job in spec["jobs"]:
            repair_group(job, earlier)
            earlier += [f"{job['name']}/{c['name']}" for c in job["containers"]]
    elif kind == "Job":
        repair_group(spec)
    else:
        _repair_disk(spec)
    return spec
