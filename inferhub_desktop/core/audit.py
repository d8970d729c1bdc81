"""The audit log: every request a peer had this machine's GPU answer, one JSON line each, so its owner can
see who used it.

The log is `audit.jsonl` in the config directory, readable by its owner only. Once it passes
MAX_FILE_BYTES (5 MiB, some 20,000 requests) it becomes `audit.1.jsonl`, replacing the one before, so
the two files never hold much more than 10 MiB.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
from pathlib import Path
from typing import Any

from .events import RequestDone
from .names import short_name
from .wire.responses import valid_utf8

_log = logging.getLogger(__name__)

AUDIT_FILE = "audit.jsonl"
ROTATED_FILE = "audit.1.jsonl"
MAX_FILE_BYTES = 5 * 1024 * 1024
# The entry of a model copy a peer started, as its endpoint.
COPY_ENDPOINT = "model copy"
# The most entries one read returns.
MAX_ENTRIES = 1000
# An error is kept to its first characters: a backend's message may quote a whole prompt.
_ERROR_CHARS = 300
# The log is read from its end, this many bytes at a time.
_READ_BLOCK_BYTES = 64 * 1024


class AuditLog:
    """Append a line to the audit log for each request served to a peer; never fail the node for it."""

    def __init__(self, config_dir: Path, *, max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self.config_dir = config_dir
        self._max_file_bytes = max_file_bytes
        # Whether the last write failed, so a directory that stays unwritable is warned of once.
        self._failing = False

    def record(self, done: RequestDone, peer_name: str | None) -> None:
        """Log a request served to a peer; `done.client` is the peer's node id as it said it."""
        self._write(audit_entry(done, peer_name))

    def lent(self, model: str, size: int, peer_id: str, peer_name: str | None, address: str) -> None:
        """Log a copy of one of this machine's models a peer started (its manifest read): in a private
        pool, by a member its certificate proved (`peer_id`); in the open pool, by an address."""
        at = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self._write(
            {
                "at": at,
                "peer": peer_name,
                "peer_id": peer_id or None,
                "address": address or None,
                "verified": bool(peer_id),
                "endpoint": COPY_ENDPOINT,
                "model": model,
                "bytes": size,
                "outcome": "ok",
                "status": 200,
            }
        )

    def _write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        try:
            self._append(valid_utf8(line).encode())
        except OSError as exc:
            if not self._failing:
                _log.warning(
                    "cannot write the audit log in %s (%s); peers' requests are served but not logged",
                    self.config_dir,
                    exc.strerror or exc,
                )
            self._failing = True
        else:
            self._failing = False

    def entries(self, limit: int) -> list[dict[str, Any]]:
        """Return the last `limit` entries, newest last; none if the log cannot be read."""
        try:
            return read_audit(self.config_dir, limit)
        except OSError as exc:
            _log.warning("cannot read the audit log in %s: %s", self.config_dir, exc.strerror or exc)
            return []

    def _append(self, data: bytes) -> None:
        path = self.config_dir / AUDIT_FILE
        self.config_dir.mkdir(parents=True, exist_ok=True)
        # One write of a short line in append mode: a reader never sees two lines interleaved. No fsync:
        # a line lost in a power cut is not worth a disk flush on every request.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size >= self._max_file_bytes:
            os.replace(path, self.config_dir / ROTATED_FILE)


def audit_entry(done: RequestDone, peer_name: str | None) -> dict[str, Any]:
    """Return the audit log's entry for a request served to a peer, as JSON values."""
    at = datetime.datetime.fromtimestamp(done.at, datetime.UTC)
    return {
        # When it ended; `duration_s` says how long it had run.
        "at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "peer": peer_name or None,
        "peer_id": done.client or None,
        # Where the request came from, and whether the pool proved who sent it: in the LAN's open pool the
        # peer is only who the request said it was from.
        "address": done.address or None,
        "verified": done.verified,
        "endpoint": done.endpoint,
        "model": done.model,
        "tokens": done.tokens,
        "duration_s": round(done.duration_s, 3),
        "outcome": "cancelled" if done.cancelled else "ok" if done.ok else "error",
        "status": done.status,
        "error": done.error[:_ERROR_CHARS] if done.error else None,
        # The id the requesting node gave it: the same in that node's log, and in the client's answer.
        "request_id": done.request_id or None,
    }


def read_audit(config_dir: Path, limit: int = MAX_ENTRIES) -> list[dict[str, Any]]:
    """Return the last `limit` entries of the audit log in `config_dir`, newest last, from the current file
    and the rotated one; lines that are not entries are skipped. Raise OSError if a file cannot be read."""
    limit = max(0, min(limit, MAX_ENTRIES))
    newest_first: list[dict[str, Any]] = []
    for name in (AUDIT_FILE, ROTATED_FILE):
        if len(newest_first) < limit:
            newest_first += _last_entries(config_dir / name, limit - len(newest_first))
    return newest_first[::-1]


@dataclasses.dataclass(frozen=True)
class PeerUsage:
    """What one peer had this machine serve in a day."""

    peer: str
    requests: int
    tokens: int
    seconds: float

    def words(self) -> str:
        """Say it as people read it: "ws-bob: 14 requests, 3210 tokens, 52 s"."""
        said = (
            f"{self.requests} request{'s' * (self.requests != 1)}, {self.tokens} tokens, {self.seconds:.0f} s"
        )
        return f"{self.peer}: {said}"


def usage_on(entries: list[dict[str, Any]], day: datetime.date) -> tuple[list[PeerUsage], bool]:
    """Sum the audit log's entries of `day` (local time) per peer, most used (in seconds) first; and say
    whether they are the whole day's: False when the entries read begin within the day."""
    totals: dict[str, list[float]] = {}
    whole = True
    for n, entry in enumerate(entries):
        try:
            when = datetime.datetime.fromisoformat(entry["at"]).astimezone().date()
        except (KeyError, TypeError, ValueError):
            continue
        if n == 0 and when == day and len(entries) >= MAX_ENTRIES:
            whole = False
        if when != day or entry.get("endpoint") == COPY_ENDPOINT:
            continue  # a copy of a model is not a use of the GPU
        tally = totals.setdefault(peer_label(entry), [0, 0, 0.0])
        tokens, duration = entry.get("tokens"), entry.get("duration_s")
        tally[0] += 1
        tally[1] += tokens if isinstance(tokens, int) else 0
        tally[2] += duration if isinstance(duration, int | float) else 0.0
    usage = [PeerUsage(peer, int(t[0]), int(t[1]), float(t[2])) for peer, t in totals.items()]
    return sorted(usage, key=lambda u: (-u.seconds, u.peer)), whole


def peer_label(entry: dict[str, Any]) -> str:
    """Name the peer of an entry: its name, else its id or address, marked when the pool did not prove it."""
    peer_id = entry.get("peer_id") or ""
    address = entry.get("address") or ""
    peer = str(entry.get("peer") or (f"id {peer_id[:8]}" if peer_id else address or "unknown"))
    return peer if entry.get("verified") else f"{peer} (unverified)"


def audit_row(entry: dict[str, Any]) -> tuple[str, str, str, str, str, str]:
    """Return an entry as people read it: when (local time), peer, model, tokens, duration, outcome."""
    when = datetime.datetime.fromisoformat(entry["at"]).astimezone()
    peer = peer_label(entry)
    model = entry.get("model")
    tokens = entry.get("tokens")
    duration = entry.get("duration_s")
    outcome = str(entry.get("outcome", "?"))
    if outcome == "cancelled":
        outcome = "cancelled by the peer"
    elif outcome == "error":
        status, error = entry.get("status"), entry.get("error") or ""
        outcome = f"error: HTTP {status}: {error}" if status else f"error: {error}"
    return (
        when.strftime("%Y-%m-%d %H:%M:%S"),
        str(peer),
        short_name(str(model)) if model else "—",
        str(tokens) if isinstance(tokens, int) else "—",
        f"{duration:.2f} s" if isinstance(duration, int | float) else "—",
        outcome,
    )


def _last_entries(path: Path, count: int) -> list[dict[str, Any]]:
    """Return up to `count` entries from the end of one file, newest first; none if it does not exist."""
    found: list[dict[str, Any]] = []
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return found
    with file:
        end = file.seek(0, os.SEEK_END)
        # The start of the earliest block read, which may be part of a line.
        head = b""
        while end > 0 and len(found) < count:
            start = max(0, end - _READ_BLOCK_BYTES)
            file.seek(start)
            lines = (file.read(end - start) + head).split(b"\n")
            end = start
            head = lines.pop(0) if start > 0 else b""
            for line in reversed(lines):
                if len(found) < count and (entry := _parse(line)) is not None:
                    found.append(entry)
    return found


def _parse(line: bytes) -> dict[str, Any] | None:
    """Read one line of the log; None for a blank, torn or foreign one."""
    if not line.strip():
        return None
    try:
        entry = json.loads(line)
        if isinstance(entry, dict) and isinstance(entry.get("at"), str):
            datetime.datetime.fromisoformat(entry["at"])
            return entry
    except ValueError:  # bad JSON, bad UTF-8 and bad times alike
        pass
    return None
