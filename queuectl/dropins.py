"""Admission of files other programs drop into pending/, and quarantine with a reason.

A drop-in is untrusted input. A valid one is rewritten in queuectl's own form
(in batches: write all, one syncfs, rename each, one directory fsync); an
invalid one moves, byte for byte, to rejected/ with NAME.reason beside it. A
file that does not parse yet is given `dropin_grace` seconds: it may still be
being written.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import time
from typing import Any, ContextManager, NamedTuple, Protocol

from . import lazylog
from .errors import DuplicateJob, InvalidJob, JobNotFound
from .fsio import (atomic_write, close_quietly, lock_file, nlink, open_nofollow, read_fd, rename_noreplace,
                   syncfs, unlink_quietly, unreachable, write_tmp)
from .config import Config
from .deps import Batch, check_no_cycle
from .index import row_values
from .indexstore import IndexStore
from .job import Job, JobState, check_id, loads
from .stamps import placed_stamp, racy_ns, stamp_of

log = lazylog.get("queuectl.dropins")
BATCH = 1024  # accepted files made durable by one syncfs
# How long a network filesystem may show a rewritten file short or stale: past the attribute
# timeout the README recommends (1 s on sshfs and NFS) and GlusterFS's caches (1 s), with margin.
STALE_READ = 3.0


def is_ignored(name: str) -> bool:
    """Writers' scratch names: dotfiles and *.tmp (but `.json` alone is a bad job)."""
    return (name.startswith(".") and name != ".json") or name.endswith(".tmp")


def is_fs_artifact(name: str) -> bool:
    """Files a network filesystem client makes for a deleted file that is still
    open somewhere (sshfs's .fuse_hidden*, NFS's .nfs*): not a writer's, not
    ours; they vanish when the file is closed. Ignored (is_ignored) and never
    reported by `check`."""
    return name.startswith((".fuse_hidden", ".nfs", ".smbdelete"))


def is_canonical(spec: Any, stem: str) -> bool:
    """Is this parsed file already in queuectl's own form (written by queuectl, or moved back by hand)?"""
    return isinstance(spec, dict) and spec.get("id") == stem and "created_at" in spec and "state" in spec


class SpoolView(Protocol):
    """What admission needs of a spool; spool.Spool provides it (this module knows no more)."""
    root: str
    shared: bool
    readonly: bool
    multihost: bool
    fstype: str

    @property
    def config(self) -> Config: ...
    @property
    def indexes(self) -> IndexStore: ...
    def path(self, *parts: str) -> str: ...
    def job_path(self, state: JobState, job_id: str) -> str: ...
    def hot_lock(self, *, wait: bool = True) -> ContextManager[bool]: ...
    def taken_ids(self) -> dict[str, tuple[str, str]]: ...
    def check_new_id(self, job_id: str, own: str | None = None) -> None: ...
    def new_job(self, spec: object, *, fallback_id: str | None = None) -> Job: ...
    def fsync_state_dir(self, state: JobState) -> None: ...
    def read_job(self, path: str) -> Job: ...
    def find(self, job_id: str) -> tuple[JobState, str]: ...


class SyncReport:
    """What one sync of the index with the directories found."""
    __slots__ = ("added", "removed", "accepted", "rejected", "waiting", "busy")

    def __init__(self) -> None:
        self.added = 0
        self.removed = 0
        self.accepted: list[str] = []
        self.rejected: list[tuple[str, str]] = []
        self.waiting = 0  # unparseable drop-ins still inside their grace period
        self.busy = False  # another process held the drop-in lock: look again shortly


class _Admitted(NamedTuple):
    """A valid drop-in: the job, its canonical bytes (None: the file already is), where it goes."""
    job: Job
    data: bytes | None
    src: str
    dest: str
    stamp: int | None = None  # of src, when it is kept as it is (taken before it was read)
    read_ino: int | None = None  # of the src file read: replaced in place only while it still is


class _TooFresh(Exception):
    """An unparseable drop-in that may still be being written."""


def reject(spool: SpoolView, src: str, name: str, reason: str) -> bool:
    """Move a file, unchanged, to rejected/ with NAME.reason beside it; False if it is gone."""
    dest_name = name or "unnamed"
    for n in itertools.count():
        candidate = dest_name if n == 0 else f"{dest_name}.{n}"
        dest = spool.path("rejected", candidate)
        if not os.path.lexists(dest) and not os.path.lexists(dest + ".reason"):
            break
    try:
        os.rename(src, dest)
    except OSError as e:
        if isinstance(e, FileNotFoundError) or e.errno == errno.ESTALE:
            return False
        raise
    line = " ".join(reason.split()) + "\n"
    atomic_write(spool.path("tmp"), dest + ".reason", line.encode(), durable=False)
    log.warning("rejected %s: %s", name, reason)
    return True


def accept(spool: SpoolView, names: list[str], report: SyncReport, *, wait: bool) -> None:
    """Turn files other programs put into pending/ into canonical jobs, or reject them.

    With wait=False a busy drop-in lock (another process accepting right now)
    is not waited for: the report says so and the caller looks again shortly.
    """
    with spool.hot_lock(wait=wait) as locked:
        if not locked:
            report.waiting += len(names)
            report.busy = True
            return
        grace = spool.config.dropin_grace
        # For many drop-ins one listing of the state directories beats five
        # stats and an index query a file.
        # (On a shared spool always: this node's index lags other hosts' jobs.)
        on_disk = spool.taken_ids() if len(names) > 16 or spool.multihost else None
        taken = Batch()  # the jobs accepted in this pass
        batch: list[_Admitted] = []
        for name in sorted(names):
            src = spool.path("pending", name)
            try:
                admitted = _admit(spool, src, name, grace, taken, on_disk)
            except FileNotFoundError:
                continue  # claimed or moved by someone else meanwhile
            except OSError as e:
                if not unreachable(e):
                    raise
                report.waiting += 1  # a stale handle (moved meanwhile) or a server not answering: look again
                continue
            except _TooFresh:
                report.waiting += 1
                continue
            except InvalidJob as e:
                if reject(spool, src, name, str(e)):
                    report.rejected.append((name, str(e)))
                continue
            taken.add(admitted.job)
            batch.append(admitted)
            if len(batch) >= BATCH:
                _commit(spool, batch, report)
                batch = []
        if batch:
            _commit(spool, batch, report)


def _commit(spool: SpoolView, batch: list[_Admitted], report: SyncReport) -> None:
    tmps: list[str | None] = []
    placed: list[_Admitted] = []
    try:
        for a in batch:
            tmps.append(None if a.data is None else write_tmp(spool.path("tmp"), a.data, durable=False)[0])
        # Also when every file is kept as it is: its writer may never have
        # fsynced it, and an accepted job must survive a power cut.
        syncfs(spool.path("tmp"))
        rows = []
        for a, tmp in zip(batch, tmps):
            ino = None if tmp is None else os.stat(tmp).st_ino  # the file the index row now stands for
            if tmp is not None:
                if a.src == a.dest:
                    if not _replace_read_file(tmp, a.src, a.read_ino):
                        unlink_quietly(tmp)
                        report.waiting += 1  # changed or claimed since it was read: look again
                        continue
                else:
                    try:
                        rename_noreplace(tmp, a.dest)
                    except FileExistsError:
                        unlink_quietly(tmp)
                        continue  # someone took the id meanwhile; the drop-in stays for the next pass
                    unlink_quietly(a.src)
            stamp = a.stamp if ino is None else placed_stamp(a.dest, ino, JobState.PENDING, racy_ns(spool))
            rows.append(row_values(a.job, JobState.PENDING, None if a.data is None else a.data.decode(), stamp))
            report.accepted.append(a.job.id)
            placed.append(a)
    except BaseException:
        for tmp in tmps:
            if tmp is not None:
                unlink_quietly(tmp)
        raise
    spool.fsync_state_dir(JobState.PENDING)
    spool.indexes.add_rows(rows)
    _follow_moved(spool, placed)


def _follow_moved(spool: SpoolView, placed: list[_Admitted]) -> None:
    """A file accepted as it was can be moved on (cancel, hold, a claim) between its read and
    its row (a syncfs apart), and its mover's row written first: the row of a file no longer
    in pending/ is read again where the file is now (cancelled/ is not listed again soon)."""
    rows = []
    # Many files, or a mount where each lstat is a round trip: one listing instead.
    listed = set(os.listdir(spool.path("pending"))) if len(placed) > 16 or spool.multihost else None
    for a in placed:
        if os.path.basename(a.dest) in listed if listed is not None else os.path.lexists(a.dest):
            continue
        try:
            state, path = spool.find(a.job.id)
            rows.append(row_values(spool.read_job(path), state))
        except (JobNotFound, InvalidJob, OSError):
            continue  # gone, or moving still: the next listing of pending/ drops or follows its row
    if rows:
        spool.indexes.add_rows(rows)


def _replace_read_file(tmp: str, path: str, ino: int | None) -> bool:
    """Replace the drop-in at path by its canonical form tmp, only if path still names
    the file that was read (inode ino); False if not.

    Under the file's lock, like a claim or a move: `release` renames held/ID.json
    into pending/ and then writes its new contents over it, and a worker may claim
    it the next moment. Renaming what this pass read over a file that moved or was
    replaced meanwhile would make a second copy of a job that lives on elsewhere.
    """
    fd = lock_file(path)
    if fd is None:
        return False  # gone (claimed, moved on), replaced, or locked by its mover right now
    try:
        if ino is not None and os.fstat(fd).st_ino != ino:
            return False
        os.rename(tmp, path)
        return True
    finally:
        close_quietly(fd)


def check_deps_exist(spool: SpoolView, job: Job, earlier: Batch, *, cycle: bool = True) -> None:
    """Every job `after`/`after_any` names must exist already (or come earlier in
    the same batch), and (cycle) the job must not close a dependency cycle."""
    for dep in (*job.after, *job.after_any):
        if dep.lower() not in earlier and not _exists(spool, dep):
            key = "after_any" if dep in job.after_any else "after"
            raise InvalidJob(f"{key}: no job {dep}")
    if cycle:
        check_no_cycle(spool.indexes.index, job, earlier)


def _exists(spool: SpoolView, job_id: str) -> bool:
    """Is there a job file of this id? On a shared spool, a name is opened before it is believed:
    a client may cache a name for up to a second after another host deleted the file (`clean`
    on GlusterFS), and only the open reaches the server (ESTALE: FileNotFoundError)."""
    for _ in range(3):
        try:
            _state, path = spool.find(job_id)
        except JobNotFound:
            return False
        if not spool.multihost:
            return True
        try:
            close_quietly(open_nofollow(path))
            return True
        except FileNotFoundError:
            continue  # deleted, or moved on since the look: look again
        except OSError:
            return True  # there, if not readable (a FIFO, a mode): not this rule's to judge
    return False


def _check_id_free(spool: SpoolView, job_id: str, own: str | None, taken: Batch,
                   on_disk: dict[str, tuple[str, str]] | None = None) -> None:
    """The spool's duplicate rule, plus the ids accepted earlier in the same pass:
    their index rows are written in batches, so the lookup ignoring case misses them."""
    other = taken.get(job_id.lower())
    if other is not None:
        raise DuplicateJob(f"job {other} already exists (in pending/)")
    if on_disk is None:
        spool.check_new_id(job_id, own=own)
        return
    hit = on_disk.get(job_id.lower())
    if hit is not None and os.path.join(spool.root, hit[0], hit[1] + ".json") != own:
        raise DuplicateJob(f"job {hit[1]} already exists (in {hit[0]}/)")


def _check_file(spool: SpoolView, src: str, name: str, st: os.stat_result, grace: float) -> None:
    """The rules on the file itself, before a byte of it is read."""
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
        if time.time() - st.st_ctime < grace and (_linked_from_tmp(spool, st.st_ino) or nlink(src) == 1):
            # nlink: enqueue may have unlinked its tmp/ copy between the
            # lstat above and the scan of tmp/; look at the file again later.
            raise _TooFresh()
        raise InvalidJob(f"hard-linked file ({st.st_nlink} links): another path could change it")
    if st.st_uid != os.geteuid() and not spool.shared:
        raise InvalidJob(f"owned by uid {st.st_uid}, not by the spool's user (uid {os.geteuid()}): "
                         "a private spool runs only its owner's jobs")
    if name == ".json":
        raise InvalidJob("empty file name: no job id")
    if not name.endswith(".json"):
        raise InvalidJob("file name does not end in .json")
    limit = spool.config.max_job_size
    if st.st_size > limit:
        raise InvalidJob(f"file is {st.st_size} bytes, over the limit of {limit} (config max_job_size)")


def _admit(spool: SpoolView, src: str, name: str, grace: float, taken: Batch,
           on_disk: dict[str, tuple[str, str]] | None) -> _Admitted:
    """Validate one drop-in and say what to write; raise InvalidJob to reject it."""
    st = os.lstat(src)
    _check_file(spool, src, name, st, grace)
    limit = spool.config.max_job_size
    fd = open_nofollow(src)
    try:
        fst = os.fstat(fd)
        if fst.st_ino != st.st_ino or not stat.S_ISREG(fst.st_mode):
            raise FileNotFoundError(src)  # swapped under us: look again next scan
        data = read_fd(fd, limit + 1)
    finally:
        close_quietly(fd)
    if len(data) > limit:
        raise InvalidJob(f"file is over the limit of {limit} bytes (config max_job_size)")
    try:
        spec = loads(data)
    except InvalidJob:
        if time.time() - st.st_mtime < grace or (spool.multihost and not _stays_invalid(src)):
            raise _TooFresh() from None
        raise
    _first_invalid.pop(src, None)
    stem = name[:-5]
    if is_canonical(spec, stem):
        # Already in queuectl's own form (an index rebuild, or a file moved
        # back by hand): keep its history and times.
        job = Job.from_record(spec)
        _check_id_free(spool, job.id, src, taken, on_disk)
        if job.state is JobState.PENDING and "max_retries" in spec:
            return _Admitted(job, None, src, src, stamp_of(fst, racy_ns(spool)))
        if "max_retries" not in spec:
            job.max_retries = spool.config.max_retries
        job.state, job.next_run_at = JobState.PENDING, None
        return _Admitted(job, job.to_json(), src, src, read_ino=st.st_ino)
    fallback = None
    if not (isinstance(spec, dict) and "id" in spec):
        fallback = check_id(stem)
    job = spool.new_job(spec, fallback_id=fallback)
    dest = spool.job_path(JobState.PENDING, job.id)
    _check_id_free(spool, job.id, src if src == dest else None, taken, on_disk)
    # Drop-ins that wait for each other are all accepted, then cancelled together by the
    # next scan with the cycle as their reason (controls.resolve_dependencies): refusing
    # only the one that closes it would leave the others a vaguer reason.
    check_deps_exist(spool, job, taken, cycle=False)
    return _Admitted(job, job.to_json(), src, dest, read_ino=st.st_ino)


_first_invalid: dict[str, float] = {}  # path -> when this process first read it unparseable


def _stays_invalid(path: str) -> bool:
    """Has this file read invalid for STALE_READ seconds? On a network filesystem a read can be
    short or stale for about a second (a file rewritten through another client, its size or its
    contents still cached here), and the file's cached mtime is no guide: only what stays
    invalid after the caches can have expired is rejected."""
    now = time.monotonic()
    if len(_first_invalid) > 10_000:
        _first_invalid.clear()
    return now - _first_invalid.setdefault(path, now) >= STALE_READ


def _linked_from_tmp(spool: SpoolView, ino: int) -> bool:
    """Is another link to this inode one of enqueue's own files in tmp/?"""
    try:
        with os.scandir(spool.path("tmp")) as it:
            return any(e.inode() == ino for e in it)
    except OSError:
        return False
