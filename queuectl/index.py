"""The SQLite index: a cache of the spool directories that answers status and list fast.

The directories are the truth. Every row can be rebuilt from them, so the index
is written with synchronous=NORMAL (no fsync per commit) and is thrown away and
rebuilt when it is missing or corrupt.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Iterable, Iterator, NamedTuple

from . import counters
from .job import DEFAULT_QUEUE, Job, JobState
from .rowfields import tags_of, timing

# 4: timing columns (started, finished, run_seconds, waited, runs) and tags for
# metrics and the dashboard; 5: ino, and the deps table (issue 11); 6: the queue
# column (named queues, issue 12); 7: the removed table (counters.py, issue 21); 8: stamp
# replaces ino. A different version is rebuilt from the directories.
SCHEMA_VERSION = 8
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
    -- Derived from `history` by row_values(), so metrics and the dashboard
    -- aggregate columns instead of parsing 200,000 records.
    started     REAL,              -- first attempt's start (epoch)
    finished    REAL,              -- when it reached done/ or dead/ (epoch)
    run_seconds REAL,              -- the last attempt's run time
    waited      REAL,              -- started - created: time spent queued
    runs        INTEGER NOT NULL DEFAULT 0, -- counted attempts, across dlq retries
    tags        TEXT,              -- queue and labels a spec gave (see tags_of), or NULL
    -- Which file this row was read from (indexsync.py): in the waiting and running
    -- directories a hash of its inode, size, mtime and ctime (0: too fresh to
    -- tell, read it again), in the final ones its inode; NULL: not known.
    stamp       INTEGER,
    queue       TEXT NOT NULL DEFAULT 'default'  -- the job's queue: workers filter on it
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, priority DESC, created, id);
-- Newest-first pages per state and the oldest pending job; covering for the
-- id and tag filters, so a filter that matches little never reads records.
CREATE INDEX IF NOT EXISTS jobs_age ON jobs (state, created, id, tags);
CREATE INDEX IF NOT EXISTS jobs_tags ON jobs (tags) WHERE tags IS NOT NULL;
-- Jobs of named queues only: per-queue counts cost what those jobs number,
-- and a spool without named queues pays nothing (`default` = totals - the rest).
CREATE INDEX IF NOT EXISTS jobs_named_queue ON jobs (queue, state) WHERE queue != 'default';
-- Covering indexes: histogram buckets are range counts on them, and the
-- totals scan them instead of the wide table rows.
CREATE INDEX IF NOT EXISTS jobs_run ON jobs (state, run_seconds, runs);
CREATE INDEX IF NOT EXISTS jobs_waited ON jobs (waited);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished);
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
    """index.db exists but is not a usable SQLite database (or has another schema version)."""


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


def row_values(job: Job, state: JobState, record: str | None = None, stamp: int | None = None) -> tuple:
    if record is None:
        record = json.dumps(job.to_dict(), ensure_ascii=False)
    created = job.created_ts
    started, finished, run_seconds, runs = timing(job.history, state)
    waited = None if started is None or not created else max(0.0, started - created)
    return (job.id, state.value, job.command, job.priority, created, job.run_ts,
            job.attempts, job.max_retries, job.last_error, record,
            started, finished, run_seconds, waited, runs,
            tags_of({**job.extra, **({"labels": job.labels} if job.labels else {}),
                     **({"queue": job.queue} if job.queue != DEFAULT_QUEUE else {})}), job.queue, stamp)


# An upsert, not INSERT OR REPLACE: REPLACE deletes without firing the
# delete trigger, which would skew the counts table.
_UPSERT = """INSERT INTO jobs
    (id, state, command, priority, created, run_at, attempts, max_retries, last_error, record,
     started, finished, run_seconds, waited, runs, tags, queue, stamp)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET id = excluded.id, state = excluded.state,
        command = excluded.command, priority = excluded.priority, created = excluded.created,
        run_at = excluded.run_at, attempts = excluded.attempts, max_retries = excluded.max_retries,
        last_error = excluded.last_error, record = excluded.record,
        started = excluded.started, finished = excluded.finished,
        run_seconds = excluded.run_seconds, waited = excluded.waited, runs = excluded.runs,
        tags = excluded.tags, stamp = excluded.stamp, queue = excluded.queue"""

# A new job's first row: a worker that saw the file before its enqueuer wrote
# this (and indexed it, ran it, recorded it) has the newer row.
_INSERT_NEW = _UPSERT[:_UPSERT.index("ON CONFLICT")] + "ON CONFLICT (id) DO NOTHING"

# A job is blocked while one of its dependencies is not done: `after` needs
# completed, `after_any` any final state. An `after` dependency with no row
# blocks too (controls.resolve_dependencies decides, from the files, what that
# means); an `after_any` one was deleted (`dlq purge`), so it is final.
_BLOCKED = """EXISTS (SELECT 1 FROM deps d LEFT JOIN jobs p ON p.id = d.dep WHERE d.job = jobs.id AND
    ((p.state IS NULL AND d.any = 0) OR (d.any = 0 AND p.state != 'completed')
     OR (d.any = 1 AND p.state NOT IN ('completed', 'dead', 'cancelled'))))"""
BLOCKED = _BLOCKED  # for the metrics' queries


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
                # Spool._open_index then deletes it and rebuilds it from the directories.
                raise IndexCorrupt(f"schema version {version}, this queuectl uses {SCHEMA_VERSION}")
            mode = self.db.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            # Each upsert runs triggers, so SQLite keeps a statement journal for
            # it; in a temp file that was two pwrites a page a row (13 syscalls
            # a job in a bulk enqueue). It only ever holds one statement's pages.
            self.db.execute("PRAGMA temp_store=MEMORY")
            if version == 0:
                self.created = True
                self.db.executescript(_SCHEMA + counters.SCHEMA)
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
               stamp: int | None = None) -> None:
        """Record a job as being in `state` (default: its own state field).

        `record` is the job's JSON when the caller already has it serialized.
        """
        self.db.execute(_UPSERT, row_values(job, state or job.state, record, stamp))

    def upsert_many(self, jobs: Iterable[tuple[Job, JobState]]) -> None:
        self.db.executemany(_UPSERT, (row_values(j, s) for j, s in jobs))

    def upsert_rows(self, rows: Iterable[tuple], *, new: bool = False) -> None:
        """Rows made by row_values(). new=True: rows of jobs just enqueued, which
        never replace a row (a worker may have indexed and run the job already)."""
        self.db.executemany(_INSERT_NEW if new else _UPSERT, rows)

    def delete(self, job_ids: Iterable[str], state: JobState | None = None) -> None:
        """With a state: only rows still in it (a listing's verdict on one directory
        holds for nothing another process has recorded since)."""
        if state is None:
            self.db.executemany("DELETE FROM jobs WHERE id = ?", ((i,) for i in job_ids))
        else:
            self.db.executemany("DELETE FROM jobs WHERE id = ? AND state = ?", ((i, state.value) for i in job_ids))

    def clear(self) -> None:
        removed = counters.keep_removed(self.db)
        self.db.execute("DELETE FROM jobs")
        counters.restore_removed(self.db, removed)
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

    def stamps_in(self, state: JobState) -> dict[str, int | None]:
        """id -> the stamp of the file its row was read from (None: unknown), for one state."""
        return dict(self.db.execute("SELECT id, stamp FROM jobs WHERE state = ?", (state.value,)))

    def set_stamp(self, job_id: str, stamp: int | None) -> None:
        self.db.execute("UPDATE jobs SET stamp = ? WHERE id = ?", (stamp, job_id))

    def record_text(self, job_id: str) -> str | None:
        r = self.db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return r[0] if r else None

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

    def dep_rows(self, states: Iterable[str], *, job: str | None = None,
                 dep: str | None = None) -> list[tuple[str, str, int]]:
        """(job, dependency, after_any) for the jobs in `states`: of one job, or naming one dependency."""
        states = list(states)
        sql = ("SELECT d.job, d.dep, d.any FROM deps d JOIN jobs j ON j.id = d.job "
               f"WHERE j.state IN ({','.join('?' * len(states))})")
        for column, value in (("job", job), ("dep", dep)):
            if value is not None:
                sql, states = sql + f" AND d.{column} = ?", [*states, value]
        return self.db.execute(sql, states).fetchall()

    def retries_of(self, host: str, pids: Iterable[int]) -> list[tuple[str, float]]:
        """(id, due), soonest first, of failed/ jobs whose last attempt these processes recorded or recovered."""
        pids = list(pids)
        return self.db.execute(
            "SELECT id, run_at FROM jobs WHERE state = 'failed' AND json_extract(record, '$.history[#-1].pid') "
            f"IN ({', '.join('?' * len(pids))}) AND json_extract(record, '$.history[#-1].host') = ? "
            "ORDER BY run_at, id", (*pids, host)).fetchall()

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
        text = self.record_text(job_id)
        return None if text is None else json.loads(text)

    def records(self, state: JobState | None = None, limit: int | None = None,
                queue: str | None = None) -> Iterator[dict]:
        """Full job records, oldest first, each with the state of the directory that holds it."""
        for state_, rec in self._select("state, record", state, limit, queue):
            yield {**json.loads(rec), "state": state_}

    def rows(self, state: JobState | None = None, limit: int | None = None, queue: str | None = None) -> list[Row]:
        return [Row(r[0], JobState(r[1]), *r[2:]) for r in self._select(_ROW_COLUMNS, state, limit, queue)]

    def _select(self, columns: str, state: JobState | None, limit: int | None,
                queue: str | None = None) -> sqlite3.Cursor:
        """Jobs (of one state, of one queue), oldest first, at most `limit`."""
        sql = f"SELECT {columns} FROM jobs"
        where, args = [], []
        if state is not None:
            where.append("state = ?")
            args.append(state.value)
        if queue is not None:
            where.append("queue = ?")
            args.append(queue)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created, id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return self.db.execute(sql, args)

    def candidates(self, limit: int = 32, now: float | None = None) -> list[tuple[str, JobState]]:
        """Jobs that may run now: highest priority first, then oldest."""
        return [(i, s) for i, s, _q in self.claimable(limit, now)]

    def claimable(self, limit: int = 32, now: float | None = None, queues: Iterable[str] | None = None,
                  paused: Iterable[str] = ()) -> list[tuple[str, JobState, str]]:
        """(id, state, queue) of jobs that may run now, in `queues` (None: all), not in a
        paused queue and not blocked by a dependency: highest priority first, then oldest."""
        return [(i, s, q) for i, s, q, _p in self.ranked(limit, now, queues, paused)]

    def ranked(self, limit: int = 32, now: float | None = None, queues: Iterable[str] | None = None,
               paused: Iterable[str] = ()) -> list[tuple[str, JobState, str, int]]:
        """claimable(), each with its priority: (id, state, queue, priority)."""
        now = time.time() if now is None else now
        where, args = _queue_filter(queues, paused)
        # One query a state, merged here: with `state IN (...)` SQLite sorted every
        # waiting row to return the first few (3 ms a query at 20,000 pending), where
        # the (state, priority, created, id) index hands each state's rows in order.
        rows = []
        for state in ("pending", "failed"):
            rows += self.db.execute(
                "SELECT priority, created, id, state, queue FROM jobs WHERE state = ? AND run_at <= ?"
                + where + f" AND NOT {_BLOCKED} ORDER BY priority DESC, created, id LIMIT ?",
                (state, now, *args, limit)).fetchall()
        rows.sort(key=lambda r: (-r[0], r[1], r[2].lower()))  # the same order (ids collate NOCASE)
        return [(i, JobState(s), q, p) for p, _, i, s, q in rows[:limit]]

    def next_due(self, queues: Iterable[str] | None = None, paused: Iterable[str] = ()) -> float | None:
        """The earliest run_at among waiting jobs (pending or failed, not blocked), or None.

        Blocked jobs are left out: one due long ago would make an idle worker spin.
        """
        where, args = _queue_filter(queues, paused)
        r = self.db.execute("SELECT min(run_at) FROM jobs WHERE state IN ('pending', 'failed')" + where
                            + f" AND NOT {_BLOCKED}", args).fetchone()
        return r[0]

    def unfinished(self, queues: Iterable[str] | None = None, paused: Iterable[str] = ()) -> int:
        """Jobs pending, failed or processing in `queues` and not paused (a burst worker's work)."""
        where, args = _queue_filter(queues, paused)
        return self.db.execute("SELECT count(*) FROM jobs WHERE state IN ('pending', 'failed', 'processing')"
                               + where, args).fetchone()[0]

    def queue_counts(self) -> dict[str, dict[str, int]]:
        """queue -> state -> count (states with jobs only), for every queue that has jobs."""
        named: dict[str, dict[str, int]] = {}
        for q, state, n in self.db.execute("SELECT queue, state, count(*) FROM jobs WHERE queue != 'default' "
                                           "GROUP BY queue, state"):
            named.setdefault(q, {})[state] = n
        default = self.counts()
        for per_state in named.values():
            for state, n in per_state.items():
                default[state] = default.get(state, 0) - n
        default = {s: n for s, n in default.items() if n > 0}
        return dict(sorted({**named, **({"default": default} if default else {})}.items()))

    # -- reads for metrics and the dashboard -------------------------------------------

    def page(self, state: JobState | None, *, offset: int = 0, limit: int = 50, id_contains: str | None = None,
             queue: str | None = None, label: str | None = None) -> list[tuple[Row, str | None]]:
        """One page of (row, tags), newest first (jobs_age index; no count of a filtered total)."""
        sql = f"SELECT {_ROW_COLUMNS}, tags FROM jobs"
        where, args = [], []
        if state is not None:
            where.append("state = ?")
            args.append(state.value)
        if id_contains:
            where.append("id LIKE ? ESCAPE '\\'")
            args.append("%" + _like_escape(id_contains) + "%")
        for name, value in (("queue", queue), ("label", label)):
            if value:
                where.append("tags LIKE ? ESCAPE '\\'")
                args.append("%" + _like_escape(f"\n{name}={value}\n") + "%")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC, id DESC LIMIT ? OFFSET ?"
        args += [limit, offset]
        return [(Row(r[0], JobState(r[1]), *r[2:-1]), r[-1]) for r in self.db.execute(sql, args)]

    def has_tags(self) -> bool:
        """Does any job carry a queue or label (jobs_tags, a partial index: instant)?"""
        return self.db.execute("SELECT 1 FROM jobs WHERE tags IS NOT NULL LIMIT 1").fetchone() is not None

    def ids_with_prefix(self, prefix: str, state: JobState | None = None, limit: int = 200) -> list[str]:
        """Ids starting with prefix (any case), for shell completion: an index range, not a scan."""
        sql = "SELECT id FROM jobs WHERE id LIKE ? ESCAPE '\\'"
        args: list = [_like_escape(prefix) + "%"]
        if state is not None:
            sql += " AND state = ?"
            args.append(state.value)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [r[0] for r in self.db.execute(sql, args)]

    def oldest_created(self, state: JobState) -> float | None:
        return self.db.execute("SELECT min(created) FROM jobs WHERE state = ?", (state.value,)).fetchone()[0]

    def attempt_totals(self) -> tuple[int, int]:
        """(attempts run, retries among them) over every job, from the history-derived `runs`."""
        runs, jobs_run = self.db.execute(
            "SELECT total(runs), count(*) FROM jobs INDEXED BY jobs_run WHERE runs > 0").fetchone()
        return int(runs), int(runs) - jobs_run

    def histogram(self, column: str, bounds: list[float],
                  states: tuple[JobState, ...] = ()) -> tuple[list[int], int, float]:
        """(count per bucket, each upper bound inclusive, then the overflow), total count, sum.

        One range count per bucket on the column's index: each row is visited
        once whatever the number of buckets.
        """
        if column not in ("run_seconds", "waited"):
            raise ValueError(column)
        base = f"SELECT count(*), total({column}) FROM jobs WHERE {column} IS NOT NULL"
        args: list = []
        if states:
            base += f" AND state IN ({', '.join('?' * len(states))})"
            args = [s.value for s in states]
        counts, n, total = [], 0, 0.0
        lower = None
        for upper in [*bounds, None]:
            sql, extra = base, []
            if lower is not None:
                sql += f" AND {column} > ?"
                extra.append(lower)
            if upper is not None:
                sql += f" AND {column} <= ?"
                extra.append(upper)
            c, s = self.db.execute(sql, args + extra).fetchone()
            counts.append(c)
            n += c
            total += s
            lower = upper
        return counts, n, total

    def finished_per_minute(self, since: float, minutes: int) -> dict[str, list[int]]:
        """Jobs that reached done/ (`completed`) or dead/ (`dead`) in each minute from `since`."""
        out = {"completed": [0] * minutes, "dead": [0] * minutes}
        for m, state, n in self.db.execute(
                "SELECT CAST((finished - ?) / 60 AS INTEGER) AS m, state, count(*) FROM jobs INDEXED BY jobs_finished "
                "WHERE finished >= ? AND finished < ? GROUP BY m, state", (since, since, since + 60 * minutes)):
            if 0 <= m < minutes and state in out:
                out[state][m] += n
        return out


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _queue_filter(queues: Iterable[str] | None, paused: Iterable[str]) -> tuple[str, list]:
    where, args = "", []
    if queues is not None:
        queues = list(queues)
        where += f" AND queue IN ({','.join('?' * len(queues))})"
        args += queues
    paused = list(paused)
    if paused:
        where += f" AND queue NOT IN ({','.join('?' * len(paused))})"
        args += paused
    return where, args
