"""The CA of cloud VMs' Docker engines: kept in a Secret the operator creates in its own
namespace, handed to the aws/gce providers in their credentials (they issue each VM its engine
certificate and themselves a client certificate, ``providers/engineca.py``).

Secret ``dockyard-engine-ca`` (namespace ``$DOCKYARD_NAMESPACE``, default ``dockyard-system``):
``ca.crt``/``ca.key``, and while one replaces another, ``previous-ca.crt``/``previous-ca.key``.
Made when missing (a replica that loses the race reads the winner's). To rotate, annotate it
``dockyard.dev/rotate=<anything new>``: the current CA becomes the previous one, a new one is
made; every VM's configuration includes the CA, so every aws/gce VM is then replaced through the
rollout (canaries first, as for a new stemcell) with a certificate of the new CA, while the old
ones are still reached with the previous one. Secrets stay out of logs: only fingerprints are
logged.

A provider whose credentials carry their own engine pair (``docker_tls_cert``: an image that
brings its certificate) gets no CA: it works as before.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import kopf
from kubernetes.client import V1Namespace, V1ObjectMeta, V1Secret
from kubernetes.client.exceptions import ApiException

from dockyard.handlers import kube
from dockyard.providers import ProviderConfig, engineca
from dockyard.providers.dockertls import CERT_KEY

log = logging.getLogger(__name__)

SECRET_NAME = "dockyard-engine-ca"
DEFAULT_NAMESPACE = "dockyard-system"
ROTATE_ANNOTATION = "dockyard.dev/rotate"
ROTATED_ANNOTATION = "dockyard.dev/rotated-for"
CA_CERT, CA_KEY = "ca.crt", "ca.key"
PREVIOUS_CERT, PREVIOUS_KEY = "previous-ca.crt", "previous-ca.key"
ISSUING_PROVIDERS = frozenset({"aws", "gce"})
CACHE_SECONDS = 60.0


def operator_namespace() -> str:
    return os.environ.get("DOCKYARD_NAMESPACE") or DEFAULT_NAMESPACE


# --- pure: what the Secret should hold -----------------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    data: dict[str, str]
    annotations: dict[str, str]
    changed: bool
    why: str = ""


def wanted_secret(
    data: Mapping[str, str],
    annotations: Mapping[str, str],
    now: datetime.datetime,
    generate: Callable[[datetime.datetime], engineca.EngineCA] = engineca.generate_ca,
) -> Wanted:
    """The Secret's data after this look: a CA made when there is none (or it is not one), a
    new one when a rotation is asked for (the current one kept as the previous one)."""
    result, notes = dict(data), dict(annotations)
    current = engineca.EngineCA(data.get(CA_CERT, ""), data.get(CA_KEY, ""))
    try:
        engineca.load_ca(current)
        valid = True
    except ValueError:
        valid = False
    if not valid:
        made = generate(now)
        result.update({CA_CERT: made.cert_pem, CA_KEY: made.key_pem})
        why = "made" if not data.get(CA_CERT) else "replaced (it was not a CA and its key)"
        return Wanted(result, notes, True, why)
    asked = annotations.get(ROTATE_ANNOTATION, "")
    if asked and asked != annotations.get(ROTATED_ANNOTATION, ""):
        made = generate(now)
        result.update(
            {
                PREVIOUS_CERT: current.cert_pem,
                PREVIOUS_KEY: current.key_pem,
                CA_CERT: made.cert_pem,
                CA_KEY: made.key_pem,
            }
        )
        notes[ROTATED_ANNOTATION] = asked
        return Wanted(result, notes, True, f"rotated ({ROTATE_ANNOTATION}={asked})")
    return Wanted(result, notes, False)


def provider_credentials(data: Mapping[str, str]) -> dict[str, str]:
    """The Secret's data as the providers' credentials keys."""
    credentials = {
        engineca.CA_CERT_KEY: data.get(CA_CERT, ""),
        engineca.CA_KEY_KEY: data.get(CA_KEY, ""),
    }
    if data.get(PREVIOUS_CERT) and data.get(PREVIOUS_KEY):
        credentials[engineca.PREVIOUS_CA_CERT_KEY] = data[PREVIOUS_CERT]
        credentials[engineca.PREVIOUS_CA_KEY_KEY] = data[PREVIOUS_KEY]
    return credentials


def wants_engine_ca(config: ProviderConfig) -> bool:
    return config.type in ISSUING_PROVIDERS and not config.credentials.get(CERT_KEY, "").strip()


# --- the Secret ----------------------------------------------------------------------------------


def _encode(data: Mapping[str, str]) -> dict[str, str | bytes]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


def _make_namespace(namespace: str) -> None:
    body = V1Namespace(metadata=V1ObjectMeta(name=namespace))
    try:
        kube.core().create_namespace(body)
    except ApiException as error:
        if error.status != 409:
            raise


def _ensure(namespace: str, now: datetime.datetime) -> dict[str, str]:
    """Read (make, rotate) the Secret; its data. Runs in a thread."""
    api = kube.core()
    for _ in range(3):
        try:
            secret = api.read_namespaced_secret(SECRET_NAME, namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            secret = None
        if secret is None:
            made = wanted_secret({}, {}, now)
            body = V1Secret(
                type="Opaque",
                metadata=V1ObjectMeta(
                    name=SECRET_NAME, labels={"app.kubernetes.io/name": "dockyard"}
                ),
                data=dict(_encode(made.data)),
            )
            try:
                api.create_namespaced_secret(namespace, body)
            except ApiException as error:
                if error.status == 409:  # another replica made it first: read theirs
                    continue
                if error.status == 404:  # an operator run outside its cluster namespace
                    _make_namespace(namespace)
                    continue
                raise
            log.info(
                "engine CA %s made (Secret %s/%s)",
                engineca.ca_fingerprint(made.data[CA_CERT]),
                namespace,
                SECRET_NAME,
            )
            return made.data
        data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
        metadata = secret.metadata or V1ObjectMeta()
        wanted = wanted_secret(data, dict(metadata.annotations or {}), now)
        if not wanted.changed:
            return data
        secret.data = dict(_encode(wanted.data))
        metadata.annotations = wanted.annotations or None
        secret.metadata = metadata
        try:  # resourceVersion kept: a concurrent change (another replica) is a 409
            api.replace_namespaced_secret(SECRET_NAME, namespace, secret)
        except ApiException as error:
            if error.status == 409:
                continue
            raise
        log.info(
            "engine CA %s %s (Secret %s/%s)",
            engineca.ca_fingerprint(wanted.data[CA_CERT]),
            wanted.why,
            namespace,
            SECRET_NAME,
        )
        return wanted.data
    raise kopf.TemporaryError(f"Secret {namespace}/{SECRET_NAME} keeps changing", delay=5)


class EngineCAStore:
    """The engine CA as the providers' credentials, read again at most once a minute (a
    rotation reaches new VMs within that)."""

    def __init__(
        self, namespace: str | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.namespace = namespace or operator_namespace()
        self._clock = clock
        self._cached: tuple[float, dict[str, str]] | None = None
        self._lock: asyncio.Lock | None = None

    async def credentials(self) -> dict[str, str]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._cached is not None and self._clock() - self._cached[0] < CACHE_SECONDS:
                return self._cached[1]
            now = datetime.datetime.now(datetime.UTC)
            try:
                data = await asyncio.to_thread(_ensure, self.namespace, now)
            except ApiException as error:
                raise kopf.TemporaryError(
                    f"the engine CA (Secret {self.namespace}/{SECRET_NAME}): "
                    f"{kube.describe(error)}",
                    delay=15,
                ) from None
            credentials = provider_credentials(data)
            self._cached = (self._clock(), credentials)
            return credentials

    async def with_engine_ca(self, config: ProviderConfig) -> ProviderConfig:
        """``config`` with the engine CA in its credentials, when its provider issues VM
        certificates and the user gave no engine pair of their own."""
        if not wants_engine_ca(config):
            return config
        return replace(config, credentials={**config.credentials, **await self.credentials()})
