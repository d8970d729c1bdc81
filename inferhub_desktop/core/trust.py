"""Private pools: the secret a pool's members share, its join code, and the signatures it keys.

A pool secret is 80 random bits. People pass it on as a join code, `7K3M-9QXD-2HWA-PZ4T-9`: the secret in
Crockford's base32 (no I, L, O or U; case and the look-alikes 0/O, 1/I/L are forgiven) in groups of four,
then a check symbol that catches any one mistyped symbol and any swap of two neighbours.

Everything else is derived from the secret with HKDF-SHA256, so no derived value reveals it: the public
pool id that nodes advertise (and ignore nodes with a different one by), and the HMAC key that signs
every share-API request (method, path, body digest, time, nonce and the sender's node id) and the
answers to status polls. A request is refused when its signature is missing or wrong, its time is more
than WINDOW_S from this node's clock, or its nonce was seen before.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict

from .wire.errors import ConfigError, Unauthorized

SECRET_BYTES = 10
# How far a request's time may be from this node's clock: LAN machines keep time by NTP.
WINDOW_S = 60.0
# Nonces are remembered for twice the window, so a request is never accepted twice; past this many,
# the oldest are forgotten first (a flood of fresh nonces cannot grow memory without end).
_MAX_NONCES = 100_000

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Crockford's check symbols: the alphabet and five more, for a value modulo 37.
_CHECK_SYMBOLS = _ALPHABET + "*~$=U"
_LOOK_ALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_SYMBOLS = SECRET_BYTES * 8 // 5


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def join_code(secret: bytes) -> str:
    """Write a secret as a join code."""
    value = int.from_bytes(secret, "big")
    symbols = "".join(_ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(_SYMBOLS)))
    groups = [symbols[i : i + 4] for i in range(0, _SYMBOLS, 4)]
    return "-".join([*groups, _CHECK_SYMBOLS[value % 37]])


def read_join_code(code: str) -> bytes:
    """Return the secret a join code carries; raise ConfigError saying what is wrong with it."""
    text = "".join(code.split()).replace("-", "").upper().translate(_LOOK_ALIKES)
    if len(text) != _SYMBOLS + 1:
        raise ConfigError(
            f"a join code has {_SYMBOLS + 1} letters and digits (like 7K3M-9QXD-2HWA-PZ4T-9); "
            f"{code.strip()!r} has {len(text)}"
        )
    body, check = text[:-1], text[-1]
    if bad := sorted({c for c in body if c not in _ALPHABET}):
        raise ConfigError(f"a join code has no {', '.join(bad)}; check {code.strip()!r}")
    value = 0
    for symbol in body:
        value = value << 5 | _ALPHABET.index(symbol)
    if check not in _CHECK_SYMBOLS or _CHECK_SYMBOLS[value % 37] != check:
        raise ConfigError(
            f"the join code {code.strip()!r} has a typo: its last symbol does not match the rest"
        )
    return value.to_bytes(SECRET_BYTES, "big")


def _hkdf(secret: bytes, purpose: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) with an empty salt: one key per purpose, none revealing the secret."""
    prk = hmac.new(b"\0" * 32, secret, hashlib.sha256).digest()
    return hmac.new(prk, purpose + b"\x01", hashlib.sha256).digest()[:length]


class PoolKey:
    """A private pool's keys: its public id, and signing and checking of share-API traffic."""

    def __init__(self, secret: bytes) -> None:
        self.code = join_code(secret)
        self.pool_id = _hkdf(secret, b"inferhub pool id", 8).hex()
        self._key = _hkdf(secret, b"inferhub share api signing")
        self._seen: OrderedDict[str, float] = OrderedDict()

    def sign_request(
        self, node_id: str, method: str, target: str, body: bytes, now: float | None = None
    ) -> str:
        """Return the auth header for a request from `node_id` (`target` is its path and query)."""
        sent = int(time.time() if now is None else now)
        nonce = secrets.token_hex(12)
        signature = self._mac("request", node_id, method, target, sent, nonce, body)
        return f"id={node_id};t={sent};n={nonce};s={signature}"

    def check_request(
        self, header: str | None, method: str, target: str, body: bytes, now: float | None = None
    ) -> tuple[str, str]:
        """Check a request's auth header; return the sender's node id and the nonce, or raise Unauthorized."""
        fields = _fields(header)
        try:
            node_id, sent, nonce, signature = fields["id"], int(fields["t"]), fields["n"], fields["s"]
        except (KeyError, ValueError):
            raise Unauthorized("no signature, or one missing fields") from None
        now = time.time() if now is None else now
        if abs(now - sent) > WINDOW_S:
            raise Unauthorized(f"signed {now - sent:+.0f} s from this node's clock")
        if not hmac.compare_digest(
            signature, self._mac("request", node_id, method, target, sent, nonce, body)
        ):
            raise Unauthorized("wrong signature")
        self._forget(now)
        if nonce in self._seen:
            raise Unauthorized("replayed")
        self._seen[nonce] = now
        if len(self._seen) > _MAX_NONCES:
            self._seen.popitem(last=False)
        return node_id, nonce

    def sign_status(self, nonce: str, body: bytes) -> str:
        """Return the auth header for the answer to a status poll that came with `nonce`."""
        return f"s={self._mac('status', nonce, body)}"

    def check_status(self, header: str | None, nonce: str, body: bytes) -> None:
        """Check the answer to this node's status poll; raise Unauthorized unless a member signed it."""
        signature = _fields(header).get("s", "")
        if not hmac.compare_digest(signature, self._mac("status", nonce, body)):
            raise Unauthorized("status not signed by a member of the pool")

    def _mac(self, kind: str, *parts: object) -> str:
        *head, body = parts
        assert isinstance(body, bytes)
        message = "\n".join([kind, *map(str, head), hashlib.sha256(body).hexdigest()])
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def _forget(self, now: float) -> None:
        while self._seen:
            nonce, at = next(iter(self._seen.items()))
            if now - at <= 2 * WINDOW_S:
                break
            del self._seen[nonce]


def pool_key(code: str | None) -> PoolKey | None:
    """Return the keys of the pool a join code names, None without one (the LAN's open pool); raise
    ConfigError saying what is wrong with a mistyped code."""
    return PoolKey(read_join_code(code)) if code else None


def nonce_of(header: str) -> str:
    """Return the nonce of a request's auth header (its status answer is signed with it)."""
    return _fields(header).get("n", "")


def _fields(header: str | None) -> dict[str, str]:
    return dict(part.split("=", 1) for part in (header or "").split(";") if "=" in part)
