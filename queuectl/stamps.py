"""Stamps: which file an index row was read from (see indexsync.py for why not the inode alone)."""

from __future__ import annotations

import os
import time

from .job import JobState

# A stamp taken this soon after the file's ctime may be shared by a file made in the same
# tick of the filesystem's clock (1 s on some filesystems and servers): the dirmarks' rule.
RACY_NS = 1_000_000_000
UNSURE = 0  # a stamp too fresh to vouch for the file: read it again at the next sync
# Where stamps hash the file's stat; elsewhere they are its inode number.
STAMPED = frozenset({JobState.PENDING, JobState.PROCESSING, JobState.FAILED, JobState.HELD})


def stamp_of(st: os.stat_result, now_ns: int | None = None) -> int:
    """The stamp of a file of a waiting or running directory, from its lstat (or its fstat
    taken before it was read); UNSURE while its ctime is under RACY_NS old."""
    now = time.time_ns() if now_ns is None else now_ns
    if now - st.st_ctime_ns < RACY_NS:
        return UNSURE
    return hash((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)) or 1


def placed_stamp(path: str, ino: int, state: JobState) -> int | None:
    """The stamp of the file its writer just moved to path (a file of `state`), whose inode
    it knows: UNSURE if path is another file by now; None (not known) outside STAMPED."""
    if state not in STAMPED:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return UNSURE
    return stamp_of(st) if st.st_ino == ino else UNSURE
