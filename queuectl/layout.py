"""Where a spool is and what it is made of: its directories, creating them, and who may write there."""

from __future__ import annotations

import os
import stat

from .errors import SpoolError
from .job import JobState

STATE_DIRS = [s.dirname for s in JobState]
SUBDIRS = ["tmp", *STATE_DIRS, "rejected", "logs", "workers", "kill", "paused", "queues"]


def default_spool() -> str:
    env = os.environ.get("QUEUECTL_SPOOL")
    if env:
        return env
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "queuectl", "spool")


def create_spool(root: str) -> bool:
    """Make the spool and its directories (0700) where missing; True if the spool is new."""
    fresh = False
    try:
        if not os.path.isdir(root):
            fresh = True
            os.makedirs(root, mode=0o700, exist_ok=True)
        for name in SUBDIRS:
            path = os.path.join(root, name)
            if not os.path.isdir(path):
                try:
                    os.mkdir(path, 0o700)
                except FileExistsError:
                    # Another process creating the same new spool got there first.
                    if not os.path.isdir(path):
                        raise
    except OSError as e:
        raise SpoolError(f"cannot create spool at {root}: {e.strerror or e}") from None
    return fresh


def unsafe_dirs(root: str) -> list[tuple[str, int, str]]:
    """(path, mode, why) for each spool directory someone else could write jobs into.

    Anyone who can write a job into the spool can run commands as the worker's
    user: the spool and each of its directories must be the running user's
    and writable by no one else.
    """
    out = []
    me = os.geteuid()
    for sub in ["", *SUBDIRS]:
        path = os.path.join(root, sub) if sub else root
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != me:
            out.append((path, mode, f"is owned by uid {st.st_uid}, not by you (uid {me})"))
        elif st.st_mode & 0o022:
            out.append((path, mode, f"is writable by group or others (mode {mode:o})"))
    return out
