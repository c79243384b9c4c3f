"""IaaS providers behind one CPI-sized contract (see base.py and docs/providers.md)."""

from dockyard.providers.base import (
    VM,
    Attachment,
    Disk,
    DiskSpec,
    InPlaceResizeUnsupportedError,
    NotFoundError,
    PermanentError,
    Provider,
    ProviderConfig,
    ProviderError,
    ShrinkRefusedError,
    Snapshot,
    TransientError,
    VMSpec,
    VMState,
)
from dockyard.providers.registry import available_providers, make_provider

__all__ = [
    "VM",
    "Attachment",
    "Disk",
    "DiskSpec",
    "InPlaceResizeUnsupportedError",
    "NotFoundError",
    "PermanentError",
    "Provider",
    "ProviderConfig",
    "ProviderError",
    "ShrinkRefusedError",
    "Snapshot",
    "TransientError",
    "VMSpec",
    "VMState",
    "available_providers",
    "make_provider",
]
