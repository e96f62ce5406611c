"""Stamps: which file an index row was read from (see indexsync.py for why not the inode alone)."""

from __future__ import annotations

import os
import time
from typing import Any

from .job import JobState

# A stamp taken this soon after the file's ctime may be shared by a file made in the same
# tick of the filesystem's clock (1 s on some filesystems and servers): the dirmarks' rule.
RACY_NS = 1_000_000_000
# On a spool other hosts share, times come from the file server's clock (whole seconds on sshfs,
# up to clock_skew off this host's) and a rewritten file may read stale for a moment (GlusterFS).
SHARED_RACY = 3.0
UNSURE = 0  # no stamp of the file this row stands for is known: read it again at the next sync
# Where stamps hash the file's stat; elsewhere they are its inode number.
STAMPED = frozenset({JobState.PENDING, JobState.PROCESSING, JobState.FAILED, JobState.HELD})


def racy_ns(spool: Any) -> int:
    """How long after its ctime a file's stamp stays young (even) on this spool (a spool.Spool)."""
    return int((SHARED_RACY + spool.config.clock_skew) * 1e9) if spool.multihost else RACY_NS


def stamp_of(st: os.stat_result, racy: int = RACY_NS, now_ns: int | None = None) -> int:
    """The stamp of a file of a waiting or running directory, from its lstat (or its fstat
    taken before it was read): a hash of its inode, size, mtime and ctime, odd when sure,
    even (young) while its ctime is under `racy` ns old. A young stamp still tells another
    file or a change, but not the same one: a file made in the same tick may share it."""
    now = time.time_ns() if now_ns is None else now_ns
    h = hash((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return h | 1 if now - st.st_ctime_ns >= racy else (h & ~1) or 2


def is_sure(stamp: int) -> bool:
    return bool(stamp & 1)


def placed_stamp(path: str, ino: int, state: JobState, racy: int = RACY_NS) -> int | None:
    """The stamp of the file its writer just moved to path (a file of `state`), whose inode
    it knows: UNSURE if path is another file by now; None (not known) outside STAMPED."""
    if state not in STAMPED:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return UNSURE
    return stamp_of(st, racy) if st.st_ino == ino else UNSURE
