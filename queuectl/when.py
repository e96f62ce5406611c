"""When a job may run: `--delay 90s` and `--at TIME` turned into epoch seconds. No I/O.

ISO 8601 goes through the standard library first and dateutil's `isoparse`
second (Python 3.10's `fromisoformat` knows only some ISO forms); anything
else through dateutil's parser, with `today`, `tomorrow` and `yesterday` in
front of a time handled here because dateutil does not know those words. A
time without an offset is the local time of the machine running queuectl.

A zone at the end of a phrase is read here, not by dateutil, which drops a
name it does not know with a Python warning (`tomorrow 10:00 PST` ran 8 h
early) and reads `UTC+3` the POSIX way, 3 hours *behind* UTC (6 h late).
Accepted: Z, UTC, GMT; an offset (`+03:00`, `-0530`, `+3`, `UTC+3`), plus
meaning ahead of UTC as in ISO 8601; an IANA name (`Europe/Berlin`); and
the abbreviations that name one offset only (PST, CET, JST...). An
abbreviation with several meanings (CST, IST, BST...) or an unknown one is
refused: never guessed.
"""

from __future__ import annotations

import re
import time
import warnings
from datetime import datetime, timedelta, timezone, tzinfo

from .errors import InvalidJob

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DELAY_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_DAY_WORDS = {"today": 0, "tomorrow": 1, "yesterday": -1}
# Abbreviations with one meaning only, as hours east of UTC.
_ABBREVIATIONS = {
    "UTC": 0, "UT": 0, "GMT": 0, "Z": 0, "WET": 0, "WEST": 1, "CET": 1, "CEST": 2, "MET": 1, "MEST": 2,
    "EET": 2, "EEST": 3, "MSK": 3, "PKT": 5, "HKT": 8, "JST": 9, "KST": 9, "AWST": 8, "ACST": 9.5,
    "ACDT": 10.5, "AEST": 10, "AEDT": 11, "NZST": 12, "NZDT": 13, "HST": -10, "AKST": -9, "AKDT": -8,
    "PST": -8, "PDT": -7, "MST": -7, "MDT": -6, "EST": -5, "EDT": -4, "NST": -3.5, "NDT": -2.5,
}
# Abbreviations that name more than one zone: refused, with what they might mean.
_AMBIGUOUS = {
    "CST": "US Central -06:00, China +08:00 or Cuba -05:00", "CDT": "US Central -05:00 or Cuba -04:00",
    "IST": "India +05:30, Ireland +01:00 or Israel +02:00", "BST": "British Summer +01:00 or Bangladesh +06:00",
    "AST": "Atlantic -04:00 or Arabia +03:00", "ADT": "Atlantic -03:00 or Arabia +04:00",
    "SST": "Samoa -11:00 or Singapore +08:00", "ECT": "Ecuador -05:00 or Eastern Caribbean -04:00",
}
# An offset at the end: "+03:00", "-0530", "+3", "UTC+3", "GMT-05:00" (ISO's sign: + is ahead of UTC).
_OFFSET = re.compile(r"(?:^|\s)(?:(?:UTC|GMT|UT)\s*)?(?P<sign>[+-])(?P<h>\d{1,2})(?::?(?P<m>\d{2}))?$", re.I)
_PREFIXED = re.compile(r"(?:UTC|GMT|UT)\s*[+-]", re.I)
_WORD = re.compile(r"(?:^|\s)(?P<zone>[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+)+|[A-Za-z]{1,5})$")


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


def _zone(text: str) -> tuple[str, tzinfo | None]:
    """The phrase without its trailing zone, and that zone (None: local time)."""
    m = _OFFSET.search(text)
    # A bare sign needs a space before it ("10:00 -5"): "2026-12-01" ends in "-01" too.
    if m and (m.group(0)[:1].isspace() or m.start() == 0 or _PREFIXED.match(m.group(0).strip())):
        hours, minutes = int(m.group("h")), int(m.group("m") or 0)
        if hours > 14 or minutes > 59:
            raise InvalidJob(f"bad time {text!r}: the offset {m.group(0).strip()} is not one a clock uses "
                             "(-12:00 to +14:00)")
        delta = timedelta(hours=hours, minutes=minutes)
        return text[:m.start()].rstrip(), timezone(-delta if m.group("sign") == "-" else delta)
    m = _WORD.search(text)
    if not m:
        return text, None
    word = m.group("zone")
    rest = text[:m.start()].rstrip()
    if word.upper() in _ABBREVIATIONS:
        return rest, timezone(timedelta(hours=_ABBREVIATIONS[word.upper()]))
    if word.upper() in _AMBIGUOUS:
        raise InvalidJob(f"time zone {word} in {text!r} is ambiguous ({_AMBIGUOUS[word.upper()]}): "
                         "give an offset such as -06:00 or a name such as America/Chicago")
    if re.fullmatch(r"Etc/GMT[+-]\d+", word, re.I):
        # IANA's POSIX-signed names: Etc/GMT+3 is 3 hours *behind* UTC, the reverse of what it reads as.
        raise InvalidJob(f"time zone {word} in {text!r} counts hours the POSIX way (Etc/GMT+3 is UTC-3): "
                         "give an offset such as +03:00 instead")
    if "/" in word:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
        try:
            return rest, ZoneInfo(word)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidJob(f"unknown time zone {word!r} in {text!r}: give an offset such as +02:00 "
                             "or a name such as Europe/Berlin") from None
    return text, None  # am, pm, a month or a day: dateutil's to read (an unknown zone is refused there)


def _phrase(text: str, now: float) -> datetime:
    """`tomorrow 10:00`, `today 18:30`, `10:00`, `Dec 24 9am`, each with an optional zone:
    dateutil plus day words."""
    from dateutil.parser import ParserError, UnknownTimezoneWarning, parse
    rest, zone = _zone(text)
    # Day words and the default date are that zone's: "tomorrow 10:00 PST" is tomorrow in California.
    now_there = datetime.fromtimestamp(now, zone).replace(tzinfo=None) if zone else datetime.fromtimestamp(now)
    words = rest.split(None, 1)
    base = now_there.replace(hour=0, minute=0, second=0, microsecond=0)
    if words and words[0].lower() in _DAY_WORDS:
        days = _DAY_WORDS[words[0].lower()]
        base += timedelta(days=days)
        rest = words[1] if len(words) > 1 else ""
        if not rest:
            # A bare day word means this time of day on that day, as at(1) reads it.
            return (now_there + timedelta(days=days)).replace(tzinfo=zone)
    try:
        with warnings.catch_warnings():
            # dateutil warns and drops a zone name it does not know: never run at a guessed time.
            warnings.simplefilter("error", UnknownTimezoneWarning)
            dt = parse(rest, default=base)
    except UnknownTimezoneWarning as w:
        name = re.search(r"tzname (\S+)", str(w))
        raise InvalidJob(f"unknown time zone {name.group(1) if name else ''} in {text!r}: give an offset "
                         "such as +02:00 or a name such as Europe/Berlin".replace("zone  in", "zone in")) from None
    except (ParserError, ValueError, OverflowError):
        raise InvalidJob(f"bad time {text!r}: expected ISO 8601 (2026-12-01T10:00, with or without an "
                         "offset) or a phrase such as 'tomorrow 10:00' (with an optional zone: UTC, "
                         "+03:00, Europe/Berlin)") from None
    if zone is not None:
        if dt.tzinfo is not None:
            raise InvalidJob(f"bad time {text!r}: two time zones")
        dt = dt.replace(tzinfo=zone)
    return dt


def parse_at(text: str, now: float | None = None) -> float:
    """Epoch seconds of TIME; a time without an offset is local. InvalidJob if it is past."""
    ts = time.time() if now is None else now
    text = text.strip()
    dt = _iso(text) or _phrase(text, ts)
    try:
        if dt.tzinfo is None:
            dt = dt.astimezone()  # naive: the local time here
        when = dt.timestamp()
    except (OverflowError, ValueError, OSError):
        raise InvalidJob(f"bad time {text!r}: out of range") from None
    if when < ts - 1:  # a second of slack: `--at "$(date -Iseconds)"` means now
        raise InvalidJob(f"time {text!r} ({dt.isoformat(timespec='seconds')}) is in the past")
    return when
