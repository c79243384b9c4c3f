"""Keep credential values out of logs (the DEBUG logs of the IaaS SDKs included) and Events.

botocore logs each request's headers at DEBUG (the access key id in ``Authorization``, the
session token in ``X-Amz-Security-Token``). A filter on the emitting loggers rewrites any record
that contains a known secret before a handler sees it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

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
        # Replaced, never mutated: filters run in any thread while another adds values.
        self._secrets: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def add(self, values: Iterable[str]) -> frozenset[str]:
        """Mask these values (and each of their lines); returns those that were new."""
        candidates = {
            line.strip()
            for value in values
            for line in (value, *value.splitlines())
            if len(line.strip()) >= MIN_SECRET_LENGTH
        }
        with self._lock:
            new = frozenset(candidates - self._secrets)
            if new:
                self._secrets = self._secrets | new
            return new

    def remove(self, secrets: frozenset[str]) -> None:
        with self._lock:
            self._secrets = self._secrets - secrets

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
_loggers_filtered = 0  # how many loggers existed at the last scan (loggers are never removed)


def protect(values: Iterable[str]) -> None:
    """Mask ``values`` in the SDKs' and our loggers (existing ones and the well-known ones).

    Called on every reconcile pass: the loggers are scanned again only when new ones appeared."""
    global _loggers_filtered
    _FILTER.add(values)
    if len(logging.root.manager.loggerDict) == _loggers_filtered:
        return
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
    _loggers_filtered = len(logging.root.manager.loggerDict)  # the well-known ones included


@contextmanager
def protected(values: Iterable[str]) -> Iterator[None]:
    """Mask ``values`` while the block runs (a VM's key while the request that carries it is
    sent and logged): secrets of one call do not pile up in the filter for good."""
    new = _FILTER.add(values)  # only these go again: a value masked for good stays masked
    protect(())
    try:
        yield
    finally:
        _FILTER.remove(new)


def redact(text: str) -> str:
    """``text`` with every protected value masked (for Events and status messages)."""
    return _FILTER.redact(text)
