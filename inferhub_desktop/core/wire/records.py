"""Reading JSON that another process sent (a peer's status) into typed values, once, at the boundary:
every field checked for its type, every string, number and list bounded, and a fault named by where it
is in the record."""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import MalformedRecord

# Larger than any count or size a real node reports (bytes, MiB, tokens): a record claiming more lies.
MAX_COUNT = 1 << 62


def read_json(body: bytes, what: str, limit: int) -> Any:
    """Parse JSON another process sent, of at most `limit` bytes; raise MalformedRecord naming `what` for
    one too large or not JSON."""
    if len(body) > limit:
        raise MalformedRecord(f"{what} of {len(body)} bytes is over {limit}")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedRecord(f"{what} is not JSON: {exc}") from None


class Fields:
    """A JSON object being read; each accessor returns a field as its type or raises MalformedRecord."""

    def __init__(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise MalformedRecord(f"{where} is {_kind(value)}, not an object")
        self._value = value
        self.where = where

    def __contains__(self, key: str) -> bool:
        return self._value.get(key) is not None

    def raw(self, key: str) -> Any:
        """Return a field as it came, None when absent: for values read by a codec of their own."""
        return self._value.get(key)

    def text(self, key: str, max_chars: int, *, default: str | None = None) -> str:
        """Return a string of at most `max_chars`; `default` when the field is absent or null, if given."""
        value = self._field(key, default)
        if not isinstance(value, str):
            raise self._wrong(key, value, "a string")
        if len(value) > max_chars:
            raise MalformedRecord(f"{self.where}.{key} is longer than {max_chars} characters")
        return value

    def optional_text(self, key: str, max_chars: int) -> str | None:
        return self.text(key, max_chars) if key in self else None

    def integer(self, key: str, low: int = 0, high: int = MAX_COUNT, *, default: int | None = None) -> int:
        """Return a whole number in [low, high]; JSON's 3.0 counts as 3, as other JSON readers take it."""
        value = self._field(key, default)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._wrong(key, value, "a whole number")
        if not low <= value <= high:
            raise MalformedRecord(f"{self.where}.{key} is {value}, not between {low} and {high}")
        return value

    def optional_integer(self, key: str, low: int = 0, high: int = MAX_COUNT) -> int | None:
        return self.integer(key, low, high) if key in self else None

    def number(
        self, key: str, low: float = 0.0, high: float = float(MAX_COUNT), *, default: float | None = None
    ) -> float:
        """Return a finite number in [low, high]."""
        value = self._field(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self._wrong(key, value, "a number")
        # Compared as it came: a huge integer has no float to become.
        if not (low <= value <= high and (isinstance(value, int) or math.isfinite(value))):
            bounds = f"between {low:g} and {high:g}" if high < MAX_COUNT else f"of at least {low:g}"
            raise MalformedRecord(f"{self.where}.{key} is {value}, not a finite number {bounds}")
        return float(value)

    def flag(self, key: str, *, default: bool | None = None) -> bool:
        value = self._field(key, default)
        if not isinstance(value, bool):
            raise self._wrong(key, value, "true or false")
        return value

    def record(self, key: str) -> Fields:
        """Return a nested object."""
        return Fields(self._field(key, None), f"{self.where}.{key}")

    def optional_record(self, key: str) -> Fields | None:
        return self.record(key) if key in self else None

    def records(self, key: str, max_items: int) -> list[Fields]:
        """Return a list of objects of at most `max_items`; an absent or null list is empty."""
        value = self._field(key, [])
        if not isinstance(value, list):
            raise self._wrong(key, value, "a list")
        if len(value) > max_items:
            raise MalformedRecord(f"{self.where}.{key} has {len(value)} entries, more than {max_items}")
        return [Fields(item, f"{self.where}.{key}[{n}]") for n, item in enumerate(value)]

    def keyed(self, key: str, max_items: int, max_key_chars: int) -> list[tuple[str, Any]]:
        """Return an object's entries, at most `max_items` with keys of at most `max_key_chars`; an absent
        or null object has none."""
        value = self._field(key, {})
        if not isinstance(value, dict):
            raise self._wrong(key, value, "an object")
        if len(value) > max_items:
            raise MalformedRecord(f"{self.where}.{key} has {len(value)} entries, more than {max_items}")
        for name in value:
            if len(name) > max_key_chars:
                raise MalformedRecord(f"{self.where}.{key} has a key longer than {max_key_chars} characters")
        return list(value.items())

    def _field(self, key: str, default: Any) -> Any:
        value = self._value.get(key)
        if value is None:
            if default is None:
                raise MalformedRecord(f"{self.where}.{key} is missing")
            return default
        return value

    def _wrong(self, key: str, value: Any, wanted: str) -> MalformedRecord:
        return MalformedRecord(f"{self.where}.{key} is {_kind(value)}, not {wanted}")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), f"a {type(value).__name__}")
