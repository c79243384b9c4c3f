"""The engine CA of aws/gce VMs: what its Secret should hold (pure), which providers get it, and
the Secret made, shared by replicas and rotated on the real API server."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json

import pytest

from dockyard.handlers import engineca as handler
from dockyard.providers import ProviderConfig, engineca
from tests.conftest import Kubectl

NOW = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)


def test_a_missing_ca_is_made_and_a_valid_one_kept() -> None:
    made = handler.wanted_secret({}, {}, NOW)
    assert made.changed and made.why == "made"
    assert engineca.load_ca(engineca.EngineCA(made.data["ca.crt"], made.data["ca.key"]))
    kept = handler.wanted_secret(made.data, {}, NOW)
    assert not kept.changed and kept.data == made.data
    broken = handler.wanted_secret({"ca.crt": made.data["ca.crt"], "ca.key": "junk"}, {}, NOW)
    assert broken.changed and broken.data["ca.crt"] != made.data["ca.crt"]


def test_a_rotation_keeps_the_old_ca_as_the_previous_one_and_happens_once() -> None:
    first = handler.wanted_secret({}, {}, NOW).data
    asked = {handler.ROTATE_ANNOTATION: "2026-01-02"}
    rotated = handler.wanted_secret(first, asked, NOW)
    assert rotated.changed
    assert rotated.data["previous-ca.crt"] == first["ca.crt"]
    assert rotated.data["previous-ca.key"] == first["ca.key"]
    assert rotated.data["ca.crt"] != first["ca.crt"]
    assert rotated.annotations[handler.ROTATED_ANNOTATION] == "2026-01-02"
    again = handler.wanted_secret(rotated.data, rotated.annotations, NOW)
    assert not again.changed
    credentials = handler.provider_credentials(rotated.data)
    assert credentials[engineca.CA_CERT_KEY] == rotated.data["ca.crt"]
    assert credentials[engineca.PREVIOUS_CA_CERT_KEY] == first["ca.crt"]
    assert engineca.PREVIOUS_CA_CERT_KEY not in handler.provider_credentials(first)


@pytest.mark.parametrize(
    ("config", "wanted"),
    [
        (ProviderConfig(type="aws", region="eu-west-1"), True),
        (ProviderConfig(type="gce", zone="europe-west1-b"), True),
        (ProviderConfig(type="local"), False),
        # an image that brings its own engine certificate: the user's pair, as before
        (ProviderConfig(type="aws", credentials={"docker_tls_cert": "PEM"}), False),
    ],
)
def test_which_providers_get_the_engine_ca(config: ProviderConfig, wanted: bool) -> None:
    assert handler.wants_engine_ca(config) is wanted


def _secret(kubectl: Kubectl, namespace: str) -> tuple[dict[str, str], dict[str, str]]:
    found = json.loads(
        kubectl("get", "secret", handler.SECRET_NAME, "-n", namespace, "-o", "json").stdout
    )
    data = {k: base64.b64decode(v).decode() for k, v in found["data"].items()}
    return data, found["metadata"].get("annotations", {})


@pytest.mark.e2e
def test_the_secret_is_made_once_shared_and_rotated(kubectl: Kubectl, namespace: str) -> None:
    async def scenario() -> None:
        first, second = handler.EngineCAStore(namespace), handler.EngineCAStore(namespace)
        a, b = await asyncio.gather(first.credentials(), second.credentials())  # two replicas
        assert a == b and a[engineca.CA_CERT_KEY].startswith("-----BEGIN CERTIFICATE-----")
        data, _ = _secret(kubectl, namespace)
        assert data["ca.crt"] == a[engineca.CA_CERT_KEY]

        config = ProviderConfig(type="aws", region="eu-west-1", credentials={"x": "y"})
        given = await first.with_engine_ca(config)
        assert given.credentials["x"] == "y"
        assert given.credentials[engineca.CA_KEY_KEY] == data["ca.key"]
        assert await first.with_engine_ca(ProviderConfig(type="local")) == ProviderConfig(
            type="local"
        )

        kubectl(
            "annotate", "secret", handler.SECRET_NAME, "-n", namespace, "dockyard.dev/rotate=r1"
        )
        fresh = await handler.EngineCAStore(namespace).credentials()
        assert fresh[engineca.PREVIOUS_CA_CERT_KEY] == a[engineca.CA_CERT_KEY]
        assert fresh[engineca.CA_CERT_KEY] != a[engineca.CA_CERT_KEY]
        assert await first.credentials() == a  # cached for a minute
        rotated, annotations = _secret(kubectl, namespace)
        assert annotations[handler.ROTATED_ANNOTATION] == "r1"
        assert rotated["ca.crt"] == fresh[engineca.CA_CERT_KEY]
        assert await handler.EngineCAStore(namespace).credentials() == fresh  # once

    asyncio.run(scenario())
