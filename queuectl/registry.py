"""Who is alive: heartbeat files in workers/ (written and read here), node identity,
and process identity (a pid plus its kernel start time names one process, ever).

A process of this node (same node name, same mount of the spool) is alive
while its pid and start time still name a running process. A process of
another node is alive while its heartbeat's own `heartbeat_at` is less than
`lease` + `clock_skew` old: never a file's mtime, which a network filesystem
reports coarsely and caches.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple, Protocol

from .config import Config
from .errors import InvalidJob, SpoolError, WorkerError
from .fsio import atomic_write, read_nofollow, unlink_quietly
from .job import now_iso, parse_time



class Spool(Protocol):
    """What the registry needs of a spool; spool.Spool provides it (spool imports this module)."""
    root: str
    multihost: bool

    @property
    def config(self) -> Config: ...
    def path(self, *parts: str) -> str: ...

HEARTBEAT_INTERVAL = 2.0
MAX_WORKERS = 256     # worker processes one supervisor may have (`worker start --count`, `worker scale`)
SCALE_SUFFIX = ".scale"  # `worker scale`'s request to a supervisor: beside its heartbeat, NODE.PID.scale
PRUNE_LEASES = 3  # another node's heartbeat older than this many leases is deleted
_hostname: str | None = None
_node: str | None = None
NODE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def hostname() -> str:
    """The kernel's hostname: shown to people; `node_name()` is the identity."""
    global _hostname
    if _hostname is None:
        # What socket.gethostname() returns, without importing socket (2 ms of `status`).
        _hostname = os.uname().nodename
    return _hostname


def check_node(name: str) -> str:
    """A node name becomes part of file names in workers/: letters, digits, '.', '_', '-'."""
    if not name or len(name) > 64 or not set(name) <= NODE_CHARS or name.startswith("."):
        raise WorkerError(f"invalid node name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def node_name() -> str:
    """Which machine this is: $QUEUECTL_NODE, else hostname-<first 8 of /etc/machine-id>.

    Cloned containers share a hostname; the machine id tells them apart (and a
    clone that shares both is caught by the supervisor's start-up check).
    """
    env = os.environ.get("QUEUECTL_NODE")
    if env:
        return check_node(env)
    global _node
    if _node is None:
        mid = ""
        for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
            try:
                with open(path, encoding="ascii", errors="replace") as f:
                    mid = f.read().strip()
                break
            except OSError:
                continue
        base = "".join(c if c in NODE_CHARS else "-" for c in hostname())[:55].lstrip(".") or "host"
        _node = f"{base}-{mid[:8]}" if mid else base
    return _node


_where: str | None = None


def namespace_id() -> str:
    """Which kernel and pid namespace this process lives in (boot id + pid namespace): a pid
    means something only there. Two containers cloned from one image share a node name and
    may share a mount, yet each sees only its own processes."""
    global _where
    if _where is None:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                boot = f.read().strip()
            ns = os.readlink("/proc/self/ns/pid")
        except OSError:
            boot, ns = "", ""
        _where = f"{boot[:8]}:{ns[5:-1]}" if boot else ""
    return _where


def spool_dev(spool: Spool) -> int | None:
    """The device number of this mount of the spool: two mounts (two simulated hosts) differ."""
    try:
        return os.stat(spool.root).st_dev
    except OSError:
        return None


# -- processes ---------------------------------------------------------------------


class ProcStat(NamedTuple):
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
    return f"{node_name()}:{pid}:{start or ''}"


def processes_marked(marker: str) -> list[int]:
    """Pids of this host's processes whose environment carries QUEUECTL_OWNER=marker."""
    return processes_with_env({"QUEUECTL_OWNER": marker})


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


class WorkerInfo:
    """One heartbeat file, as read; `alive` is judged by the reader.

    `local`: a process of this node seen through this mount (judged by its
    pid); otherwise by `age`, the seconds since its own heartbeat_at.
    (A plain class: a dataclass cost every command that reads heartbeats ~0.5 ms to build.)
    """
    __slots__ = ("file", "id", "role", "host", "pid", "pid_start", "since", "heartbeat_at", "job", "alive",
                 "extra", "node", "local", "age")
    FIELDS = frozenset(__slots__) - {"extra"}

    def __init__(self, file: str, id: str, role: str, host: str, pid: int, pid_start: str | None,  # noqa: A002
                 since: str | None, heartbeat_at: str | None, job: str | None, alive: bool,
                 extra: dict[str, Any] | None = None, node: str = "", local: bool = True, age: float | None = None):
        self.file, self.id, self.role, self.host, self.pid, self.pid_start = file, id, role, host, pid, pid_start
        self.since, self.heartbeat_at, self.job, self.alive = since, heartbeat_at, job, alive
        self.extra = {} if extra is None else extra
        self.node, self.local, self.age = node, local, age

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.FIELDS:
            return getattr(self, key)
        return self.extra.get(key, default)

    def __repr__(self) -> str:
        return "WorkerInfo(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def heartbeat_age(info: dict, mtime: float, now: float) -> tuple[float, bool]:
    """(seconds since the heartbeat's own timestamp, True), by the writer's clock.

    Only a heartbeat without one (written by an older queuectl) falls back on
    its file's mtime: (age, False).
    """
    at = info.get("heartbeat_at")
    if isinstance(at, str):
        try:
            return now - parse_time(at), True
        except InvalidJob:
            pass
    return now - mtime, False


def _parse(name: str, info: Any, mtime: float, lease: tuple[float, float], me: tuple[str, int | None, str],
           now: float) -> WorkerInfo | None:
    """A heartbeat file is untrusted input: wrong types make it unreadable, never a crash.

    lease: (lease, clock_skew); the skew allowance is for another host's clock,
    so an mtime (the server's clock) gets none. me: (node, mount device, namespace_id()).
    """
    if not isinstance(info, dict):
        return None
    pid = info.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
        return None
    start = _str_or_none(info.get("pid_start"))
    whose = _str_or_none(info.get("host")) or ""
    node = _str_or_none(info.get("node")) or whose  # older heartbeats name only the host
    dev, where = info.get("dev"), info.get("ns")
    # Judged by its pid only where that pid means the same process: this node, this mount, this
    # kernel and pid namespace. A clone's heartbeat (same node name, another namespace) is judged
    # by its heartbeat_at, from the shared file, like another host's.
    local = node == me[0] and (not isinstance(dev, int) or me[1] is None or dev == me[1]) and (
        not isinstance(where, str) or not where or not me[2] or where == me[2])
    age, own_clock = heartbeat_age(info, mtime, now)
    if local:
        # Without a start time (an older version's heartbeat) the pid may since
        # belong to anything: it counts only while that process is a queuectl one.
        alive = pid_alive(pid, start) and (start is not None or is_queuectl_process(pid))
    else:
        alive = age < lease[0] + (lease[1] if own_clock else 0)
    known = {"id", "role", "host", "pid", "pid_start", "since", "heartbeat_at", "job", "node"}
    return WorkerInfo(name, _str_or_none(info.get("id")) or name, _str_or_none(info.get("role")) or "",
                      whose, pid, start, _str_or_none(info.get("since")),
                      _str_or_none(info.get("heartbeat_at")), _str_or_none(info.get("job")), alive,
                      {k: v for k, v in info.items() if k not in known}, node, local, age)


def read_workers(spool: Spool) -> list[WorkerInfo]:
    """Every readable heartbeat file, each judged alive or not."""
    me = (node_name(), spool_dev(spool), namespace_id())
    lease = (spool.config.lease, spool.config.clock_skew)
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
            data, st = read_nofollow(path, 1 << 16)
            info = json.loads(data[:1 << 16])
            mtime = st.st_mtime
        except (OSError, ValueError, RecursionError):
            continue
        w = _parse(name, info, mtime, lease, me, now)
        if w is not None:
            out.append(w)
    return out


def clones(spool: Spool) -> list[WorkerInfo]:
    """Live heartbeats that carry this node's name but are no process of this machine.

    Two machines with one node name (cloned containers, a copied config) would
    each take the other's workers for its own dead ones and recover their jobs.
    """
    me = node_name()
    return [w for w in read_workers(spool) if w.node == me and not w.local and w.alive]


def count_live_workers(spool: Spool) -> int:
    return sum(1 for w in read_workers(spool) if w.alive and w.role == "worker")


def forget(spool: Spool, w: WorkerInfo) -> None:
    unlink_quietly(spool.path("workers", w.file))
    unlink_quietly(spool.path("workers", w.file[:-5] + ".claim"))
    unlink_quietly(spool.path("workers", w.file[:-5] + ".out"))  # a scratch log (runner.CommandLog)
    unlink_quietly(spool.path("workers", w.file[:-5] + SCALE_SUFFIX))  # a `worker scale` request it never read


CLAIM_RECORD = 160  # bytes: one job id (<= 128 characters), space-padded


def read_claim(path: str) -> str | None:
    """The job id a worker's claim record names ("ID CLAIMED_AT", space-padded), or None."""
    try:
        data, _ = read_nofollow(path, CLAIM_RECORD + 1)
    except OSError:
        return None
    words = data[:CLAIM_RECORD + 1].decode("ascii", "replace").split()
    return words[0] if words else None


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
        node = node_name()
        self.path = spool.path("workers", f"{node}.{os.getpid()}.json")
        self.claim_path = self.path[:-5] + ".claim"
        self._claim_fd = -1
        self.info: dict[str, Any] = {
            "id": name, "role": role, "node": node, "host": hostname(), "pid": os.getpid(),
            "pid_start": proc_start(os.getpid()), "dev": spool_dev(spool), "ns": namespace_id(), "since": now_iso(),
            "heartbeat_at": None, "job": None, **extra}
        self.last = 0.0
        # Others judge this process by heartbeat_at: beat well within the lease.
        self.interval = min(HEARTBEAT_INTERVAL, spool.config.lease / 4)
        # Where other hosts read the claim record, it must reach the server before the rename.
        self.sync_claims = spool.multihost

    def set_job(self, job: str | None) -> None:
        """Note the current job; written with the next beat (short jobs never are)."""
        self.info["job"] = job

    def beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        self.info["heartbeat_at"] = now_iso()
        try:
            atomic_write(self.spool.path("tmp"), self.path, json.dumps(self.info).encode(), durable=False)
        except (OSError, SpoolError):
            pass  # a full disk must not stop the worker; liveness also uses the pid

    def claiming(self, job_id: str | None) -> None:
        """Record (before the claim rename) or clear (after the outcome) the job this worker holds.

        One pwrite of a fixed-size record ("ID CLAIMED_AT", claimed_at by this
        host's clock): no new inode per job, and a reader sees the old record or
        the new one. On a shared spool it is fsync'ed: another host must find it
        before it can find the job in processing/.
        """
        record = f"{job_id} {time.time():.3f}" if job_id else ""
        try:
            if self._claim_fd < 0:
                self._claim_fd = os.open(self.claim_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.pwrite(self._claim_fd, record.ljust(CLAIM_RECORD).encode("ascii"), 0)
            if self.sync_claims and job_id:
                os.fsync(self._claim_fd)
        except OSError:
            pass  # a full disk: the flock on the claimed file still protects it (on one host)

    def remove(self) -> None:
        unlink_quietly(self.path)
        if self._claim_fd >= 0:
            os.close(self._claim_fd)
            self._claim_fd = -1
        unlink_quietly(self.claim_path)

