"""Enqueue's helpers: ids unique ignoring case, and placing a chunk of new jobs into pending/.

Split out of spool.py (which calls them from `Spool.enqueue_many`) to keep that module small.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from .errors import DuplicateJob
from .fsio import rename_noreplace, space_error, syncfs, unlink_quietly, write_tmp
from .index import row_values
from .job import Job, JobState

if TYPE_CHECKING:
    from .spool import Spool


def check_unique(spool: "Spool", jobs: list[Job]) -> None:
    # For many jobs one listing of each state directory beats five stats a job.
    bulk = len(jobs) > 16
    taken = spool.taken_ids() if bulk else {}
    seen: set[str] = set()
    for job in jobs:
        key = job.id.lower()
        if key in seen:
            raise DuplicateJob(f"job {job.id} appears twice")
        seen.add(key)
        if not bulk:
            spool.check_new_id(job.id)
        elif key in taken:
            raise DuplicateJob(f"job {taken[key][1]} already exists (in {taken[key][0]}/)")


def place_chunk(spool: "Spool", part: list[Job], *, bulk: bool) -> list[tuple]:
    """Write, sync and place one chunk; its index rows. PartlyPlaced says how far it got."""
    tmps: list[str] = []
    rows: list[tuple] = []
    placed = 0
    try:
        for job in part:
            data = job.to_json()
            rows.append(row_values(job, JobState.PENDING, data.decode("utf-8")))
            tmps.append(write_tmp(spool.path("tmp"), data, durable=len(part) == 1)[0])
        if len(part) > 1:
            syncfs(spool.path("tmp"))
        for job, tmp in zip(part, tmps):
            place(tmp, spool.job_path(JobState.PENDING, job.id), bulk=bulk)
            placed += 1
    except BaseException as e:
        for tmp in tmps[placed:]:
            unlink_quietly(tmp)
        raise PartlyPlaced(e, placed, rows) from None
    return rows


def place(tmp: str, dest: str, *, bulk: bool = False) -> None:
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


class PartlyPlaced(Exception):
    """A chunk of an enqueue failed after `placed` of its jobs were in pending/."""

    def __init__(self, error: BaseException, placed: int, rows: list[tuple]):
        super().__init__(str(error))
        self.error, self.placed, self.rows = error, placed, rows
