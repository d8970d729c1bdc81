"""A private pool: machines that know each other by their keys, one at a time, as SSH's authorized keys do.

- `inferhub pool create` makes the pool's authority: a key kept, readable by its owner only, on the machine
  that made it (`pool-authority.key`), whose self-signed certificate is the pool's certificate authority.
  The pool's public id is derived from it. That machine admits and removes members.
- A member's certificate certifies its identity key (identity.py) for the pool; members speak mutual TLS
  with it, each accepting only certificates the authority signed and only for machines on the roster.
- The roster lists the members (node id, name, certificate) and the machines removed, with a version; the
  authority signs it. Members say its version in their status, and fetch a newer one from whoever has it,
  so a removal reaches every member within a second or two, and a machine removed while it was away
  finds itself refused when it comes back.
- An invite (`inferhub pool invite`) is a one-time secret of 80 bits, written as a code a person can type
  (codes.py), good for a day. The joining machine proves it knows the code, bound to
  both TLS certificates, and the authority proves it back; 80 bits cannot be searched for offline, and a
  code is tried at most once per request under the share API's rate limit.

Files, in the config directory, all readable by their owner only: `pool.json` (the pool's certificate, this
member's and the roster), `pool-member.crt` (this member's certificate, for TLS), and on the authority
`pool-authority.key` and `invites.json`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import functools
import hashlib
import hmac
import json
import ssl
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .codes import join_code, new_secret, read_join_code
from .files import write_private
from .identity import Identity, fingerprint, node_id_of
from .peers import url_host
from .tls import shown_fingerprint
from .wire.endpoints import JOIN_PATH
from .wire.errors import ConfigError, MalformedRecord, Unauthorized
from .wire.records import Fields, read_json

POOL_FILE = "pool.json"
MEMBER_CERT_FILE = "pool-member.crt"
AUTHORITY_KEY_FILE = "pool-authority.key"
INVITES_FILE = "invites.json"
# An invite is good for this long.
INVITE_S = 24 * 3600.0
# A pool's roster lists at most this many machines, members and removed together.
MAX_MACHINES = 1024
MAX_ROSTER_BYTES = 1 << 20
_VALID = datetime.timedelta(days=100 * 365)
# How long a join may take, handshakes included.
_JOIN_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class Member:
    """A machine of the pool: its node id, the name it joined with, and the certificate the authority made."""

    node_id: str
    name: str
    cert_der: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_der)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.node_id,
            "name": self.name,
            "certificate": base64.b64encode(self.cert_der).decode(),
        }


@dataclasses.dataclass(frozen=True)
class Roster:
    """Who is in the pool, and who was removed from it, as the authority last signed it."""

    pool_id: str
    authority: str  # the node id of the machine that admits and removes members
    version: int
    members: tuple[Member, ...]
    removed: tuple[str, ...]
    signature: bytes = b""

    def member(self, node_id: str) -> Member | None:
        if node_id in self.removed:
            return None
        return next((m for m in self.members if m.node_id == node_id), None)

    def resolve(self, who: str) -> str:
        """Return the node id of the member `who` names, by id or by name; raise ConfigError if it names
        none, or several."""
        found = [m for m in self.members if who in (m.node_id, m.name) and m.node_id not in self.removed]
        if len(found) != 1:
            names = ", ".join(
                f"{m.name} ({m.node_id})" for m in self.members if m.node_id not in self.removed
            )
            which = "no member" if not found else "several members; give its node id"
            raise ConfigError(f"{who!r} names {which}; the members are {names}")
        return found[0].node_id

    def member_by_fingerprint(self, shown: str) -> Member | None:
        """Return the member whose certificate has this fingerprint, if it is one and not removed."""
        found = next((m for m in self.members if m.fingerprint == shown), None)
        return found if found is not None and found.node_id not in self.removed else None

    def signed_bytes(self) -> bytes:
        """Return what the signature covers: the roster's fields, in a canonical JSON."""
        return json.dumps(self._fields(), sort_keys=True, separators=(",", ":")).encode()

    def signed(self, authority: ec.EllipticCurvePrivateKey) -> Roster:
        signature = authority.sign(self.signed_bytes(), ec.ECDSA(hashes.SHA256()))
        return dataclasses.replace(self, signature=signature)

    def check(self, ca: x509.Certificate) -> None:
        """Raise Unauthorized unless the pool's authority signed this roster, for this pool."""
        key = ca.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or pool_id_of(ca) != self.pool_id:
            raise Unauthorized("the roster is of another pool")
        try:
            key.verify(self.signature, self.signed_bytes(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise Unauthorized("the roster is not signed by the pool's authority") from None

    def to_json(self) -> dict[str, Any]:
        return {**self._fields(), "signature": base64.b64encode(self.signature).decode()}

    def _fields(self) -> dict[str, Any]:
        return {
            "pool": self.pool_id,
            "authority": self.authority,
            "version": self.version,
            "members": [m.to_json() for m in self.members],
            "removed": list(self.removed),
        }

    @classmethod
    def from_json(cls, value: Any) -> Roster:
        """Read a roster as it was written or sent; raise MalformedRecord saying what is wrong."""
        fields = Fields(value, "roster")
        members = tuple(
            Member(
                node_id=m.text("id", 36),
                name=m.text("name", 63),
                cert_der=_b64(m.text("certificate", 4096), f"{m.where}.certificate"),
            )
            for m in fields.records("members", MAX_MACHINES)
        )
        removed = fields.raw("removed") or []
        if (
            not isinstance(removed, list)
            or len(removed) > MAX_MACHINES
            or not all(isinstance(r, str) and len(r) <= 36 for r in removed)
        ):
            raise MalformedRecord("roster.removed is not a list of node ids")
        return cls(
            pool_id=fields.text("pool", 32),
            authority=fields.text("authority", 36),
            version=fields.integer("version", 1),
            members=members,
            removed=tuple(removed),
            signature=_b64(fields.text("signature", 256), "roster.signature"),
        )

    @classmethod
    def from_bytes(cls, body: bytes) -> Roster:
        return cls.from_json(read_json(body, "roster", MAX_ROSTER_BYTES))


def pool_id_of(ca: x509.Certificate) -> str:
    """Return a pool's public id: the first 16 hex digits of the SHA-256 of its authority's key."""
    spki = ca.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Admission:
    """What the authority gives a machine it admits: the pool's certificate, the machine's, the roster."""

    ca_der: bytes
    cert_der: bytes
    roster: Roster

    def to_json(self) -> dict[str, Any]:
        return {
            "ca": base64.b64encode(self.ca_der).decode(),
            "certificate": base64.b64encode(self.cert_der).decode(),
            "roster": self.roster.to_json(),
        }

    @classmethod
    def from_json(cls, value: Any) -> Admission:
        fields = Fields(value, "pool")
        return cls(
            ca_der=_b64(fields.text("ca", 4096), "pool.ca"),
            cert_der=_b64(fields.text("certificate", 4096), "pool.certificate"),
            roster=Roster.from_json(fields.raw("roster")),
        )


class PrivatePool:
    """This machine's membership of a private pool, kept in its config directory."""

    def __init__(self, config_dir: Path, identity: Identity, admission: Admission) -> None:
        self.config_dir = config_dir
        self.identity = identity
        self.ca = x509.load_der_x509_certificate(admission.ca_der)
        self.cert_der = admission.cert_der
        self.roster = admission.roster
        self.pool_id = pool_id_of(self.ca)
        path = config_dir / AUTHORITY_KEY_FILE
        self.authority: ec.EllipticCurvePrivateKey | None = _load_key(path) if path.exists() else None

    # -- reading and keeping ---------------------------------------------------------------------------

    @classmethod
    def load(cls, config_dir: Path, identity: Identity) -> PrivatePool | None:
        """Return the pool this machine is a member of, or None when it is in the LAN's open pool; raise
        ConfigError for pool files that cannot be read or do not add up."""
        path = config_dir / POOL_FILE
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            admission = Admission.from_json(json.loads(body))
            pool = cls(config_dir, identity, admission)
            pool.roster.check(pool.ca)
        except (ValueError, MalformedRecord, Unauthorized) as exc:
            raise ConfigError(
                f"{path} is not a pool this machine can use ({exc}); `inferhub pool leave` removes it"
            ) from exc
        if node_id_of(x509.load_der_x509_certificate(pool.cert_der).public_key()) != identity.node_id:
            raise ConfigError(f"{path} certifies another machine's key; `inferhub pool leave` removes it")
        return pool

    def save(self) -> None:
        """Write the pool's files; raise OSError if they cannot be written."""
        admission = Admission(self.ca.public_bytes(serialization.Encoding.DER), self.cert_der, self.roster)
        write_private(self.config_dir / MEMBER_CERT_FILE, _pem(self.cert_der) + _pem(self.ca_der))
        write_private(self.config_dir / POOL_FILE, json.dumps(admission.to_json(), indent=1).encode())

    @property
    def ca_der(self) -> bytes:
        return self.ca.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint(self) -> str:
        """This member's certificate's fingerprint, which its peers pin."""
        return fingerprint(self.cert_der)

    def adopt(self, roster: Roster) -> bool:
        """Take a newer roster the authority signed; return whether it was taken. Raise Unauthorized for
        one the authority did not sign."""
        if roster.version <= self.roster.version:
            return False
        roster.check(self.ca)
        self.roster = roster
        return True

    # -- TLS ---------------------------------------------------------------------------------------------

    @functools.cached_property
    def server_context(self) -> ssl.SSLContext:
        """The share API's context: this member's certificate; a client certificate is asked for and must
        be one the authority signed (a machine with none may only ask the authority to admit it)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(self.config_dir / MEMBER_CERT_FILE, self.identity.key_path)
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata=_pem(self.ca_der).decode())
        return context

    @functools.cached_property
    def client_context(self) -> ssl.SSLContext:
        """The context members call each other with: this member's certificate shown, the server's
        required to be one the authority signed. Which member it must be, the caller checks after the
        handshake against the roster (its fingerprint)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        # Members are known by their keys, not by host names: the roster says which certificate is whose.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=_pem(self.ca_der).decode())
        context.load_cert_chain(self.config_dir / MEMBER_CERT_FILE, self.identity.key_path)
        return context

    def member_shown(self, ssl_object: ssl.SSLObject | None) -> Member | None:
        """Return the member whose certificate the other end of a TLS connection proved it holds, if it is
        on the roster and not removed."""
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        # A certificate only gets this far verified against the pool's authority; the roster says whether
        # its machine is still a member.
        return self.roster.member_by_fingerprint(fingerprint(der)) if der else None

    # -- the authority's work ---------------------------------------------------------------------------

    def invite(self, now: float | None = None) -> str:
        """Make a one-time invite good for a day; return its code. Raise ConfigError on a machine that is
        not the pool's authority."""
        self._require_authority("invite machines")
        now = time.time() if now is None else now
        secret = new_secret()
        invites = [i for i in _read_invites(self.config_dir) if i[1] > now]
        invites.append((secret, now + INVITE_S))
        _write_invites(self.config_dir, invites)
        return join_code(secret)

    def admit(
        self, request: Any, server_fingerprint: str, now: float | None = None
    ) -> tuple[Admission, bytes]:
        """Admit the machine a join request comes from, if it proves an invite; return what it is given
        and the proof for it that this machine holds the invite too. Raise Unauthorized otherwise."""
        self._require_authority("admit machines")
        assert self.authority is not None
        now = time.time() if now is None else now
        fields = Fields(request, "join")
        name = fields.text("name", 63)
        cert = x509.load_pem_x509_certificate(fields.text("certificate", 8192).encode())
        proof = bytes.fromhex(fields.text("proof", 64))
        if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
            raise MalformedRecord("join.certificate does not carry an elliptic-curve key")
        joiner = fingerprint(cert.public_bytes(serialization.Encoding.DER))
        invites = [i for i in _read_invites(self.config_dir) if i[1] > now]
        used = next(
            (
                i
                for i in invites
                if hmac.compare_digest(_proof(i[0], b"join", joiner, server_fingerprint), proof)
            ),
            None,
        )
        if used is None:
            raise Unauthorized("no invite of this pool's matches")
        node_id = node_id_of(cert.public_key())
        if node_id in self.roster.removed:
            raise Unauthorized(f"{node_id} was removed from the pool")
        if len(self.roster.members) + len(self.roster.removed) >= MAX_MACHINES:
            raise Unauthorized(f"the pool has room for {MAX_MACHINES} machines, members and removed together")
        _write_invites(self.config_dir, [i for i in invites if i is not used])
        certified = _certify(self.authority, self.ca, cert.public_key(), node_id)
        members = [m for m in self.roster.members if m.node_id != node_id]
        self._publish(
            dataclasses.replace(
                self.roster,
                version=self.roster.version + 1,
                members=(*members, Member(node_id, name, certified)),
            )
        )
        return Admission(self.ca_der, certified, self.roster), _proof(
            used[0], b"admit", joiner, server_fingerprint
        )

    def remove(self, node_id: str) -> Roster:
        """Remove a machine from the pool; every member refuses it once it has the new roster."""
        self._require_authority("remove machines")
        if node_id == self.identity.node_id:
            raise ConfigError(
                "the pool's authority cannot remove itself; `inferhub pool leave` ends its pool"
            )
        if self.roster.member(node_id) is None:
            raise ConfigError(f"{node_id} is not a member of this pool")
        self._publish(
            dataclasses.replace(
                self.roster, version=self.roster.version + 1, removed=(*self.roster.removed, node_id)
            )
        )
        return self.roster

    def _publish(self, roster: Roster) -> None:
        assert self.authority is not None
        self.roster = roster.signed(self.authority)
        self.save()

    def _require_authority(self, what: str) -> None:
        if self.authority is None:
            raise ConfigError(f"only the machine that made the pool can {what}; run this there")


def pool_info(
    pool: PrivatePool | None, *, nearby: list[dict[str, str]], online: set[str] | None
) -> dict[str, Any]:
    """Say what a node says of its pool, as JSON values: its public id, whether this machine is its
    authority, the roster's members and the machines removed; for the open pool, a null id. With either,
    the other private pools `nearby` on mDNS. `online` is the members a running node sees, None where no
    node runs to know. Never an invite code."""
    if pool is None:
        return {"pool": None, "nearby": nearby}
    roster = pool.roster
    return {
        "pool": pool.pool_id,
        "authority": pool.authority is not None,
        "version": roster.version,
        "members": [
            {
                "id": m.node_id,
                "name": m.name,
                "online": None if online is None else m.node_id in online,
                "authority": m.node_id == roster.authority,
            }
            for m in roster.members
            if m.node_id not in roster.removed
        ],
        "removed": list(roster.removed),
        "nearby": [n for n in nearby if n["pool"] != pool.pool_id],
    }


def create_pool(config_dir: Path, identity: Identity, name: str) -> PrivatePool:
    """Make a new private pool with this machine as its authority and first member, and save it."""
    authority = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "InferHub pool")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(authority.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(authority, hashes.SHA256())
    )
    own = x509.load_der_x509_certificate(identity.cert_der).public_key()
    certified = _certify(authority, ca, own, identity.node_id)
    member = Member(identity.node_id, name, certified)
    roster = Roster(pool_id_of(ca), identity.node_id, 1, (member,), ()).signed(authority)
    write_private(
        config_dir / AUTHORITY_KEY_FILE,
        authority.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    pool = PrivatePool(
        config_dir, identity, Admission(ca.public_bytes(serialization.Encoding.DER), certified, roster)
    )
    pool.save()
    return pool


def join_request(identity: Identity, name: str, code: str, server_fingerprint: str) -> dict[str, Any]:
    """Return the request that asks a pool's authority to admit this machine with an invite's code."""
    secret = read_join_code(code)
    return {
        "name": name,
        "certificate": identity.cert_pem.decode(),
        "proof": _proof(secret, b"join", identity.fingerprint, server_fingerprint).hex(),
    }


def accept_admission(
    config_dir: Path, identity: Identity, code: str, server_fingerprint: str, answer: Any, proof: str
) -> PrivatePool:
    """Check what an authority answered a join request (that it holds the invite, signed the roster and
    certified this machine's key) and keep it; raise Unauthorized if anything does not add up."""
    secret = read_join_code(code)
    expected = _proof(secret, b"admit", identity.fingerprint, server_fingerprint)
    try:
        shown = bytes.fromhex(proof)
    except ValueError:
        shown = b""
    if not hmac.compare_digest(expected, shown):
        raise Unauthorized("the machine that answered does not hold this invite")
    admission = Admission.from_json(answer)
    pool = PrivatePool(config_dir, identity, admission)
    pool.roster.check(pool.ca)
    certified = x509.load_der_x509_certificate(admission.cert_der)
    try:
        certified.verify_directly_issued_by(pool.ca)
    except (ValueError, TypeError, InvalidSignature):
        raise Unauthorized("the certificate given is not the pool's") from None
    if node_id_of(certified.public_key()) != identity.node_id or pool.roster.member(identity.node_id) is None:
        raise Unauthorized("the pool did not admit this machine's key")
    pool.save()
    return pool


async def join_pool(
    config_dir: Path, identity: Identity, name: str, code: str, places: Sequence[tuple[str, int]]
) -> PrivatePool:
    """Ask the machines at `places` in turn (share APIs: the pool's authority, or every private pool's
    machine seen on mDNS) to admit this one with an invite's code, and keep what the first that does
    gives. Raise ConfigError for a mistyped code, Unauthorized when none admits this one (saying why for
    each)."""
    read_join_code(code)  # a typo is told before anything is sent
    reasons = []
    for host, port in places:
        try:
            return await _ask_to_join(config_dir, identity, name, code, host, port)
        except (Unauthorized, OSError, TimeoutError, aiohttp.ClientError) as exc:
            reasons.append(f"{host}:{port}: {exc or type(exc).__name__}")
    raise Unauthorized("no machine admitted this one:\n  " + "\n  ".join(reasons or ["none was asked"]))


async def _ask_to_join(
    config_dir: Path, identity: Identity, name: str, code: str, host: str, port: int
) -> PrivatePool:
    async with asyncio.timeout(_JOIN_TIMEOUT_S):
        shown = await shown_fingerprint(host, port)
        # The request is sent on a connection to the same certificate that the proof is bound to.
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
            session.post(
                f"https://{url_host(host)}:{port}{JOIN_PATH}",
                json=join_request(identity, name, code, shown),
                ssl=aiohttp.Fingerprint(bytes.fromhex(shown)),
            ) as reply,
        ):
            body = await reply.content.read(2 * MAX_ROSTER_BYTES + 1)
    if reply.status != 200:
        raise Unauthorized(
            f"the machine at {host}:{port} did not admit this one (HTTP {reply.status}): it is not the "
            "pool's authority, or the invite was used, has expired (a day) or was mistyped"
        )
    try:
        answer = json.loads(body)
        return accept_admission(config_dir, identity, code, shown, answer["pool"], str(answer["proof"]))
    except (ValueError, KeyError, TypeError, MalformedRecord) as exc:
        raise Unauthorized(
            f"the machine at {host}:{port} answered something that is not an admission: {exc}"
        ) from None


def leave_pool(config_dir: Path) -> None:
    """Forget the pool: this machine is in the LAN's open pool again. Raise OSError if a file stays."""
    for name in (POOL_FILE, MEMBER_CERT_FILE, AUTHORITY_KEY_FILE, INVITES_FILE):
        (config_dir / name).unlink(missing_ok=True)


def _proof(secret: bytes, purpose: bytes, joiner: str, server: str) -> bytes:
    """Bind an invite's secret to a purpose and to both TLS certificates of the exchange: a proof made for
    one connection is worth nothing on another."""
    return hmac.new(
        secret, b"inferhub " + purpose + b"|" + joiner.encode() + b"|" + server.encode(), "sha256"
    ).digest()


def _certify(authority: ec.EllipticCurvePrivateKey, ca: x509.Certificate, key: Any, node_id: str) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(authority, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def _read_invites(config_dir: Path) -> list[tuple[bytes, float]]:
    try:
        value = json.loads((config_dir / INVITES_FILE).read_bytes())
        return [(bytes.fromhex(i["secret"]), float(i["expires"])) for i in value["invites"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read {config_dir / INVITES_FILE}: {exc}") from exc


def _write_invites(config_dir: Path, invites: Iterable[tuple[bytes, float]]) -> None:
    value = {"invites": [{"secret": s.hex(), "expires": e} for s, e in invites]}
    write_private(config_dir / INVITES_FILE, json.dumps(value).encode())


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} holds no pool authority's key")
    return key


def _pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise MalformedRecord(f"{where} is not base64") from None
