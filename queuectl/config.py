"""Spool settings in SPOOL/config.json: defaults, parsing, validation."""

from __future__ import annotations

import json
import math
import os
import re
import time
from typing import Any, Callable, NamedTuple

from . import lazylog
from .errors import ConfigError, InvalidJob
from .fsio import looking_again
from .job import MAX_TIMEOUT, loads, show

DAY = 86400
# Upper bounds keep every product a worker computes from a setting finite and
# every time it derives within what job files can hold: backoff_base ** n is
# capped by backoff_max, and now + backoff_max must stay a printable time.
MAX_BACKOFF_BASE = 100
MAX_BACKOFF = 365 * DAY
MAX_WAIT = DAY                     # kill_grace, dropin_grace, lease
MAX_JOB_SIZE = 64 * 1024 * 1024
MAX_KEEP = 100_000_000             # a count of jobs kept
MAX_LOG_SIZE = 1 << 30  # capping holds the kept head and tail in memory
MAX_CONCURRENCY = 1024             # slot lock files of one queue
MAX_CONFIG_SIZE = 1 << 20          # config.json is read whole: a bigger one is not valid JSON here
EMPTY_WAIT = 0.5                   # seconds an empty config.json is read again (a rewrite in place)

log = lazylog.get("queuectl.config")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}
_AGE_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_QUEUE_KEY_RE = re.compile(r"queue\.([^.]+)\.concurrency")


def parse_age(value: Any) -> float:
    """`90s`, `15m`, `12h`, `7d`, `2w` -> seconds; ConfigError otherwise."""
    m = _AGE_RE.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    seconds = float(m.group(1)) * _UNITS[m.group(2)] if m else -1
    if not m or seconds <= 0 or seconds > 100 * 365 * DAY:
        raise ConfigError(f"expected an age like 90s, 15m, 12h, 7d or 2w, got {show(value)}")
    return seconds


class Retention(NamedTuple):
    """What a finished state keeps: jobs younger than `age` seconds, at most `count` of them."""
    age: float | None
    count: int | None

    def __str__(self) -> str:
        parts = [] if self.age is None else [_fmt_age(self.age)]
        parts += [] if self.count is None else [str(self.count)]
        return ",".join(parts) or "none"


def _fmt_age(seconds: float) -> str:
    for unit in "dhm":
        if seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"


def parse_retention(value: Any) -> Retention:
    """`7d`, `10000`, `7d,10000` (both limits hold) or `none` (keep everything)."""
    if isinstance(value, Retention):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigError(f"expected an age (7d), a count (10000), both (7d,10000) or none, got {show(value)}")
    if value.strip().lower() in ("none", "null", ""):
        return Retention(None, None)
    age = count = None
    for part in value.split(","):
        part = part.strip()
        if part.isdigit():
            if count is not None or not 1 <= int(part) <= MAX_KEEP:
                raise ConfigError(f"a count must be one number from 1 to {MAX_KEEP}, got {show(value)}")
            count = int(part)
        elif age is None:
            age = parse_age(part)
        else:
            raise ConfigError(f"expected at most one age and one count, got {show(value)}")
    return Retention(age, count)


def _optional_command(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
        return None
    if not isinstance(value, str) or "\0" in value:
        raise ConfigError(f"expected a shell command, got {show(value)}")
    return value


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
    "clock_skew": Setting(5, _number(0, MAX_WAIT), "seconds another host's clock may be off (added to its lease)"),
    "poll_interval": Setting(0.5, _number(0.05, 60), "seconds between an idle worker's scans of a shared spool: "
                                                      "its pickup latency, against listings on the file server"),
    "shared": Setting(False, _flag, "the spool is shared by several hosts (required on a network filesystem)"),
    "index": Setting(None, _path_or_none, "this node's index.db (none: SPOOL/index.db, or a local cache "
                                          "directory on a network filesystem)"),
    "keep_done": Setting(Retention(7 * DAY, 100_000), parse_retention,
                         "completed jobs kept: an age (7d), a count (10000), both (7d,100000) or none"),
    "keep_dead": Setting(Retention(30 * DAY, 100_000), parse_retention,
                         "dead jobs kept: an age, a count, both, or none"),
    "max_log_size": Setting(1 << 20, _number(0, MAX_LOG_SIZE, integer=True),
                            "bytes of a job's log kept (head and tail); 0: no cap"),
    "on_finish": Setting(None, _optional_command, "command run after a job reaches a final state"),
    "on_failure": Setting(None, _optional_command, "command run after each failed attempt"),
    "hook_timeout": Setting(60, _number(0, MAX_WAIT, allow_equal=False), "seconds before a hook is killed"),
}


def queue_key(key: str) -> str | None:
    """The queue named by a `queue.NAME.concurrency` key, else None."""
    m = _QUEUE_KEY_RE.fullmatch(key.strip())
    if m is None:
        return None
    from .job import check_queue
    try:
        return check_queue(m.group(1))
    except InvalidJob as e:
        raise ConfigError(str(e)) from None


def normalize_key(key: str) -> str:
    """`max-retries` and `max_retries` name the same setting."""
    queue = queue_key(key)
    if queue is not None:
        return f"queue.{queue}.concurrency"
    name = key.strip().lower().replace("-", "_")
    if name not in SETTINGS:
        raise ConfigError(f"unknown config key {show(key)} (known: {', '.join(SETTINGS)}, queue.NAME.concurrency)")
    return name


def parse_value(key: str, value: Any) -> Any:
    name = normalize_key(key)
    parse = SETTINGS[name].parse if name in SETTINGS else _CONCURRENCY
    try:
        return parse(value)
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
    clock_skew: float = SETTINGS["clock_skew"].default
    poll_interval: float = SETTINGS["poll_interval"].default
    shared: bool = SETTINGS["shared"].default
    index: str | None = SETTINGS["index"].default
    keep_done: Retention = SETTINGS["keep_done"].default
    keep_dead: Retention = SETTINGS["keep_dead"].default
    max_log_size: int = SETTINGS["max_log_size"].default
    on_finish: str | None = SETTINGS["on_finish"].default
    on_failure: str | None = SETTINGS["on_failure"].default
    hook_timeout: float = SETTINGS["hook_timeout"].default
    concurrency: tuple = ()  # (queue, limit) pairs, from the queue.NAME.concurrency keys

    def as_dict(self) -> dict[str, Any]:
        """Every setting by name, in SETTINGS' order, then the per-queue limits."""
        out = {name: getattr(self, name) for name in SETTINGS}
        out.update((f"queue.{q}.concurrency", n) for q, n in self.concurrency)
        return out

    def as_json(self) -> dict[str, Any]:
        """as_dict() with retention limits in their written form (`7d,100000`)."""
        return {k: str(v) if isinstance(v, Retention) else v for k, v in self.as_dict().items()}

    def limit(self, queue: str) -> int | None:
        """The concurrency limit of a queue across the spool, or None."""
        return dict(self.concurrency).get(queue)

    def get(self, key: str) -> Any:
        name = normalize_key(key)
        return self.as_dict().get(name) if name not in SETTINGS else getattr(self, name)

    def replace(self, key: str, value: Any) -> "Config":
        """A copy with one setting changed (validated); a queue limit of none removes it."""
        values = self.as_dict()
        values[normalize_key(key)] = parse_value(key, value)
        return _build(values)


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
    return _build(values)


_CONCURRENCY = _number(1, MAX_CONCURRENCY, integer=True, optional=True)


def _build(values: dict[str, Any]) -> Config:
    limits = tuple(sorted((k.split(".")[1], v) for k, v in values.items()
                          if k not in SETTINGS and v is not None))
    return Config(**{k: v for k, v in values.items() if k in SETTINGS}, concurrency=limits)


def to_bytes(config: Config) -> bytes:
    return (json.dumps(config.as_json(), indent=2) + "\n").encode()


def _ident(path: str) -> tuple | None:
    try:
        st = looking_again(lambda: os.stat(path))
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _read(path: str) -> bytes | None:
    """The file's bytes, or None if there is none. ESTALE (NFS, GlusterFS: `config set` on another
    host replaced it under this client's cached name) is a look again, never an error."""
    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read(MAX_CONFIG_SIZE + 1)
    try:
        data = looking_again(read)
    except FileNotFoundError:
        return None
    if len(data) > MAX_CONFIG_SIZE:
        raise ConfigError(f"config.json is over {MAX_CONFIG_SIZE} bytes: not a settings file")
    return data


def load(path: str) -> Config:
    """The settings in the file at path; defaults if there is none.

    queuectl itself replaces config.json in one rename, but an editor or a
    script may truncate it and write it again: an empty file changed in the
    last seconds is read again for a moment before it is taken for "no
    settings" (a `touch`); an older empty file costs no wait.
    """
    data = _read(path)
    deadline = time.monotonic() + EMPTY_WAIT
    while data is not None and not data.strip() and _changed_lately(path) and time.monotonic() < deadline:
        time.sleep(EMPTY_WAIT / 10)
        data = _read(path)
    return defaults() if data is None else from_bytes(data)


def _changed_lately(path: str) -> bool:
    try:
        return os.stat(path).st_mtime > time.time() - 4 * EMPTY_WAIT
    except FileNotFoundError:
        return False


class ConfigFile:
    """SPOOL/config.json, read once and cached; refresh() rereads it if it changed.

    A long-lived worker calls refresh() once per scan, so `config set` takes
    effect without a restart; a file edited into garbage, or empty (caught
    between an editor's truncation and its write), keeps the last good
    settings (with a warning) instead of stopping the workers or dropping
    queue limits and hooks.
    """

    def __init__(self, path: str):
        self.path = path
        self.value: Config | None = None
        self.ident: tuple | None = None

    def get(self) -> Config:
        if self.value is None:
            self.ident = _ident(self.path)
            self.value = load(self.path)
        return self.value

    def set(self, value: Config) -> None:
        self.value, self.ident = value, _ident(self.path)

    def forget(self) -> None:
        self.value = None

    def refresh(self) -> bool:
        """True if the settings changed on disk and were reloaded."""
        ident = _ident(self.path)
        if self.value is None or ident == self.ident:
            return False
        self.ident = ident
        try:
            data = _read(self.path)
            if data is not None and not data.strip():
                # Caught between a truncation and the write that follows it: taken
                # for defaults, queue limits and hooks would vanish for a scan.
                raise ConfigError("the file is empty")
            self.value = defaults() if data is None else from_bytes(data)
        except ConfigError as e:
            log.warning("config.json changed but is not valid (%s); keeping the previous settings", e)
            return False
        return True
