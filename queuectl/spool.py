"""The spool: its layout, and every move of a job between its state directories.

Every state change is a rename inside one filesystem, so a job is in exactly
one state directory at any instant. The index (index.py) follows the files.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from collections.abc import Callable

from . import config as configmod
from .deps import Batch
from .dropins import SyncReport, accept, check_deps_exist, is_ignored, reject
from .indexsync import sync_dir
from .errors import DuplicateJob, InvalidJob, JobNotFound, SpoolError
from .fsio import (SpoolLock, atomic_write, close_quietly, looking_again, no_lock, fsync_dir, lock_file,
                   read_fd, read_nofollow, rename_noreplace, space_error, syncfs, unlink_quietly, write_tmp, SpareFile)
from .hosts import (ExclSpoolLock, dropped, fs_type, index_store, is_network_fs, locks_cross, lost_claim, move_on,
                    read_settled, setting)
from .index import Index, row_values
from .layout import STATE_DIRS, SUBDIRS, create_spool, default_spool, unsafe_dirs  # noqa: F401 (re-exported)
from .indexstore import IndexStore
from .job import Job, JobState, check_id, now_iso, parse_file
from .stamps import RACY_NS, UNSURE, placed_stamp, racy_ns

# A directory's mtime within RACY_NS of its listing may hide a change made in the
# same clock tick (git's "racy" problem), so such a listing is not trusted on the next look.
ENQUEUE_CHUNK = 4096  # jobs made durable by one syncfs in a bulk enqueue


class Claim:
    """A job a process holds: the open, flock'ed job file; `seen`: its history's length when claimed."""
    __slots__ = ("job", "fd", "source", "seen")

    def __init__(self, job: Job, fd: int, source: JobState, seen: int = 0):
        self.job, self.fd, self.source, self.seen = job, fd, source, seen

    def release(self) -> None:
        if self.fd >= 0:
            close_quietly(self.fd)
            self.fd = -1


class Spool:
    """One spool directory. `worker=True`: index writes are batched (flush_index)
    and a busy drop-in acceptance is not waited for (its files are claimable soon)."""

    def __init__(self, root: str, *, create: bool = True, worker: bool = False, shared: bool = False,
                 index_path: str | None = None):
        self.root = os.path.abspath(root)
        # A deliberately shared spool (--allow-shared-spool, inherited by the
        # workers through the environment): other users' drop-ins are jobs too.
        self.shared = shared or os.environ.get("QUEUECTL_ALLOW_SHARED_SPOOL") == "1"
        self.fresh = False
        # A read-only spool (a snapshot, a backup, a read-only mount, or one marked
        # so by a .readonly file, as spool_example/ is) can still be inspected, and
        # is left as it was: no locks, no drop-in admission, an index in memory.
        self.readonly = os.path.isdir(self.root) and (not os.access(self.root, os.W_OK)
                                                       or os.path.lexists(self.path(".readonly")))
        if create and not self.readonly:
            self.fresh = create_spool(self.root)
        elif not os.path.isdir(self.root):
            raise SpoolError(f"no spool at {self.root}")
        self.configfile = configmod.ConfigFile(self.path("config.json"))
        # Many hosts: SQLite must not live on a network filesystem, and there a
        # directory's mtime may be cached, so every scan lists the directories.
        self.fstype = fs_type(self.root)
        self.network = is_network_fs(self.fstype)
        locks = SpoolLock(self.path(".lock")) if locks_cross(self.fstype) else ExclSpoolLock(self.path(".lock"))
        self.lock, self.hot_lock = locks.lock, locks.hot_lock
        if self.readonly:
            self.lock = self.hot_lock = no_lock
        self.wait_for_dropins = not worker
        self.index_path = index_path or os.environ.get("QUEUECTL_INDEX") or None  # None: hosts.index_store picks
        self._defer = worker
        self._indexes: IndexStore | None = None
        self.spare = SpareFile(self.path("tmp"))  # a worker's next record file, made while a command runs

    @property
    def shared_mode(self) -> bool:
        """Sharing with other hosts was meant: `worker start --shared` or `config set shared true`."""
        return os.environ.get("QUEUECTL_SHARED") == "1" or bool(setting(self, "shared", False))

    @property
    def multihost(self) -> bool:
        """Other hosts may use this spool: on a network filesystem, or in shared mode."""
        return self.network or self.shared_mode

    @property
    def indexes(self) -> IndexStore:
        if self._indexes is None:  # opened on first use: its place may depend on config.json
            self._indexes = index_store(self, defer=self._defer)
        return self._indexes

    # -- layout --------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def job_path(self, state: JobState, job_id: str) -> str:
        return os.path.join(self.root, state.dirname, job_id + ".json")

    def check_private(self) -> None:
        """SpoolError unless only the running user can write jobs into this spool."""
        for path, _mode, why in unsafe_dirs(self.root):
            what = "spool" if path == self.root else "spool directory"
            fix = f"chown $(id -u) {path}" if why.startswith("is owned") else f"chmod 700 {path}"
            raise SpoolError(
                f"{what} {path} {why}: anyone who can write there can run commands as you. Fix with "
                f"`{fix}`, or pass --allow-shared-spool for a deliberately shared spool")

    def log_path(self, job_id: str) -> str:
        return self.path("logs", job_id + ".log")

    def fsync_state_dir(self, state: JobState) -> None:
        fsync_dir(self.path(state.dirname))

    def has_jobs(self) -> bool:
        for d in STATE_DIRS:
            with os.scandir(self.path(d)) as it:
                if any(not is_ignored(e.name) for e in it):
                    return True
        return False

    # -- config and files ----------------------------------------------------------

    @property
    def config(self) -> configmod.Config:
        return self.configfile.get()

    def set_config(self, key: str, value: object) -> tuple[str, object]:
        name = configmod.normalize_key(key)
        with self.lock():
            self.configfile.forget()
            new = self.config.replace(name, value)
            self.write_file(self.path("config.json"), configmod.to_bytes(new), durable=True)
            self.configfile.set(new)
        return name, new.get(name)

    def write_file(self, dest: str, data: bytes, *, durable: bool, mtime: float | None = None) -> None:
        """Write, (fsync,) rename through tmp/: a reader sees the old file or the new one."""
        atomic_write(self.path("tmp"), dest, data, durable=durable, mtime=mtime)

    # -- the index -------------------------------------------------------------------

    @property
    def index(self) -> Index:
        return self.indexes.index

    def flush_index(self) -> None:
        self.indexes.flush()

    def close(self) -> None:
        self.spare.drop()
        if self._indexes is not None:
            self._indexes.close()

    def reindex(self) -> dict[str, int]:
        """Forget the index and rebuild it from the directories."""
        idx = self.index  # (a corrupt index.db is repaired on opening)
        with self.indexes.lock():
            idx.begin()
            idx.clear()
            idx.commit()
        self.sync()
        return self.index.counts()

    # -- enqueue ----------------------------------------------------------------------

    def new_job(self, spec: object, *, fallback_id: str | None = None) -> Job:
        return Job.from_spec(spec, default_max_retries=self.config.max_retries, fallback_id=fallback_id)

    def check_new_id(self, job_id: str, own: str | None = None) -> None:
        """Raise DuplicateJob if job_id (ignoring case) is taken by any job but the file `own`."""
        for d in STATE_DIRS:
            p = os.path.join(self.root, d, job_id + ".json")
            if p != own and os.path.lexists(p):
                raise DuplicateJob(f"job {job_id} already exists (in {d}/)")
        row = self.index.lookup(job_id)
        if row is not None:
            p = self.job_path(row.state, row.id)
            if p != own and os.path.lexists(p):
                raise DuplicateJob(f"job {row.id} already exists (in {row.state.dirname}/)")

    def taken_ids(self) -> dict[str, tuple[str, str]]:
        """Lower-cased id -> (directory, id), for every job file on disk."""
        taken: dict[str, tuple[str, str]] = {}
        for d in STATE_DIRS:
            for name in os.listdir(self.path(d)):
                if name.endswith(".json") and not is_ignored(name):
                    taken[name[:-5].lower()] = (d, name[:-5])
        return taken

    def enqueue(self, job: Job) -> Job:
        """Durably add one job to pending/. Writes nothing if it raises."""
        return self.enqueue_many([job])[0]

    def enqueue_many(self, jobs: list[Job], chunk: int = ENQUEUE_CHUNK, *,
                     skip: Callable[[Job, InvalidJob], None] | None = None) -> list[Job]:
        """Durably add jobs to pending/, all checked before any is written (see _enqueue_many);
        with `skip`, one that cannot be added is handed to skip with the reason and left out."""
        return _enqueue_many(self, jobs, chunk, skip)

    # -- reading -----------------------------------------------------------------------

    def read_job(self, path: str) -> Job:
        """Parse a job file without following symlinks."""
        data, _ = read_nofollow(path, self.config.max_job_size + 1)
        return parse_file(data, os.path.basename(path)[:-5])

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
        except InvalidJob as e:
            raise InvalidJob(f"job file {os.path.relpath(path, self.root)} is not valid: {e}") from None
        # The directory is the truth: a file moved by hand still says its old state.
        job.state = state
        return job, path

    def log_of(self, job_id: str) -> str:
        """The log path of an existing job (JobNotFound otherwise)."""
        self.find(job_id)
        return self.log_path(job_id)

    # -- reconcile the index with the directories ------------------------------------------

    def sync(self, *, force: bool = False, dirs: tuple[str, ...] = tuple(STATE_DIRS)) -> SyncReport:
        """Bring the index in line with the directories (`dirs`) and accept drop-ins.

        An index that turns out corrupt mid-way is discarded and rebuilt.
        """
        return looking_again(lambda: _sync_or_rebuild(self, force, dirs))

    def _sync(self, *, force: bool, dirs: tuple[str, ...]) -> SyncReport:
        """Cheap when nothing changed: one stat per state directory. A directory
        whose mtime moved since it was last listed is listed again and diffed
        against the index."""
        report = SyncReport()
        self.indexes.flush()
        # Deleted, truncated or overwritten under an open connection: this
        # process would go on using a ghost. Reopen it (rebuilding it).
        self.indexes.reopen_if_replaced()
        idx = self.index
        marks = idx.dirmarks()
        changed = []
        for d in dirs:
            st = os.stat(self.path(d))
            mark = marks.get(d)
            if (force or self.multihost or mark is None or mark[0] != st.st_mtime_ns
                    or mark[1] - mark[0] < RACY_NS):
                changed.append(d)
        if not changed:
            return report
        dropins: list[str] = []
        idx.begin()
        try:
            for d in changed:
                found = sync_dir(self, idx, JobState.parse(d), report)
                if found is not None:
                    dropins = found
            idx.commit()
        except BaseException:
            idx.rollback()
            raise
        if dropins:
            accept(self, dropins, report, wait=self.wait_for_dropins)
            if report.waiting:
                # A file still being written changes its own mtime, not the
                # directory's: forget pending/'s mark so the next sync reads the
                # waiting file again (to accept it, or reject it after the grace).
                idx.set_dirmark("pending", 0, 0)
        return report

    # -- claim, record, recover ----------------------------------------------------

    def claim(self, job_id: str, source: JobState, *, announce: Callable[[], None] | None = None) -> Claim | None:
        """Take a job for running, or None if another worker got it first.

        The file is flock'ed before the rename, so from the moment it appears in
        processing/ it is locked by its owner; the lock dies with the process.
        `announce` runs once the lock is held, before the rename: a worker's claim record.
        """
        src = self.job_path(source, job_id)
        fd = lock_file(src)
        if fd is None:
            return None
        try:
            if announce is not None:
                announce()
            dest = self.job_path(JobState.PROCESSING, job_id)
            if os.path.lexists(dest):
                raise FileExistsError(dest)  # a duplicate: `check` reports it, never run twice
            os.rename(src, dest)
        except OSError:
            close_quietly(fd)
            return None
        claim = self.adopt(fd, source, job_id)
        return claim

    def adopt(self, fd: int, source: JobState, job_id: str) -> Claim | None:
        """A Claim on the locked file fd in processing/; an invalid file is quarantined (None),
        on a shared spool only once it stays invalid (hosts.read_settled); an unreadable one is left."""
        limit = self.config.max_job_size + 1
        try:
            job = parse_file(read_fd(fd, limit), job_id)
        except OSError:
            close_quietly(fd)  # unlocked in processing/: recovery looks at it again
            return None
        except InvalidJob as e:
            job = read_settled(fd, job_id, limit) if self.multihost else None
            if job is None:
                return _quarantine(self, fd, source, job_id, e)
        return Claim(job, fd, source, len(job.history))

    def record(self, claim: Claim, job: Job, *, durable: bool = False) -> bool:
        """Move a claimed job to the directory of job.state with its new contents.

        The new contents replace the file in processing/ first (locked, so a
        recoverer never mistakes it for orphaned), then one rename moves it on.
        A crash in between leaves a processing/ file whose state field says
        where it was going, and recovery finishes the move. A claim another host
        recovered meanwhile is dropped (False), never recreated; nothing is replaced.
        """
        job.updated_at = now_iso()
        mtime = job.run_ts if job.state is JobState.FAILED and job.next_run_at else None
        cur = self.job_path(JobState.PROCESSING, job.id)
        dest = self.job_path(job.state, job.id)
        lost = lost_claim(cur, claim.fd, claim.seen, trust_inodes=not self.network,
                          limit=self.config.max_job_size + 1)
        if lost:
            claim.release()
            return dropped(job.id, lost)
        data = job.to_json()
        tmp, fd = self.spare.write(data, durable=durable, mtime=mtime)  # open: locked before its rename
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(tmp, cur)
            claim.release()
            claim.fd = fd
            if dest != cur:
                if not move_on(cur, dest, job.id):
                    return False
                if durable:
                    fsync_dir(os.path.dirname(dest))
        except OSError as e:
            unlink_quietly(tmp)
            if e.errno in (errno.ENOENT, errno.ESTALE):  # another host's recovery moved it on
                return dropped(job.id, "was moved on by another worker meanwhile")
            raise space_error(e, f"recording job {job.id}") from None
        finally:
            claim.release()
        self.indexes.upsert(row_values(job, job.state, data.decode("utf-8")))
        return True

    def mark_running(self, job: Job) -> None:
        """Show a long-running job as processing in the index (short ones never are)."""
        self.indexes.upsert(row_values(job, JobState.PROCESSING))

    # -- the dead letter queue ----------------------------------------------------------------

    def hold(self, state: JobState, job_id: str) -> Claim:
        """Lock a job file in place (as a worker's claim does), or raise JobNotFound."""
        fd = lock_file(self.job_path(state, job_id), wait=True)
        if fd is None:
            raise JobNotFound(f"no job {job_id} in {state.dirname}/")
        try:
            job = parse_file(read_fd(fd, self.config.max_job_size + 1), job_id)
        except (OSError, InvalidJob) as e:
            close_quietly(fd)
            raise JobNotFound(f"no valid job {job_id} in {state.dirname}/ ({e})") from None
        return Claim(job, fd, state)

    def requeue(self, job_id: str, state: JobState = JobState.DEAD, *, missing_ok: bool = False) -> Job | None:
        """Move a job back to pending/ with attempts reset to 0; its history is kept.
        missing_ok: a job another process moved on meanwhile is skipped (None).
        """
        try:
            claim = self.hold(state, job_id)
        except JobNotFound:
            if missing_ok:
                return None
            raise
        job = claim.job
        job.history.append({"event": f"requeued from {state.dirname}/", "at": now_iso(),
                            "attempts_before": job.attempts})
        job.state, job.attempts, job.next_run_at, job.updated_at = JobState.PENDING, 0, None, now_iso()
        cur = self.job_path(state, job_id)
        tmp, fd = write_tmp(self.path("tmp"), job.to_json(), durable=True, keep_open=True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # placed locked: a second requeue cannot take it in between
            # Replace in place, then one rename: the job is never in two directories.
            os.rename(tmp, cur)
            os.rename(cur, self.job_path(JobState.PENDING, job_id))
            self.fsync_state_dir(JobState.PENDING)
        except OSError as e:
            unlink_quietly(tmp)
            raise space_error(e, f"requeueing {job_id}") from None
        finally:
            close_quietly(fd)
            claim.release()
        self.indexes.upsert(row_values(job, job.state))
        return job

    def purge(self, job_id: str, state: JobState = JobState.DEAD, *, missing_ok: bool = False) -> bool:
        """Delete a job (and its log) for good; False if missing_ok and it was gone."""
        try:
            claim = self.hold(state, job_id)
        except JobNotFound:
            if missing_ok:
                return False
            raise
        try:
            os.unlink(self.job_path(state, job_id))
        finally:
            claim.release()
        unlink_quietly(self.log_path(job_id))
        self.indexes.delete(job_id)
        return True

    def dead_jobs(self) -> list[dict]:
        self.sync()
        return list(self.index.records(JobState.DEAD))

    def ensure_dead(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            state, _ = self.find(job_id)
            if state is not JobState.DEAD:
                raise JobNotFound(f"job {job_id} is not in the dead letter queue (it is {state.value})")


def _sync_or_rebuild(spool: Spool, force: bool, dirs: tuple[str, ...]) -> SyncReport:
    try:
        return spool._sync(force=force, dirs=dirs)
    except sqlite3.DatabaseError as e:
        spool.indexes.discard(e)
        return spool._sync(force=force, dirs=dirs)


def _quarantine(spool: Spool, fd: int, source: JobState, job_id: str, e: InvalidJob) -> None:
    """A claimed file that is not a valid job: to rejected/ with the reason, out of the index."""
    close_quietly(fd)
    where = "processing" if source is JobState.PROCESSING else source.dirname
    reject(spool, spool.job_path(JobState.PROCESSING, job_id), job_id + ".json", f"invalid job file in {where}/: {e}")
    spool.indexes.delete(job_id)


def _enqueue_many(spool: Spool, jobs: list[Job], chunk: int,
                  skip: Callable[[Job, InvalidJob], None] | None = None) -> list[Job]:
    """Durably add jobs to pending/, all checked before any is written.

    Ids are unique ignoring case, which no no-clobber rename can enforce
    between two spellings (job1 vs JOB1 racing): check and place under the
    spool lock. The fsyncs are batched: every file of a chunk is written,
    one syncfs() flushes them all, then they are linked into pending/ and
    the directory is fsynced. An accepted job survives a power cut.
    """
    spool.index  # noqa: B018 - open it first: repairing it takes the same lock
    with spool.hot_lock():
        jobs = _check_unique(spool, jobs, skip)
        done = 0
        for start in range(0, len(jobs), chunk):
            part = jobs[start:start + chunk]
            try:
                placed = _place_chunk(spool, part, bulk=len(jobs) > 16)
            except _PartlyPlaced as e:
                if e.placed or done:
                    for state in {j.state for j in jobs}:
                        spool.fsync_state_dir(state)
                    spool.indexes.add_rows(e.rows[:e.placed], new=True)
                    err = e.error
                    if isinstance(err, (SpoolError, DuplicateJob)):
                        raise type(err)(f"{err} (after {done + e.placed} of {len(jobs)} jobs "
                                        "were enqueued)") from None
                raise e.error from None
            for state in {j.state for j in part}:  # pending/, and held/ for enqueue --hold
                spool.fsync_state_dir(state)
            spool.indexes.add_rows(placed, new=True)
            done += len(part)
    return jobs


def _check_unique(spool: Spool, jobs: list[Job], skip: Callable[[Job, InvalidJob], None] | None) -> list[Job]:
    """The jobs that can be added: each id new, each dependency there (or earlier in the batch), no cycle.
    The first that cannot raises InvalidJob, or with `skip` is handed to it and left out (and so are the
    jobs that wait for it)."""
    # For many jobs one listing of each state directory beats five stats a job.
    # This node's index knows other hosts' jobs only as of its last scan: on a shared spool the listing decides.
    bulk = len(jobs) > 16 or spool.multihost
    taken = spool.taken_ids() if bulk else {}
    seen = Batch()
    out = []
    for job in jobs:
        key = job.id.lower()
        try:
            if key in seen:
                raise DuplicateJob(f"job {job.id} appears twice")
            if not bulk:
                spool.check_new_id(job.id)
            elif key in taken:
                raise DuplicateJob(f"job {taken[key][1]} already exists (in {taken[key][0]}/)")
        except InvalidJob as e:
            if skip is None:
                raise
            skip(job, e)
            continue
        seen.add(job)  # before its own check: a job naming itself is a cycle, not a missing job
        try:
            check_deps_exist(spool, job, seen)
        except InvalidJob as e:
            if skip is None:
                raise
            seen.drop(job)
            skip(job, e)
            continue
        out.append(job)
    return out

def _place_chunk(spool: Spool, part: list[Job], *, bulk: bool) -> list[tuple]:
    """Write, sync and place one chunk; its index rows. _PartlyPlaced says how far it got."""
    tmps: list[str] = []
    inos: list[int] = []
    rows: list[tuple] = []
    placed = 0
    try:
        for job in part:
            data = job.to_json()
            tmps.append(write_tmp(spool.path("tmp"), data, durable=len(part) == 1)[0])
            inos.append(os.stat(tmps[-1]).st_ino)
            rows.append(row_values(job, job.state, data.decode("utf-8"), UNSURE))
        if len(part) > 1:
            syncfs(spool.path("tmp"))
        for job, tmp in zip(part, tmps):
            _place(tmp, spool.job_path(job.state, job.id), bulk=bulk)
            placed += 1
    except BaseException as e:
        for tmp in tmps[placed:]:
            unlink_quietly(tmp)
        raise _PartlyPlaced(e, placed, rows) from None
    # Stamped once the chunk is placed, so the next sync knows each file as the one placed
    # here: the files placed over a second before are sure already, not read again.
    racy = racy_ns(spool)
    return [row[:-1] + (placed_stamp(spool.job_path(job.state, job.id), ino, job.state, racy),)
            for row, job, ino in zip(rows, part, inos)]

def _place(tmp: str, dest: str, *, bulk: bool = False) -> None:
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
        unlink_quietly(tmp)
        raise DuplicateJob(f"job {os.path.basename(dest)[:-5]} already exists") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            unlink_quietly(tmp)
            raise space_error(e, "enqueueing") from None
        # No hard links here (some network filesystems): rename is still atomic,
        # only the no-clobber guarantee against a racing writer is lost.
        os.rename(tmp, dest)
        return
    unlink_quietly(tmp)


class _PartlyPlaced(Exception):
    """A chunk of an enqueue failed after `placed` of its jobs were in pending/."""

    def __init__(self, error: BaseException, placed: int, rows: list[tuple]):
        super().__init__(str(error))
        self.error, self.placed, self.rows = error, placed, rows
