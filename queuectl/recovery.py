"""Outcomes and retries (backoff), and claims whose owner is gone: detect and recover.

An attempt's outcome picks the next state: done, failed (retry after a
backoff) or dead. A job in processing/ whose owner died counts a failed
attempt ("worker died") and follows the same rule, so delivery is
at-least-once and a job that kills its worker still reaches the dead letter
queue.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import stat
import time
from typing import Callable, Iterator

from . import lazylog
from .config import Config
from .dropins import is_ignored
from .errors import InvalidJob, SpoolError
from .fsio import close_quietly, lock_file, read_nofollow, unlink_quietly, unreachable
from .hosts import server_inodes
from .job import Job, JobState, check_id, loads, now_iso
from .registry import (PRUNE_LEASES, WorkerInfo, claimed_by_live_workers, clones, forget, hostname, namespace_id,
                       node_name, owner_marker, processes_marked, read_claim, read_workers, signal_process)
from .runner import salvage_output

from .spool import Claim, Spool

log = lazylog.get("queuectl.recovery")


def backoff_delay(attempts: int, base: float, cap: float, jitter: float) -> float:
    """Seconds before retry number `attempts`: base ** attempts (+ jitter), never above cap."""
    try:
        delay = float(base) ** attempts
    except OverflowError:
        delay = float("inf")
    if jitter:
        delay *= 1 + random.random() * jitter
    return min(delay, cap)


def apply_outcome(job: Job, entry: dict, config: Config) -> float:
    """Count the attempt and pick the next state: done, failed (retry later) or dead.

    Returns the backoff delay in seconds (0 unless the job will be retried).
    """
    job.attempts += 1
    job.history.append(entry)
    job.exit_code = entry.get("exit_code")
    if entry.get("exit_code") == 0 and not entry.get("error"):
        job.state, job.last_error, job.next_run_at = JobState.COMPLETED, None, None
        return 0.0
    job.last_error = entry.get("error")
    if job.attempts <= job.max_retries:
        delay = backoff_delay(job.attempts, config.backoff_base, config.backoff_max, config.backoff_jitter)
        job.state, job.next_run_at = JobState.FAILED, now_iso(time.time() + delay)
        return delay
    job.state, job.next_run_at = JobState.DEAD, None
    return 0.0


# -- a user's kill ------------------------------------------------------------------------


def kill_path(spool: Spool, job_id: str) -> str:
    return spool.path("kill", job_id)


def kill_request(spool: Spool, job_id: str, attempt: int, *, take: bool = True) -> dict | None:
    """The user's kill request that applies to this attempt of the job; None if there is none.
    take: consume it (an attempt's end), whatever it holds; else only look (its start).

    `queuectl kill` names the attempt it saw running, but that attempt may end on
    its own just before the signal, which then hits the next one, or nothing, and
    the next attempt finds the request when it starts. A kill is asked of a job,
    not of one attempt: a request for this attempt or an earlier one applies to
    this one. Every end of an attempt consumes the request (a success too), so
    none outlives the run it was asked of.
    """
    path = kill_path(spool, job_id)
    try:
        data, _ = read_nofollow(path, 4096)
        request = loads(data)  # strict and bounded: deep nesting or bad bytes are an error, not a crash
    except FileNotFoundError:
        return None
    except (OSError, InvalidJob):
        request = None
    if take:
        unlink_quietly(path)
    if not isinstance(request, dict):
        return None
    asked, sig, retry = request.get("attempt"), request.get("signal", "SIGTERM"), request.get("retry", False)
    if (type(asked) is not int or not 1 <= asked <= attempt or not isinstance(retry, bool)
            or not (isinstance(sig, str) and sig in signal.Signals.__members__)):
        return None  # not what `queuectl kill` writes: ignored, the outcome stands as it is
    return request


def apply_kill(job: Job, request: dict | None) -> bool:
    """A user's kill without --retry ends the job: a failed attempt goes to dead/, not to a
    retry. True if it did so."""
    if request is not None and not request.get("retry") and job.state is JobState.FAILED:
        job.state, job.next_run_at = JobState.DEAD, None
        return True
    return False


def fmt_secs(delay: float) -> str:
    return f"{delay:.1f}s" if delay >= 0.1 else f"{delay:.3f}s"


# -- orphans -----------------------------------------------------------------------------


def _remote_leases(spool: Spool) -> list[WorkerInfo]:
    """Heartbeats of live workers on other nodes (or other mounts).

    A free flock proves a job's owner dead only where locks reach every
    owner. On a shared filesystem (sshfs, NFS without working locks) a
    worker on another host may hold the job all the same: its claim record,
    or a fresh heartbeat that names the job, counts as the lock.
    """
    return [w for w in read_workers(spool) if not w.local and w.alive]


def _leased(job_id: str, remote: list[WorkerInfo]) -> bool:
    """Does a live worker on another host name this job in its heartbeat?

    No file time is consulted: a network filesystem reports them coarsely
    and caches them. Short jobs are protected by the claim record instead,
    written (and on a shared spool synced) before the claim rename.
    """
    return any(w.job == job_id for w in remote)


def _still_unowned(spool: Spool, claim: Claim) -> bool:
    """Confirm an orphan found on a shared spool, where no flock stands in the way.

    Its owner may have finished it (and cleared its claim record) between this
    scan's listing and its look at the claim records, and a worker may have
    claimed it again since. An orphan is one that is still in processing/, as
    adopted, and that no claim record names after the adoption either.
    """
    job_id = claim.job.id
    if job_id in claimed_by_live_workers(spool):
        return False
    # A name's cached stat (and the file opened through it) can outlive the file by a
    # second on a network filesystem: the owner may have replaced it and moved it on
    # already. A listing comes from the server: the name must still be there, and
    # where the server numbers inodes, name the very file this claim holds.
    try:
        held = os.fstat(claim.fd).st_ino
        with os.scandir(spool.path("processing")) as it:
            listed = [e.inode() for e in it if e.name == job_id + ".json"]
    except OSError:
        return False
    if not listed or (server_inodes(spool.fstype) and listed[0] != held):
        return False
    try:
        now = spool.read_job(spool.job_path(JobState.PROCESSING, job_id))
    except (OSError, InvalidJob):
        return False
    return len(now.history) == claim.seen and now.state is claim.job.state


def orphans(spool: Spool) -> Iterator[Claim]:
    """Claims on processing/ jobs whose owner is gone: their lock is free (on
    this host), and no live worker's claim record or heartbeat names them,
    neither before the listing nor after the adoption."""
    # On a shared spool the claim records are read before the listing too: a
    # job finished (and its record cleared) between the listing and a later
    # read would otherwise look orphaned, with no flock to say otherwise.
    before = claimed_by_live_workers(spool) if spool.multihost else {}
    try:
        names = os.listdir(spool.path("processing"))
    except FileNotFoundError:
        return
    remote = owned = None
    for name in names:
        if is_ignored(name) or not name.endswith(".json") or name[:-5] in before:
            continue
        path = spool.path("processing", name)
        fd = lock_file(path)
        if fd is None:
            continue  # its worker lives (or it just moved on)
        if owned is None:
            owned = claimed_by_live_workers(spool)
        if name[:-5] in owned:
            close_quietly(fd)  # replaced under its live owner (edited in place): still owned
            continue
        if remote is None:
            remote = _remote_leases(spool)
        if remote and _leased(name[:-5], remote):
            close_quietly(fd)
            continue
        claim = spool.adopt(fd, JobState.PROCESSING, name[:-5])
        if claim is None:
            continue
        if spool.multihost and not _still_unowned(spool, claim):
            claim.release()
            continue
        yield claim


def recover_orphan(spool: Spool, claim: Claim, by: str) -> str | None:
    """A processing/ job whose owner died: finish its move, or count a failed attempt.

    Returns the line to tell a person, or None when only a finished move was completed.
    """
    job = claim.job
    # Only a final state proves the owner recorded an outcome and died before the
    # last rename: claims are taken from pending/ and failed/ only. A `failed`
    # file may be a retry claimed unchanged, so it counts an attempt; otherwise
    # a job that kills its worker would retry forever. (A crash between the two
    # renames of a failed outcome then counts one attempt too many: rare, and safe.)
    if job.state in (JobState.COMPLETED, JobState.DEAD):
        spool.record(claim, job)
        return None
    attempt = job.attempts + 1
    entry = {"attempt": attempt, "worker": by, "node": node_name(), "host": hostname(), "pid": os.getpid(),
             "started_at": None, "finished_at": now_iso(), "exit_code": None, "error": "worker died"}
    delay = apply_outcome(job, entry, spool.config)
    if apply_kill(job, kill_request(spool, job.id, attempt)):  # the user had asked to end it
        delay = 0.0
    if not spool.record(claim, job):
        return None  # another worker took it over meanwhile (record said so)
    where = f"retry in {fmt_secs(delay)}" if job.state is JobState.FAILED else "moved to dead letter queue"
    return f"recovered {job.id} (worker died, attempt {attempt}/{job.max_retries + 1}): {where}"


def prune_dead_workers(spool: Spool) -> None:
    """Forget workers of this node that died (first kill the job a dead worker
    left running), and other nodes' heartbeats silent for PRUNE_LEASES leases.

    A job runs in its own session, so it outlives a kill -9 of its worker;
    left alone it would run on beside the retry that recovery starts. Another
    node's processes cannot be signalled from here: its jobs were recovered
    one lease after its last beat, its files are only tidied up later.
    """
    cfg = spool.config
    for w in read_workers(spool):
        if not w.local:
            if not w.alive and w.age is not None and w.age > PRUNE_LEASES * (cfg.lease + cfg.clock_skew):
                forget(spool, w)
            continue
        if w.alive:
            continue
        pid, start = w.get("job_pid"), w.get("job_start")
        if isinstance(pid, int) and isinstance(start, str):
            signal_process(pid, start, signal.SIGKILL, group=True)
        if w.role == "worker" and w.pid_start:
            # A command started too shortly before its worker died to be in the
            # heartbeat: it carries the worker's mark in its environment.
            for leftover in processes_marked(owner_marker(w.pid, w.pid_start)):
                try:
                    os.killpg(os.getpgid(leftover), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        if w.role == "worker":
            _salvage_output(spool, w)
        forget(spool, w)


def _salvage_output(spool: Spool, w: WorkerInfo) -> None:
    """A dead worker's command may have written into its scratch file (runner.CommandLog):
    that output becomes the log of the job its claim record names."""
    scratch = spool.path("workers", w.file[:-5] + ".out")
    try:
        st = os.lstat(scratch)
    except OSError:
        return
    # Read from disk like any file: a link put there must not become a job's log (os.link
    # links the symlink itself), and an empty scratch file holds no output.
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return
    job_id = read_claim(spool.path("workers", w.file[:-5] + ".claim"))
    try:
        check_id(job_id or "")
    except InvalidJob:
        return  # a record from disk that names no job: nothing to attach the output to
    salvage_output(scratch, spool.log_path(job_id))


def recover_all(spool: Spool, by: str) -> list[str]:
    """Prune dead workers, then recover every orphaned claim; the lines to tell a person."""
    prune_dead_workers(spool)
    said = []
    for claim in orphans(spool):
        line = recover_orphan(spool, claim, by)
        if line:
            said.append(line)
    return said



def recover_waiting(spool: Spool, stopping: Callable[[], bool]) -> None:
    """A supervisor's start-up recovery (jobs left in processing/ by a crash), before anyone claims.

    A spool out of reach for a moment (ESTALE, a server not answering) is waited
    for, said once, instead of a crash that a service manager would turn into a
    restart loop.
    """
    said = False
    while True:
        try:
            spool.sync()
            for line in recover_all(spool, "supervisor"):
                log.info("%s", line)
            return
        except (OSError, SpoolError) as e:
            if not unreachable(e) or stopping():
                raise
            if not said:
                log.warning("the spool %s is out of reach for now (%s); looking again every 1s", spool.root, e)
                said = True
            time.sleep(1.0)


_said_failed = False


def recover_others(spool: Spool, since: str) -> bool:
    """A supervisor's look, on a shared spool, for other hosts' orphans: workers look only
    between jobs, and while each runs a long job a dead host's jobs would wait for one to
    finish (a minute or more) instead of a lease. True: stop, a clone of this node (same
    node name, another machine or namespace) started first; of two supervisors with one
    node name started at the same instant (the start-up check saw nothing yet) the later stops."""
    global _said_failed
    me = (since, namespace_id(), os.getpid())
    for w in clones(spool):
        if w.role == "supervisor" and (w.since or "", w.get("ns") or "", w.pid) < me:
            log.error("node name %s is also in use by another machine (live heartbeat workers/%s, pid %d, "
                      "started first): stopping; give each host its own --node or QUEUECTL_NODE",
                      node_name(), w.file, w.pid)
            return True
    try:
        for line in recover_all(spool, "supervisor"):
            log.info("%s", line)
    except (OSError, SpoolError, sqlite3.Error) as e:
        if not _said_failed:
            log.warning("recovery of other hosts' jobs failed (%s); the workers and the next look retry", e)
            _said_failed = True
    finally:
        spool.close()
    return False
