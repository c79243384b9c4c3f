"""Keep credential values out of logs (the DEBUG logs of the IaaS SDKs included) and Events.

botocore logs each request's headers at DEBUG (the access key id in ``Authorization``, the
session token in ``X-Amz-Security-Token``). A filter on the emitting loggers rewrites any record
that contains a known secret before a handler sees it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

MASK = "***"
MIN_SECRET_LENGTH = 6  # shorter values would mangle ordinary log text
# kopf.objects also posts its records as Kubernetes Events: filtered before it posts them.
_LOGGER_PREFIXES = (
    "botocore",
    "boto3",
    "urllib3",
    "google",
    "requests",
    "docker",
    "dockyard",
    "kopf",
)
_KNOWN_SDK_LOGGERS = (
    "botocore.endpoint",
    "botocore.auth",
    "botocore.hooks",
    "botocore.httpsession",
    "botocore.parsers",
    "botocore.retryhandler",
    "botocore.credentials",
    "urllib3.connectionpool",
    "google.auth.transport.requests",
    "google.oauth2._client",
    "google.api_core.retry",
)


class _RedactingFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            for value in values:
                candidates = [value, *value.splitlines()]
                self._secrets.update(
                    c.strip() for c in candidates if len(c.strip()) >= MIN_SECRET_LENGTH
                )

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is not ours to fix
            return True
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_FILTER = _RedactingFilter()


def protect(values: Iterable[str]) -> None:
    """Mask ``values`` in the SDKs' and our loggers (existing ones and the well-known ones)."""
    _FILTER.add(values)
    names = set(_KNOWN_SDK_LOGGERS)
    names.update(
        name
        for name in list(logging.root.manager.loggerDict)
        if name.split(".")[0] in _LOGGER_PREFIXES
    )
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def redact(text: str) -> str:
    """``text`` with every protected value masked (for Events and status messages)."""
    return _FILTER.redact(text)
