"""The lifecycle of one spool's index.db: open (building it aside), notice replacement,
repair, tell a full disk or a lock from corruption, and batch writes.

The directories are the truth, so a broken index is thrown away and rebuilt
from them; a full disk is not a broken index.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Callable, ContextManager

from . import lazylog
from .errors import SpoolError
from .fsio import disk_full as fsio_disk_full, not_regular, unlink_quietly
from .index import Index, IndexCorrupt

log = lazylog.get("queuectl.indexstore")


def is_busy(e: BaseException) -> bool:
    """A lock held by another process: wait or retry, never a reason to rebuild."""
    text = str(e)
    return "locked" in text or "busy" in text


def is_full(e: BaseException) -> bool:
    """SQLite's own words for a full disk: keep the index, it is not corrupt."""
    return "disk is full" in str(e)


def file_ident(path: str) -> tuple[int, int] | None:
    """(device, inode) of a healthy-looking index.db; None if missing, emptied or not SQLite.

    stat() only, never open(): closing any fd on index.db drops every POSIX lock
    this process's SQLite connection holds on it, so another process may then
    checkpoint and delete the WAL under that connection and corrupt the index.
    A SQLite file is a whole number of pages (>= 512 bytes each), which
    `echo garbage > index.db` or a truncation almost never leaves.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    if st.st_size == 0 or st.st_size % 512:
        return None
    return st.st_dev, st.st_ino


SQLITE_MAGIC = b"SQLite format 3\0"  # the first 16 bytes of every SQLite database


def refuse_path(path: str, *, named: bool) -> None:
    """SpoolError unless path may hold this spool's index: missing, or a regular file
    (and, at a path a user named, one of this user's).

    `--index /dev/null` run as root took the device for a corrupt index and
    renamed a database over it; a FIFO would block every command.
    """
    kind = not_regular(path)
    if kind is not None:
        raise SpoolError(f"the index {path} is {kind}, not a regular file: refusing to use it")
    if named:
        try:
            uid = os.stat(path).st_uid
        except OSError:
            return
        if uid != os.geteuid():
            raise SpoolError(f"the index {path} belongs to uid {uid}, not to this user: refusing to use it")


def _ours_to_replace(path: str) -> bool:
    """May a broken file at a path a user named be replaced? Only if it is empty, a broken
    SQLite database or one with queuectl's `jobs` table: anything else (`--index /etc/hosts`,
    another program's database) was never an index."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    except OSError:
        return not os.path.lexists(path) or os.path.islink(path)  # a link: only the link is replaced
    try:
        head = os.pread(fd, len(SQLITE_MAGIC), 0)
    finally:
        os.close(fd)
    if head != SQLITE_MAGIC:
        return not head
    from urllib.parse import quote
    try:
        # immutable: no lock, no -shm made; this only reads the schema
        con = sqlite3.connect(f"file:{quote(path)}?immutable=1", uri=True)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error:
        return True  # a broken database: an index that broke
    return not tables or "jobs" in tables


def _not_ours(path: str) -> SpoolError:
    return SpoolError(f"the index {path} is not a queuectl index (another kind of file, or another program's "
                      "database): refusing to use or replace it (give --index a file of its own)")


def _remove_db(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        unlink_quietly(path + suffix)


def _create_private(path: str) -> None:
    # SQLite would create it with the umask's mode; the spool is private.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))


class IndexStore:
    """Opens, repairs and replaces one spool's index.db, and batches writes to it.

    `lock` is the spool-wide lock (a context manager factory): creating or
    deleting index.db happens under it, so processes meeting a broken index at
    once repair it once. `has_jobs` says whether the state directories hold
    files (a missing index is then worth a notice). With `defer` set, rows
    reach index.db in one transaction per flush() instead of one commit each:
    safe to lose in a crash, since every move changed a directory mtime and the
    next sync finds it.
    """

    def __init__(self, path: str, lock: Callable[[], ContextManager], has_jobs: Callable[[], bool],
                 *, fresh: bool = False, defer: bool = False, named: bool = False):
        self.path = path
        self.named = named  # a path a user or config named (--index), not SPOOL/index.db
        self._lock = lock
        self.lock = lock  # the lock index repairs take (reindex takes it too)
        self._has_jobs = has_jobs
        self._fresh = fresh
        self.defer = defer
        self._index: Index | None = None
        self._ident: tuple | None = None  # which index.db file _index has open
        self._deferred: list[tuple] = []

    @property
    def index(self) -> Index:
        if self._index is None:
            self._index = self._open()
            self._ident = file_ident(self.path)
        return self._index

    def replaced(self) -> bool:
        """Was index.db deleted, truncated or overwritten under the open connection?"""
        if self._index is None:
            return False
        # None: it was already gone or broken when opened (wrecked at that very moment)
        return self._ident is None or file_ident(self.path) != self._ident

    def reopen_if_replaced(self) -> None:
        if self.replaced():
            self._index.close()
            self._index = None

    def _open(self) -> Index:
        path = self.path
        if path == ":memory:":
            return Index(path)  # a read-only spool's: built from the directories by sync
        refuse_path(path, named=self.named)
        if self.named and not _ours_to_replace(path):
            # Index() would add its tables to another program's database, or take a text file for a corrupt index.
            raise _not_ours(path)
        existed = os.path.exists(path)
        made = False
        if not existed:
            # Under the lock, and checked again: processes meeting a missing
            # index.db at once (a brand-new spool) must not delete the WAL files
            # another one has just created and opened; that corrupts the index.
            with self._lock():
                if not os.path.exists(path):
                    made = True
                    # A WAL left behind by a deleted index.db belongs to that database.
                    for suffix in ("-wal", "-shm"):
                        unlink_quietly(path + suffix)
                    # Built aside and renamed in, so no process ever opens an empty
                    # index.db (it would set it up at the same time, and say "empty").
                    new = path + ".new"
                    _remove_db(new)
                    _create_private(new)
                    try:
                        Index(new).close()
                    except IndexCorrupt as e:
                        _remove_db(new)
                        if fsio_disk_full(os.path.dirname(path)) or is_full(e):
                            raise SpoolError(f"no space left on device while creating index.db ({e})") from None
                        _create_private(new)  # an empty index.db below, then the usual repair
                    except BaseException:
                        _remove_db(new)
                        raise
                    # A close that could not checkpoint (a full disk) leaves the WAL
                    # under the .new name, where nothing would ever read or delete
                    # it. Dropping it at worst loses the schema: Index() remakes it.
                    for suffix in ("-wal", "-shm"):
                        unlink_quietly(new + suffix)
                    os.rename(new, path)
        try:
            index = Index(path)
        except IndexCorrupt as e:
            refuse_path(path, named=self.named)  # replaced by a device or FIFO since the check above
            if self.named and not _ours_to_replace(path):
                raise _not_ours(path)
            if fsio_disk_full(os.path.dirname(path)) or is_full(e):
                # SQLite cannot even open its WAL: a full disk, not a corrupt index.
                # Deleting the index here would only make things worse.
                raise SpoolError(f"no space left on device while opening index.db ({e})") from None
            with self._lock():
                try:
                    index = Index(path)  # another process may have repaired it meanwhile
                except IndexCorrupt:
                    for tries_left in (2, 1, 0):
                        _remove_db(path)
                        _create_private(path)
                        try:
                            index = Index(path)
                            break
                        except IndexCorrupt:
                            # Wrecked again while being set up (by a process that does
                            # not take the lock): start over, a few times.
                            if not tries_left:
                                raise
                    log.warning("index.db was corrupt (%s); rebuilding it from the spool directories", e)
            return index
        # Made above (aside, then renamed in): as new as if SQLite had just made it.
        index.created = index.created or made
        if index.created and existed:
            log.warning("index.db was empty; rebuilding it from the spool directories")
        elif index.created and not self._fresh and self._has_jobs():
            log.warning("index.db was missing; rebuilding it from the spool directories")
        return index

    def discard(self, error: Exception) -> None:
        """index.db broke under an open connection (malformed, overwritten): drop it
        so the next use rebuilds it from the directories, unless another process
        already replaced it. A full disk or a lock is not corruption: raise."""
        if is_full(error):
            raise SpoolError(f"no space left on device while updating index.db ({error})") from None
        if is_busy(error):
            raise error
        ident = self._ident
        self.close(flush=False)
        with self._lock():
            if file_ident(self.path) == ident and not_regular(self.path) is None and (
                    not self.named or _ours_to_replace(self.path)):
                _remove_db(self.path)
                log.warning("index.db is corrupt (%s); rebuilding it from the spool directories", error)

    def close(self, *, flush: bool = True) -> None:
        if self._index is None:
            self._deferred = []
            return
        if flush:
            self.flush()
        else:
            self._deferred = []
        try:
            self._index.close()
        except Exception:
            pass
        self._index = None

    # -- writes: the files are the truth, so a failed write only leaves work for the next sync

    def upsert(self, row: tuple) -> None:
        """A row made by row_values(), written now or (deferred) at the next flush()."""
        self._deferred.append(row)
        if not self.defer:
            self.flush()

    def add_rows(self, rows: list[tuple], *, new: bool = False) -> None:
        """Rows written now, in one transaction (new: see Index.upsert_rows)."""
        idx = self.index
        idx.begin()
        idx.upsert_rows(rows, new=new)
        idx.commit()

    def flush(self) -> None:
        if not self._deferred:
            return
        rows, self._deferred = self._deferred, []
        idx = self.index
        try:
            if len(rows) == 1:
                idx.upsert_rows(rows)
            else:
                idx.begin()
                idx.upsert_rows(rows)
                idx.commit()
        except sqlite3.Error as e:
            try:
                idx.rollback()
            except sqlite3.Error:
                pass
            if is_busy(e):
                # Another process held the index: these rows are the only record
                # of outcomes (scans that could restore them skip done/), so
                # they wait for the next flush instead of being dropped.
                self._deferred = rows + self._deferred

    def delete(self, job_id: str) -> None:
        self.flush()
        try:
            self.index.delete([job_id])
        except sqlite3.Error:
            pass
