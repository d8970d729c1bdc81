"""Invite codes: the one-time secrets a private pool's authority gives a machine to join with (pool.py).

A secret is 80 random bits, too many to search for offline. People pass it on as a code,
`7K3M-9QXD-2HWA-PZ4T-9`: the secret in Crockford's base32 (no I, L, O or U; case and the look-alikes
0/O, 1/I/L are forgiven) in groups of four, then a check symbol that catches any one mistyped symbol and
any swap of two neighbours.
"""

from __future__ import annotations

import secrets

from .wire.errors import ConfigError

SECRET_BYTES = 10

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Crockford's check symbols: the alphabet and five more, for a value modulo 37.
_CHECK_SYMBOLS = _ALPHABET + "*~$=U"
_LOOK_ALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_SYMBOLS = SECRET_BYTES * 8 // 5


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def join_code(secret: bytes) -> str:
    """Write a secret as an invite code."""
    value = int.from_bytes(secret, "big")
    symbols = "".join(_ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(_SYMBOLS)))
    groups = [symbols[i : i + 4] for i in range(0, _SYMBOLS, 4)]
    return "-".join([*groups, _CHECK_SYMBOLS[value % 37]])


def read_join_code(code: str) -> bytes:
    """Return the secret an invite code carries; raise ConfigError saying what is wrong with it."""
    text = "".join(code.split()).replace("-", "").upper().translate(_LOOK_ALIKES)
    if len(text) != _SYMBOLS + 1:
        raise ConfigError(
            f"an invite code has {_SYMBOLS + 1} letters and digits (like 7K3M-9QXD-2HWA-PZ4T-9); "
            f"{code.strip()!r} has {len(text)}"
        )
    body, check = text[:-1], text[-1]
    if bad := sorted({c for c in body if c not in _ALPHABET}):
        raise ConfigError(f"an invite code has no {', '.join(bad)}; check {code.strip()!r}")
    value = 0
    for symbol in body:
        value = value << 5 | _ALPHABET.index(symbol)
    if check not in _CHECK_SYMBOLS or _CHECK_SYMBOLS[value % 37] != check:
        raise ConfigError(
            f"the invite code {code.strip()!r} has a typo: its last symbol does not match the rest"
        )
    return value.to_bytes(SECRET_BYTES, "big")
