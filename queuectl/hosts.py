"""Many hosts on one spool: the spool's filesystem type, its identity, where a
node keeps its index, and whether a claim is still this process's.

On a network filesystem rename stays atomic on the server, so claim-by-rename
still decides who runs a job, but flock does not cross hosts, inotify sees
nothing written by other hosts, file times are coarse and cached, and SQLite
must not be shared (its locking does not work there). Each node then keeps
its own index on local disk, built from the directories like any index.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import ContextManager, Iterator, Protocol

from . import lazylog
from .config import Config
from .errors import ConfigError, InvalidJob, SpoolError
from .fsio import SpoolLock, close_quietly, read_fd, read_nofollow, rename_noreplace, unlink_quietly, write_tmp
from .dropins import STALE_READ
from .indexstore import IndexStore, refuse_path
from .job import Job, parse_file



class Spool(Protocol):
    """What this module needs of a spool; spool.Spool provides it (spool imports this module)."""
    root: str
    fresh: bool
    readonly: bool
    network: bool
    fstype: str
    index_path: str | None

    @property
    def config(self) -> Config: ...
    def path(self, *parts: str) -> str: ...
    def lock(self) -> ContextManager[bool]: ...
    def has_jobs(self) -> bool: ...

log = lazylog.get("queuectl.hosts")

SPOOL_ID_FILE = ".id"  # SPOOL/.id: a random id, made once, names the spool's local indexes
# Filesystem types (as /proc/self/mountinfo names them) where the spool is
# shared by several machines, or where SQLite's locking cannot be trusted.
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "lustre", "gpfs", "9p", "afs",
              "glusterfs", "ocfs2", "gfs2", "beegfs", "orangefs", "pvfs2", "davfs", "virtiofs"}


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return field.encode().decode("unicode_escape") if "\\" in field else field


def fs_type(path: str) -> str:
    """The filesystem type of the mount holding path ("ext4", "nfs4", "fuse.sshfs"...); "" if unknown."""
    target = os.path.realpath(path)
    while not os.path.exists(target) and target != "/":
        target = os.path.dirname(target)  # a spool about to be created: its parent decides
    best, kind = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                point = _unescape(fields[4])
                inside = target == point or target.startswith(point.rstrip("/") + "/") or point == "/"
                # The longest mount point wins; a later line for the same point is mounted over it.
                if inside and len(point) >= len(best):
                    best, kind = point, right.split()[0]
    except OSError:
        return ""
    return kind


def is_network_fs(kind: str) -> bool:
    """Every FUSE filesystem counts: sshfs, s3fs, gcsfuse... none gives SQLite working locks."""
    return kind in NETWORK_FS or kind.startswith("fuse.") or kind == "fuse" or kind.startswith("nfs")


def server_inodes(kind: str) -> bool:
    """Are inode numbers the server's own, the same through every client? On a local disk,
    NFS (fileid) and GlusterFS (from the file's GFID) yes; sshfs numbers inodes by path, so
    a file replaced through another mount keeps its number there."""
    return not is_network_fs(kind) or kind in ("fuse.glusterfs", "glusterfs", "ceph", "fuse.ceph", "lustre") \
        or kind.startswith("nfs")


def locks_cross(kind: str) -> bool:
    """Does flock(2) on this filesystem reach the other hosts that mount it? Yes on a local
    disk (one host), GlusterFS (the locks translator on the brick), NFS (as fcntl locks, v4
    and v3 with lockd) and CephFS; not on sshfs and other FUSE filesystems, which lock only
    inside one client."""
    return not is_network_fs(kind) or kind in ("fuse.glusterfs", "glusterfs", "ceph", "fuse.ceph", "gpfs",
                                               "lustre") or kind.startswith("nfs")


class ExclSpoolLock(SpoolLock):
    """The spool lock where flock stays inside one host (sshfs): the flock (this host's
    processes), then a lock file made with O_EXCL beside it (every host's: the server
    decides O_EXCL). Its holder writes "TIME NODE PID"; a holder found dead on this node,
    or silent for STALE seconds, is broken, so a host that died holding it blocks others
    for that long at most."""

    STALE = 60.0

    @contextlib.contextmanager
    def hot_lock(self, *, wait: bool = True) -> Iterator[bool]:
        with super().hot_lock(wait=wait) as held:
            if not held or self._depth > 1:
                yield held
                return
            path = self.path + ".x"
            while True:
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    break
                except FileExistsError:
                    if not wait:
                        yield False
                        return
                    _break_if_stale(path, self.STALE)
                    time.sleep(0.01)
            mine = f"{time.time():.3f} {_node_name()} {os.getpid()} {os.urandom(4).hex()}".encode()
            try:
                os.write(fd, mine)
            finally:
                close_quietly(fd)
            try:
                yield True
            finally:
                try:
                    if read_nofollow(path, 256)[0] == mine:
                        os.unlink(path)
                except OSError:
                    pass


def _break_if_stale(path: str, stale: float) -> None:
    from .registry import pid_alive
    try:
        data, st = read_nofollow(path, 256)
    except OSError:
        return
    words = data.decode("ascii", "replace").split()
    try:
        taken = float(words[0])
    except (IndexError, ValueError):
        taken = st.st_mtime  # being written this instant, or damaged: its mtime then
    dead_here = len(words) >= 3 and words[1] == _node_name() and words[2].isdigit() and not pid_alive(int(words[2]))
    if dead_here or time.time() - taken > stale:
        aside = f"{path}.{os.getpid()}.stale"
        try:
            os.rename(path, aside)  # one breaker wins; the others find it gone
        except OSError:
            return
        unlink_quietly(aside)
        log.warning("broke the stale lock %s (%s)", path, " ".join(words[:3]) or "empty")


def clock_offset(spool: Spool) -> tuple[float, float] | None:
    """(low, high): bounds on how far the file server's clock is ahead of this host's (negative:
    behind), from the mtime the server gives a fresh file; None if it cannot be told. A
    whole-second mtime (sshfs) counts as anywhere in its second."""
    try:
        t0 = time.time()
        tmp, fd = write_tmp(spool.path("tmp"), b"", durable=False, keep_open=True)
        try:
            st = os.fstat(fd)
        finally:
            close_quietly(fd)
            unlink_quietly(tmp)
        t1 = time.time()
    except (OSError, SpoolError):
        return None
    grain = 1.0 if st.st_mtime_ns % 1_000_000_000 == 0 else 0.0
    return st.st_mtime_ns / 1e9 - t1, st.st_mtime_ns / 1e9 + grain - t0


def shared_mode_warnings(spool: Spool) -> list[str]:
    """What a person must know about this spool's filesystem before trusting shared mode:
    a clock off the file server's by more than clock_skew, and queue limits that hold per host."""
    cfg = spool.config
    out = []
    offset = clock_offset(spool)
    if offset is not None and (offset[0] > cfg.clock_skew or offset[1] < -cfg.clock_skew):
        ahead = offset[0] > 0
        by = offset[0] if ahead else -offset[1]
        out.append(f"this host's clock is {by:.1f}s {'behind' if ahead else 'ahead of'} the file server's, over "
                   f"clock_skew ({cfg.clock_skew:g}s): other hosts may recover this host's running jobs "
                   "(or this host theirs) too early or too late; fix the clock (NTP)")
    if cfg.concurrency and not locks_cross(spool.fstype):
        out.append(f"queue concurrency limits hold per host on {spool.fstype}: its locks do not reach other "
                   "hosts, so N hosts may run up to N x the limit")
    return out


def spool_id(root: str) -> str:
    """The spool's random identity (SPOOL/.id), created once: the first host to link it in wins."""
    path = os.path.join(root, SPOOL_ID_FILE)
    for _ in range(3):
        try:
            data, _st = read_nofollow(path, 256)
            text = data.decode("ascii", "replace").strip()
            if text:
                # It names a directory of the local cache: never a path of its own.
                if not (len(text) <= 64 and text.replace("-", "").replace("_", "").isalnum() and text.isascii()):
                    raise SpoolError(f"{path} holds {text[:40]!r}, not a spool id (letters, digits, - and _)")
                return text
        except FileNotFoundError:
            pass
        except OSError as e:
            raise SpoolError(f"cannot read {path}: {e.strerror or e}") from None
        tmp, _ = write_tmp(os.path.join(root, "tmp"), (os.urandom(8).hex() + "\n").encode(), durable=True)
        try:
            os.link(tmp, path)  # never replaces: two hosts creating it at once agree on the winner's
        except FileExistsError:
            pass
        except OSError:
            try:
                os.rename(tmp, path)  # no hard links here; a racing host's id is overwritten at worst once
            except OSError as e:
                raise SpoolError(f"cannot create {path}: {e.strerror or e}") from None
        finally:
            unlink_quietly(tmp)
    raise SpoolError(f"{path} is empty")


def _node_name() -> str:
    # Imported only here: registry's dataclasses cost every command on a local disk ~2 ms.
    from .registry import node_name
    return node_name()


def local_index_path(root: str, node: str) -> str:
    """$XDG_CACHE_HOME/queuectl/<spool id>-<node>/index.db: this node's own index of a shared spool."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "queuectl", f"{spool_id(root)}-{node}", "index.db")


def setting(spool: Spool, name: str, default: object) -> object:
    """A setting that must not break commands that never needed config.json (status
    on a spool whose config.json is broken still works; `config set` reports it)."""
    try:
        return spool.config.get(name)
    except ConfigError:
        return default


def index_store(spool: Spool, *, defer: bool) -> IndexStore:
    """The spool's index: --index / $QUEUECTL_INDEX (spool.index_path), else config `index`,
    else SPOOL/index.db on a local disk and this node's own file under
    $XDG_CACHE_HOME on a network filesystem. An index outside the spool is
    repaired under a lock file beside it: SPOOL/.lock does not cross hosts."""
    if spool.readonly:
        return IndexStore(":memory:", spool.lock, spool.has_jobs, fresh=spool.fresh, defer=defer)
    named = spool.index_path is not None  # a path a user or config named, not one of queuectl's choice
    if spool.index_path is None:
        chosen = setting(spool, "index", None)
        named = bool(chosen)
        spool.index_path = os.path.abspath(os.path.expanduser(chosen)) if chosen else (
            local_index_path(spool.root, _node_name()) if spool.network else spool.path("index.db"))
    path = spool.index_path
    if path == spool.path("index.db"):
        return IndexStore(path, spool.lock, spool.has_jobs, fresh=spool.fresh, defer=defer)
    refuse_path(path, named=named)  # before its lock file is made beside it
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    except OSError as e:
        raise SpoolError(f"cannot create the index directory {os.path.dirname(path)}: {e.strerror or e}") from None
    # A node's first index of a spool is built, not "missing": no notice then.
    fresh = spool.fresh or not os.path.exists(path)
    return IndexStore(path, SpoolLock(path + ".lock").lock, spool.has_jobs, fresh=fresh, defer=defer, named=named)


def move_on(cur: str, dest: str, job_id: str) -> bool:
    """The final rename of a record, which never replaces a file: False (and one
    line) if the job is already there or was moved on by another host's recovery."""
    try:
        rename_noreplace(cur, dest)
    except FileExistsError:
        unlink_quietly(cur)  # one job in one directory: the copy already there stays
        return dropped(job_id, f"is already in {os.path.basename(os.path.dirname(dest))}/")
    except FileNotFoundError:
        return dropped(job_id, "was moved on by another worker meanwhile")
    return True


def read_settled(fd: int, job_id: str, limit: int) -> Job | None:
    """The job at fd once it parses, read again for up to STALE_READ seconds; None if it never does.

    A network filesystem can show a file rewritten through another client short
    (its size still cached here) or stale for about a second: not proof of a bad file.
    """
    deadline = time.monotonic() + STALE_READ
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            os.fstat(fd)  # past the attribute timeout this asks the server for the size again
            return parse_file(read_fd(fd, limit), job_id)
        except (OSError, InvalidJob):
            continue
    return None


def dropped(job_id: str, why: str) -> bool:
    """One line for a result this process drops because its claim was taken over; False."""
    log.warning("job %s %s: dropping this worker's result", job_id, why)
    return False


# -- is this claim still mine? ----------------------------------------------------------------


def lost_claim(path: str, fd: int, seen: int, *, trust_inodes: bool, limit: int) -> str | None:
    """Why the processing/ file at path no longer holds this process's claim; None if it does.

    Gone: another host recovered it and it moved on. Same inode as the claimed
    file: ours (only on a local disk; sshfs numbers inodes by path, so a file
    replaced through another mount keeps its number). Otherwise a recovery
    by another host rewrote it with one more history entry than the `seen`
    this process read at its claim; an edit in place (sed -i) keeps the
    history and so keeps the claim.
    """
    gone = "was moved on by another worker meanwhile"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return gone
    except OSError:
        return None  # cannot tell: the rename below decides
    if trust_inodes and fd >= 0:
        try:
            if os.fstat(fd).st_ino == st.st_ino:
                return None
        except OSError:
            pass
    try:
        data, _st = read_nofollow(path, limit)
        current = parse_file(data, os.path.basename(path)[:-5])
    except FileNotFoundError:
        return gone
    except (OSError, InvalidJob):
        return None  # mid-edit by hand: keep the existing "edited under its owner" behaviour
    return None if len(current.history) <= seen else "was recovered by another worker meanwhile"

