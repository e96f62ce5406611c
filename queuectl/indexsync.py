"""The index's sync with one state directory: new, gone, moved and replaced files.

Rows of files that are gone are dropped, or followed where they moved; files new or
replaced under a known name are read, or in pending/ handed to admission. Spool.sync runs
it for each directory whose mtime moved.

Which file a row was read from is its stamp. An inode number alone does not say: a file
replaced twice between two scans (two hand edits, or deleted and written again) may get the
number back that the first one freed, and a file edited in place keeps it. The stamp is a
hash of (inode, size, mtime, ctime): ctime changes with every write and rename, and nobody
can set it. Two files can still share all four if both were made within one tick of the
filesystem's clock, so a stamp taken less than RACY_NS after the file's ctime is young, and
the next sync reads that file again (git's "racily clean" entries; on a shared spool once,
when its stamp is sure: stamps.racy_ns). That costs one lstat a
file of the waiting and running directories, on listings only (an unchanged directory is
not listed); done/, dead/ and cancelled/, which can hold 200,000 files, compare the inode
number the listing gives for free.
"""

from __future__ import annotations

import json
import os
import time

from .dropins import SpoolView, SyncReport, is_ignored
from .errors import InvalidJob
from .fsio import close_quietly, db_ino, open_nofollow, read_fd, unreachable
from .hosts import server_inodes
from .index import Index
from .job import Job, JobState, parse_file
from .stamps import STAMPED, UNSURE, racy_ns, stamp_of


def _stamped_read(spool: SpoolView, state: JobState, path: str, listed: int | None = None) -> tuple[Job, int]:
    """(job, stamp) of a file a sync reads, stamped from the descriptor it is read through,
    before the read: a change after that leaves a stamp that no longer matches (and the next
    sync reads the file again). `listed`: the inode number the listing gave, the stamp outside
    STAMPED (overlayfs may list another number than fstat gives). Not on a shared spool whose
    server numbers inodes: there a client may still lead a name to the file it replaced (for
    up to a second on GlusterFS), and the number of the file read makes the next listing,
    which names the new one, read it again."""
    fd = open_nofollow(path)
    try:
        st = os.fstat(fd)
        data = read_fd(fd, spool.config.max_job_size + 1)
    finally:
        close_quietly(fd)
    job = parse_file(data, os.path.basename(path)[:-5])
    if state in STAMPED:
        return job, stamp_of(st, racy_ns(spool))
    read = listed is None or (spool.multihost and server_inodes(spool.fstype))
    return job, db_ino(st.st_ino if read else listed)


# Where a job that left a directory most likely went, looked at in this order.
_NEXT = (JobState.PROCESSING, JobState.COMPLETED, JobState.FAILED, JobState.PENDING, JobState.DEAD,
         JobState.CANCELLED, JobState.HELD)


def moved_on(spool: SpoolView, idx: Index, state: JobState, ids: set[str]) -> set[str]:
    """The ids, no longer in `state`'s directory, whose file is now in another one.

    A sync lists one directory after another: a job claimed from failed/ after
    processing/ was listed is in neither listing. Its row is not deleted (a
    `wait` must not see it vanish): it is read again where it is now. One in
    pending/ is left to that directory's listing (admission decides there);
    one that cannot be read yet keeps its row until the next sync lists its
    directory again (workers' scans skip done/, dead/, held/, cancelled/).
    """
    found = set()
    for job_id in ids:
        for other in _NEXT:
            path = spool.job_path(other, job_id)
            if other is state or not os.path.lexists(path):
                continue
            found.add(job_id)
            try:
                if other is JobState.PENDING:
                    raise FileNotFoundError(path)
                job, stamp = _stamped_read(spool, other, path)
                idx.upsert(job, other, stamp=stamp)
            except (OSError, InvalidJob):
                idx.set_dirmark(other.dirname, 0, 0)
            break
    return found


def sync_dir(spool: SpoolView, idx: Index, state: JobState, report: SyncReport) -> list[str] | None:
    """Diff one state directory against the index (Spool.sync's step); for pending/,
    the names still to admit."""
    d = state.dirname
    checked = time.time_ns()
    mtime = os.stat(spool.path(d)).st_mtime_ns
    with os.scandir(spool.path(d)) as it:
        inodes = {e.name: e.inode() for e in it}  # d_ino: free with the listing
    others = [n for n in inodes if not is_ignored(n)]  # the names of job files, and drop-ins' names
    on_disk = {n[:-5] for n in others if n.endswith(".json")}
    known = idx.stamps_in(state)
    gone = known.keys() - on_disk
    if gone:
        gone -= moved_on(spool, idx, state, gone)
    if gone:
        idx.delete(gone, state)
        report.removed += len(gone)
    if state in STAMPED:
        replaced = _replaced(spool, idx, state, known, on_disk & known.keys())
    else:  # a row of a worker's (no stamp) is known by its name
        replaced = {i for i in on_disk & known.keys()
                    if known[i] is not None and known[i] != db_ino(inodes[i + ".json"])}
    dropins = None
    if state is JobState.PENDING and not spool.readonly:
        # A known name whose file is not the one indexed was replaced (a hand edit moved
        # over it or written in place, `queuectl priority`): admit it again, like a drop-in.
        kept = known.keys() - replaced
        dropins = [n for n in others if not (n.endswith(".json") and n[:-5] in kept)]
    else:
        for job_id in (on_disk - known.keys()) | replaced:
            path = spool.path(d, job_id + ".json")
            try:
                job, stamp = _stamped_read(spool, state, path, inodes[job_id + ".json"])
            except (OSError, InvalidJob):
                continue  # `check` reports it; a worker never claims from here
            idx.upsert(job, state, stamp=stamp)
            report.added += job_id not in known
    idx.set_dirmark(d, mtime, checked)
    return dropins


def _replaced(spool: SpoolView, idx: Index, state: JobState, known: dict[str, int | None],
              ids: set[str]) -> set[str]:
    """The ids, among rows of a waiting or running directory, whose file is not the one the
    row was read from. A row without a stamp is a worker's, known by its name, except in
    pending/, where such a row (and a young one) is checked against the file's contents."""
    out = set()
    pending, shared = state is JobState.PENDING, spool.multihost
    now, stat, racy = time.time_ns(), os.stat, racy_ns(spool)
    fd = os.open(spool.path(state.dirname), os.O_RDONLY | os.O_DIRECTORY)
    try:
        for job_id in ids:  # the hot loop of a listing: one lstat a file (3 us), little else
            old = known[job_id]
            if old is None and not pending:
                continue
            try:
                st = stat(job_id + ".json", dir_fd=fd, follow_symlinks=False)
            except OSError as e:
                if isinstance(e, FileNotFoundError) or unreachable(e):
                    continue  # gone since the listing, or moved under this client's cache: the next sync's
                raise
            if now - st.st_ctime_ns >= racy:  # stamps.stamp_of, inlined: sure and the same is the rule
                new = hash((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)) | 1
                if new == old:
                    continue
            else:
                new = stamp_of(st, racy, now)
            if old not in (None, UNSURE) and old | 1 != new | 1:
                out.add(job_id)  # another file, or this one changed
                continue
            if old is not None and old & 1:
                continue  # sure, and the same
            if old == new and shared:
                # Young, the same, and read by this host already. Where other hosts write, a read
                # costs a round trip (5 ms on sshfs): such a file is read again once its stamp is
                # sure (this host's index lags another host's same-tick edit by that much).
                continue
            if pending and _same_job(spool, idx, job_id):
                # The row's own bytes (enqueue, `priority`): no admission needed. Once
                # the stamp is sure, the next sync trusts it without reading.
                if new != old:
                    idx.set_stamp(job_id, new)
                continue
            out.add(job_id)
    finally:
        os.close(fd)
    return out


def _same_job(spool: SpoolView, idx: Index, job_id: str) -> bool:
    """Does pending/ID.json hold the record its row holds: the same bytes (enqueue, `priority`),
    or the same JSON (a file admitted as it was, whose row holds it re-serialized)?"""
    record = idx.record_text(job_id)
    try:
        fd = open_nofollow(spool.job_path(JobState.PENDING, job_id))
    except OSError:
        return False
    try:
        data = read_fd(fd, spool.config.max_job_size + 1)
    except OSError:
        return False
    finally:
        close_quietly(fd)
    if record is None or data == record.encode("utf-8"):
        return record is not None
    try:
        return json.loads(data) == json.loads(record)
    except ValueError:  # not JSON (UnicodeDecodeError included): admission says why
        return False
