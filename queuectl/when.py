"""When a job may run: `--delay 90s` and `--at TIME` turned into epoch seconds. No I/O.

ISO 8601 goes through the standard library first and dateutil's `isoparse`
second (Python 3.10's `fromisoformat` knows only some ISO forms); anything
else through dateutil's parser, with `today`, `tomorrow` and `yesterday` in
front of a time handled here because dateutil does not know those words. A
time without an offset is the local time of the machine running queuectl.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta

from .errors import InvalidJob

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DELAY_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_DAY_WORDS = {"today": 0, "tomorrow": 1, "yesterday": -1}


def parse_delay(text: str) -> float:
    """Seconds from `90`, `90s`, `10m`, `2h`, `1d`, `1w` or a sum such as `1h30m`; >= 0."""
    s = text.strip().lower().replace(" ", "")
    if s.startswith("-"):
        raise InvalidJob(f"delay {text!r} is negative: a job cannot run in the past")
    parts = _DELAY_PART.findall(s)
    if not s or "".join(n + u for n, u in parts) != s:
        raise InvalidJob(f"bad delay {text!r}: expected a number with s, m, h, d or w, e.g. 90s, 10m, 2h, 1d")
    return sum(float(n) * _UNITS[u or "s"] for n, u in parts)


def _iso(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        pass
    from dateutil.parser import isoparse
    try:
        return isoparse(text)
    except (ValueError, OverflowError):
        return None


def _phrase(text: str, now: datetime) -> datetime:
    """`tomorrow 10:00`, `today 18:30`, `10:00`, `Dec 24 9am`: dateutil plus day words."""
    from dateutil.parser import ParserError, parse
    words = text.split(None, 1)
    base = now.replace(hour=0, minute=0, second=0, microsecond=0)
    rest = text
    if words and words[0].lower() in _DAY_WORDS:
        base += timedelta(days=_DAY_WORDS[words[0].lower()])
        rest = words[1] if len(words) > 1 else ""
        if not rest:
            # A bare day word means this time of day on that day, as at(1) reads it.
            return now + timedelta(days=_DAY_WORDS[words[0].lower()])
    try:
        return parse(rest, default=base)
    except (ParserError, ValueError, OverflowError):
        raise InvalidJob(f"bad time {text!r}: expected ISO 8601 (2026-12-01T10:00, with or without an "
                         "offset) or a phrase such as 'tomorrow 10:00'") from None


def parse_at(text: str, now: float | None = None) -> float:
    """Epoch seconds of TIME; a time without an offset is local. InvalidJob if it is past."""
    ts = time.time() if now is None else now
    local_now = datetime.fromtimestamp(ts).astimezone()
    text = text.strip()
    dt = _iso(text) or _phrase(text, local_now.replace(tzinfo=None))
    if dt.tzinfo is None:
        dt = dt.astimezone()  # naive: the local time here
    when = dt.timestamp()
    if when < ts - 1:  # a second of slack: `--at "$(date -Iseconds)"` means now
        raise InvalidJob(f"time {text!r} ({dt.isoformat(timespec='seconds')}) is in the past")
    return when
