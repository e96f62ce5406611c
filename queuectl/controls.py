"""Everyday control of jobs: cancel, hold, release, priority, kill, requeue, remove, dependencies, wait.

Every change to a waiting job is safe against a worker claiming it at the same
moment. Like a claim, it locks the job file and renames it: the worker's claim
locks the file before its own rename, so whichever process locks first wins,
and the other finds the file gone (or locked) and says so.
"""

from __future__ import annotations

import json
import os
import signal
import time
import weakref
from dataclasses import dataclass
from typing import Callable

from . import lazylog
from .deps import WAITING as WAITING_STATES, cycles, describe
from .errors import InvalidJob, JobNotFound, QueueError, SpoolError, WrongState
from .fsio import (close_quietly, fsync_dir, lock_file, read_fd, space_error, unlink_quietly,
                   write_tmp)
from .index import row_values
from .job import FINAL, Job, JobState, check_priority, now_iso, parse_file
from .recovery import kill_path
from .registry import hostname, pid_alive, processes_with_env, read_workers
from .spool import Spool
from .stamps import placed_stamp, racy_ns

log = lazylog.get("queuectl.controls")

LOCK_TRIES = 400      # a worker holds a job's lock only between its lock and its rename
LOCK_RETRY = 0.005
RESCAN = 1.0          # `wait` rescans this often even without a watch event
KILL_FIND = 2.0       # seconds `kill` looks for the processes of a job claimed a moment ago
WAITING = (JobState.PENDING, JobState.FAILED, JobState.HELD)
CYCLE_SHARE = 0.02    # of a process's time, at most, spent looking for dependency cycles
# spool -> (when this process last looked for cycles, what it cost): see _cancel_cycles
_cycle_looks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_said_full: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # spools whose full disk `wait` reported

# action -> (states it applies to, state it moves the job to)
MOVES = {
    "cancel": (WAITING, JobState.CANCELLED),
    "hold": ((JobState.PENDING, JobState.FAILED), JobState.HELD),
    "release": ((JobState.HELD,), JobState.PENDING),
}
# action -> the states it applies to
FINISHED = (JobState.COMPLETED, JobState.DEAD, JobState.CANCELLED)
SOURCES = {**{a: m[0] for a, m in MOVES.items()}, "priority": WAITING, "kill": (JobState.PROCESSING,),
           "requeue": FINISHED, "remove": FINISHED}


def _wrong_state(job_id: str, state: JobState, action: str) -> WrongState:
    if action == "kill":
        return WrongState(f"job {job_id} is not running (it is {state.value})")
    if action in ("requeue", "remove"):
        what = "running" if state is JobState.PROCESSING else state.value
        return WrongState(f"job {job_id} is {what}: only completed, dead or cancelled jobs can be {_done(action)}")
    if state is JobState.PROCESSING:
        if action == "cancel":
            return WrongState(f"job {job_id} is running: stop it with `queuectl kill {job_id}`")
        return WrongState(f"job {job_id} is running: only a waiting job can be {_done(action)}")
    if action == "release":
        return WrongState(f"job {job_id} is not held (it is {state.value})")
    if state is JobState.CANCELLED and action == "cancel":
        return WrongState(f"job {job_id} is already cancelled")
    if state is JobState.HELD and action == "hold":
        return WrongState(f"job {job_id} is already held")
    what = "pending, failed or held" if action in ("cancel", "priority") else "pending or failed"
    return WrongState(f"job {job_id} is {state.value}: only {what} jobs can be {_done(action)}")


def _done(action: str) -> str:
    return {"cancel": "cancelled", "hold": "held", "release": "released",
            "priority": "given a new priority", "requeue": "requeued", "remove": "removed"}.get(action, action)


def find(spool: Spool, job_id: str) -> tuple[JobState, str]:
    """spool.find, looked again before saying "no job": a job claimed from failed/
    moves to processing/, which find() has already looked in."""
    for _ in range(2):
        try:
            return spool.find(job_id)
        except JobNotFound:
            pass
    return spool.find(job_id)


def check_targets(spool: Spool, job_ids: list[str], action: str) -> list[str]:
    """The ids as spelled on disk, if every job exists and `action` applies to it now.

    Checked for all before any is changed, so bad input changes nothing.
    """
    sources = SOURCES[action]
    out = []
    for job_id in job_ids:
        state, path = find(spool, job_id)
        if state not in sources:
            raise _wrong_state(job_id, state, action)
        out.append(os.path.basename(path)[:-5])
    return out


def _locked(spool: Spool, job_id: str, sources: tuple[JobState, ...], action: str) -> tuple[int, JobState, str]:
    """Lock the job's file where it waits: (fd, state, path). The loser of a race raises WrongState."""
    for _ in range(LOCK_TRIES):
        state, path = find(spool, job_id)
        if state not in sources:
            raise _wrong_state(job_id, state, action)
        fd = lock_file(path)
        if fd is not None:
            return fd, state, path
        time.sleep(LOCK_RETRY)  # a worker between its lock and its claim rename, or a move under way
    raise SpoolError(f"job {job_id} stayed locked by another process; try again")


def _rewrite(spool: Spool, job: Job, path: str, state: JobState) -> None:
    """Write the job's new contents over path (through tmp/, durably) and index it."""
    job.updated_at = now_iso()
    data = job.to_json()
    mtime = job.run_ts if state is JobState.FAILED and job.next_run_at else None  # failed/: mtime = due time
    tmp, _ = write_tmp(spool.path("tmp"), data, durable=True, mtime=mtime)
    try:
        ino = os.stat(tmp).st_ino
        os.rename(tmp, path)
        fsync_dir(os.path.dirname(path))
    except OSError as e:
        unlink_quietly(tmp)
        raise space_error(e, f"writing job {job.id}") from None
    spool.indexes.upsert(row_values(job, state, data.decode("utf-8"), placed_stamp(path, ino, state, racy_ns(spool))))


def move(spool: Spool, job_id: str, action: str, *, reason: str | None = None) -> Job:
    """cancel, hold or release one job: lock, one rename (which decides), then the new contents.

    The rename comes first: once it is done no claim can find the job, so the
    new contents are written in the job's new directory. A crash in between
    leaves the job in the right directory with its old state field; the
    directory is the truth.
    """
    sources, target = MOVES[action]
    fd, state, path = _locked(spool, job_id, sources, action)
    try:
        try:
            job = parse_file(read_fd(fd, spool.config.max_job_size + 1), os.path.basename(path)[:-5])
        except (OSError, InvalidJob) as e:
            raise InvalidJob(f"job file {os.path.relpath(path, spool.root)} is not valid: {e}") from None
        dest = spool.job_path(target, job.id)
        if os.path.lexists(dest):
            raise SpoolError(f"cannot {action} {job.id}: {os.path.relpath(dest, spool.root)} already exists "
                             "(see `queuectl check`)")
        try:
            os.rename(path, dest)
        except OSError as e:
            raise space_error(e, f"moving job {job.id}") from None
        event = {"event": _done(action), "at": now_iso(), "from": state.value}
        if reason:
            event["reason"] = reason
        job.history.append(event)
        job.state = target
        if target is JobState.CANCELLED:
            job.last_error = reason or "cancelled by user"
            unlink_quietly(kill_path(spool, job.id))  # a kill that missed its run ends with the job
        _rewrite(spool, job, dest, target)
    finally:
        close_quietly(fd)
    return job


def set_priority(spool: Spool, job_id: str, priority: int) -> Job:
    """Give a waiting job a new priority, in place: the next claim already sees it."""
    check_priority(priority)
    fd, state, path = _locked(spool, job_id, WAITING, "priority")
    try:
        job = parse_file(read_fd(fd, spool.config.max_job_size + 1), os.path.basename(path)[:-5])
        job.history.append({"event": "priority", "at": now_iso(), "from": job.priority, "to": priority})
        job.priority = priority
        # Replacing the locked file ends the lock with it: a worker then claims the new contents.
        _rewrite(spool, job, path, state)
    finally:
        close_quietly(fd)
    return job


def requeue(spool: Spool, job_ids: list[str]) -> list[Job]:
    """Move finished jobs (completed, dead or cancelled) back to pending/ with attempts 0,
    their history kept. Every id is checked first: one that is not final changes nothing."""
    out = []
    for job_id in check_targets(spool, job_ids, "requeue"):
        state, _ = find(spool, job_id)
        if state not in FINISHED:  # moved on since the check (another requeue)
            raise _wrong_state(job_id, state, "requeue")
        job = spool.requeue(job_id, state)
        if job is not None:  # always, without missing_ok
            out.append(job)
    return out


def remove(spool: Spool, job_ids: list[str]) -> list[str]:
    """Delete finished jobs (completed, dead or cancelled) and their logs; their ids can be
    used again. Every id is checked first: one that is not final changes nothing."""
    out = []
    for job_id in check_targets(spool, job_ids, "remove"):
        state, _ = find(spool, job_id)
        if state not in FINISHED:
            raise _wrong_state(job_id, state, "remove")
        spool.purge(job_id, state)
        out.append(job_id)
    return out


# -- dependencies ---------------------------------------------------------------------


def resolve_dependencies(spool: Spool) -> list[str]:
    """Cancel waiting jobs whose `after` dependency ended dead or cancelled (or no longer
    exists), transitively, and the members of a dependency cycle; the lines to tell a person.

    The index proposes, the files decide: each dependency's state is confirmed on disk.
    """
    said: list[str] = []
    if spool.readonly:
        return said
    for _ in range(1000):  # one generation of dependents per pass
        spool.flush_index()
        progressed = False
        seen: set[str] = set()
        for job_id, dep, _state in spool.index.doomed():
            if job_id in seen:
                continue
            try:
                real, _ = spool.find(dep)
            except JobNotFound:
                real = None
            except InvalidJob:
                continue
            if real not in (JobState.DEAD, JobState.CANCELLED, None):
                continue  # the index was behind the files
            seen.add(job_id)
            reason = (f"dependency {dep} ended dead" if real is JobState.DEAD else
                      f"dependency {dep} was cancelled" if real is JobState.CANCELLED else
                      f"dependency {dep} no longer exists")
            try:
                move(spool, job_id, "cancel", reason=reason)
            except QueueError:
                continue  # another process got there first
            said.append(f"cancelled {job_id}: {reason}")
            progressed = True
        if not progressed:
            progressed = _cancel_cycles(spool, said)
        if not progressed:
            break
    for line in said:
        log.info("%s", line)
    return said


def _cancel_cycles(spool: Spool, said: list[str]) -> bool:
    """Cancel the members of each dependency cycle among waiting jobs (they would wait
    for each other forever); True if one was cancelled.

    Looking costs a pass over every dependency between waiting jobs (0.1-0.3 s for a
    20,000-job chain), so a process spends at most CYCLE_SHARE of its time on it:
    a cycle among a few jobs is found at once, one in a huge graph seconds later.
    """
    t0 = time.monotonic()
    last = _cycle_looks.get(spool)
    if last is not None and t0 - last[0] < last[1] / CYCLE_SHARE:
        return False
    found = cycles((j, d) for j, d, _ in spool.index.dep_rows(WAITING_STATES))
    _cycle_looks[spool] = (t0, time.monotonic() - t0)
    progressed = False
    for cycle in found:
        if not _cycle_on_disk(spool, cycle):
            continue  # the index was behind the files
        for job_id in cycle:
            reason = f"dependency cycle {describe(cycle, job_id)}"
            try:
                move(spool, job_id, "cancel", reason=reason)
            except QueueError:
                continue
            said.append(f"cancelled {job_id}: {reason}")
            progressed = True
    return progressed


def _cycle_on_disk(spool: Spool, cycle: list[str]) -> bool:
    """Does each member of the cycle wait, by its file, for the next one?"""
    for i, job_id in enumerate(cycle):
        nxt = cycle[(i + 1) % len(cycle)].lower()
        try:
            state, path = spool.find(job_id)
            job = spool.read_job(path)
        except (JobNotFound, InvalidJob, OSError):
            return False
        if state not in WAITING or nxt not in {d.lower() for d in (*job.after, *job.after_any)}:
            return False
    return True


def list_fields(record: dict, waits: list[tuple[str, str, bool]] | None) -> dict:
    """What `list` adds to a record: the last attempt's run time, and the jobs it still waits for."""
    from .rowfields import timing
    state = JobState.parse(record.get("state", "pending"))
    history = record.get("history")
    duration = timing(history, state)[2] if isinstance(history, list) else None
    return {"duration": None if duration is None else round(duration, 6),
            "waiting_for": list(dict.fromkeys(d for d, _s, _any in waits or ())) if state in WAITING else []}


def list_note(record: dict, waits: list[tuple[str, str, bool]] | None, now: float) -> str:
    """`list`'s state column: the state, then what a person asks next about a job in it:
    how it ended (exit code, run time), when it retries or runs, what it waits for."""
    state = JobState.parse(record.get("state", "pending"))
    extra = list_fields(record, waits)
    notes = []
    if state in (JobState.COMPLETED, JobState.DEAD, JobState.FAILED):
        code, error = record.get("exit_code"), record.get("last_error")
        if isinstance(code, int) and not isinstance(code, bool):
            notes.append(f"exit {code}")
        elif error and state is not JobState.COMPLETED:  # killed, timed out, its worker died
            notes.append(str(error).split("\n")[0][:80])
        if extra["duration"] is not None and state is not JobState.FAILED:
            notes.append(_run_time(extra["duration"]))
    if waits and state in WAITING:
        notes.append("after " + ", ".join(dict.fromkeys(f"{d}: {s}" for d, s, _any in waits)))
    run_at = _epoch_or_none(record.get("next_run_at"))
    if run_at is not None and run_at > now and state in WAITING:
        if state is JobState.FAILED:
            notes.append(f"retry in {_span(run_at - now)}")
        else:
            local = time.localtime(run_at)
            same_day = time.localtime(now)[:3] == local[:3]
            notes.append(f"at {time.strftime('%H:%M' if same_day else '%Y-%m-%d %H:%M', local)}, "
                         f"in {_span(run_at - now)}")
    elif state is JobState.FAILED and run_at is not None:
        notes.append("retry due")
    return state.value + (f" ({', '.join(notes)})" if notes else "")


def _epoch_or_none(value: object) -> float | None:
    from .job import parse_time
    try:
        return None if value is None else parse_time(value)
    except InvalidJob:
        return None


def _run_time(secs: float) -> str:
    return f"{secs:.2f}s" if secs < 10 else f"{secs:.1f}s" if secs < 60 else _span(secs)


def _span(secs: float) -> str:
    secs = int(secs + 0.5)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            rest = secs % size
            sub = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            return f"{secs // size}{unit}" + (f"{rest // sub[1]}{sub[0]}" if rest // sub[1] else "")
    return f"{secs}s"


# -- kill -------------------------------------------------------------------------------


def running_groups(spool: Spool, job_id: str) -> set[int]:
    """Process groups of this host running the job: from its worker's heartbeat
    (job_pid + job_start), and from the QUEUECTL_JOB_ID mark every job carries."""
    groups: set[int] = set()
    host = hostname()
    for w in read_workers(spool):
        pid, start = w.get("job_pid"), w.get("job_start")
        if w.alive and w.host == host and w.job == job_id and isinstance(pid, int) and pid_alive(pid, start):
            groups.add(pid)  # a job runs in its own session: its pid is its group
    for pid in processes_with_env({"QUEUECTL_JOB_ID": job_id, "QUEUECTL_SPOOL": spool.root}):
        if pid == os.getpid():
            continue
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    return groups


def kill(spool: Spool, job_id: str, sig: int = signal.SIGTERM, *, retry: bool = False) -> tuple[str, set[int]]:
    """Signal a running job's process groups on this host; (id, groups).

    First a request file kill/<id> (the attempt it is for, and whether to
    retry) tells the job's worker that the exit it is about to see was a
    user's kill; then the signal, to the groups found before and after the
    request was written. An attempt that starts after that second look finds
    the request itself (its worker looks right after the spawn), so a kill at
    a retry boundary ends the next attempt instead of being lost.
    """
    state, path = find(spool, job_id)
    if state is not JobState.PROCESSING:
        raise _wrong_state(job_id, state, "kill")
    job = spool.read_job(path)
    deadline = time.monotonic() + KILL_FIND
    while not (groups := running_groups(spool, job.id)):
        # Claimed a moment ago, its command not started yet; or run by another host.
        if time.monotonic() > deadline:
            raise WrongState(f"job {job.id} is claimed but none of its processes runs on this host ({hostname()})")
        time.sleep(0.05)
        state, _ = find(spool, job_id)
        if state is not JobState.PROCESSING:
            raise _wrong_state(job_id, state, "kill")
    request = {"attempt": job.attempts + 1, "retry": retry, "signal": signal.Signals(sig).name,
               "at": now_iso(), "by_pid": os.getpid()}
    spool.write_file(kill_path(spool, job.id), json.dumps(request).encode() + b"\n", durable=False)
    groups |= running_groups(spool, job.id)
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        final = find(spool, job.id)[0] in FINAL
    except JobNotFound:
        final = True
    if final:
        unlink_quietly(kill_path(spool, job.id))  # it ended on its own first: no run is left to end
    return job.id, groups


# -- wait -------------------------------------------------------------------------------


@dataclass
class WaitResult:
    states: dict[str, str]   # id -> state name ("missing" if it vanished)
    timed_out: bool
    elapsed: float

    def count(self, *names: str) -> int:
        return sum(1 for s in self.states.values() if s in names)

    @property
    def final(self) -> int:
        return self.count(*(s.value for s in FINAL), "missing")

    @property
    def failed(self) -> int:
        return self.count("dead", "cancelled", "missing")


def wait_targets(spool: Spool, job_ids: list[str], label: str | None, all_: bool) -> dict[str, str | None]:
    """The jobs to wait for: the named ones (JobNotFound for an unknown id), those
    with the label, and with all_ every job not final yet; each with the final state
    its file showed here, if it did (wait_for's `seen`: a `clean` may remove it next)."""
    _sync_unless_full(spool)
    out: dict[str, str | None] = {}
    for job_id in job_ids:
        state, path = spool.find(job_id)
        out[os.path.basename(path)[:-5]] = state.value if state in FINAL else None
    idx = spool.index
    if label is not None:
        labelled = sorted(idx.ids_labelled(label))
        if not labelled:
            raise JobNotFound(f"no job has label {label}")
        for job_id in labelled:
            row = idx.lookup(job_id)
            out.setdefault(job_id, row.state.value if row is not None and row.state in FINAL else None)
    if all_:
        for r in idx.rows():
            if r.state not in FINAL:
                out.setdefault(r.id, None)
    return out


def wait_for(spool: Spool, job_ids: list[str], *, timeout: float | None = None,
             progress: Callable[[WaitResult], None] | None = None, poll: bool = False,
             seen: dict[str, str | None] | None = None) -> WaitResult:
    """Block until every job is final or the timeout passes. `seen`: the final states
    wait_targets already saw (a job seen final stays final for this wait).

    Woken by watch events on the directories jobs arrive in, with a rescan
    every RESCAN seconds in case an event is lost; never a busy loop.
    """
    from .watcher import Watcher
    t0 = time.monotonic()
    watcher = Watcher([spool.path(d) for d in ("done", "dead", "cancelled", "failed", "pending")], poll=poll)
    watcher.start()
    if watcher.degraded:
        log.warning("%s: polling the spool every %gs instead", watcher.degraded, watcher.poll_interval)
    # A job seen final stays final for this wait, even once it is cleaned.
    final: dict[str, str] = {j: s for j, s in (seen or {}).items() if s is not None}
    finals = {s.value for s in FINAL}
    try:
        while True:
            # With no worker running, a doomed dependent ends here. On a full disk the
            # index cannot take the news: the files still tell each job's state.
            idx = spool.index if _sync_unless_full(spool, resolve=True) else None
            states = {}
            for job_id in job_ids:
                if job_id in final:
                    states[job_id] = final[job_id]
                    continue
                row = idx.lookup(job_id) if idx is not None else None
                states[job_id] = row.state.value if row is not None else _on_disk(spool, job_id)
                if states[job_id] in finals:
                    final[job_id] = states[job_id]
            result = WaitResult(states, False, time.monotonic() - t0)
            if progress is not None:
                progress(result)
            if result.final == len(job_ids):
                return result
            left = None if timeout is None else timeout - (time.monotonic() - t0)
            if left is not None and left <= 0:
                result.timed_out = True
                return result
            watcher.wait(RESCAN if left is None else min(RESCAN, left))
    finally:
        watcher.stop()


def _sync_unless_full(spool: Spool, *, resolve: bool = False) -> bool:
    """spool.sync() (and with resolve, the dependency pass); False on a full disk.

    `wait` only reads, and the files are the truth: on a full disk it says so
    once and reads the job files until the index can be written again, rather
    than exit 1, which would read as "a job ended dead or cancelled".
    """
    try:
        spool.sync()
        if resolve:
            resolve_dependencies(spool)
    except SpoolError as e:
        if "no space left on device" not in str(e):
            raise
        if spool not in _said_full:
            _said_full[spool] = True
            log.warning("%s: waiting on, reading the job files until there is room", e)
        return False
    _said_full.pop(spool, None)
    return True


def wait_records(spool: Spool, result: WaitResult) -> list[dict]:
    """`wait --json`: each job's record with the state its directory gave (a file moved by hand may say
    another); read from the files if the index cannot be brought up to date (a full disk)."""
    synced = _sync_unless_full(spool)
    out = []
    for job_id, state in result.states.items():
        record = spool.index.record(job_id) if synced else None
        if record is None and state != "missing":
            try:
                record = spool.show(job_id)[0].to_dict()
            except (QueueError, OSError):
                record = None
        out.append({**(record or {"id": job_id}), "state": state})
    return out


def _on_disk(spool: Spool, job_id: str) -> str:
    """The state of a job the index has no row for, by its file: "missing" only if
    no state directory holds it (a job between two directories is looked for twice)."""
    try:
        return find(spool, job_id)[0].value
    except (JobNotFound, InvalidJob):
        return "missing"
