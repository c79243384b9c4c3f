"""Typed reads of ``ProviderConfig.options`` (all strings) with errors that name the field."""

from __future__ import annotations

from dockyard.providers.base import PermanentError, ProviderConfig


def _field(name: str) -> str:
    return f"spec.provider.options.{name}"


def check_known(config: ProviderConfig, known: frozenset[str]) -> None:
    """A misspelt option is an error, not a silently ignored setting."""
    unknown = sorted(set(config.options) - known)
    if unknown:
        raise PermanentError(
            f"{_field(unknown[0])}: unknown option of the {config.type} provider "
            f"(known: {', '.join(sorted(known))})"
        )


def option_str(config: ProviderConfig, name: str, default: str = "") -> str:
    return config.options.get(name, default).strip()


def option_float(
    config: ProviderConfig, name: str, default: float, *, minimum: float = 0.0
) -> float:
    raw = config.options.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise PermanentError(f"{_field(name)}: {raw!r} is not a number") from None
    if value < minimum:
        raise PermanentError(f"{_field(name)}: {value} is below the minimum {minimum}")
    return value


def option_int(config: ProviderConfig, name: str, default: int, *, minimum: int = 0) -> int:
    raw = config.options.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PermanentError(f"{_field(name)}: {raw!r} is not an integer") from None
    if value < minimum:
        raise PermanentError(f"{_field(name)}: {value} is below the minimum {minimum}")
    return value


def option_bool(config: ProviderConfig, name: str, default: bool) -> bool:
    raw = config.options.get(name)
    if raw is None or raw.strip() == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise PermanentError(f"{_field(name)}: {raw!r} is not a boolean (true/false)")


def option_list(config: ProviderConfig, name: str) -> list[str]:
    """A comma-separated list; blanks dropped."""
    return [item.strip() for item in config.options.get(name, "").split(",") if item.strip()]


def required(value: str, field: str, why: str) -> str:
    if not value:
        raise PermanentError(f"{field}: required ({why})")
    return value
