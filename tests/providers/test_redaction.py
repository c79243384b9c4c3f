"""Secret values never reach a log handler (ours, kopf's Event poster, the SDKs') or an Event."""

from __future__ import annotations

import logging
import uuid

import pytest

from dockyard.providers.redaction import MASK, protect, protected, redact


@pytest.mark.parametrize("logger", ["kopf.objects", "dockyard.handlers.job", "botocore.endpoint"])
def test_a_protected_value_is_masked_before_any_handler_sees_it(
    logger: str, caplog: pytest.LogCaptureFixture
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    logging.getLogger(logger)  # exists before protect(), as kopf's and the SDKs' loggers do
    protect([canary])
    with caplog.at_level(logging.DEBUG, logger=logger):
        logging.getLogger(logger).warning("request failed: token=%s", canary)
    (record,) = [r for r in caplog.records if r.name == logger]
    assert canary not in record.getMessage()
    assert f"token={MASK}" in record.getMessage()


def test_redact_masks_event_text_and_keeps_short_values() -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    protect([canary, "abc"])
    assert redact(f"instance 0: app: failed ({canary})") == f"instance 0: app: failed ({MASK})"
    assert redact("abc stays: too short to be told from ordinary text") == (
        "abc stays: too short to be told from ordinary text"
    )


def test_every_line_of_a_multi_line_secret_is_masked() -> None:
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n-----END KEY-----"
    protect([key])
    assert "MIIEvQIBADANBgkqhkiG9w0B" not in redact("line MIIEvQIBADANBgkqhkiG9w0B in a trace")


def test_a_value_protected_for_a_call_is_masked_during_it_only() -> None:
    """A VM's key in the request that creates it: masked while it is sent, not kept for good
    (one per VM would pile up); what was protected for good stays so."""
    lasting = f"lasting-{uuid.uuid4().hex}"
    protect([lasting])
    key = f"-----BEGIN PRIVATE KEY-----\nkey-{uuid.uuid4().hex}\n-----END PRIVATE KEY-----"
    line = key.splitlines()[1]
    with protected([key, lasting]):
        assert redact(f"body={line} {lasting}") == f"body={MASK} {MASK}"
    assert redact(f"body={line}") == f"body={line}"
    assert redact(lasting) == MASK
