"""The few Kubernetes API calls Dockyard makes besides kopf's own (children, status, Secrets).

The synchronous ``kubernetes`` client runs in threads; every call is small and rare (writes happen
only when something changed, so a converged deployment costs no API writes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import kopf
import kubernetes
import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

T = TypeVar("T")
GROUP = "dockyard.dev"
__all__ = ["GROUP", "VERSION", "ApiError", "ApiException", "as_body", "describe"]
VERSION = "v1alpha1"


@functools.cache
def api_client() -> kubernetes.client.ApiClient:
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    return kubernetes.client.ApiClient()


def as_body(obj: Mapping[str, Any]) -> kopf.Body:
    """kopf's Event and ownership helpers read plain objects as well as its own views."""
    return cast(kopf.Body, obj)


def custom() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api_client())


def core() -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api_client())


def describe(error: ApiException) -> str:
    """What the API server said, in words: its status, reason and the Status message it sent
    (``(422) ... spec.size: Invalid value ...``), not only the code."""
    message = ""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        message = json.loads(error.body or "{}").get("message", "")
    return f"({error.status}) {error.reason}: {message or error.body or ''}".strip()


class ApiError(ApiException):
    """An API error that reads as words (``str()`` is :func:`describe`): what kopf and our own
    Events and logs show, never a truncated status code and a dump of headers."""

    def __init__(self, error: ApiException) -> None:
        super().__init__(status=error.status, reason=error.reason)
        self.body, self.headers = error.body, error.headers

    def __str__(self) -> str:
        return describe(self)


async def _run(call: Callable[[], T]) -> T:
    try:
        return await asyncio.to_thread(call)
    except ApiError:
        raise
    except ApiException as error:
        raise ApiError(error) from error


async def get(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    def call() -> dict[str, Any] | None:
        try:
            return cast(
                dict[str, Any],
                custom().get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name),
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    return await _run(call)


async def list_(plural: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
    def call() -> list[dict[str, Any]]:
        result = cast(
            dict[str, Any],
            custom().list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, label_selector=selector
            ),
        )
        return list(result.get("items", []))

    return await _run(call)


async def create(plural: str, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
    def call() -> dict[str, Any]:
        try:
            return cast(
                dict[str, Any],
                custom().create_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, dict(body)
                ),
            )
        except ApiException as error:
            if error.status != 409:
                raise
            name = body["metadata"]["name"]
            return cast(
                dict[str, Any],
                custom().get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name),
            )

    return await _run(call)


async def patch(plural: str, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
    def call() -> dict[str, Any]:
        return cast(
            dict[str, Any],
            custom().patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, dict(body)
            ),
        )

    return await _run(call)


async def patch_status(plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
    def call() -> None:
        try:
            custom().patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": dict(status)}
            )
        except ApiException as error:
            if error.status != 404:  # deleted meanwhile: nothing to report on
                raise

    await _run(call)


async def delete(plural: str, namespace: str, name: str) -> None:
    def call() -> None:
        try:
            custom().delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except ApiException as error:
            if error.status != 404:
                raise

    await _run(call)


async def read_secret(namespace: str, name: str) -> dict[str, str]:
    """A Secret's data, decoded. Values are credentials: never log them."""

    def call() -> dict[str, str]:
        secret = core().read_namespaced_secret(name, namespace)
        data = secret.data or {}
        return {key: base64.b64decode(value).decode() for key, value in data.items()}

    return await _run(call)


async def read_config_map(namespace: str, name: str) -> dict[str, str]:
    """A ConfigMap's data."""

    def call() -> dict[str, str]:
        found = core().read_namespaced_config_map(name, namespace)
        return dict(found.data or {})

    return await _run(call)


async def namespace_terminating(name: str) -> bool:
    """The namespace is being deleted (or is gone)."""
    found = await _run(lambda: _read_namespace(name))
    return found is None or bool(found.metadata and found.metadata.deletion_timestamp)


async def namespace_labels(name: str) -> dict[str, str]:
    """A namespace's labels (its policy level among them); none when it is gone."""
    found = await _run(lambda: _read_namespace(name))
    return dict((found.metadata.labels if found and found.metadata else None) or {})


def _read_namespace(name: str) -> Any:
    try:
        return core().read_namespace(name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
