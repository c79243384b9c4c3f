"""API errors read as words wherever they surface (Events, logs): the status, its reason and
the API server's own message, never a bare code and a dump of headers."""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException

from dockyard.handlers.kube import ApiError


def test_an_api_error_says_what_the_api_server_said() -> None:
    refused = ApiException(status=422, reason="Unprocessable Entity")
    refused.body = json.dumps(
        {
            "kind": "Status",
            "message": 'PersistentDisk "x" is invalid: spec.size: size cannot shrink',
        }
    )
    error = ApiError(refused)
    assert str(error) == (
        '(422) Unprocessable Entity: PersistentDisk "x" is invalid: spec.size: size cannot shrink'
    )
    assert isinstance(error, ApiException) and error.status == 422  # callers' checks still hold
