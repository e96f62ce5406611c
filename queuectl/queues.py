"""Named queues: which are paused, and the concurrency slots every worker of a spool shares.

Both are files, so they hold across every supervisor on the spool and survive
restarts: `SPOOL/paused/<queue>` (or `paused/ALL`) stops the claims of that
queue, and a limit of N running jobs is N lock files `SPOOL/queues/<queue>/slot.<k>`
of which a worker must hold one (a non-blocking flock) while it runs a job of
that queue.

The job's command inherits the locked descriptor, and a flock lives until
every descriptor of it is closed: a worker killed with kill -9 frees its slot
only once the command it started (and whatever that command left running with
the descriptor) is gone too, which recovery sees to. Its command cannot run on
beside the queue's next job. A worker that records an outcome unlocks the slot
explicitly, so a finished job's leftover background process holds nothing.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from . import lazylog
from .dropins import is_ignored
from .errors import SpoolError
from .fsio import atomic_write, close_quietly, unlink_quietly
from .job import check_queue, now_iso
from .spool import Spool

log = lazylog.get("queuectl.queues")

PAUSE_ALL = "ALL"  # the pause file of every queue; no queue may be named so (job.check_queue)


def pause_path(spool: Spool, queue: str | None) -> str:
    return spool.path("paused", PAUSE_ALL if queue is None else check_queue(queue))


def pause(spool: Spool, queue: str | None = None) -> bool:
    """Stop the claims of one queue (None: of every queue); False if it already was."""
    path = pause_path(spool, queue)
    if os.path.exists(path):
        return False
    # The file's content is for people (`cat paused/gpu`); its existence is the state.
    atomic_write(spool.path("tmp"), path, f"paused at {now_iso()}\n".encode(), durable=True)
    return True


def resume(spool: Spool, queue: str | None = None) -> list[str]:
    """Remove the pause of one queue (None: every pause file); the names resumed."""
    if queue is None:
        names = sorted(paused(spool))
    else:
        names = [check_queue(queue)] if os.path.exists(pause_path(spool, queue)) else []
    for name in names:
        unlink_quietly(spool.path("paused", name))
    return names


def paused(spool: Spool) -> set[str]:
    """The paused queues' names, `ALL` among them when every queue is paused."""
    try:
        return {n for n in os.listdir(spool.path("paused")) if not is_ignored(n)}
    except FileNotFoundError:
        return set()


def is_paused(queue: str, pauses: set[str]) -> bool:
    return PAUSE_ALL in pauses or queue in pauses


def known_queues(spool: Spool) -> set[str]:
    """Queues some job names (in any state), has a limit or is paused."""
    return (set(spool.index.queue_counts()) | {q for q, _n in spool.config.concurrency}
            | (paused(spool) - {PAUSE_ALL}))


def take_slot(spool: Spool, queue: str, limit: int) -> int | None:
    """A descriptor holding one of the queue's `limit` slot locks, or None if all are held."""
    d = spool.path("queues", queue)
    try:
        os.makedirs(d, 0o700, exist_ok=True)
    except OSError as e:
        log.warning("cannot create %s (%s): not claiming jobs of queue %s", d, e.strerror, queue)
        return None
    for k in range(limit):
        try:
            fd = os.open(slot_path(spool, queue, k),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError:
            continue  # unusable (queues.slot_problems): the supervisor and `check` say why
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            close_quietly(fd)
    return None


def slot_path(spool: Spool, queue: str, k: int) -> str:
    return spool.path("queues", queue, f"slot.{k}")


def unusable_slot(path: str) -> str | None:
    """Why no worker of this user can lock the slot file at path (None: it can, or it is not made yet).

    take_slot() skips such a slot as if it were held: a root-owned slot.0 left by
    a `sudo` run, or a symlink, silently took a queue limited to 1 down to none.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        try:
            st = os.lstat(path)
        except OSError:
            return e.strerror
        if stat.S_ISLNK(st.st_mode):
            return "a symbolic link (slot files are never followed)"
        if e.errno in (errno.EACCES, errno.EPERM):
            return f"not writable by this user (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})"
        return e.strerror
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "not a regular file"
    finally:
        close_quietly(fd)
    return None


def slot_problems(spool: Spool) -> list[tuple[str, str, str]]:
    """(queue, path, why) for each slot file of a limited queue that workers cannot lock."""
    out = []
    for queue, limit in spool.config.concurrency:
        for k in range(limit):
            path = slot_path(spool, queue, k)
            why = unusable_slot(path)
            if why is not None:
                out.append((queue, path, why))
    return out


def stalled(spool: Spool) -> set[str]:
    """Queues none of whose slot files a worker can lock: their jobs cannot start until a person
    fixes the files, so a burst does not wait for them (its supervisor says why)."""
    problems = slot_problems(spool)
    return {q for q, limit in spool.config.concurrency if sum(1 for p in problems if p[0] == q) >= limit}


def say_slot_problems(spool: Spool, said: set[str]) -> set[str]:
    """One warning line for each unusable slot file not in `said`; the paths unusable now.

    A slot file no worker can lock (root-owned after a `sudo` run, a symlink)
    leaves its queue fewer slots, or none, and the workers skip it without a
    word: their supervisor says it, once (again only after a fix and a new break).
    """
    try:
        spool.configfile.refresh()
        problems = slot_problems(spool)
    except (OSError, SpoolError):
        return said
    for queue, path, why in problems:
        if path not in said:
            limit = spool.config.limit(queue) or 0
            usable = limit - sum(1 for q, _p, _w in problems if q == queue)
            log.warning("queue %s: slot file %s is %s: no worker can lock it, so at most %d of its %d jobs "
                        "run at once; remove it", queue, path, why, usable, limit)
    return {path for _q, path, _w in problems}


def release_slot(fd: int | None) -> None:
    """Free a slot now, even if a process the job left behind still holds the descriptor."""
    if fd is not None and fd >= 0:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass  # ESTALE on a network filesystem: closing frees it all the same
        finally:
            close_quietly(fd)


# A heartbeat file written this recently is a live process's: workers beat every
# 2 s (registry.HEARTBEAT_INTERVAL), idle or not. Only for the hint below, which
# must not cost an enqueue the import of registry; liveness proper is registry's.
HINT_FRESH = 10.0


def idle_reason(spool: Spool, queues: set[str]) -> str | None:
    """Why no worker would take a job of these queues now, as a hint for a person; None if one would.

    Cheap on purpose (a listing of workers/ and paused/): enqueue asks it.
    """
    import time
    now = time.time()
    try:
        with os.scandir(spool.path("workers")) as it:
            live = any(e.name.endswith(".json") and now - e.stat().st_mtime < HINT_FRESH for e in it)
    except OSError:
        live = False
    if not live:
        return "no worker is running on this spool: start one with `queuectl worker start --detach`"
    names = set(os.listdir(spool.path("paused"))) if os.path.isdir(spool.path("paused")) else set()
    if PAUSE_ALL in names:
        return "every queue is paused: `queuectl resume` lifts that"
    stopped = sorted(q for q in queues if q in names)
    if stopped:
        return (f"queue {', '.join(stopped)} is paused: `queuectl resume --queue {stopped[0]}` lifts that")
    return None
