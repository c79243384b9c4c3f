"""Validating admission webhook: rejects dependency cycles and unknown cross-job references,
which the CRDs' CEL rules cannot express (see ``dockyard.api.validation``).

Served by kopf itself (``settings.admission``); kopf also writes the
ValidatingWebhookConfiguration and empties it on a clean exit. The webhook is on only when
``DOCKYARD_WEBHOOK_PORT`` is set (or ``configure_webhook(port=...)`` is called): an apiserver whose
webhook cannot be reached would otherwise refuse every Dockyard object.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from dockyard.api.models import DeploymentSpec, JobSpec
from dockyard.api.policy import violations
from dockyard.api.schema import GROUP, VERSION
from dockyard.api.validation import (
    FieldError,
    errors_from_validation,
    job_names_too_long,
    validate_spec,
)
from dockyard.handlers import kube
from dockyard.handlers.fleet import fleet_of

log = logging.getLogger(__name__)

DEFAULT_CONFIGURATION = "validate.dockyard.dev"


def _reject(errors: list[FieldError]) -> None:
    if errors:
        raise kopf.AdmissionError("; ".join(str(error) for error in errors), code=422)


def _errors(spec: Any, model: type[DeploymentSpec] | type[JobSpec], name: str) -> list[FieldError]:
    try:
        parsed = model.model_validate(dict(spec or {}))
    except ValidationError as error:
        return [FieldError(f"spec.{e.field}", e.message) for e in errors_from_validation(error)]
    return validate_spec(parsed, job_name=name)


async def validate_deployment(spec: Any, name: str | None, **kwargs: Any) -> None:
    """Dependency cycles and cross-job references of a Deployment, host ports published twice
    on a VM, jobs whose Job would have too long a name (new ones: an old one keeps its), and
    what its namespace's policy level refuses."""
    errors = _errors(spec, DeploymentSpec, "")
    if not errors and name:
        old = kwargs.get("old") or {}
        existing = [job.get("name") for job in (old.get("spec") or {}).get("jobs") or []]
        parsed = DeploymentSpec.model_validate(dict(spec or {}))
        errors = job_names_too_long(name, parsed, existing)
        errors += await _policy(parsed, kwargs)
    _reject(errors)


async def validate_job(spec: Any, name: str | None, body: Any, **kwargs: Any) -> None:
    """Dependency cycles within a Job (references to other Jobs are the Deployment's business),
    and what its namespace's policy level refuses."""
    job_name = name or (body.get("metadata") or {}).get("name") or ""
    errors = _errors(spec, JobSpec, job_name)
    if not errors:
        errors = await _policy(JobSpec.model_validate(dict(spec or {})), kwargs)
    _reject(errors)


async def _policy(spec: DeploymentSpec | JobSpec, kwargs: dict[str, Any]) -> list[FieldError]:
    """The namespace's level (its dockyard.dev/enforce label, else the operator's default)."""
    policy = fleet_of(kwargs["memo"]).policy
    namespace = kwargs.get("namespace") or ""
    labels: dict[str, str] | None = None
    if namespace:
        try:
            labels = await kube.namespace_labels(namespace)
        except kube.ApiException as error:  # the default level then: fail closed, not open
            log.warning("reading namespace %s for its policy level: %s", namespace, error)
    return violations(spec, policy.level_of(labels), policy)


def register(registry: kopf.OperatorRegistry | None = None) -> None:
    """Register the validating handlers (in kopf's default registry unless one is given).

    failurePolicy is Ignore: while the operator is down objects are still accepted, and the
    reconciler reports the same problems as Stalled.
    """
    for plural, handler in (("deployments", validate_deployment), ("jobs", validate_job)):
        kopf.on.validate(
            GROUP,
            VERSION,
            plural,
            id=f"{plural}-dependencies",
            operations=["CREATE", "UPDATE"],
            ignore_failures=True,
            registry=registry,
        )(handler)


register()


class _ServiceWebhookServer(kopf.WebhookServer):
    """Registered as a reference to the Service ``host`` names (name.namespace.svc): the apiserver
    finds that Service's endpoints itself, where a URL would need the cluster's DNS on the
    apiserver's host."""

    async def __call__(self, fn: Any) -> Any:
        name, namespace = (self.host or "").split(".")[:2]
        async for config in super().__call__(fn):
            reference: kopf.WebhookClientConfig = {
                "service": {"namespace": namespace, "name": name, "port": self.port, "path": ""}
            }
            if config.get("caBundle"):
                reference["caBundle"] = config["caBundle"]
            yield reference


def self_signed_certificate(hosts: list[str], directory: Path) -> tuple[Path, Path]:
    """A self-signed serving certificate for ``hosts`` (DNS names or IPs): (certfile, keyfile).

    kopf can generate one itself, but only through oscrypto, which cannot load OpenSSL 3.0.10+.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    certfile, keyfile = directory / "webhook.crt", directory / "webhook.key"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.touch(mode=0o600)
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile


def configure_webhook(
    settings: kopf.OperatorSettings,
    *,
    port: int | None = None,
    addr: str | None = None,
    host: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    configuration: str | None = None,
) -> bool:
    """Serve the webhook from this operator and let kopf manage its configuration object.

    Arguments default to environment variables: DOCKYARD_WEBHOOK_PORT (no webhook when unset),
    DOCKYARD_WEBHOOK_ADDR (listen address, default 127.0.0.1), DOCKYARD_WEBHOOK_HOST (the name
    or IP the apiserver calls, default the listen address), DOCKYARD_WEBHOOK_CERT and
    DOCKYARD_WEBHOOK_KEY (PEM files; a self-signed pair is generated when unset),
    DOCKYARD_WEBHOOK_CONFIGURATION (default validate.dockyard.dev) and DOCKYARD_WEBHOOK_SERVICE
    (``namespace/name``: the configuration names that Service, on the webhook's port, instead of
    a URL; the certificate is for ``name.namespace.svc``). Returns whether it is on.
    """
    env = os.environ.get
    port = port if port is not None else int(env("DOCKYARD_WEBHOOK_PORT", "0") or 0)
    if not port:
        log.info("admission webhook off (DOCKYARD_WEBHOOK_PORT is not set)")
        return False
    addr = addr or env("DOCKYARD_WEBHOOK_ADDR") or "127.0.0.1"
    service = env("DOCKYARD_WEBHOOK_SERVICE", "")
    service_namespace, _, service_name = service.partition("/")
    if service and not (service_namespace and service_name):
        raise ValueError(f"DOCKYARD_WEBHOOK_SERVICE={service!r}: expected namespace/name")
    host = host or env("DOCKYARD_WEBHOOK_HOST") or addr
    if service:
        host = f"{service_name}.{service_namespace}.svc"
    certfile = certfile or env("DOCKYARD_WEBHOOK_CERT")
    keyfile = keyfile or env("DOCKYARD_WEBHOOK_KEY")
    if not certfile or not keyfile:
        directory = Path(tempfile.mkdtemp(prefix="dockyard-webhook-"))
        cert_path, key_path = self_signed_certificate([host], directory)
        certfile, keyfile = str(cert_path), str(key_path)
    server_class = kopf.WebhookServer if not service else _ServiceWebhookServer
    settings.admission.server = server_class(
        addr=addr, port=port, host=host, certfile=certfile, pkeyfile=keyfile
    )
    settings.admission.managed = (
        configuration or env("DOCKYARD_WEBHOOK_CONFIGURATION") or DEFAULT_CONFIGURATION
    )
    return True
