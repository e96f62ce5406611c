"""The index's sync with one state directory: rows for new files, rows of files that are
gone or moved elsewhere dropped or followed, and in pending/ the names admission must read
(drop-ins, and known files that were replaced). Spool.sync runs it for each directory whose
mtime moved."""

from __future__ import annotations

import os
import time

from .dropins import SpoolView, SyncReport, is_ignored
from .errors import InvalidJob
from .fsio import db_ino
from .index import Index
from .job import JobState


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
                idx.upsert(spool.read_job(path), other)
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
        inodes = {e.name: db_ino(e.inode()) for e in it}  # d_ino: free with the listing (as the index holds it)
    names = list(inodes)
    on_disk = {n[:-5] for n in names if n.endswith(".json") and not is_ignored(n)}
    known = idx.inodes_in(state)
    gone = known.keys() - on_disk
    if gone:
        gone -= moved_on(spool, idx, state, gone)
    if gone:
        idx.delete(gone, state)
        report.removed += len(gone)
    dropins = None
    if state is JobState.PENDING and not spool.readonly:
        # A known name whose inode is not the one indexed was replaced (a hand
        # edit moved over it, `queuectl priority`): admit it again, like a drop-in.
        dropins = [n for n in names if not is_ignored(n)
                   and not (n.endswith(".json") and known.get(n[:-5], -1) == inodes[n])]
    else:
        for job_id in on_disk - known.keys():
            try:
                job = spool.read_job(spool.path(d, job_id + ".json"))
            except (OSError, InvalidJob):
                continue  # `check` reports it; a worker never claims from here
            idx.upsert(job, state)
            report.added += 1
    idx.set_dirmark(d, mtime, checked)
    return dropins
