"""Spool settings in SPOOL/config.json: defaults, parsing, validation."""

from __future__ import annotations

import json
import math
from typing import Any, Callable, NamedTuple

from .errors import ConfigError, InvalidJob
from .job import MAX_TIMEOUT, loads, show

DAY = 86400
# Upper bounds keep every product a worker computes from a setting finite and
# every time it derives within what job files can hold: backoff_base ** n is
# capped by backoff_max, and now + backoff_max must stay a printable time.
MAX_BACKOFF_BASE = 100
MAX_BACKOFF = 365 * DAY
MAX_WAIT = DAY                     # kill_grace, dropin_grace, lease
MAX_JOB_SIZE = 64 * 1024 * 1024


def _number(minimum: float, maximum: float, *, allow_equal: bool = True,
            integer: bool = False, optional: bool = False) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
            return None
        if isinstance(value, str):
            try:
                value = int(value) if integer else float(value)
            except ValueError:  # includes int()'s limit on digits
                raise ConfigError(f"expected {'an integer' if integer else 'a number'}, got {show(value)}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {show(value)}")
        if integer and not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"expected an integer, got {show(value)}")
        # Compared, never converted: a huge int from JSON would overflow float().
        if (isinstance(value, float) and math.isnan(value)) or value < minimum \
                or (not allow_equal and value == minimum) or value > maximum:
            bound = f">= {minimum}" if allow_equal else f"> {minimum}"
            raise ConfigError(f"must be {bound} and <= {maximum}, got {show(value)}")
        return value
    return parse


class Setting(NamedTuple):
    default: Any
    parse: Callable[[Any], Any]
    help: str


SETTINGS: dict[str, Setting] = {
    "max_retries": Setting(3, _number(0, 1000, integer=True),
                           "retries after the first attempt, for jobs that do not set their own"),
    "backoff_base": Setting(2, _number(1, MAX_BACKOFF_BASE), "retry n waits backoff_base ** n seconds"),
    "backoff_max": Setting(3600, _number(0, MAX_BACKOFF, allow_equal=False), "cap on one backoff delay, seconds"),
    "backoff_jitter": Setting(0.1, _number(0, 1),
                              "random extra delay, as a fraction of the backoff (0 disables)"),
    "job_timeout": Setting(None, _number(0, MAX_TIMEOUT, allow_equal=False, optional=True),
                           "seconds before a job without its own timeout is killed (none: never)"),
    "kill_grace": Setting(5, _number(0, MAX_WAIT), "seconds between SIGTERM and SIGKILL on timeout or stop"),
    "dropin_grace": Setting(2, _number(0, MAX_WAIT),
                            "seconds a dropped-in file that does not parse may still be written"),
    "max_job_size": Setting(1048576, _number(1, MAX_JOB_SIZE, integer=True), "largest job file accepted, bytes"),
    "lease": Setting(30, _number(1, MAX_WAIT), "seconds without a heartbeat before a worker counts as dead"),
}


def normalize_key(key: str) -> str:
    """`max-retries` and `max_retries` name the same setting."""
    name = key.strip().lower().replace("-", "_")
    if name not in SETTINGS:
        raise ConfigError(f"unknown config key {show(key)} (known: {', '.join(SETTINGS)})")
    return name


def parse_value(key: str, value: Any) -> Any:
    name = normalize_key(key)
    try:
        return SETTINGS[name].parse(value)
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None


# NamedTuples, not dataclasses: every command builds these at start-up, and a
# dataclass costs ~0.5 ms of code generation each.
class Config(NamedTuple):
    """All settings, typed, defaults filled in (the defaults are SETTINGS')."""
    max_retries: int = SETTINGS["max_retries"].default
    backoff_base: float = SETTINGS["backoff_base"].default
    backoff_max: float = SETTINGS["backoff_max"].default
    backoff_jitter: float = SETTINGS["backoff_jitter"].default
    job_timeout: float | None = SETTINGS["job_timeout"].default
    kill_grace: float = SETTINGS["kill_grace"].default
    dropin_grace: float = SETTINGS["dropin_grace"].default
    max_job_size: int = SETTINGS["max_job_size"].default
    lease: float = SETTINGS["lease"].default

    def as_dict(self) -> dict[str, Any]:
        """Every setting by name, in SETTINGS' order."""
        return {name: getattr(self, name) for name in SETTINGS}

    def get(self, key: str) -> Any:
        return getattr(self, normalize_key(key))

    def replace(self, key: str, value: Any) -> "Config":
        """A copy with one setting changed (validated)."""
        values = self.as_dict()
        values[normalize_key(key)] = parse_value(key, value)
        return Config(**values)


def defaults() -> Config:
    return Config()


def from_bytes(data: bytes) -> Config:
    """Settings from config.json's bytes; unknown keys are an error, missing ones default."""
    # As strict as a job file (duplicate keys, NaN, depth, huge numbers): a
    # config.json edited into garbage is one clear error, not a traceback.
    try:
        stored = loads(data or b"{}")
    except InvalidJob as e:
        raise ConfigError(f"config.json is not valid JSON: {str(e).removeprefix('invalid JSON: ')}") from None
    if not isinstance(stored, dict):
        raise ConfigError(f"config.json must hold a JSON object, not a {type(stored).__name__}")
    values = {}
    for key, value in stored.items():
        values[normalize_key(key)] = parse_value(key, value)
    return Config(**values)


def to_bytes(config: Config) -> bytes:
    return (json.dumps(config.as_dict(), indent=2) + "\n").encode()
