"""The SQLite index: a cache of the spool directories that answers status and list fast.

The directories are the truth. Every row can be rebuilt from them, so the index
is written with synchronous=NORMAL (no fsync per commit) and is thrown away and
rebuilt when it is missing or corrupt.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from typing import Callable, ContextManager, Iterable, Iterator, NamedTuple

from .errors import SpoolError
from .fsio import disk_full as fsio_disk_full, unlink_quietly
from .job import Job, JobState

log = logging.getLogger("queuectl.index")

SCHEMA_VERSION = 4
# Long enough to ride out a big reconcile in another process; every
# transaction here is short otherwise.
BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY COLLATE NOCASE,
    state       TEXT NOT NULL,
    command     TEXT NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    created     REAL NOT NULL,
    run_at      REAL NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    max_retries INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    record      TEXT NOT NULL,
    -- The inode of the file this row was read from (NULL: not known). A sync
    -- that lists a different inode under the same name in pending/ reads the
    -- file again: a hand edit written to tmp/ and moved over the old file.
    ino         INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, priority DESC, created, id);
-- Per-state counts kept by triggers, so `status` reads five rows instead of
-- counting a big done/ every time.
CREATE TABLE IF NOT EXISTS counts (
    state TEXT PRIMARY KEY,
    n     INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS jobs_ins AFTER INSERT ON jobs BEGIN
    INSERT INTO counts VALUES (new.state, 1) ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS jobs_del AFTER DELETE ON jobs BEGIN
    UPDATE counts SET n = n - 1 WHERE state = old.state;
END;
CREATE TRIGGER IF NOT EXISTS jobs_upd AFTER UPDATE OF state ON jobs WHEN old.state IS NOT new.state BEGIN
    UPDATE counts SET n = n - 1 WHERE state = old.state;
    INSERT INTO counts VALUES (new.state, 1) ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;
-- Dependencies (`after`, `after_any` of each job), kept from the record by
-- triggers, so every path that writes a row keeps them without knowing them.
CREATE TABLE IF NOT EXISTS deps (
    job TEXT NOT NULL COLLATE NOCASE,
    dep TEXT NOT NULL COLLATE NOCASE,
    any INTEGER NOT NULL,
    PRIMARY KEY (job, dep, any)
);
CREATE INDEX IF NOT EXISTS deps_dep ON deps (dep);
CREATE TRIGGER IF NOT EXISTS deps_ins AFTER INSERT ON jobs WHEN instr(new.record, '"after') BEGIN
    INSERT OR IGNORE INTO deps SELECT new.id, value, 0 FROM json_each(new.record, '$.after');
    INSERT OR IGNORE INTO deps SELECT new.id, value, 1 FROM json_each(new.record, '$.after_any');
END;
CREATE TRIGGER IF NOT EXISTS deps_upd AFTER UPDATE OF record ON jobs BEGIN
    DELETE FROM deps WHERE job = old.id;
    INSERT OR IGNORE INTO deps SELECT new.id, value, 0 FROM json_each(new.record, '$.after')
        WHERE instr(new.record, '"after');
    INSERT OR IGNORE INTO deps SELECT new.id, value, 1 FROM json_each(new.record, '$.after_any')
        WHERE instr(new.record, '"after');
END;
CREATE TRIGGER IF NOT EXISTS deps_del AFTER DELETE ON jobs BEGIN
    DELETE FROM deps WHERE job = old.id;
END;
CREATE TABLE IF NOT EXISTS dirmarks (
    dir        TEXT PRIMARY KEY,
    mtime_ns   INTEGER NOT NULL,
    checked_ns INTEGER NOT NULL
);
"""


class IndexCorrupt(Exception):
    """index.db exists but is not a usable SQLite database."""


class Row(NamedTuple):
    id: str
    state: JobState
    command: str
    priority: int
    created: float
    run_at: float
    attempts: int
    max_retries: int
    last_error: str | None


def row_values(job: Job, state: JobState, record: str | None = None, ino: int | None = None) -> tuple:
    if record is None:
        record = json.dumps(job.to_dict(), ensure_ascii=False)
    return (job.id, state.value, job.command, job.priority, job.created_ts, job.run_ts,
            job.attempts, job.max_retries, job.last_error, record, ino)


# An upsert, not INSERT OR REPLACE: REPLACE deletes without firing the
# delete trigger, which would skew the counts table.
_UPSERT = """INSERT INTO jobs
    (id, state, command, priority, created, run_at, attempts, max_retries, last_error, record, ino)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET id = excluded.id, state = excluded.state,
        command = excluded.command, priority = excluded.priority, created = excluded.created,
        run_at = excluded.run_at, attempts = excluded.attempts, max_retries = excluded.max_retries,
        last_error = excluded.last_error, record = excluded.record, ino = excluded.ino"""

# A job is blocked while one of its dependencies is not done: `after` needs
# completed, `after_any` any final state. An `after` dependency with no row
# blocks too (controls.resolve_dependencies decides, from the files, what that
# means); an `after_any` one was deleted (`dlq purge`), so it is final.
_BLOCKED = """EXISTS (SELECT 1 FROM deps d LEFT JOIN jobs p ON p.id = d.dep WHERE d.job = jobs.id AND
    ((p.state IS NULL AND d.any = 0) OR (d.any = 0 AND p.state != 'completed')
     OR (d.any = 1 AND p.state NOT IN ('completed', 'dead', 'cancelled'))))"""


_ROW_COLUMNS = "id, state, command, priority, created, run_at, attempts, max_retries, last_error"


class Index:
    """One connection to SPOOL/index.db. Not shared between threads."""

    def __init__(self, path: str):
        self.path = path
        self.created = path == ":memory:" or not os.path.exists(path) or os.path.getsize(path) == 0
        try:
            self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000,
                                      isolation_level=None, check_same_thread=False)
            self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise IndexCorrupt(f"schema version {version}, not {SCHEMA_VERSION}")
            mode = self.db.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            if version == 0:
                self.created = True
                self.db.executescript(_SCHEMA)
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            else:
                # Catches a damaged file whose header still looks like SQLite.
                self.db.execute("SELECT count(*) FROM dirmarks").fetchone()
        except sqlite3.DatabaseError as e:
            try:
                self.db.close()
            except Exception:
                pass
            raise IndexCorrupt(str(e)) from None

    def close(self) -> None:
        self.db.close()

    # -- transactions ------------------------------------------------------

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    # -- writes -----------------------------------------------------------

    def upsert(self, job: Job, state: JobState | None = None, record: str | None = None,
               ino: int | None = None) -> None:
        """Record a job as being in `state` (default: its own state field).

        `record` is the job's JSON when the caller already has it serialized.
        """
        self.db.execute(_UPSERT, row_values(job, state or job.state, record, ino))

    def upsert_many(self, jobs: Iterable[tuple[Job, JobState]]) -> None:
        self.db.executemany(_UPSERT, (row_values(j, s) for j, s in jobs))

    def upsert_rows(self, rows: Iterable[tuple]) -> None:
        """Rows made by row_values()."""
        self.db.executemany(_UPSERT, rows)

    def delete(self, job_ids: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM jobs WHERE id = ?", ((i,) for i in job_ids))

    def clear(self) -> None:
        self.db.execute("DELETE FROM jobs")
        self.db.execute("DELETE FROM counts")
        self.db.execute("DELETE FROM deps")
        self.db.execute("DELETE FROM dirmarks")

    # -- directory marks: which directory listings the rows reflect --------

    def dirmarks(self) -> dict[str, tuple[int, int]]:
        return {d: (m, c) for d, m, c in self.db.execute("SELECT dir, mtime_ns, checked_ns FROM dirmarks")}

    def set_dirmark(self, dirname: str, mtime_ns: int, checked_ns: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO dirmarks VALUES (?, ?, ?)", (dirname, mtime_ns, checked_ns))

    # -- reads -------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in JobState}
        for state, n in self.db.execute("SELECT state, n FROM counts"):
            if state in counts:
                counts[state] = n
        return counts

    def ids_in(self, state: JobState) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM jobs WHERE state = ?", (state.value,))}

    def inodes_in(self, state: JobState) -> dict[str, int | None]:
        """id -> the inode its row was read from (None: unknown), for one state."""
        return dict(self.db.execute("SELECT id, ino FROM jobs WHERE state = ?", (state.value,)))

    def ids_labelled(self, label: str) -> set[str]:
        return {r[0] for r in self.db.execute(
            "SELECT id FROM jobs WHERE instr(record, '\"labels\"') AND "
            "EXISTS (SELECT 1 FROM json_each(record, '$.labels') WHERE value = ?)", (label,))}

    def blockers(self) -> dict[str, list[tuple[str, str, bool]]]:
        """Waiting job id -> [(dependency, its state or 'missing', after_any)] still unmet."""
        out: dict[str, list[tuple[str, str, bool]]] = {}
        for job, dep, state, any_ in self.db.execute(
                "SELECT d.job, d.dep, coalesce(p.state, 'missing'), d.any FROM deps d "
                "JOIN jobs j ON j.id = d.job LEFT JOIN jobs p ON p.id = d.dep "
                "WHERE j.state IN ('pending', 'failed', 'held') AND ((p.state IS NULL AND d.any = 0) OR "
                "(d.any = 0 AND p.state != 'completed') OR "
                "(d.any = 1 AND p.state NOT IN ('completed', 'dead', 'cancelled'))) ORDER BY d.job, d.dep"):
            out.setdefault(job, []).append((dep, state, bool(any_)))
        return out

    def doomed(self) -> list[tuple[str, str, str]]:
        """(job, dependency, its state) for waiting jobs an `after` dependency can no longer satisfy."""
        return list(self.db.execute(
            "SELECT d.job, d.dep, coalesce(p.state, 'missing') FROM deps d JOIN jobs j ON j.id = d.job "
            "LEFT JOIN jobs p ON p.id = d.dep WHERE j.state IN ('pending', 'failed', 'held') "
            "AND d.any = 0 AND (p.state IS NULL OR p.state IN ('dead', 'cancelled')) ORDER BY d.job"))

    def retries_of(self, host: str, pids: Iterable[int]) -> int:
        """Jobs in failed/ whose last attempt one of these processes recorded (ran, or recovered)."""
        pids = list(pids)
        return self.db.execute(
            "SELECT count(*) FROM jobs WHERE state = 'failed' AND json_extract(record, '$.history[#-1].pid') "
            f"IN ({', '.join('?' * len(pids))}) AND json_extract(record, '$.history[#-1].host') = ?",
            (*pids, host)).fetchone()[0]

    def scheduled(self, now: float | None = None) -> int:
        """Waiting jobs (pending or failed) not claimable now: due later, or blocked."""
        now = time.time() if now is None else now
        return self.db.execute(
            f"SELECT count(*) FROM jobs WHERE state IN ('pending', 'failed') AND (run_at > ? OR {_BLOCKED})",
            (now,)).fetchone()[0]

    def lookup(self, job_id: str) -> Row | None:
        """The row whose id equals job_id ignoring case (ids are unique that way)."""
        r = self.db.execute(f"SELECT {_ROW_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Row(r[0], JobState(r[1]), *r[2:]) if r else None

    def record(self, job_id: str) -> dict | None:
        r = self.db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return json.loads(r[0]) if r else None

    def records(self, state: JobState | None = None, limit: int | None = None) -> Iterator[dict]:
        """Full job records, oldest first."""
        for (rec,) in self._select("record", state, limit):
            yield json.loads(rec)

    def rows(self, state: JobState | None = None, limit: int | None = None) -> list[Row]:
        return [Row(r[0], JobState(r[1]), *r[2:]) for r in self._select(_ROW_COLUMNS, state, limit)]

    def _select(self, columns: str, state: JobState | None, limit: int | None) -> sqlite3.Cursor:
        """Jobs (of one state), oldest first, at most `limit`."""
        sql = f"SELECT {columns} FROM jobs"
        args: list = []
        if state is not None:
            sql += " WHERE state = ?"
            args.append(state.value)
        sql += " ORDER BY created, id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return self.db.execute(sql, args)

    def candidates(self, limit: int = 32, now: float | None = None) -> list[tuple[str, JobState]]:
        """Jobs that may run now: highest priority first, then oldest."""
        now = time.time() if now is None else now
        return [(i, JobState(s)) for i, s in self.db.execute(
            "SELECT id, state FROM jobs WHERE state IN ('pending', 'failed') AND run_at <= ? "
            f"AND NOT {_BLOCKED} ORDER BY priority DESC, created, id LIMIT ?", (now, limit))]

    def next_due(self) -> float | None:
        """The earliest run_at among waiting jobs (pending or failed, not blocked), or None.

        Blocked jobs are left out: one due long ago would make an idle worker spin.
        """
        r = self.db.execute("SELECT min(run_at) FROM jobs WHERE state IN ('pending', 'failed') "
                            f"AND NOT {_BLOCKED}").fetchone()
        return r[0]


# -- the lifecycle of one spool's index.db ------------------------------------------


def is_busy(e: BaseException) -> bool:
    """A lock held by another process: wait or retry, never a reason to rebuild."""
    text = str(e)
    return "locked" in text or "busy" in text


def is_full(e: BaseException) -> bool:
    """SQLite's own words for a full disk: keep the index, it is not corrupt."""
    return "disk is full" in str(e)


def file_ident(path: str) -> tuple[int, int] | None:
    """(device, inode) of a healthy-looking index.db; None if missing, emptied or not SQLite.

    stat() only, never open(): closing any fd on index.db drops every POSIX lock
    this process's SQLite connection holds on it, so another process may then
    checkpoint and delete the WAL under that connection and corrupt the index.
    A SQLite file is a whole number of pages (>= 512 bytes each), which
    `echo garbage > index.db` or a truncation almost never leaves.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    if st.st_size == 0 or st.st_size % 512:
        return None
    return st.st_dev, st.st_ino


def _remove_db(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        unlink_quietly(path + suffix)


def _create_private(path: str) -> None:
    # SQLite would create it with the umask's mode; the spool is private.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))


class IndexStore:
    """Opens, repairs and replaces one spool's index.db, and batches writes to it.

    `lock` is the spool-wide lock (a context manager factory): creating or
    deleting index.db happens under it, so processes meeting a broken index at
    once repair it once. `has_jobs` says whether the state directories hold
    files (a missing index is then worth a notice). With `defer` set, rows
    reach index.db in one transaction per flush() instead of one commit each:
    safe to lose in a crash, since every move changed a directory mtime and the
    next sync finds it.
    """

    def __init__(self, path: str, lock: Callable[[], ContextManager], has_jobs: Callable[[], bool],
                 *, fresh: bool = False, defer: bool = False):
        self.path = path
        self._lock = lock
        self._has_jobs = has_jobs
        self._fresh = fresh
        self.defer = defer
        self._index: Index | None = None
        self._ident: tuple | None = None  # which index.db file _index has open
        self._deferred: list[tuple] = []

    @property
    def index(self) -> Index:
        if self._index is None:
            self._index = self._open()
            self._ident = file_ident(self.path)
        return self._index

    def replaced(self) -> bool:
        """Was index.db deleted, truncated or overwritten under the open connection?"""
        if self._index is None:
            return False
        # None: it was already gone or broken when opened (wrecked at that very moment)
        return self._ident is None or file_ident(self.path) != self._ident

    def reopen_if_replaced(self) -> None:
        if self.replaced():
            self._index.close()
            self._index = None

    def _open(self) -> Index:
        path = self.path
        if path == ":memory:":
            return Index(path)  # a read-only spool's: built from the directories by sync
        existed = os.path.exists(path)
        made = False
        if not existed:
            # Under the lock, and checked again: processes meeting a missing
            # index.db at once (a brand-new spool) must not delete the WAL files
            # another one has just created and opened; that corrupts the index.
            with self._lock():
                if not os.path.exists(path):
                    made = True
                    # A WAL left behind by a deleted index.db belongs to that database.
                    for suffix in ("-wal", "-shm"):
                        unlink_quietly(path + suffix)
                    # Built aside and renamed in, so no process ever opens an empty
                    # index.db (it would set it up at the same time, and say "empty").
                    new = path + ".new"
                    _remove_db(new)
                    _create_private(new)
                    try:
                        Index(new).close()
                    except IndexCorrupt as e:
                        _remove_db(new)
                        if fsio_disk_full(os.path.dirname(path)) or is_full(e):
                            raise SpoolError(f"no space left on device while creating index.db ({e})") from None
                        _create_private(new)  # an empty index.db below, then the usual repair
                    except BaseException:
                        _remove_db(new)
                        raise
                    # A close that could not checkpoint (a full disk) leaves the WAL
                    # under the .new name, where nothing would ever read or delete
                    # it. Dropping it at worst loses the schema: Index() remakes it.
                    for suffix in ("-wal", "-shm"):
                        unlink_quietly(new + suffix)
                    os.rename(new, path)
        try:
            index = Index(path)
        except IndexCorrupt as e:
            if fsio_disk_full(os.path.dirname(path)) or is_full(e):
                # SQLite cannot even open its WAL: a full disk, not a corrupt index.
                # Deleting the index here would only make things worse.
                raise SpoolError(f"no space left on device while opening index.db ({e})") from None
            with self._lock():
                try:
                    index = Index(path)  # another process may have repaired it meanwhile
                except IndexCorrupt:
                    for tries_left in (2, 1, 0):
                        _remove_db(path)
                        _create_private(path)
                        try:
                            index = Index(path)
                            break
                        except IndexCorrupt:
                            # Wrecked again while being set up (by a process that does
                            # not take the lock): start over, a few times.
                            if not tries_left:
                                raise
                    log.warning("index.db was corrupt (%s); rebuilding it from the spool directories", e)
            return index
        # Made above (aside, then renamed in): as new as if SQLite had just made it.
        index.created = index.created or made
        if index.created and existed:
            log.warning("index.db was empty; rebuilding it from the spool directories")
        elif index.created and not self._fresh and self._has_jobs():
            log.warning("index.db was missing; rebuilding it from the spool directories")
        return index

    def discard(self, error: Exception) -> None:
        """index.db broke under an open connection (malformed, overwritten): drop it
        so the next use rebuilds it from the directories, unless another process
        already replaced it. A full disk or a lock is not corruption: raise."""
        if is_full(error):
            raise SpoolError(f"no space left on device while updating index.db ({error})") from None
        if is_busy(error):
            raise error
        ident = self._ident
        self.close(flush=False)
        with self._lock():
            if file_ident(self.path) == ident:
                _remove_db(self.path)
                log.warning("index.db is corrupt (%s); rebuilding it from the spool directories", error)

    def close(self, *, flush: bool = True) -> None:
        if self._index is None:
            self._deferred = []
            return
        if flush:
            self.flush()
        else:
            self._deferred = []
        try:
            self._index.close()
        except Exception:
            pass
        self._index = None

    # -- writes: the files are the truth, so a failed write only leaves work for the next sync

    def upsert(self, row: tuple) -> None:
        """A row made by row_values(), written now or (deferred) at the next flush()."""
        self._deferred.append(row)
        if not self.defer:
            self.flush()

    def add_rows(self, rows: list[tuple]) -> None:
        """Rows written now, in one transaction."""
        idx = self.index
        idx.begin()
        idx.upsert_rows(rows)
        idx.commit()

    def flush(self) -> None:
        if not self._deferred:
            return
        rows, self._deferred = self._deferred, []
        idx = self.index
        try:
            if len(rows) == 1:
                idx.upsert_rows(rows)
            else:
                idx.begin()
                idx.upsert_rows(rows)
                idx.commit()
        except sqlite3.Error:
            try:
                idx.rollback()
            except sqlite3.Error:
                pass

    def delete(self, job_id: str) -> None:
        self.flush()
        try:
            self.index.delete([job_id])
        except sqlite3.Error:
            pass
