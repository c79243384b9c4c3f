"""The certificates of cloud VMs' Docker engines (mutual TLS), issued by the operator's CA.

Pure code: no I/O; the clock is an argument. The handlers keep the CA in a Secret they create
(``handlers/engineca.py``) and pass it to the aws/gce providers in their credentials; a provider
issues each VM its own server certificate when it creates the VM, and itself a client
certificate (neither key leaves the process but in the VM's user data, for its own cert).

Names, not addresses: a VM's private IP is unknown before it boots (EC2 and GCE assign it), so
its server certificate names it by a DNS name made for that VM alone, ``<nonce>.engine.dockyard.
invalid`` (``.invalid`` never resolves: the name is only ever checked, never looked up). The
provider records the name on the VM (a tag, a metadata item) and connects to the private IP while
checking the certificate against that name (TLS SNI + hostname check). A certificate of another
VM, or of another CA, is refused; the name stays true if the address changes.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# credentials keys: the CA the operator keeps (handlers/engineca.py) and, while it is being
# replaced, the one before it (VMs made with it are still reached; they are rolled).
CA_CERT_KEY = "engine_ca_cert"
CA_KEY_KEY = "engine_ca_key"
PREVIOUS_CA_CERT_KEY = "engine_previous_ca_cert"
PREVIOUS_CA_KEY_KEY = "engine_previous_ca_key"
NAME_DOMAIN = "engine.dockyard.invalid"
CA_DAYS = 3650
CLIENT_CN = "dockyard-operator"


@dataclass(frozen=True)
class EngineCA:
    """A CA certificate and its private key, as PEM strings."""

    cert_pem: str
    key_pem: str = field(repr=False)

    @property
    def fingerprint(self) -> str:
        return ca_fingerprint(self.cert_pem)


@dataclass(frozen=True)
class Issued:
    cert_pem: str
    key_pem: str = field(repr=False)


def ca_fingerprint(cert_pem: str) -> str:
    """A short, stable id of a CA certificate (sha256 of its DER), recorded on each VM."""
    der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()[:16]


def new_engine_name() -> str:
    """The DNS name a new VM's engine certificate is made for (unique per VM, never resolved)."""
    return f"{secrets.token_hex(10)}.{NAME_DOMAIN}"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def generate_ca(now: datetime.datetime, *, days: int = CA_DAYS) -> EngineCA:
    key = _key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Dockyard"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Dockyard engine CA {now:%Y-%m-%d}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return EngineCA(_cert_pem(cert), _key_pem(key))


def load_ca(ca: EngineCA) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA's certificate and key; ValueError when they are not a pair or not a CA."""
    cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the engine CA's key is not an EC key")
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ValueError("the engine CA's certificate and key are not a pair")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ValueError("the engine CA's certificate is not a CA") from None
    if not constraints.ca:
        raise ValueError("the engine CA's certificate is not a CA")
    return cert, key


def _issue(
    ca: EngineCA,
    now: datetime.datetime,
    common_name: str,
    usage: x509.ObjectIdentifier,
    dns_names: tuple[str, ...],
) -> Issued:
    ca_cert, ca_key = load_ca(ca)
    key = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        # As long as the CA: a VM lives until it is replaced, and a new CA replaces it.
        .not_valid_after(ca_cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
    return Issued(_cert_pem(builder.sign(ca_key, hashes.SHA256())), _key_pem(key))


def issue_server(ca: EngineCA, name: str, now: datetime.datetime) -> Issued:
    """A VM engine's server certificate, for its DNS name ``name`` (see the module's doc)."""
    return _issue(ca, now, name, ExtendedKeyUsageOID.SERVER_AUTH, (name,))


def issue_client(ca: EngineCA, now: datetime.datetime) -> Issued:
    """The operator's client certificate for engines of this CA."""
    return _issue(ca, now, CLIENT_CN, ExtendedKeyUsageOID.CLIENT_AUTH, ())
