"""The job model: states, validation and the canonical JSON form. No I/O here."""

from __future__ import annotations

import json
import math
import os
import re
import time
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from .errors import InvalidJob

MAX_ID_LENGTH = 128
MAX_RETRIES_LIMIT = 1000
# Bounds on every number a job file holds. Each value is read back from disk
# by something that assumes it is sane (SQLite's int64 columns, datetime's
# years 1..9999, time_t), so a file outside them is refused where it is read.
MIN_TS = 0.0                      # 1970-01-01T00:00:00Z
MAX_TS = 253402300799.0           # 9999-12-31T23:59:59Z
MAX_ATTEMPTS = 1_000_000
INT32_BOUND = 2**31               # priority and exit_code lie within +- this
MAX_TIMEOUT = 10 * 365 * 86400    # 10 years, in seconds
MAX_HISTORY = 10_000
_SHOW_LIMIT = 60  # characters of a bad value quoted in an error message
# Ids become file names: keep them to a portable, shell-safe alphabet. A
# leading "." would make the file invisible to scans (dotfiles are a writer's
# scratch space), so the first character must be alphanumeric.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]*")
# Names that are devices on Windows/SMB shares: a spool on such a share could
# not hold them, so refuse them everywhere for a portable on-disk format.
_RESERVED_IDS = {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(1, 10)}

# Fields queuectl owns. A spec may carry others; they are kept as given.
BOOKKEEPING = ("state", "attempts", "created_at", "updated_at", "next_run_at",
               "last_error", "exit_code", "history")


class JobState(str, Enum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD = "dead"
    # A held job waits in held/ until released (Postfix's hold queue); a
    # cancelled one is final and never runs again.
    HELD = "held"
    CANCELLED = "cancelled"

    @property
    def dirname(self) -> str:
        """The spool directory that holds jobs in this state."""
        return "done" if self is JobState.COMPLETED else self.value

    @classmethod
    def parse(cls, name: str) -> "JobState":
        """A state from its name; `done` (the directory name) means completed."""
        name = name.strip().lower()
        if name == "done":
            return cls.COMPLETED
        try:
            return cls(name)
        except ValueError:
            raise InvalidJob(f"unknown state {name!r}") from None


STATE_ORDER = list(JobState)
# How far along a job is; `check --repair` keeps the most advanced copy.
PROGRESS = {JobState.PENDING: 0, JobState.HELD: 0, JobState.FAILED: 1, JobState.PROCESSING: 2,
            JobState.DEAD: 3, JobState.CANCELLED: 3, JobState.COMPLETED: 4}
# States a job never leaves by itself: `wait` ends when its jobs reach one.
FINAL = frozenset({JobState.COMPLETED, JobState.DEAD, JobState.CANCELLED})
MAX_LABELS = 32
MAX_DEPS = 1000
_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,63}")


def show(value: Any) -> str:
    """repr() of a bad value for a one-line message, cut short when long."""
    if _is_int(value) and abs(value) >= 10**_SHOW_LIMIT:
        # repr() of a huge int is slow, and fails past 4300 digits.
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    text = repr(value)
    return text if len(text) <= _SHOW_LIMIT else text[:_SHOW_LIMIT - 3] + "..."


def check_ts(ts: Any, name: str = "time") -> float:
    """ts if it is epoch seconds queuectl can store, compare and print, else InvalidJob."""
    if not (_is_int(ts) or isinstance(ts, float)) or not MIN_TS <= ts <= MAX_TS:  # NaN fails too
        raise InvalidJob(f"{name} must be epoch seconds from {MIN_TS:.0f} to {MAX_TS:.0f} "
                         f"(years 1970 to 9999 UTC), not {show(ts)}")
    return float(ts)


def now_iso(ts: float | None = None) -> str:
    """ISO 8601 UTC with microseconds, e.g. 2026-11-27T18:30:00.123456Z."""
    dt = datetime.fromtimestamp(time.time() if ts is None else check_ts(ts), tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any, name: str | None = None) -> float:
    """Epoch seconds from an ISO 8601 string (naive times are UTC), within MIN_TS..MAX_TS.

    `name` is the field the value came from, for the message.
    """
    where = f"{name}: " if name else ""
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError, TypeError):
        raise InvalidJob(f"{where}bad time {show(value)}: expected ISO 8601") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    ts = dt.timestamp()
    # In range as written is not enough: 9999-12-31T23:59:59-01:00 is year 10000 in UTC.
    if not MIN_TS <= ts <= MAX_TS:
        raise InvalidJob(f"{where}time {show(value)} is out of range (years 1970 to 9999 UTC)")
    return ts


def new_id(ts: float | None = None) -> str:
    """An id that sorts by creation time: 20261127T183000123456-3fa9c2."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, tz=timezone.utc)
    return dt.strftime("%Y%m%dT%H%M%S%f") + "-" + os.urandom(3).hex()


def check_id(job_id: Any) -> str:
    """Return job_id if it is a valid id, else raise InvalidJob saying why."""
    if not isinstance(job_id, str):
        raise InvalidJob(f"id must be a string, not {_type_name(job_id)}")
    if job_id == "":
        raise InvalidJob("id is empty")
    if len(job_id) > MAX_ID_LENGTH:
        raise InvalidJob(f"id is longer than {MAX_ID_LENGTH} characters")
    if job_id == ".":
        raise InvalidJob("id '.' names a directory, not a job")
    if ".." in job_id:
        raise InvalidJob(f"id {job_id!r} contains '..'")
    if "/" in job_id or "\\" in job_id:
        raise InvalidJob(f"id {job_id!r} contains a path separator")
    if any(c.isspace() for c in job_id):
        raise InvalidJob(f"id {job_id!r} contains whitespace")
    if any(ord(c) < 32 or ord(c) == 127 for c in job_id):
        raise InvalidJob(f"id {job_id!r} contains a control character")
    if not _ID_RE.fullmatch(job_id):
        raise InvalidJob(f"id {job_id!r} must start with a letter or digit and use only "
                         "letters, digits and . _ : @ + = -")
    if job_id.split(".")[0].lower() in _RESERVED_IDS:
        raise InvalidJob(f"id {job_id!r} is a reserved device name")
    return job_id


DEFAULT_QUEUE = "default"


def check_queue(value: Any) -> str:
    """A queue name: an id's rules (it names a directory and a file); not `ALL`, every queue's pause file."""
    if value is None:
        return DEFAULT_QUEUE
    try:
        check_id(value)
    except InvalidJob as e:
        raise InvalidJob("queue" + str(e).removeprefix("id")) from None
    if value.lower() == "all":
        raise InvalidJob("queue 'ALL' is reserved (it means every queue)")
    return value


def check_hook(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise InvalidJob(f"on_finish must be a non-empty string, not {show(value)}")
    return None if value is None else _no_nul("on_finish", value)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _no_nul(name: str, value: str) -> str:
    if "\x00" in value:
        raise InvalidJob(f"{name} contains a NUL byte")
    return value


def check_command(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidJob(f"command must be a string, not {_type_name(value)}")
    if not value.strip():
        raise InvalidJob("command is empty")
    return _no_nul("command", value)


def check_max_retries(value: Any) -> int:
    if not _is_int(value) or not 0 <= value <= MAX_RETRIES_LIMIT:
        raise InvalidJob(f"max_retries must be an integer from 0 to {MAX_RETRIES_LIMIT}, not {show(value)}")
    return value


def check_timeout(value: Any) -> float | None:
    if value is None:
        return None
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or (isinstance(value, float) and not math.isfinite(value)) or value <= 0):
        raise InvalidJob(f"timeout must be a number of seconds > 0, not {show(value)}")
    if value > MAX_TIMEOUT:
        raise InvalidJob(f"timeout must be at most {MAX_TIMEOUT} seconds (10 years), not {show(value)}")
    return value


def check_run_at(value: Any) -> str:
    """A spec's run_at (ISO 8601, or epoch seconds) as a canonical time."""
    if _is_int(value) or isinstance(value, float):
        return now_iso(check_ts(value, "run_at"))
    if isinstance(value, str):
        return now_iso(parse_time(value, "run_at"))
    raise InvalidJob(f"run_at must be an ISO 8601 time or epoch seconds, not {show(value)}")


def check_attempts(value: Any) -> int:
    if not _is_int(value) or not 0 <= value <= MAX_ATTEMPTS:
        raise InvalidJob(f"attempts must be an integer >= 0 and <= {MAX_ATTEMPTS}, not {show(value)}")
    return value


def check_exit_code(value: Any) -> int | None:
    if value is not None and (not _is_int(value) or abs(value) > INT32_BOUND):
        raise InvalidJob(f"exit_code must be an integer from {-INT32_BOUND} to {INT32_BOUND} or null, "
                         f"not {show(value)}")
    return value


def check_history(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise InvalidJob(f"history must be a list of objects, not {_type_name(value)}")
    if len(value) > MAX_HISTORY:
        raise InvalidJob(f"history must be a list of at most {MAX_HISTORY} entries, not {len(value)}")
    for n, entry in enumerate(value, 1):
        if not isinstance(entry, dict):
            raise InvalidJob(f"history must be a list of objects; entry {n} is {_type_name(entry)}")
    return value


def check_time_field(name: str, value: Any, *, empty: str | None) -> str | None:
    """A stored time (created_at, updated_at, next_run_at): null/"" (as `empty`), or a time in range."""
    if value is None or value == "":
        return empty
    if not isinstance(value, str):
        raise InvalidJob(f"{name} must be a string, not {_type_name(value)}")
    parse_time(value, name)
    return value


def check_env(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidJob(f"env must be an object of strings, not {_type_name(value)}")
    for key, val in value.items():
        if not key or "=" in key or "\x00" in key:
            raise InvalidJob(f"env name {key!r} is not a valid variable name")
        if not isinstance(val, str):
            raise InvalidJob(f"env value of {key} must be a string, not {_type_name(val)}")
        _no_nul(f"env value of {key}", val)
    return dict(value)


def check_cwd(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidJob(f"cwd must be a non-empty string, not {value!r}")
    return _no_nul("cwd", value)


def check_priority(value: Any) -> int:
    if not _is_int(value) or abs(value) > INT32_BOUND:
        raise InvalidJob(f"priority must be an integer, not {show(value)}")
    return value


def check_labels(value: Any) -> list[str]:
    """Labels: a list of short names (the id alphabet), for `--label` filters."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise InvalidJob(f"labels must be a list of names, not {_type_name(value)}")
    if len(value) > MAX_LABELS:
        raise InvalidJob(f"at most {MAX_LABELS} labels, not {len(value)}")
    for label in value:
        if not isinstance(label, str) or not _LABEL_RE.fullmatch(label):
            raise InvalidJob(f"label {label!r} must be 1 to 64 letters, digits and . _ : @ + = - "
                             "(starting with a letter or digit)")
    return list(dict.fromkeys(value))


def check_deps(name: str, value: Any, own_id: str | None = None) -> list[str]:
    """`after` / `after_any`: job ids, as a list or one comma-separated string."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, list):
        raise InvalidJob(f"{name} must be a list of job ids, not {_type_name(value)}")
    if len(value) > MAX_DEPS:
        raise InvalidJob(f"{name} names more than {MAX_DEPS} jobs")
    out = []
    for dep in value:
        try:
            check_id(dep)
        except InvalidJob as e:
            raise InvalidJob(f"{name}: {e}") from None
        if isinstance(own_id, str) and dep.lower() == own_id.lower():
            raise InvalidJob(f"job {own_id} cannot wait for itself ({name})")
        out.append(dep)
    return list(dict.fromkeys(out))


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise InvalidJob(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise InvalidJob(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses as inf, which json.dumps would write back as `Infinity`:
    # a file queuectl itself could not read again.
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJob(f"number {text} is out of range")
    return value


def _check_text(value: Any) -> None:
    """Every string must encode as UTF-8: a lone surrogate ("\\ud800" in the
    JSON, or an undecodable byte smuggled in as one) parses fine but makes the
    canonical file unwritable. Iterative, so depth cannot overflow the stack."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
            strings = v.keys()
        elif isinstance(v, list):
            stack.extend(v)
            continue
        elif isinstance(v, str):
            strings = (v,)
        else:
            continue
        for s in strings:
            if not s.isascii():
                try:
                    s.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise InvalidJob(f"not valid Unicode text (lone surrogate {s[e.start]!r})") from None


def loads(data: bytes | str) -> Any:
    """Parse JSON strictly: UTF-8 only, no duplicate keys, no NaN/Infinity."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidJob(f"not UTF-8 text (byte {e.start})") from None
    try:
        value = json.loads(data, object_pairs_hook=_reject_duplicate_keys,
                           parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        raise InvalidJob(f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise InvalidJob("invalid JSON: nested too deeply") from None
    except ValueError as e:
        # int() refuses over 4300 digits (CVE-2020-10735 limit): a bad file, not a crash.
        raise InvalidJob(f"invalid JSON: {e}") from None
    _check_text(value)
    return value


def _what_to_run(src: dict[str, Any], job_id: Any) -> dict[str, Any]:
    """The fields a spec and a record share, each validated: how and where the command runs."""
    return {
        "priority": check_priority(src.get("priority", 0)),
        "timeout": check_timeout(src.get("timeout")),
        "env": check_env(src.get("env")),
        "cwd": check_cwd(src.get("cwd")),
        "queue": check_queue(src.get("queue")),
        "on_finish": check_hook(src.get("on_finish")),
        "labels": check_labels(src.get("labels")),
        "after": check_deps("after", src.get("after"), job_id),
        "after_any": check_deps("after_any", src.get("after_any"), job_id),
    }


class Job:
    # Not a @dataclass, whose code generation and import cost every enqueue ~2 ms; behaves as it did.
    __slots__ = ("id", "command", "state", "attempts", "max_retries", "priority", "timeout", "env", "cwd", "queue",
                 "on_finish", "labels", "after", "after_any", "created_at", "updated_at", "next_run_at",
                 "last_error", "exit_code", "history", "extra")

    def __init__(self, id: str, command: str, state: JobState = JobState.PENDING, attempts: int = 0,
                 max_retries: int = 3, priority: int = 0, timeout: float | None = None,
                 env: dict[str, str] | None = None, cwd: str | None = None, queue: str = DEFAULT_QUEUE,
                 on_finish: str | None = None, labels: list[str] | None = None, after: list[str] | None = None,
                 after_any: list[str] | None = None, created_at: str = "", updated_at: str = "",
                 next_run_at: str | None = None, last_error: str | None = None, exit_code: int | None = None,
                 history: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None):
        self.id, self.command, self.state, self.attempts, self.max_retries = id, command, state, attempts, max_retries
        self.priority, self.timeout, self.env, self.cwd, self.queue = priority, timeout, env, cwd, queue
        self.on_finish, self.labels = on_finish, [] if labels is None else labels
        self.after, self.after_any = [] if after is None else after, [] if after_any is None else after_any
        self.history, self.extra = [] if history is None else history, {} if extra is None else extra
        self.created_at, self.updated_at, self.next_run_at = created_at, updated_at, next_run_at
        self.last_error, self.exit_code = last_error, exit_code

    def __eq__(self, that: object) -> bool:
        return all(getattr(self, k) == getattr(that, k) for k in Job.__slots__) if type(that) is Job else NotImplemented

    def __repr__(self) -> str:
        return f"Job({', '.join(f'{f}={getattr(self, f)!r}' for f in self.__slots__)})"

    @classmethod
    def from_spec(cls, spec: Any, *, default_max_retries: int = 3,
                  fallback_id: str | None = None, now: float | None = None) -> "Job":
        """A new pending job from a user's spec (a JSON object).

        queuectl's own bookkeeping fields in the spec are reset: a spec says
        what to run, not how far it got.
        """
        if not isinstance(spec, dict):
            raise InvalidJob(f"a job must be a JSON object, not {_type_name(spec)}")
        if "command" not in spec:
            raise InvalidJob("missing command")
        ts = time.time() if now is None else now
        job_id = spec.get("id", fallback_id)
        job_id = new_id(ts) if job_id is None else check_id(job_id)
        stamp = now_iso(ts)
        run_at = spec.get("run_at")
        next_run_at = None if run_at is None else check_run_at(run_at)
        known = {"id", "command", "max_retries", "priority", "timeout", "env", "cwd", "run_at",
                 "queue", "on_finish", "labels", "after", "after_any"}
        extra = {k: v for k, v in spec.items() if k not in known and k not in BOOKKEEPING}
        return cls(
            id=job_id,
            command=check_command(spec["command"]),
            max_retries=check_max_retries(spec.get("max_retries", default_max_retries)),
            **_what_to_run(spec, job_id),
            created_at=stamp,
            updated_at=stamp,
            next_run_at=next_run_at,
            extra=extra,
        )

    @classmethod
    def from_record(cls, record: Any) -> "Job":
        """A job from its canonical file form (as written by to_json)."""
        if not isinstance(record, dict):
            raise InvalidJob(f"a job must be a JSON object, not {_type_name(record)}")
        try:
            state = JobState.parse(record.get("state", "pending"))
        except AttributeError:
            raise InvalidJob("state must be a string") from None
        last_error = record.get("last_error")
        if last_error is not None and not isinstance(last_error, str):
            raise InvalidJob(f"last_error must be a string, not {_type_name(last_error)}")
        if "id" not in record:
            raise InvalidJob("missing id")
        if "command" not in record:
            raise InvalidJob("missing command")
        known = set(cls.__slots__) - {"extra"}  # a file's fields are a Job's attributes
        return cls(
            id=check_id(record["id"]),
            command=check_command(record["command"]),
            state=state,
            attempts=check_attempts(record.get("attempts", 0)),
            max_retries=check_max_retries(record.get("max_retries", 3)),
            **_what_to_run(record, record.get("id")),
            created_at=check_time_field("created_at", record.get("created_at"), empty=""),
            updated_at=check_time_field("updated_at", record.get("updated_at"), empty=""),
            next_run_at=check_time_field("next_run_at", record.get("next_run_at"), empty=None),
            last_error=last_error,
            exit_code=check_exit_code(record.get("exit_code")),
            history=check_history(record.get("history", [])),
            extra={k: v for k, v in record.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "command": self.command,
            "state": self.state.value,
            "attempts": self.attempts,
            "max_retries": self.max_retries,
            "priority": self.priority,
            "timeout": self.timeout,
        }
        if self.env is not None:
            d["env"] = self.env
        if self.cwd is not None:
            d["cwd"] = self.cwd
        if self.queue != DEFAULT_QUEUE:  # like env and cwd: files without named queues stay as they were
            d["queue"] = self.queue
        if self.on_finish is not None:
            d["on_finish"] = self.on_finish
        # Left out when empty, so files of jobs that use none stay as they were.
        for key in ("labels", "after", "after_any"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        d.update(created_at=self.created_at, updated_at=self.updated_at,
                 next_run_at=self.next_run_at, last_error=self.last_error,
                 exit_code=self.exit_code, history=self.history)
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    def to_json(self) -> bytes:
        """The canonical file form: one line of JSON (`jq .` pretty-prints it).

        Not indented: json's C encoder only runs without indent, and every
        enqueue and every state change writes this.
        """
        return (json.dumps(self.to_dict(), ensure_ascii=False) + "\n").encode("utf-8")

    @property
    def created_ts(self) -> float:
        """Epoch seconds; 0 when unknown. Never raises: the index and the queue
        order are built from it, and stored times were validated when read."""
        return _ts_or_zero(self.created_at)

    @property
    def run_ts(self) -> float:
        """When the job may next run (epoch seconds); 0 means now. Never raises."""
        return _ts_or_zero(self.next_run_at)


def _ts_or_zero(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return parse_time(value)
    except InvalidJob:
        return 0.0


def parse_file(data: bytes, stem: str) -> Job:
    """The job in a canonical job file named <stem>.json; InvalidJob if it is not one."""
    job = Job.from_record(loads(data))
    if job.id != stem:
        raise InvalidJob(f"id field {job.id!r} does not match file name {stem}.json")
    return job


def parse_specs(data: bytes, source: str) -> list[tuple[str, Any]]:
    """(position, spec) pairs from a JSON object, a JSON array, or JSON Lines.

    A record that does not parse becomes (position, InvalidJob) so every bad
    record can be reported, not only the first.
    """
    # Parse bytes, not decoded text: loads() then reports bad UTF-8 as such,
    # with its byte offset, for the whole file and for each line alike.
    stripped = data.lstrip()
    if not stripped:
        raise InvalidJob(f"{source} is empty")
    try:
        whole = loads(data)
    except InvalidJob as e:
        whole, whole_error = None, e
    else:
        whole_error = None
    if isinstance(whole, list):
        return [(f"item {i}", spec) for i, spec in enumerate(whole, 1)]
    if whole_error is None:
        return [(source, whole)]
    if stripped.startswith(b"["):
        raise InvalidJob(f"{source}: {whole_error}")
    records: list[tuple[str, Any]] = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((f"line {n}", loads(line)))
        except InvalidJob as e:
            records.append((f"line {n}", e))
    if len(records) == 1:
        raise InvalidJob(f"{source}: {whole_error}")
    return records
