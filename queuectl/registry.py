"""Who is alive: heartbeat files in workers/ (written and read here), host identity,
and process identity (a pid plus its kernel start time names one process, ever).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import SpoolError
from .fsio import atomic_write, unlink_quietly
from .job import now_iso

from .spool import Spool

HEARTBEAT_INTERVAL = 2.0
_hostname: str | None = None


def hostname() -> str:
    global _hostname
    if _hostname is None:
        import socket
        _hostname = socket.gethostname()
    return _hostname


# -- processes ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    state: str   # R, S, Z, ...
    start: str   # clock ticks since boot: with the pid it names one process, ever


def proc_stat(pid: int) -> ProcStat | None:
    """The kernel's view of a process, parsed from /proc/PID/stat; None if there is none."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The command name may hold spaces and parentheses: split after the last ")".
            fields = f.read().rsplit(b")", 1)[1].split()
        return ProcStat(fields[0].decode(), fields[19].decode())
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def proc_start(pid: int) -> str | None:
    st = proc_stat(pid)
    return None if st is None else st.start


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Does this process exist (and, given its start time, is it still the same one)?

    A zombie counts as gone: it has finished, its parent just has not reaped it.
    """
    st = proc_stat(pid)
    if st is None:
        if not isinstance(pid, int) or pid <= 0:
            return False
        try:  # no /proc (another OS): fall back on kill 0, which cannot see pid reuse
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return start is None
    if st.state == "Z":
        return False
    return start is None or st.start == start


def owner_marker(pid: int, start: str | None) -> str:
    """The value of QUEUECTL_OWNER in the environment of every command a worker starts.

    The environment is set before the command runs a single instruction and
    is inherited by everything it starts, so recovery can find a dead
    worker's leftovers even if the worker died before it could note their pid.
    """
    return f"{hostname()}:{pid}:{start or ''}"


def processes_marked(marker: str) -> list[int]:
    """Pids of this host's processes whose environment carries QUEUECTL_OWNER=marker."""
    needle = b"\0QUEUECTL_OWNER=" + marker.encode() + b"\0"
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = b"\0" + f.read()
        except OSError:
            continue  # gone, or another user's
        if needle in env or env.endswith(needle[:-1]):
            found.append(int(name))
    return found


def is_queuectl_process(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"queuectl" in f.read()
    except OSError:
        return False


def processes_with_env(pairs: dict[str, str]) -> list[int]:
    """Pids of this host's processes (readable by us) whose environment holds every NAME=VALUE of pairs.

    Every job carries QUEUECTL_JOB_ID and QUEUECTL_SPOOL, set before it runs an
    instruction and inherited by all it starts: `queuectl kill` finds a job's
    processes by them even before its worker noted the pid in its heartbeat.
    """
    needles = [b"\0" + f"{k}={v}".encode() + b"\0" for k, v in pairs.items()]
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = b"\0" + f.read()
        except OSError:
            continue  # gone, or another user's
        if not env.endswith(b"\0"):
            env += b"\0"
        if all(n in env for n in needles):
            found.append(int(name))
    return found


def signal_process(pid: int, start: str | None, sig: int, *, group: bool = False) -> bool:
    """Send sig to pid (or its process group) only if it is still the process that started at `start`."""
    if not isinstance(pid, int) or pid <= 1 or not pid_alive(pid, start):
        return False
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# -- heartbeats ----------------------------------------------------------------------


@dataclass
class WorkerInfo:
    """One heartbeat file, as read; `alive` is judged by the reader."""
    file: str
    id: str
    role: str
    host: str
    pid: int
    pid_start: str | None
    since: str | None
    heartbeat_at: str | None
    job: str | None
    alive: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.__dataclass_fields__ and key != "extra":
            return getattr(self, key)
        return self.extra.get(key, default)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _parse(name: str, info: Any, mtime: float, lease: float, host: str, now: float) -> WorkerInfo | None:
    """A heartbeat file is untrusted input: wrong types make it unreadable, never a crash."""
    if not isinstance(info, dict):
        return None
    pid = info.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
        return None
    start = _str_or_none(info.get("pid_start"))
    whose = _str_or_none(info.get("host")) or ""
    if whose == host:
        # Without a start time (an older version's heartbeat) the pid may since
        # belong to anything: it counts only while that process is a queuectl one.
        alive = pid_alive(pid, start) and (start is not None or is_queuectl_process(pid))
    else:
        alive = now - mtime < lease
    known = {"id", "role", "host", "pid", "pid_start", "since", "heartbeat_at", "job"}
    return WorkerInfo(name, _str_or_none(info.get("id")) or name, _str_or_none(info.get("role")) or "",
                      whose, pid, start, _str_or_none(info.get("since")),
                      _str_or_none(info.get("heartbeat_at")), _str_or_none(info.get("job")), alive,
                      {k: v for k, v in info.items() if k not in known})


def read_workers(spool: Spool) -> list[WorkerInfo]:
    """Every readable heartbeat file, each judged alive or not."""
    host = hostname()
    lease = spool.config.lease
    now = time.time()
    out: list[WorkerInfo] = []
    try:
        names = sorted(os.listdir(spool.path("workers")))
    except FileNotFoundError:
        return out
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        path = spool.path("workers", name)
        try:
            with open(path, "rb") as f:
                data = f.read(1 << 16)
            info = json.loads(data)
            mtime = os.stat(path).st_mtime
        except (OSError, ValueError, RecursionError):
            continue
        w = _parse(name, info, mtime, lease, host, now)
        if w is not None:
            out.append(w)
    return out


def count_live_workers(spool: Spool) -> int:
    return sum(1 for w in read_workers(spool) if w.alive and w.role == "worker")


def forget(spool: Spool, w: WorkerInfo) -> None:
    unlink_quietly(spool.path("workers", w.file))
    unlink_quietly(spool.path("workers", w.file[:-5] + ".claim"))


CLAIM_RECORD = 160  # bytes: one job id (<= 128 characters), space-padded


def read_claim(path: str) -> str | None:
    """The job id a worker's claim record names, or None."""
    try:
        with open(path, "rb") as f:
            data = f.read(CLAIM_RECORD + 1)
    except OSError:
        return None
    text = data.decode("ascii", "replace").strip()
    return text or None


def claimed_by_live_workers(spool: Spool) -> dict[str, WorkerInfo]:
    """Job id -> the live worker whose claim record names it.

    A worker writes the id before its claim rename and clears it after the
    outcome is recorded, so a job it runs is protected even when its file in
    processing/ was replaced (by `sed -i`, say) and so lost the worker's flock.
    """
    out: dict[str, WorkerInfo] = {}
    for w in read_workers(spool):
        if w.alive and w.role == "worker":
            job = read_claim(spool.path("workers", w.file[:-5] + ".claim"))
            if job:
                out[job] = w
    return out


class Heartbeat:
    """This process's heartbeat file: who it is, since when, and what it runs now."""

    def __init__(self, spool: Spool, role: str, name: str, **extra: Any):
        self.spool = spool
        self.path = spool.path("workers", f"{hostname()}.{os.getpid()}.json")
        self.claim_path = self.path[:-5] + ".claim"
        self._claim_fd = -1
        self.info: dict[str, Any] = {
            "id": name, "role": role, "host": hostname(), "pid": os.getpid(),
            "pid_start": proc_start(os.getpid()), "since": now_iso(), "heartbeat_at": None,
            "job": None, **extra}
        self.last = 0.0

    def set_job(self, job: str | None) -> None:
        """Note the current job; written with the next beat (short jobs never are)."""
        self.info["job"] = job

    def beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < HEARTBEAT_INTERVAL:
            return
        self.last = now
        self.info["heartbeat_at"] = now_iso()
        try:
            atomic_write(self.spool.path("tmp"), self.path, json.dumps(self.info).encode(), durable=False)
        except (OSError, SpoolError):
            pass  # a full disk must not stop the worker; liveness also uses the pid

    def claiming(self, job_id: str | None) -> None:
        """Record (before the claim rename) or clear (after the outcome) the job this worker holds.

        One pwrite of a fixed-size record: no new inode per job, and a reader
        sees the old id or the new one.
        """
        try:
            if self._claim_fd < 0:
                self._claim_fd = os.open(self.claim_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.pwrite(self._claim_fd, (job_id or "").ljust(CLAIM_RECORD).encode("ascii"), 0)
        except OSError:
            pass  # a full disk: the flock on the claimed file still protects it

    def remove(self) -> None:
        unlink_quietly(self.path)
        if self._claim_fd >= 0:
            os.close(self._claim_fd)
            self._claim_fd = -1
        unlink_quietly(self.claim_path)

