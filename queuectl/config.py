"""Spool settings in SPOOL/config.json: defaults, parsing, validation."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError


def _number(minimum: float, *, allow_equal: bool = True, maximum: float = math.inf,
            integer: bool = False, optional: bool = False) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
            return None
        if isinstance(value, str):
            try:
                value = int(value) if integer else float(value)
            except ValueError:
                raise ConfigError(f"expected {'an integer' if integer else 'a number'}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}")
        if integer and not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"expected an integer, got {value!r}")
        if not math.isfinite(value) or value < minimum or (not allow_equal and value == minimum) or value > maximum:
            bound = f">= {minimum}" if allow_equal else f"> {minimum}"
            if maximum != math.inf:
                bound += f" and <= {maximum}"
            raise ConfigError(f"must be {bound}, got {value!r}")
        return value
    return parse


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    raise ConfigError(f"expected true or false, got {value!r}")


def _path_or_none(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
        return None
    if not isinstance(value, str) or "\0" in value:
        raise ConfigError(f"expected a path, got {value!r}")
    return value


@dataclass(frozen=True)
class Setting:
    default: Any
    parse: Callable[[Any], Any]
    help: str


SETTINGS: dict[str, Setting] = {
    "max_retries": Setting(3, _number(0, maximum=1000, integer=True),
                           "retries after the first attempt, for jobs that do not set their own"),
    "backoff_base": Setting(2, _number(1), "retry n waits backoff_base ** n seconds"),
    "backoff_max": Setting(3600, _number(0, allow_equal=False), "cap on one backoff delay, seconds"),
    "backoff_jitter": Setting(0.1, _number(0, maximum=1),
                              "random extra delay, as a fraction of the backoff (0 disables)"),
    "job_timeout": Setting(None, _number(0, allow_equal=False, optional=True),
                           "seconds before a job without its own timeout is killed (none: never)"),
    "kill_grace": Setting(5, _number(0), "seconds between SIGTERM and SIGKILL on timeout or stop"),
    "dropin_grace": Setting(2, _number(0), "seconds a dropped-in file that does not parse may still be written"),
    "max_job_size": Setting(1048576, _number(1, integer=True), "largest job file accepted, bytes"),
    "lease": Setting(30, _number(1), "seconds without a heartbeat before a worker counts as dead"),
    "clock_skew": Setting(5, _number(0), "seconds another host's clock may be off (added to its lease)"),
    "shared": Setting(False, _flag, "the spool is shared by several hosts (required on a network filesystem)"),
    "index": Setting(None, _path_or_none, "this node's index.db (none: SPOOL/index.db, or a local cache "
                                          "directory on a network filesystem)"),
}


def normalize_key(key: str) -> str:
    """`max-retries` and `max_retries` name the same setting."""
    name = key.strip().lower().replace("-", "_")
    if name not in SETTINGS:
        raise ConfigError(f"unknown config key {key!r} (known: {', '.join(SETTINGS)})")
    return name


def parse_value(key: str, value: Any) -> Any:
    name = normalize_key(key)
    try:
        return SETTINGS[name].parse(value)
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None


@dataclass(frozen=True)
class Config:
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
    clock_skew: float = SETTINGS["clock_skew"].default
    shared: bool = SETTINGS["shared"].default
    index: str | None = SETTINGS["index"].default

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
    try:
        stored = json.loads(data or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config.json is not valid JSON: {e}") from None
    if not isinstance(stored, dict):
        raise ConfigError("config.json must hold a JSON object")
    values = {}
    for key, value in stored.items():
        values[normalize_key(key)] = parse_value(key, value)
    return Config(**values)


def to_bytes(config: Config) -> bytes:
    return (json.dumps(config.as_dict(), indent=2) + "\n").encode()
