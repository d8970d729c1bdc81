"""This machine's identity: a key pair made once and kept, readable by its owner only, in the config
directory; the node id derived from its public key, so no other machine can claim it; and a long-lived
self-signed certificate that presents the key in TLS (the share API's, and this node's as a client).

No certificate authority vouches for a workstation on a LAN: peers know a node's certificate from its
mDNS record and status (pinned on first use in the open pool) or from the pool's signed roster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes as PublicKey
from cryptography.x509.oid import NameOID

from .files import write_private
from .wire.errors import ConfigError

KEY_FILE = "identity.key"
CERT_FILE = "identity.crt"
# The certificate only presents the key, which is the identity: it need not expire while the key lasts.
_VALID = datetime.timedelta(days=100 * 365)


@dataclasses.dataclass(frozen=True)
class Identity:
    """This machine's key pair and certificate, as files a TLS context loads, and what peers know it by."""

    node_id: str
    key_path: Path
    cert_path: Path
    cert_der: bytes

    @property
    def fingerprint(self) -> str:
        """The certificate's SHA-256 fingerprint, which peers pin."""
        return fingerprint(self.cert_der)

    @property
    def cert_pem(self) -> bytes:
        return x509.load_der_x509_certificate(self.cert_der).public_bytes(serialization.Encoding.PEM)


def fingerprint(der: bytes) -> str:
    """Return a certificate's SHA-256 fingerprint, in lowercase hex."""
    return hashlib.sha256(der).hexdigest()


def node_id_of(public_key: PublicKey) -> str:
    """Return the node id a public key gives: the first 16 bytes of its SHA-256, written as a UUID."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return str(uuid.UUID(bytes=hashlib.sha256(spki).digest()[:16]))


def load_identity(config_dir: Path) -> Identity:
    """Return this machine's identity, made and saved on first use; raise ConfigError if it can be neither
    read nor made (a read-only or full config directory on first start, a damaged key file)."""
    key_path, cert_path = config_dir / KEY_FILE, config_dir / CERT_FILE
    try:
        if key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError("it holds no elliptic-curve key")
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            write_private(
                key_path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
        certificate = _certificate(cert_path, key)
    except OSError as exc:
        raise ConfigError(
            f"cannot make or read this machine's identity in {config_dir}: {exc.strerror or exc}; make the "
            "folder writable (or free space on its disk) and start again"
        ) from exc
    except ValueError as exc:
        raise ConfigError(
            f"{key_path} is not an identity key ({exc}); move it away to make a new identity, which the "
            "pool's members will know as another machine"
        ) from exc
    return Identity(
        node_id_of(key.public_key()),
        key_path,
        cert_path,
        certificate.public_bytes(serialization.Encoding.DER),
    )


def _certificate(cert_path: Path, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """Return the certificate of `key`, made anew where the file is missing or holds another key."""
    public = key.public_key().public_numbers()
    with contextlib.suppress(FileNotFoundError, ValueError):
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if certificate.public_key().public_numbers() == public:  # type: ignore[union-attr]
            return certificate
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "InferHub node")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + _VALID)
        .sign(key, hashes.SHA256())
    )
    write_private(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
    return certificate
