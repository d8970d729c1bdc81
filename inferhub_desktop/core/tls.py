"""TLS on the share API: a self-signed certificate per node, and peers pinning it by its fingerprint.

No certificate authority vouches for a workstation on a LAN, so a node's certificate is its own, made on
first use and kept in its config directory; peers learn its SHA-256 fingerprint from its mDNS record and
status (signed, in a private pool) and accept no other certificate for it.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .wire.errors import ConfigError

_DIRECTORY = "tls"
_VALID = datetime.timedelta(days=3650)


def fingerprint(der: bytes) -> str:
    """Return a certificate's SHA-256 fingerprint, in lowercase hex."""
    return hashlib.sha256(der).hexdigest()


def node_certificate(config_dir: Path, name: str) -> tuple[Path, Path, str]:
    """Return this node's certificate and key files and the certificate's fingerprint, made if missing."""
    directory = config_dir / _DIRECTORY
    cert_path, key_path = directory / "share-api.crt", directory / "share-api.key"
    try:
        if not cert_path.exists() or not key_path.exists():
            _make(cert_path, key_path, name)
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot make or read the share API's TLS certificate in {directory}: {exc}"
        ) from exc
    return cert_path, key_path, fingerprint(certificate.public_bytes(serialization.Encoding.DER))


def _make(cert_path: Path, key_path: Path, name: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"InferHub {name}"[:64])])
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
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.touch(mode=0o600)
    key_path.chmod(0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return context


def pinning_context() -> ssl.SSLContext:
    """A client context taking any certificate: the caller checks its fingerprint after the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def peer_fingerprint(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """Return the fingerprint of the certificate a TLS connection's server showed, or "" without one."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return fingerprint(der) if der else ""


async def shown_fingerprint(host: str, port: int) -> str:
    """Connect to a TLS server and return the fingerprint of the certificate it shows."""
    _, writer = await asyncio.open_connection(host, port, ssl=pinning_context())
    try:
        return peer_fingerprint(writer.get_extra_info("ssl_object"))
    finally:
        writer.close()
