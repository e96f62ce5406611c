"""`queuectl check`: verify a spool like fsck / `postsuper -s`, and repair what is safe.

check() looks at the directories (the truth), the index (a cache) and the
locks, and returns one Problem per thing that is wrong. With repair=True it
also fixes what can be fixed without losing anything: no job file is ever
deleted; a file that has to go is moved to rejected/ with a reason, as the
drop-in rules do.

The check is meant for a quiet spool but tolerates running workers: what it
finds is looked at a second time before it is reported, so a job that merely
moved on while the directories were being listed is not a problem.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from .dropins import is_canonical, is_fs_artifact, is_ignored, reject
from .errors import InvalidJob, SpoolError
from .fsio import close_quietly, lock_fd, lock_file, open_nofollow, read_fd, read_nofollow
from .hosts import SPOOL_ID_FILE
from .job import PROGRESS, Job, JobState, loads, parse_file
from .queues import slot_problems
from .recovery import recover_orphan
from .registry import claimed_by_live_workers
from .spool import STATE_DIRS, SUBDIRS, Spool, unsafe_dirs

STALE_AFTER = 3600.0  # seconds: scratch files older than this are leftovers
READ_LIMIT = 64 << 20  # never read more than this of one file
TOP_LEVEL = {*SUBDIRS, "config.json", "counters.json", "index.db", "index.db-wal", "index.db-shm",
             "index.db-journal", ".lock", SPOOL_ID_FILE, ".readonly"}
REREADS = 2           # on a shared filesystem, reads of a file before it is called invalid...
REREAD_DELAY = 0.2    # ...this many seconds apart
# Kinds, in the order they are reported and repaired.
KINDS = ("permissions", "slot", "duplicate", "invalid-job", "state-mismatch", "orphan", "replaced-claim", "stale-tmp",
         "unexpected-file", "stale-dropin", "index")


@dataclass
class Problem:
    kind: str
    path: str            # relative to the spool root
    id: str | None
    message: str
    repaired: bool = False
    action: str | None = None   # what --repair did, or why it did not
    _fix: Callable[[], str] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("_fix")
        return d

    def line(self) -> str:
        text = f"{self.kind}: {self.path}: {self.message}"
        if self.action:
            text += f" [{'repaired' if self.repaired else 'not repaired'}: {self.action}]"
        return text


@dataclass
class _Entry:
    """One job file found in a state directory."""
    state: JobState
    name: str
    ino: int
    job: Job | None = None


def check(spool: Spool, *, repair: bool = False, allow_shared: bool = False,
          now: float | None = None) -> list[Problem]:
    """Every problem in the spool; with repair=True, each one fixed if that is safe."""
    now = time.time() if now is None else now
    problems: list[Problem] = []
    problems += _check_permissions(spool, allow_shared)
    problems += _check_slots(spool)
    entries: dict[str, list[_Entry]] = {}
    problems += _scan_state_dirs(spool, entries, now)
    problems += _check_duplicates(spool, entries)
    problems += _check_orphans(spool, entries)
    problems += _check_tmp(spool, now)
    problems += _check_top_level(spool)
    problems += _check_index(spool, entries)
    problems.sort(key=lambda p: (KINDS.index(p.kind), p.path))
    if repair:
        _repair(spool, problems)
    return problems


# -- what is checked ------------------------------------------------------------------


def _rel(spool: Spool, path: str) -> str:
    return os.path.relpath(path, spool.root)


def _check_permissions(spool: Spool, allow_shared: bool) -> list[Problem]:
    out = []
    if allow_shared:
        return out
    for path, mode, why in unsafe_dirs(spool.root):
        fix = None
        if os.lstat(path).st_uid == os.geteuid():
            def fix(path=path, mode=mode) -> str:
                os.chmod(path, mode & ~0o077)  # as created: private to the owner
                return f"chmod {mode & ~0o077:o}"
        sub = _rel(spool, path)
        out.append(Problem("permissions", sub, None,
                           f"directory {why}: anyone who can write there can run commands as "
                           "the worker's user", _fix=fix))
    return out


def _check_slots(spool: Spool) -> list[Problem]:
    """Slot files of a limited queue no worker can lock: the queue runs fewer jobs at once, or none."""
    out = []
    for queue, path, why in slot_problems(spool):
        fix = None
        if os.path.islink(path):
            def fix(path=path) -> str:  # nobody holds a lock through a link: slot files are never followed
                os.unlink(path)
                return "removed the link"
        out.append(Problem("slot", _rel(spool, path), None,
                           f"slot file of queue {queue} is {why}: no worker can lock it, so the queue runs "
                           "fewer jobs at once than its limit (none if it is the only one); remove it", _fix=fix))
    return out


def _read_regular(path: str, limit: int = READ_LIMIT) -> tuple[bytes, os.stat_result]:
    fd = open_nofollow(path)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidJob("not a regular file")
        if st.st_size > limit:
            raise InvalidJob(f"file is {st.st_size} bytes, too big to read")
        return read_fd(fd), st
    finally:
        close_quietly(fd)


def _read_job(path: str, name: str, rereads: int) -> tuple[Job, os.stat_result]:
    """Read and parse a job file; on a shared filesystem a short read through a
    client's cache looks like bad JSON, so a file is read again before it is
    called invalid."""
    for attempt in range(rereads + 1):
        try:
            data, st = _read_regular(path)
            return parse_file(data, name[:-5]), st
        except FileNotFoundError:
            raise
        except (InvalidJob, OSError):
            if attempt == rereads:
                raise
            time.sleep(REREAD_DELAY)
    raise AssertionError("unreachable")


def _if_still_invalid(path: str, name: str, fix: Callable[[], str]) -> Callable[[], str]:
    """A finished job is never quarantined on what one pass read: read it once more at repair time."""
    def confirmed() -> str:
        try:
            _read_job(path, name, rereads=REREADS)
        except FileNotFoundError:
            raise _Skip("the file is gone") from None
        except (InvalidJob, OSError):
            return fix()
        raise _Skip("it reads as a valid job now (a stale cache on a shared filesystem)")
    return confirmed


def _to_rejected(spool: Spool, state_dir: str, name: str, reason: str) -> Callable[[], str]:
    """A repair that moves one file, unchanged, to rejected/ with a reason."""
    def fix() -> str:
        src = spool.path(state_dir, name)
        fd = -1
        try:
            fd = open_nofollow(src)
        except OSError:
            pass  # a symlink, a FIFO without a writer...: nothing can hold a lock on it
        try:
            if fd >= 0:
                _lock_or_skip(src, fd)
            if not reject(spool, src, name, reason):
                raise _Skip("the file is gone")
        finally:
            if fd >= 0:
                close_quietly(fd)
        return "moved to rejected/ with a .reason file"
    return fix


def _scan_state_dirs(spool: Spool, entries: dict[str, list[_Entry]], now: float) -> list[Problem]:
    out: list[Problem] = []
    for d in STATE_DIRS:
        state = JobState.parse(d)
        try:
            names = sorted(os.listdir(spool.path(d)))
        except FileNotFoundError:
            continue
        for name in names:
            if is_fs_artifact(name):
                continue
            path = spool.path(d, name)
            rel = f"{d}/{name}"
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # moved on meanwhile
            if state is JobState.PENDING:
                p = _pending_entry(spool, name, path, st, now, entries)
                if p is not None:
                    out.append(p)
                continue
            if is_ignored(name) or not name.endswith(".json") or name == ".json" \
                    or not stat.S_ISREG(st.st_mode):
                what = ("a symlink" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
                        else "not a regular file" if not stat.S_ISREG(st.st_mode) else "not a job file name")
                out.append(Problem("unexpected-file", rel, None, f"unexpected entry in {d}/ ({what})",
                                   _fix=_to_rejected(spool, d, name, f"unexpected entry in {d}/ "
                                                                     f"({what}), moved by check --repair")))
                continue
            entry = _Entry(state, name, st.st_ino)
            try:
                job, st = _read_job(path, name, rereads=REREADS if spool.multihost else 0)
                entry.job = job
            except FileNotFoundError:
                continue
            except (InvalidJob, OSError) as e:
                if isinstance(e, OSError):
                    e = InvalidJob(e.strerror or str(e))
                if state is JobState.PROCESSING:
                    fix = None  # a live owner may be rewriting it; recovery deals with it
                else:
                    fix = _to_rejected(spool, d, name, f"invalid job file in {d}/: {e} (moved by check --repair)")
                    if spool.multihost and state in (JobState.COMPLETED, JobState.DEAD):
                        fix = _if_still_invalid(path, name, fix)
                out.append(Problem("invalid-job", rel, name[:-5], f"invalid job file: {e}", _fix=fix))
                continue
            entries.setdefault(job.id.lower(), []).append(entry)
            out += _job_problems(spool, entry, st, rel)
    return out


def _pending_entry(spool: Spool, name: str, path: str, st: os.stat_result, now: float,
                   entries: dict[str, list[_Entry]]) -> Problem | None:
    """pending/ is the drop zone: scratch names and fresh drop-ins are normal there."""
    rel = f"pending/{name}"
    old = now - st.st_mtime > STALE_AFTER
    if is_ignored(name):
        if not old:
            return None
        return Problem("unexpected-file", rel, None,
                       f"writer's scratch file untouched for {(now - st.st_mtime) / 3600:.1f} hours",
                       _fix=_to_rejected(spool, "pending", name,
                                         "abandoned scratch file in pending/, moved by check --repair"))
    if not stat.S_ISREG(st.st_mode) or not name.endswith(".json") or name == ".json":
        what = ("a symlink" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
                else "not a regular file" if not stat.S_ISREG(st.st_mode) else "not a .json name")
        return Problem("unexpected-file", rel, None,
                       f"not a job ({what}); the next scan moves it to rejected/", _fix=_rescan)
    try:
        data, st = _read_regular(path, spool.config.max_job_size)
        spec = loads(data)
    except FileNotFoundError:
        return None
    except (InvalidJob, OSError) as e:
        if isinstance(e, OSError):
            e = InvalidJob(e.strerror or str(e))
        if not old and isinstance(e, InvalidJob) and now - st.st_mtime < spool.config.dropin_grace:
            return None  # may still be being written
        return Problem("invalid-job", rel, None, f"not a valid job ({e}); the next scan moves it to rejected/",
                       _fix=_rescan)
    stem = name[:-5]
    if not is_canonical(spec, stem):
        try:
            # The admission rule itself, so a drop-in that would be rejected is
            # never called ok while it waits for the next scan.
            Job.from_spec(spec, fallback_id=None if isinstance(spec, dict) and "id" in spec else stem)
        except InvalidJob as e:
            return Problem("invalid-job", rel, None, f"not a valid job ({e}); the next scan moves it to rejected/",
                           _fix=_rescan)
        if not old:
            return None  # a drop-in waiting for the next scan
        return Problem("stale-dropin", rel, None,
                       "dropped-in file not accepted for over an hour (no worker or command has run)",
                       _fix=_rescan)
    try:
        job = Job.from_record(spec)
    except InvalidJob as e:
        return Problem("invalid-job", rel, stem, f"invalid job file: {e}",
                       _fix=_to_rejected(spool, "pending", name,
                                         f"invalid job file in pending/: {e} (moved by check --repair)"))
    entry = _Entry(JobState.PENDING, name, st.st_ino, job)
    entries.setdefault(job.id.lower(), []).append(entry)
    problems = _job_problems(spool, entry, st, rel)
    return problems[0] if problems else None


# A fix that returns this is done by one reindex (which also rescans pending/) at the end.
REINDEX = "reindex"


def _rescan() -> str:
    return REINDEX


def _job_problems(spool: Spool, entry: _Entry, st: os.stat_result, rel: str) -> list[Problem]:
    out = []
    job = entry.job
    assert job is not None
    d = entry.state
    # A processing/ file legitimately holds its previous state (claimed from
    # pending/ or failed/) or the outcome written just before the final rename.
    if d is not JobState.PROCESSING and job.state is not d:
        out.append(Problem("state-mismatch", rel, job.id,
                           f"state field says {job.state.value} but the file is in {d.dirname}/",
                           _fix=_set_state(spool, entry)))
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o600:
        path = spool.path(d.dirname, entry.name)

        def fix(path=path) -> str:
            fd = open_nofollow(path)
            try:
                os.fchmod(fd, 0o600)
            finally:
                close_quietly(fd)
            return "chmod 600"
        out.append(Problem("permissions", rel, job.id, f"job file mode is {mode:o}, not 600", _fix=fix))
    return out


def _set_state(spool: Spool, entry: _Entry) -> Callable[[], str]:
    """Rewrite the state field to the directory's state: the directory is the truth."""
    def fix() -> str:
        d = entry.state
        path = spool.path(d.dirname, entry.name)
        fd = open_nofollow(path)
        try:
            _lock_or_skip(path, fd)
            data, _ = _read_regular(path)
            job = Job.from_record(loads(data))
            old = job.state
            job.state = d
            if d is JobState.PENDING:
                job.next_run_at = None
            spool.write_file(path, job.to_json(), durable=True)
        finally:
            close_quietly(fd)
        return f"state field set from {old.value} to {d.value}"
    return fix


def _check_duplicates(spool: Spool, entries: dict[str, list[_Entry]]) -> list[Problem]:
    out = []
    for key, group in entries.items():
        if len(group) < 2:
            continue
        # Still true now? A job that moved while the directories were listed shows up twice.
        group = [e for e in group if _same_file(spool, e)]
        if len(group) < 2:
            continue
        keep = max(group, key=lambda e: (PROGRESS[e.state], e.job.updated_at if e.job else ""))
        where = ", ".join(f"{e.state.dirname}/{e.name}" for e in group)
        for e in group:
            if e is keep:
                continue
            reason = (f"duplicate of job {keep.job.id} kept in {keep.state.dirname}/ "
                      f"(the most advanced copy; moved by check --repair)")
            fix = _to_rejected(spool, e.state.dirname, e.name, reason)
            out.append(Problem("duplicate", f"{e.state.dirname}/{e.name}", e.job.id,
                               f"job id {e.job.id} is in more than one place ({where}); "
                               f"the copy in {keep.state.dirname}/ is the most advanced", _fix=fix))
    return out


def _same_file(spool: Spool, e: _Entry) -> bool:
    try:
        return os.lstat(spool.path(e.state.dirname, e.name)).st_ino == e.ino
    except OSError:
        return False


def _check_orphans(spool: Spool, entries: dict[str, list[_Entry]]) -> list[Problem]:
    """processing/ jobs whose lock is free: their worker is gone. Probed, not consumed.

    A free lock on a job that a live worker's claim record names means the
    file was replaced under its worker (edited in place): not an orphan, but
    not ok either.
    """
    out = []
    owned = claimed_by_live_workers(spool)
    for group in entries.values():
        for e in group:
            if e.state is not JobState.PROCESSING:
                continue
            # Probed, not kept: the lock is let go at once.
            fd = lock_file(spool.path("processing", e.name))
            if fd is None:
                continue
            free = os.fstat(fd).st_ino == e.ino
            close_quietly(fd)
            if not free:
                continue
            job = e.job
            assert job is not None
            owner = owned.get(job.id)
            if owner is None and spool.multihost:
                owned = claimed_by_live_workers(spool)  # claimed on another host since the first look
                owner = owned.get(job.id)
            if owner is not None and not owner.local:
                continue  # held by a worker on another host: its flock does not reach this one
            if owner is not None:
                out.append(Problem("replaced-claim", f"processing/{e.name}", job.id,
                                   f"replaced while {owner.id} (pid {owner.pid}) runs it (edited in place?): "
                                   "the worker's outcome will overwrite it; edit jobs in pending/ only"))
                continue
            if job.state in (JobState.COMPLETED, JobState.DEAD):
                msg = (f"no live worker holds it (the file says {job.state.value}: "
                       "recovery finishes the move)")
            else:
                msg = "no live worker holds it (its worker died; recovery counts a failed attempt)"
            out.append(Problem("orphan", f"processing/{e.name}", job.id, msg, _fix=_recover(spool, e.name)))
    return out


def _recover(spool: Spool, name: str) -> Callable[[], str]:
    def fix() -> str:
        fd = lock_file(spool.path("processing", name))
        if fd is None:
            raise _Skip("recovered or taken over by a live worker meanwhile")
        claim = spool.adopt(fd, JobState.PROCESSING, name[:-5])
        if claim is None:
            return "invalid: moved to rejected/ with a .reason file"
        recover_orphan(spool, claim, "check")
        return f"recovered: now in {claim.job.state.dirname}/"
    return fix


def _check_tmp(spool: Spool, now: float) -> list[Problem]:
    out = []
    try:
        names = sorted(os.listdir(spool.path("tmp")))
    except FileNotFoundError:
        return out
    for name in names:
        if is_fs_artifact(name):
            continue
        try:
            st = os.lstat(spool.path("tmp", name))
        except FileNotFoundError:
            continue
        age = now - st.st_mtime
        if age > STALE_AFTER:
            out.append(Problem("stale-tmp", f"tmp/{name}", None,
                               f"left by an interrupted write {age / 3600:.1f} hours ago",
                               _fix=_to_rejected(spool, "tmp", name,
                                                 "left in tmp/ by an interrupted write (moved by check --repair)")))
    return out


def _check_top_level(spool: Spool) -> list[Problem]:
    out = []
    for name in sorted(os.listdir(spool.root)):
        if name in TOP_LEVEL or is_fs_artifact(name):
            continue
        if name.startswith("index.db-") or name.startswith(".lock"):
            continue
        out.append(Problem("unexpected-file", name, None,
                           "unknown entry at the top of the spool (not touched by --repair)"))
    return out


def _check_index(spool: Spool, entries: dict[str, list[_Entry]]) -> list[Problem]:
    """Compare the index with the files as they are, without syncing it first (on a local disk)."""
    if spool.readonly:
        return []  # its index lives in memory, built from these very files
    if spool.multihost:
        # This node's own index learns of other hosts' moves only when it scans:
        # its lag is by design, not a problem. Scan now, then compare.
        spool.sync()
    idx = spool.index
    on_disk = {k: g for k, g in entries.items() if len(g) == 1}
    if idx.created and on_disk:
        return [Problem("index", "index.db", None, "index.db was missing, empty or corrupt", _fix=_rescan)]
    rows = {r[0].lower(): (r[0], JobState(r[1])) for r in idx.db.execute("SELECT id, state FROM jobs")}
    out = []
    suspects = []
    for key, (job_id, state) in rows.items():
        group = entries.get(key)
        if group is None:
            suspects.append(key)
        elif len(group) == 1 and group[0].state is not state:
            e = group[0]
            if e.state is JobState.PROCESSING and state in (JobState.PENDING, JobState.FAILED):
                continue  # a short job running: its processing row is never written
            suspects.append(key)
    for key in on_disk:
        if key not in rows:
            suspects.append(key)
    for key in suspects:
        row = idx.lookup(key)
        group = [e for e in entries.get(key, []) if _same_file(spool, e)]
        if len(group) > 1:
            continue  # a duplicate: reported as such
        if row is None and not group:
            continue
        if row is None:
            e = group[0]
            out.append(Problem("index", f"{e.state.dirname}/{e.name}", e.job.id,
                               "job file has no row in the index", _fix=_rescan))
        elif not group:
            if _exists_anywhere(spool, row.id):
                continue  # moved on while we looked
            out.append(Problem("index", f"index.db:{row.id}", row.id,
                               f"index row ({row.state.value}) has no job file", _fix=_rescan))
        elif group[0].state is not row.state:
            e = group[0]
            if e.state is JobState.PROCESSING and row.state in (JobState.PENDING, JobState.FAILED):
                continue
            out.append(Problem("index", f"{e.state.dirname}/{e.name}", e.job.id,
                               f"index says {row.state.value} but the file is in {e.state.dirname}/",
                               _fix=_rescan))
    return out


def _exists_anywhere(spool: Spool, job_id: str) -> bool:
    return any(os.path.lexists(spool.path(d, job_id + ".json")) for d in STATE_DIRS)


# -- repair --------------------------------------------------------------------------


class _Skip(Exception):
    """A repair that is not safe right now; the message says why."""


def _lock_or_skip(path: str, fd: int) -> None:
    """Lock the open job file for a repair, or _Skip: a worker holds it, or the path moved on."""
    if not lock_fd(path, fd):
        raise _Skip("in use by a worker, or changed meanwhile")


def _repair(spool: Spool, problems: list[Problem]) -> None:
    reindex: list[Problem] = []
    changed = False
    for p in problems:
        if p._fix is None:
            p.action = "needs a person: left as it is"
            continue
        try:
            action = p._fix()
            if action == REINDEX:
                reindex.append(p)
                continue
            p.action = action
            p.repaired = True
            changed = True
        except _Skip as e:
            p.action = str(e)
        except (OSError, SpoolError, InvalidJob) as e:
            p.action = f"failed: {getattr(e, 'strerror', None) or e}"
    if reindex or changed:
        try:
            counts = spool.reindex()
        except (OSError, SpoolError) as e:
            for p in reindex:
                p.action = f"reindex failed: {e}"
            return
        summary = ", ".join(f"{k} {v}" for k, v in counts.items())
        for p in reindex:
            p.repaired = True
            p.action = f"reindexed ({summary})"


def readonly_note(spool: Spool) -> str | None:
    """The text of the spool's .readonly file, which says why it is kept as it is (and so
    what `check` will find there, as spool_example/'s does); None if there is none."""
    try:
        data, _ = read_nofollow(spool.path(".readonly"), 4096)
    except OSError:
        return None
    text = " ".join(data[:4096].decode("utf-8", "replace").split())
    return text or None
