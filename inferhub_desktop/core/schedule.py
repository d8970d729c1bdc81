"""Quiet hours: a weekly schedule of times when this machine does not share, written as the owner would
say it ("mon-fri 09:00-17:30", "sat,sun 10:00-14:00", "daily 22:00-07:00")."""

from __future__ import annotations

import dataclasses
import datetime
import re

from .wire.errors import ConfigError

_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_MINUTES = 24 * 60
_WINDOW = re.compile(r"\s*(?P<days>[a-z,\- ]+?)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*")
_EXAMPLE = '"mon-fri 09:00-17:30", "sat,sun 10:00-14:00" or "daily 22:00-07:00"'


@dataclasses.dataclass(frozen=True)
class Window:
    """Quiet from `start` to `end` (minutes after midnight, 1440 for the day's end) on each of `days` (0
    is Monday); an end before the start runs into the next day."""

    text: str
    days: frozenset[int]
    start: int
    end: int

    def holds(self, moment: datetime.datetime) -> bool:
        """Whether `moment` (local time) falls in the window."""
        minute = moment.hour * 60 + moment.minute
        today, yesterday = moment.weekday(), (moment.weekday() - 1) % 7
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        # Overnight: the evening of a listed day, or the morning after one.
        return (today in self.days and minute >= self.start) or (yesterday in self.days and minute < self.end)


def parse_window(text: str) -> Window:
    """Read one quiet-hours window; raise ConfigError saying how to write it."""
    found = _WINDOW.fullmatch(text.lower())
    if found is None:
        raise ConfigError(f"quiet hours {text!r} are not DAYS HH:MM-HH:MM; write them as {_EXAMPLE}")
    start, end = _minutes(found["start"], text, end=False), _minutes(found["end"], text, end=True)
    if start == end:
        raise ConfigError(f"quiet hours {text!r} start and end at the same time")
    return Window(text.strip(), _days(found["days"], text), start, end)


def quiet_now(windows: tuple[str, ...], moment: datetime.datetime) -> str | None:
    """Return the window of quiet hours `moment` falls in, as the owner wrote it, or None."""
    for text in windows:
        if parse_window(text).holds(moment):
            return text.strip()
    return None


def _days(text: str, where: str) -> frozenset[int]:
    days: set[int] = set()
    for part in re.split(r"[,\s]+", text.replace("every day", "daily").strip()):
        if part == "daily":
            days.update(range(7))
            continue
        first, dash, last = part.partition("-")
        a, b = _day(first, where), _day(last, where) if dash else _day(first, where)
        # A range may wrap round the week's end: "fri-mon".
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)


def _day(word: str, where: str) -> int:
    for index, name in enumerate(_DAY_NAMES):
        if word in (name[:3], name):
            return index
    raise ConfigError(
        f"quiet hours {where!r} name no day as mon, tue … sun or daily; write them as {_EXAMPLE}"
    )


def _minutes(clock: str, where: str, *, end: bool) -> int:
    hours, minutes = (int(x) for x in clock.split(":"))
    if (hours, minutes) == (24, 0) and end:
        return _DAY_MINUTES  # a window may run to the day's end
    if not (0 <= hours < 24 and 0 <= minutes < 60):
        raise ConfigError(f"quiet hours {where!r} have an impossible time {clock}")
    return hours * 60 + minutes
