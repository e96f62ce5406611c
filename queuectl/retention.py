"""Retention: which finished jobs (and their logs) are deleted, oldest first.

A finished job's age is its file's mtime: the record that moved it into
done/ or dead/ wrote the file then. `queuectl clean` deletes on demand; the
settings keep_done / keep_dead are applied by idle workers, one batch at a
time, so a busy spool stays bounded without a pause.
"""

from __future__ import annotations

import fcntl
import os
import time
from typing import Iterator

from . import lazylog
from .config import Retention
from .dropins import is_ignored
from .errors import ConfigError
from .job import JobState
from .spool import Spool

log = lazylog.get("queuectl.retention")

BATCH = 500  # deletions per background pass: a worker is never busy cleaning for long
LOCKED = 50  # deletions under one hold of the enqueue lock: an enqueue waits ~10 ms at most
# States a job never leaves by itself. `cancelled` joins them where this queuectl has it.
FINAL_STATES = [s for s in JobState if s.value in ("completed", "dead", "cancelled")]
# A dependent in one of these states keeps its completed `after` parents from being cleaned.
NEEDED_BY = ("pending", "failed", "held", "processing", "dead")


def final_state(name: str) -> JobState:
    state = JobState.parse(name)
    if state not in FINAL_STATES:
        raise ConfigError(f"only finished jobs are cleaned ({', '.join(s.value for s in FINAL_STATES)}), "
                          f"not {state.value}")
    return state


def expired(spool: Spool, state: JobState, rule: Retention, now: float | None = None) -> list[tuple[str, float]]:
    """(id, finished time) of the jobs in `state` that `rule` no longer keeps, oldest first."""
    now = time.time() if now is None else now
    found = []
    with os.scandir(spool.path(state.dirname)) as it:
        for e in it:
            if not e.name.endswith(".json") or is_ignored(e.name):
                continue
            try:
                found.append((e.stat(follow_symlinks=False).st_mtime, e.name[:-5]))
            except FileNotFoundError:
                continue
    found.sort()
    cut = 0
    if rule.count is not None:
        cut = max(0, len(found) - rule.count)
    if rule.age is not None:
        while cut < len(found) and found[cut][0] < now - rule.age:
            cut += 1
    return [(job_id, mtime) for mtime, job_id in found[:cut]]


def waiter(spool: Spool, job_id: str) -> str | None:
    """A job whose `after` names this completed one and that may still need it, or None.

    Deleting the parent would cancel such a dependent ("dependency ... no longer
    exists"): one waiting, running (it may fail and retry) or dead (`dlq retry`
    brings it back). A finished parent that is deleted is no longer "completed".
    """
    for dependent, _dep, any_ in spool.index.dep_rows(NEEDED_BY, dep=job_id):
        if not any_:  # an `after_any` dependency that is gone counts as final: nothing to keep
            return dependent
    return None


def clean(spool: Spool, states: list[JobState], rule: Retention, *, dry_run: bool = False,
          limit: int | None = None, kept: list[tuple[str, str]] | None = None) -> Iterator[tuple[str, JobState]]:
    """Delete (or with dry_run only name) what `rule` does not keep: (id, state) per job.

    A completed job that another job still needs (waiter) is kept, whatever the
    rule: (its id, the dependent) is appended to `kept`.
    """
    n = 0
    spool.flush_index()  # a worker's batched rows: a dependent it just recorded
    for state in states:
        found = expired(spool, state, rule)
        for start in range(0, len(found), LOCKED):
            # The checks and the deletions under the enqueue lock: a dependent being
            # admitted meanwhile has its index row before its parent can go.
            with spool.hot_lock():
                if spool.multihost and state is JobState.COMPLETED:
                    spool.sync()  # another host's new dependent is in the files, not in this host's index
                done: list[str] = []
                for job_id, _mtime in found[start:start + LOCKED]:
                    if limit is not None and n + len(done) >= limit:
                        break
                    dependent = waiter(spool, job_id) if state is JobState.COMPLETED else None
                    if dependent is not None:
                        if kept is not None:
                            kept.append((job_id, dependent))
                    # A job another process moved or deleted meanwhile is skipped.
                    elif dry_run or spool.purge(job_id, state, missing_ok=True):
                        done.append(job_id)
            for job_id in done:
                n += 1
                yield job_id, state
            if limit is not None and n >= limit:
                return


def apply_settings(spool: Spool, limit: int = BATCH) -> int:
    """One background pass of keep_done / keep_dead: at most `limit` deletions, by one
    worker of the spool at a time (the others skip the pass)."""
    fd = os.open(spool.path("queues", ".retention.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0
        cfg = spool.config
        n = 0
        for state, rule in ((JobState.COMPLETED, cfg.keep_done), (JobState.DEAD, cfg.keep_dead)):
            if rule.age is None and rule.count is None:
                continue
            n += sum(1 for _ in clean(spool, [state], rule, limit=limit - n))
        if n:
            log.info("retention: removed %d finished job%s", n, "" if n == 1 else "s")
        return n
    finally:
        os.close(fd)
