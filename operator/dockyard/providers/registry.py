"""Providers are found through the ``dockyard.providers`` entry-point group, so another IaaS
(OpenStack, vSphere...) plugs in as a separate distribution without touching the core."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from dockyard.providers.base import PermanentError, Provider, ProviderConfig

GROUP = "dockyard.providers"


def available_providers() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def make_provider(config: ProviderConfig) -> Provider:
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == config.type]
    if not matches:
        raise PermanentError(
            f"spec.provider.type: unknown provider {config.type!r}; "
            f"installed: {', '.join(available_providers()) or 'none'}"
        )
    factory: Any = matches[0].load()
    provider: Provider = factory(config)
    return provider
