"""Many hosts on one spool: the spool's filesystem type, its identity, where a
node keeps its index, and whether a claim is still this process's.

On a network filesystem rename stays atomic on the server, so claim-by-rename
still decides who runs a job, but flock does not cross hosts, inotify sees
nothing written by other hosts, file times are coarse and cached, and SQLite
must not be shared (its locking does not work there). Each node then keeps
its own index on local disk, built from the directories like any index.
"""

from __future__ import annotations

import os
from typing import ContextManager, Protocol

from . import lazylog
from .config import Config
from .errors import ConfigError, InvalidJob, SpoolError
from .fsio import SpoolLock, read_nofollow, rename_noreplace, unlink_quietly, write_tmp
from .indexstore import IndexStore, refuse_path
from .job import parse_file



class Spool(Protocol):
    """What this module needs of a spool; spool.Spool provides it (spool imports this module)."""
    root: str
    fresh: bool
    readonly: bool
    network: bool
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

