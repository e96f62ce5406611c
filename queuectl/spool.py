"""The directory protocol: atomic writes, enqueue, drop-ins, claim, record, recover.

Every state change is a rename inside one filesystem, so a job is in exactly
one state directory at any instant. The index (index.py) follows the files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import sqlite3
import stat
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from . import config as configmod
from .errors import DuplicateJob, InvalidJob, JobNotFound, SpoolError
from .index import Index, IndexCorrupt, row_values
from .job import Job, JobState, check_id, loads, now_iso

STATE_DIRS = [s.dirname for s in JobState]
SUBDIRS = ["tmp", *STATE_DIRS, "rejected", "logs", "workers"]
# A dotfile's timestamps within this many seconds of a directory listing may
# hide a change made in the same clock tick (git's "racy" problem), so such a
# listing is not trusted on the next look.
RACY_NS = 1_000_000_000
_counter = itertools.count()


def default_spool() -> str:
    env = os.environ.get("QUEUECTL_SPOOL")
    if env:
        return env
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "queuectl", "spool")


def is_ignored(name: str) -> bool:
    """Writers' scratch names: dotfiles and *.tmp (but `.json` alone is a bad job)."""
    return (name.startswith(".") and name != ".json") or name.endswith(".tmp")


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc = None


def _load_libc():
    global _libc
    if _libc is None:
        import ctypes  # lazily: most commands never need it
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    return _libc


def syncfs(fd: int) -> None:
    """Flush every dirty file of one filesystem: one call instead of one fsync a file."""
    libc = _load_libc()
    if libc and hasattr(libc, "syncfs") and libc.syncfs(fd) == 0:
        return
    os.sync()


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_noreplace(src: str, dst: str) -> None:
    """rename(2) that raises FileExistsError instead of replacing dst.

    renameat2(RENAME_NOREPLACE) is one atomic step; where the kernel or the
    filesystem lacks it, link + unlink gives the same no-clobber guarantee.
    """
    libc = _load_libc()
    if libc and hasattr(libc, "renameat2"):
        import ctypes
        if libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), dst)
    os.link(src, dst)
    os.unlink(src)


def _space_error(e: OSError, what: str) -> SpoolError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return SpoolError(f"no space left on device while {what}")
    return SpoolError(f"{what}: {e.strerror or e}")


@dataclass
class Claim:
    """A job a worker holds: the open, flock'ed file in processing/."""
    job: Job
    fd: int
    source: JobState

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class SyncReport:
    added: int = 0
    removed: int = 0
    accepted: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    waiting: int = 0  # unparseable drop-ins still inside their grace period
    busy: bool = False  # another process held the drop-in lock: look again shortly


class Spool:
    def __init__(self, root: str, *, create: bool = True, notify: Callable[[str], None] | None = None):
        self.root = os.path.abspath(root)
        self._lock_depth = 0  # how deep this Spool holds the spool-wide lock
        self.notify = notify or (lambda msg: None)
        self.fresh = False
        if create:
            self._create()
        elif not os.path.isdir(self.root):
            raise SpoolError(f"no spool at {self.root}")
        self._config: configmod.Config | None = None
        self._index: Index | None = None
        self._index_ident: tuple | None = None  # which index.db file _index has open
        # Workers set this: outcome rows then reach index.db in one transaction
        # per flush_index() instead of one commit per job. Safe to lose in a
        # crash: every move changed a directory mtime, so sync() finds it.
        self.defer_index = False
        # Commands wait for a busy drop-in acceptance (list must show every
        # drop-in); workers set this False and let the holder finish it.
        self.wait_for_dropins = True
        self._deferred: list[tuple] = []

    # -- layout --------------------------------------------------------------

    def _create(self) -> None:
        try:
            if not os.path.isdir(self.root):
                self.fresh = True
                os.makedirs(self.root, mode=0o700, exist_ok=True)
            for name in SUBDIRS:
                path = os.path.join(self.root, name)
                if not os.path.isdir(path):
                    try:
                        os.mkdir(path, 0o700)
                    except FileExistsError:
                        # Another process creating the same new spool got there first.
                        if not os.path.isdir(path):
                            raise
        except OSError as e:
            raise SpoolError(f"cannot create spool at {self.root}: {e.strerror or e}") from None

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def job_path(self, state: JobState, job_id: str) -> str:
        return os.path.join(self.root, state.dirname, job_id + ".json")

    @contextlib.contextmanager
    def lock(self) -> Iterator[bool]:
        """The spool-wide lock for cold paths (config writes, reindex, index repair).

        filelock's Unix lock is flock(2) on SPOOL/.lock, the same lock hot_lock()
        takes, so the two exclude each other between processes; within this
        Spool either one nests inside the other instead of deadlocking.
        """
        if self._lock_depth:
            with self._held():
                yield True
            return
        from filelock import FileLock
        with FileLock(self.path(".lock"), mode=0o600), self._held():
            yield True

    @contextlib.contextmanager
    def hot_lock(self, *, wait: bool = True) -> Iterator[bool]:
        """The same spool-wide lock for hot paths (enqueue, drop-in acceptance).

        A bare flock(2): a waiter is woken by the kernel the moment the lock is
        free, where filelock polls every 50 ms (that made drop-in pickup slow
        when two idle workers raced for it), and a CLI is spared filelock's
        14 ms import. With wait=False it yields False, without the lock, if
        another process holds it.
        """
        if self._lock_depth:
            with self._held():
                yield True
            return
        fd = os.open(self.path(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            with self._held():
                yield True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1

    # -- config ----------------------------------------------------------------

    @property
    def config(self) -> configmod.Config:
        if self._config is None:
            try:
                with open(self.path("config.json"), "rb") as f:
                    self._config = configmod.from_bytes(f.read())
            except FileNotFoundError:
                self._config = configmod.defaults()
        return self._config

    def set_config(self, key: str, value) -> tuple[str, object]:
        name = configmod.normalize_key(key)
        parsed = configmod.parse_value(name, value)
        with self.lock():
            self._config = None
            current = dict(self.config)
            current[name] = parsed
            self.write_file(self.path("config.json"), configmod.to_bytes(current), durable=True)
            self._config = configmod.Config(current)
        return name, parsed

    # -- atomic files --------------------------------------------------------------

    def _tmp_name(self) -> str:
        return self.path("tmp", f".{os.getpid()}.{next(_counter)}.{os.urandom(3).hex()}.tmp")

    def write_tmp(self, data: bytes, *, durable: bool, mtime: float | None = None) -> str:
        """Write data to a new file in tmp/ and return its path."""
        path, fd = self._write_tmp_fd(data, durable=durable, mtime=mtime)
        os.close(fd)
        return path

    def _write_tmp_fd(self, data: bytes, *, durable: bool, mtime: float | None = None) -> tuple[str, int]:
        """write_tmp, but the file stays open: the caller may lock it before renaming."""
        path = self._tmp_name()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise _space_error(e, "writing a job file") from None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
            if durable:
                os.fsync(fd)
        except OSError as e:
            os.close(fd)
            _unlink_quietly(path)
            raise _space_error(e, "writing a job file") from None
        return path, fd

    def write_file(self, dest: str, data: bytes, *, durable: bool, mtime: float | None = None) -> None:
        """Write, (fsync,) rename: a reader sees the old file or the new one, never half."""
        tmp = self.write_tmp(data, durable=durable, mtime=mtime)
        try:
            os.rename(tmp, dest)
        except OSError as e:
            _unlink_quietly(tmp)
            raise _space_error(e, f"writing {dest}") from None
        if durable:
            fsync_dir(os.path.dirname(dest))

    def _place(self, tmp: str, dest: str, *, bulk: bool = False) -> None:
        """Move tmp to dest unless dest exists (a concurrent enqueue of the same id).

        Bulk enqueues use renameat2 (one syscall a job, but it costs a ctypes
        import that a single enqueue's start-up time cannot afford).
        """
        try:
            if bulk:
                rename_noreplace(tmp, dest)
                return
            os.link(tmp, dest)
        except FileExistsError:
            _unlink_quietly(tmp)
            raise DuplicateJob(f"job {os.path.basename(dest)[:-5]} already exists") from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                _unlink_quietly(tmp)
                raise _space_error(e, "enqueueing") from None
            # No hard links here (some network filesystems): rename is still atomic,
            # only the no-clobber guarantee against a racing writer is lost.
            os.rename(tmp, dest)
            return
        _unlink_quietly(tmp)

    # -- the index -------------------------------------------------------------------

    @property
    def index(self) -> Index:
        if self._index is None:
            self._index = self._open_index()
            self._index_ident = _index_ident(self.path("index.db"))
        return self._index

    def _index_replaced(self) -> bool:
        stored = self._index_ident
        # None: it was already gone or broken when opened (wrecked at that very moment)
        return stored is None or _index_ident(self.path("index.db")) != stored

    def _open_index(self) -> Index:
        path = self.path("index.db")
        existed = os.path.exists(path)
        made = False
        if not existed:
            # Under the lock, and checked again: processes meeting a missing
            # index.db at once (a brand-new spool) must not delete the WAL files
            # another one has just created and opened; that corrupts the index.
            with self.lock():
                if not os.path.exists(path):
                    made = True
                    # A WAL left behind by a deleted index.db belongs to that database.
                    for suffix in ("-wal", "-shm"):
                        _unlink_quietly(path + suffix)
                    # Built aside and renamed in, so no process ever opens an empty
                    # index.db (it would set it up at the same time, and say "empty").
                    new = path + ".new"
                    for suffix in ("", "-wal", "-shm"):
                        _unlink_quietly(new + suffix)
                    # SQLite would create it with the umask's mode; the spool is private.
                    os.close(os.open(new, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
                    try:
                        Index(new).close()
                    except IndexCorrupt:
                        pass  # an empty index.db below, then the usual repair
                    os.rename(new, path)
        try:
            index = Index(path)
        except IndexCorrupt as e:
            if _disk_full(self.root):
                # SQLite cannot even open its WAL: a full disk, not a corrupt index.
                # Deleting the index here would only make things worse.
                raise SpoolError(f"no space left on device while opening index.db ({e})") from None
            with self.lock():
                try:
                    index = Index(path)  # another process may have repaired it meanwhile
                except IndexCorrupt:
                    for suffix in ("", "-wal", "-shm"):
                        _unlink_quietly(path + suffix)
                    # As above: SQLite would create it with the umask's mode.
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
                    index = Index(path)
                    self.notify(f"index.db was corrupt ({e}); rebuilding it from the spool directories")
            return index
        # Made above (aside, then renamed in): as new as if SQLite had just made it.
        index.created = index.created or made
        if index.created and existed:
            self.notify("index.db was empty; rebuilding it from the spool directories")
        elif index.created and not self.fresh and any(self._has_files(d) for d in STATE_DIRS):
            self.notify("index.db was missing; rebuilding it from the spool directories")
        return index

    def _has_files(self, dirname: str) -> bool:
        with os.scandir(self.path(dirname)) as it:
            return any(not is_ignored(e.name) for e in it)

    def close(self) -> None:
        if self._index is not None:
            self.flush_index()
            self._index.close()
            self._index = None

    def reindex(self) -> dict[str, int]:
        """Forget the index and rebuild it from the directories."""
        idx = self.index  # (a corrupt index.db is repaired on opening)
        with self.lock():
            idx.begin()
            idx.clear()
            idx.commit()
        self.sync()
        return self.index.counts()

    # -- enqueue ----------------------------------------------------------------------

    def new_job(self, spec: object, *, fallback_id: str | None = None) -> Job:
        return Job.from_spec(spec, default_max_retries=self.config.max_retries, fallback_id=fallback_id)

    def _check_new_id(self, job_id: str, own: str | None = None) -> None:
        """Raise DuplicateJob if job_id (ignoring case) is taken by any job but `own`."""
        for d in STATE_DIRS:
            p = os.path.join(self.root, d, job_id + ".json")
            if p != own and os.path.lexists(p):
                raise DuplicateJob(f"job {job_id} already exists (in {d}/)")
        row = self.index.lookup(job_id)
        if row is not None:
            p = self.job_path(row.state, row.id)
            if p != own and os.path.lexists(p):
                raise DuplicateJob(f"job {row.id} already exists (in {row.state.dirname}/)")

    def enqueue(self, job: Job) -> Job:
        """Durably add one job to pending/. Writes nothing if it raises."""
        return self.enqueue_many([job])[0]

    def enqueue_many(self, jobs: list[Job], chunk: int = 4096) -> list[Job]:
        # Ids are unique ignoring case, which no no-clobber rename can enforce
        # between two spellings (job1 vs JOB1 racing): check and place under the
        # spool lock. Open the index first: repairing it takes the same lock.
        self.index  # noqa: B018
        with self.hot_lock():
            return self._enqueue_many(jobs, chunk)

    def _enqueue_many(self, jobs: list[Job], chunk: int = 4096) -> list[Job]:
        """Durably add jobs to pending/, all checked before any is written.

        The fsyncs are batched: every file of a chunk is written, one syncfs()
        flushes them all, then they are linked into pending/ and the directory
        is fsynced. An accepted job survives a power cut.
        """
        bulk = len(jobs) > 16
        # For many jobs one listing of each state directory beats five stats a job.
        taken = self._taken_ids() if bulk else {}
        seen: set[str] = set()
        for job in jobs:
            key = job.id.lower()
            if key in seen:
                raise DuplicateJob(f"job {job.id} appears twice")
            seen.add(key)
            if not bulk:
                self._check_new_id(job.id)
            elif key in taken:
                # Name the existing job, as _check_new_id does (it may differ in case).
                raise DuplicateJob(f"job {taken[key][1]} already exists (in {taken[key][0]}/)")
        done = 0
        for start in range(0, len(jobs), chunk):
            part = jobs[start:start + chunk]
            tmps: list[str] = []
            rows: list[tuple] = []
            placed = 0
            try:
                for job in part:
                    data = job.to_json()
                    rows.append(row_values(job, JobState.PENDING, data.decode("utf-8")))
                    tmps.append(self.write_tmp(data, durable=len(part) == 1))
                if len(part) > 1:
                    fd = os.open(self.path("tmp"), os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        syncfs(fd)
                    finally:
                        os.close(fd)
                for job, tmp in zip(part, tmps):
                    self._place(tmp, self.job_path(JobState.PENDING, job.id), bulk=bulk)
                    placed += 1
            except BaseException as e:
                for tmp in tmps[placed:]:
                    _unlink_quietly(tmp)
                if placed or done:
                    fsync_dir(self.path("pending"))
                    self._index_add(rows[:placed])
                    if isinstance(e, (SpoolError, DuplicateJob)):
                        raise type(e)(f"{e} (after {done + placed} of {len(jobs)} jobs were enqueued)") from None
                raise
            fsync_dir(self.path("pending"))
            self._index_add(rows)
            done += len(part)
        return jobs

    def _index_add(self, rows: list[tuple]) -> None:
        idx = self.index
        idx.begin()
        idx.upsert_rows(rows)
        idx.commit()

    def _taken_ids(self) -> dict[str, tuple[str, str]]:
        """Lower-cased id -> (directory, id), for every job file on disk."""
        taken: dict[str, tuple[str, str]] = {}
        for d in STATE_DIRS:
            for name in os.listdir(self.path(d)):
                if name.endswith(".json") and not is_ignored(name):
                    taken[name[:-5].lower()] = (d, name[:-5])
        return taken

    # -- reading -----------------------------------------------------------------------

    def read_job(self, path: str) -> Job:
        """Parse a job file without following symlinks."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            return Job.from_record(loads(_read_fd(fd)))
        finally:
            os.close(fd)

    def find(self, job_id: str) -> tuple[JobState, str]:
        """The state and path of a job, looked up on disk (the truth)."""
        check_id(job_id)
        for state in JobState:
            p = self.job_path(state, job_id)
            if os.path.lexists(p):
                return state, p
        row = self.index.lookup(job_id)  # a different-case spelling
        if row is not None and os.path.lexists(self.job_path(row.state, row.id)):
            return row.state, self.job_path(row.state, row.id)
        raise JobNotFound(f"no job {job_id}")

    def show(self, job_id: str) -> tuple[Job, str]:
        state, path = self.find(job_id)
        try:
            job = self.read_job(path)
        except FileNotFoundError:
            raise JobNotFound(f"job {job_id} moved while being read; try again") from None
        # The directory is the truth: a file moved by hand still says its old state.
        job.state = state
        return job, path

    # -- reconcile the index with the directories ------------------------------------------

    def sync(self, *, force: bool = False) -> SyncReport:
        """_sync(); an index that turns out corrupt mid-way is discarded and rebuilt."""
        try:
            return self._sync(force=force)
        except sqlite3.DatabaseError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise
            self.discard_index(e)
            return self._sync(force=force)

    def discard_index(self, error: Exception) -> None:
        """index.db broke under an open connection (malformed, overwritten): drop it
        so the next use rebuilds it from the directories, unless another process
        already replaced it."""
        ident = getattr(self, "_index_ident", None)
        if self._index is not None:
            try:
                self._index.close()
            except Exception:
                pass
            self._index = None
        self._deferred = []
        with self.lock():
            if _index_ident(self.path("index.db")) == ident:
                for suffix in ("", "-wal", "-shm"):
                    _unlink_quietly(self.path("index.db") + suffix)
                self.notify(f"index.db is corrupt ({error}); rebuilding it from the spool directories")

    def _sync(self, *, force: bool = False) -> SyncReport:
        """Bring the index in line with the directories and accept drop-ins.

        Cheap when nothing changed: one stat per state directory. A directory
        whose mtime moved since it was last listed is listed again and diffed
        against the index.
        """
        report = SyncReport()
        self.flush_index()
        if self._index is not None and self._index_replaced():
            # Deleted, truncated or overwritten under an open connection: this
            # process would go on using a ghost. Reopen it (rebuilding it).
            self._index.close()
            self._index = None
        idx = self.index
        marks = idx.dirmarks()
        changed = []
        for d in STATE_DIRS:
            st = os.stat(self.path(d))
            mark = marks.get(d)
            if (force or mark is None or mark[0] != st.st_mtime_ns
                    or mark[1] - mark[0] < RACY_NS):
                changed.append(d)
        if not changed:
            return report
        dropins: list[str] = []
        idx.begin()
        try:
            for d in changed:
                state = JobState.parse(d)
                checked = time.time_ns()
                mtime = os.stat(self.path(d)).st_mtime_ns
                names = os.listdir(self.path(d))
                on_disk = {n[:-5] for n in names if n.endswith(".json") and not is_ignored(n)}
                known = idx.ids_in(state)
                gone = known - on_disk
                if gone:
                    idx.delete(gone)
                    report.removed += len(gone)
                if state is JobState.PENDING:
                    dropins = [n for n in names if not is_ignored(n)
                               and not (n.endswith(".json") and n[:-5] in known)]
                else:
                    for job_id in on_disk - known:
                        try:
                            job = self.read_job(self.path(d, job_id + ".json"))
                        except (OSError, InvalidJob):
                            continue  # `check` reports it; a worker never claims from here
                        idx.upsert(job, state)
                        report.added += 1
                    # a name that is not <id>.json in a non-pending dir is `check`'s business
                idx.set_dirmark(d, mtime, checked)
            idx.commit()
        except BaseException:
            idx.rollback()
            raise
        if dropins:
            self._accept_dropins(dropins, report)
            if report.waiting:
                # A file still being written changes its own mtime, not the
                # directory's: forget pending/'s mark so the next sync reads the
                # waiting file again (to accept it, or reject it after the grace).
                idx.set_dirmark("pending", 0, 0)
        return report

    def _accept_dropins(self, names: list[str], report: SyncReport) -> None:
        """Turn files other programs put into pending/ into canonical jobs, or reject them.

        Accepted files are rewritten in batches, like a bulk enqueue: every
        canonical file of a batch is written, one syncfs() makes them durable,
        then each is renamed into place and pending/ is fsynced once.
        """
        with self.hot_lock(wait=self.wait_for_dropins) as locked:
            if not locked:
                # Another process is accepting drop-ins right now; a worker need
                # not queue up behind it (the files will be in the index soon).
                report.waiting += len(names)
                report.busy = True
                return
            grace = self.config.dropin_grace
            # For many drop-ins one listing of the state directories beats five
            # stats and an index query a file.
            on_disk = self._taken_ids() if len(names) > 16 else None
            taken: dict[str, str] = {}  # lower-cased id -> id, accepted in this pass
            batch: list[_Admitted] = []
            for name in sorted(names):
                src = self.path("pending", name)
                try:
                    admitted = self._admit(src, name, grace, taken, on_disk)
                except FileNotFoundError:
                    continue  # claimed or moved by someone else meanwhile
                except _TooFresh:
                    report.waiting += 1
                    continue
                except InvalidJob as e:
                    if self.reject(src, name, str(e)):
                        report.rejected.append((name, str(e)))
                    continue
                taken[admitted.job.id.lower()] = admitted.job.id
                batch.append(admitted)
                if len(batch) >= 1024:
                    self._commit_admitted(batch, report)
                    batch = []
            if batch:
                self._commit_admitted(batch, report)

    def _commit_admitted(self, batch: list["_Admitted"], report: SyncReport) -> None:
        tmps: list[str | None] = []
        try:
            for a in batch:
                tmps.append(None if a.data is None else self.write_tmp(a.data, durable=False))
            if any(tmps):
                fd = os.open(self.path("tmp"), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    syncfs(fd)
                finally:
                    os.close(fd)
            rows = []
            for a, tmp in zip(batch, tmps):
                if tmp is not None:
                    if a.src == a.dest:
                        os.rename(tmp, a.dest)  # replace the drop-in by its canonical form
                    else:
                        try:
                            rename_noreplace(tmp, a.dest)
                        except FileExistsError:
                            _unlink_quietly(tmp)
                            continue  # someone took the id meanwhile; the drop-in stays for the next pass
                        _unlink_quietly(a.src)
                rows.append(row_values(a.job, JobState.PENDING, None if a.data is None else a.data.decode()))
                report.accepted.append(a.job.id)
        except BaseException:
            for tmp in tmps:
                if tmp is not None:
                    _unlink_quietly(tmp)
            raise
        fsync_dir(self.path("pending"))
        idx = self.index
        idx.begin()
        idx.upsert_rows(rows)
        idx.commit()

    def _check_dropin_id(self, job_id: str, own: str | None, taken: dict[str, str],
                         on_disk: dict[str, tuple[str, str]] | None = None) -> None:
        """_check_new_id, plus the ids accepted earlier in the same pass: their
        index rows are written in batches, so the lookup ignoring case misses them."""
        other = taken.get(job_id.lower())
        if other is not None:
            raise DuplicateJob(f"job {other} already exists (in pending/)")
        if on_disk is None:
            self._check_new_id(job_id, own=own)
            return
        hit = on_disk.get(job_id.lower())
        if hit is not None and os.path.join(self.root, hit[0], hit[1] + ".json") != own:
            raise DuplicateJob(f"job {hit[1]} already exists (in {hit[0]}/)")

    def _admit(self, src: str, name: str, grace: float, taken: dict[str, str] | None = None,
               on_disk: dict[str, tuple[str, str]] | None = None) -> "_Admitted":
        """Validate one drop-in and say what to write; raise InvalidJob to reject it."""
        taken = {} if taken is None else taken
        st = os.lstat(src)
        if stat.S_ISLNK(st.st_mode):
            raise InvalidJob("symlink (never followed)")
        if stat.S_ISDIR(st.st_mode):
            raise InvalidJob("a directory, not a job file")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidJob("not a regular file (FIFO, socket or device)")
        if st.st_nlink > 1:
            # enqueue links tmp/X to pending/<id>.json, then unlinks tmp/X: a worker
            # woken by that link can list the file in between. Wait (the link set
            # the ctime) rather than reject a job enqueue is accepting.
            if time.time() - st.st_ctime < grace and (self._linked_from_tmp(st.st_ino)
                                                       or _nlink(src) == 1):
                # _nlink: enqueue may have unlinked its tmp/ copy between the
                # lstat above and the scan of tmp/; look at the file again later.
                raise _TooFresh()
            raise InvalidJob(f"hard-linked file ({st.st_nlink} links): another path could change it")
        if name == ".json":
            raise InvalidJob("empty file name: no job id")
        if not name.endswith(".json"):
            raise InvalidJob("file name does not end in .json")
        limit = self.config.max_job_size
        if st.st_size > limit:
            raise InvalidJob(f"file is {st.st_size} bytes, over the limit of {limit} (config max_job_size)")
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fst = os.fstat(fd)
            if fst.st_ino != st.st_ino or not stat.S_ISREG(fst.st_mode):
                raise FileNotFoundError(src)  # swapped under us: look again next scan
            data = _read_fd(fd, limit + 1)
        finally:
            os.close(fd)
        if len(data) > limit:
            raise InvalidJob(f"file is over the limit of {limit} bytes (config max_job_size)")
        try:
            spec = loads(data)
        except InvalidJob:
            if time.time() - st.st_mtime < grace:
                raise _TooFresh() from None
            raise
        stem = name[:-5]
        if isinstance(spec, dict) and spec.get("id") == stem and "created_at" in spec and "state" in spec:
            # Already in queuectl's own form (an index rebuild, or a file moved
            # back by hand): keep its history and times.
            job = Job.from_record(spec)
            self._check_dropin_id(job.id, src, taken, on_disk)
            if job.state is JobState.PENDING and "max_retries" in spec:
                return _Admitted(job, None, src, src)
            if "max_retries" not in spec:
                job.max_retries = self.config.max_retries
            job.state, job.next_run_at = JobState.PENDING, None
            return _Admitted(job, job.to_json(), src, src)
        fallback = None
        if not (isinstance(spec, dict) and "id" in spec):
            fallback = check_id(stem)
        job = self.new_job(spec, fallback_id=fallback)
        dest = self.job_path(JobState.PENDING, job.id)
        self._check_dropin_id(job.id, src if src == dest else None, taken, on_disk)
        return _Admitted(job, job.to_json(), src, dest)

    def _linked_from_tmp(self, ino: int) -> bool:
        """Is another link to this inode one of enqueue's own files in tmp/?"""
        try:
            with os.scandir(self.path("tmp")) as it:
                return any(e.inode() == ino for e in it)
        except OSError:
            return False

    def reject(self, src: str, name: str, reason: str) -> bool:
        """Move a file, unchanged, to rejected/ with NAME.reason beside it."""
        dest_name = name or "unnamed"
        for n in itertools.count():
            candidate = dest_name if n == 0 else f"{dest_name}.{n}"
            dest = self.path("rejected", candidate)
            if not os.path.lexists(dest) and not os.path.lexists(dest + ".reason"):
                break
        try:
            os.rename(src, dest)
        except FileNotFoundError:
            return False
        line = " ".join(reason.split()) + "\n"
        self.write_file(dest + ".reason", line.encode(), durable=False)
        self.notify(f"rejected {name}: {reason}")
        return True

    # -- workers: claim, record, recover ----------------------------------------------------

    def claim(self, job_id: str, source: JobState) -> Claim | None:
        """Take a job for running, or None if another worker got it first.

        The file is flock'ed before the rename, so from the moment it appears in
        processing/ it is locked by its owner; the lock dies with the process.
        """
        src = self.job_path(source, job_id)
        fd = lock_job_file(src)
        if fd is None:
            return None
        try:
            dest = self.job_path(JobState.PROCESSING, job_id)
            if os.path.lexists(dest):
                raise FileExistsError(dest)  # a duplicate: `check` reports it, never run twice
            os.rename(src, dest)
        except OSError:
            os.close(fd)
            return None
        try:
            job = Job.from_record(loads(_read_fd(fd)))
            if job.id != job_id:
                raise InvalidJob(f"id field {job.id!r} does not match file name {job_id}.json")
        except (InvalidJob, OSError) as e:
            os.close(fd)
            self.reject(dest, job_id + ".json", f"invalid job file in {source.dirname}/: {e}")
            self._index_delete(job_id)
            return None
        return Claim(job, fd, source)

    def record(self, claim: Claim, job: Job, *, durable: bool = False) -> None:
        """Move a claimed job to the directory of job.state with its new contents.

        The new contents replace the file in processing/ first (locked, so a
        recoverer never mistakes it for orphaned), then one rename moves it on.
        A crash in between leaves a processing/ file whose state field says
        where it was going, and recovery finishes the move.
        """
        job.updated_at = now_iso()
        mtime = job.run_ts if job.state is JobState.FAILED and job.next_run_at else None
        cur = self.job_path(JobState.PROCESSING, job.id)
        dest = self.job_path(job.state, job.id)
        data = job.to_json()
        tmp, fd = self._write_tmp_fd(data, durable=durable, mtime=mtime)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(tmp, cur)
            claim.release()
            claim.fd = fd
            if dest != cur:
                os.rename(cur, dest)
                if durable:
                    fsync_dir(os.path.dirname(dest))
        except OSError as e:
            _unlink_quietly(tmp)
            raise _space_error(e, f"recording job {job.id}") from None
        finally:
            claim.release()
        self._index_upsert(job, data)

    def _index_upsert(self, job: Job, data: bytes | None = None, state: JobState | None = None) -> None:
        row = row_values(job, state or job.state, None if data is None else data.decode("utf-8"))
        self._deferred.append(row)
        if not self.defer_index:
            self.flush_index()

    def flush_index(self) -> None:
        """Write deferred index rows; the files are the truth, so a failure here only
        leaves work for the next sync()."""
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
        except Exception:
            try:
                idx.rollback()
            except Exception:
                pass

    def _index_delete(self, job_id: str) -> None:
        self.flush_index()
        try:
            self.index.delete([job_id])
        except Exception:
            pass

    def orphans(self) -> Iterator[tuple[str, Claim]]:
        """Claims on processing/ jobs whose owner is gone (their lock is free)."""
        try:
            names = os.listdir(self.path("processing"))
        except FileNotFoundError:
            return
        remote = None
        for name in names:
            if is_ignored(name) or not name.endswith(".json"):
                continue
            path = self.path("processing", name)
            fd = lock_job_file(path)
            if fd is None:
                continue  # its worker lives (or it just moved on)
            if remote is None:
                remote = self._remote_leases()
            if remote and _leased(name[:-5], fd, remote, self.config.lease):
                os.close(fd)
                continue
            try:
                job = Job.from_record(loads(_read_fd(fd)))
                if job.id != name[:-5]:
                    raise InvalidJob(f"id field {job.id!r} does not match file name {name}")
            except (InvalidJob, OSError) as e:
                os.close(fd)
                self.reject(path, name, f"invalid job file in processing/: {e}")
                self._index_delete(name[:-5])
                continue
            yield name[:-5], Claim(job, fd, JobState.PROCESSING)

    def _remote_leases(self) -> list[dict]:
        """Heartbeats of live workers on other hosts.

        A free flock proves a job's owner dead only where locks work across
        hosts (local disks, NFS). On a shared filesystem without them (sshfs,
        some FUSE mounts) a worker on another host may hold the job all the
        same, so its heartbeat lease counts as the lock.
        """
        host = hostname()
        return [w for w in read_workers(self) if w.get("host") != host and w["alive"]]

    def _index_upsert_state(self, job: Job, state: JobState) -> None:
        self._index_upsert(job, state=state)

    # -- the dead letter queue ----------------------------------------------------------------

    def _hold(self, state: JobState, job_id: str) -> Claim:
        """Lock a job file in place (as a worker's claim does), or raise JobNotFound."""
        fd = lock_job_file(self.job_path(state, job_id), wait=True)
        if fd is None:
            raise JobNotFound(f"no job {job_id} in {state.dirname}/")
        try:
            job = Job.from_record(loads(_read_fd(fd)))
        except (OSError, InvalidJob) as e:
            os.close(fd)
            raise JobNotFound(f"no valid job {job_id} in {state.dirname}/ ({e})") from None
        return Claim(job, fd, state)

    def requeue(self, job_id: str, state: JobState = JobState.DEAD) -> Job:
        """Move a job back to pending/ with attempts reset to 0; its history is kept."""
        claim = self._hold(state, job_id)
        job = claim.job
        job.history.append({"event": f"requeued from {state.dirname}/", "at": now_iso(),
                            "attempts_before": job.attempts})
        job.state, job.attempts, job.next_run_at = JobState.PENDING, 0, None
        job.updated_at = now_iso()
        cur = self.job_path(state, job_id)
        tmp = self.write_tmp(job.to_json(), durable=True)
        try:
            # Replace in place, then one rename: the job is never in two directories.
            os.rename(tmp, cur)
            os.rename(cur, self.job_path(JobState.PENDING, job_id))
            fsync_dir(self.path("pending"))
        except OSError as e:
            _unlink_quietly(tmp)
            raise _space_error(e, f"requeueing {job_id}") from None
        finally:
            claim.release()
        self._index_upsert(job)
        return job

    def purge(self, job_id: str, state: JobState = JobState.DEAD) -> None:
        """Delete a job (and its log) for good."""
        claim = self._hold(state, job_id)
        try:
            os.unlink(self.job_path(state, job_id))
        finally:
            claim.release()
        _unlink_quietly(self.path("logs", job_id + ".log"))
        self._index_delete(job_id)

    # -- workers' heartbeat files ---------------------------------------------------------

    def heartbeat_path(self, worker_id: str) -> str:
        return self.path("workers", f"{worker_id}.json")


# -- worker heartbeats (workers/): here, not in worker.py, so `status` need not
# import multiprocessing and subprocess just to count them --------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_workers(spool: "Spool") -> list[dict]:
    """Every heartbeat file, each with an `alive` flag."""
    host = hostname()
    lease = spool.config.lease
    now = time.time()
    out = []
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
                info = json.loads(f.read())
            mtime = os.stat(path).st_mtime
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict):
            continue
        if info.get("host") == host:
            alive = _pid_alive(int(info.get("pid", 0)))
        else:
            alive = now - mtime < lease
        info["alive"] = alive
        info["file"] = name
        out.append(info)
    return out


def count_live_workers(spool: "Spool") -> int:
    return sum(1 for w in read_workers(spool) if w["alive"] and w.get("role") == "worker")



@dataclass
class _Admitted:
    """A valid drop-in: the job, its canonical bytes (None: the file already is), where it goes."""
    job: Job
    data: bytes | None
    src: str
    dest: str


class _TooFresh(Exception):
    """An unparseable drop-in that may still be being written."""


def _leased(job_id: str, fd: int, remote: list[dict], lease: float) -> bool:
    """May a live worker on another host own this processing/ file?

    Yes if its heartbeat names the job, or if the file was claimed (renamed,
    which sets its ctime) less than a lease ago: short jobs are never named in
    a heartbeat.
    """
    if any(w.get("job") == job_id for w in remote):
        return True
    return time.time() - os.fstat(fd).st_ctime < lease


def lock_job_file(path: str, *, wait: bool = False) -> int | None:
    """An open descriptor holding the flock of the job file at path, or None.

    None if there is no such regular file (symlinks are never followed), if
    another process holds the lock (unless wait), or if the path stopped naming
    the locked file meanwhile (it was renamed on or replaced).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _read_fd(fd: int, limit: int | None = None) -> bytes:
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 16, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        if limit is not None and offset >= limit:
            break
    return b"".join(chunks)


def _nlink(path: str) -> int:
    try:
        return os.lstat(path).st_nlink
    except OSError:
        return 0


def _index_ident(path: str) -> tuple[int, int] | None:
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


def _disk_full(path: str) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail == 0 or (st.f_files > 0 and st.f_favail == 0)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


_hostname: str | None = None


def hostname() -> str:
    global _hostname
    if _hostname is None:
        import socket
        _hostname = socket.gethostname()
    return _hostname
