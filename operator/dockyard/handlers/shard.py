"""Which objects this operator owns: those its label selector (``dockyard run --selector``,
``DOCKYARD_SELECTOR``) matches. Every handler of a Dockyard kind takes ``when=owns``; children
inherit the shard label (``dockyard.dev/shard``) from their Deployment, so a shard keeps its
whole tree, and its VMs and disks (found by the Jobs' identities)."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping
from typing import Any

from dockyard.api.selector import Selector, parse_selector


@functools.cache
def selector() -> Selector:
    try:
        return parse_selector(os.environ.get("DOCKYARD_SELECTOR", ""))
    except ValueError as error:
        raise SystemExit(f"--selector: {error}") from None


def owns(labels: Mapping[str, str] | None = None, **_: Any) -> bool:
    return selector().matches(labels)


def finalizer() -> str:
    """This operator's finalizer. A shard has its own: kopf drops its finalizer from objects
    none of its handlers match, which must never be another shard's (that shard's teardown of
    VMs and disks would then never run)."""
    text = os.environ.get("DOCKYARD_SELECTOR", "").strip()
    if not text:
        return "dockyard.dev/finalizer"
    return f"dockyard.dev/finalizer-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
