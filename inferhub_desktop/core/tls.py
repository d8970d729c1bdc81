"""TLS on the share API: the node's identity certificate (identity.py), and peers pinning it by its
fingerprint: they learn it from the node's mDNS record and status (signed, in a private pool) and accept
no other certificate for it."""

from __future__ import annotations

import asyncio
import ssl

from .identity import Identity, fingerprint


def server_context(identity: Identity) -> ssl.SSLContext:
    """A server context that presents this node's identity certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(identity.cert_path, identity.key_path)
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
