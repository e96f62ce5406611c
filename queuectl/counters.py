"""Counters that never go down: finished jobs and attempts, per queue, across clean and rebuilds.

The live rows of the index already count every finished job and attempt
still on disk, so a worker pays nothing extra per job. What leaves the index
is added up by triggers in the same transaction that removes it (a row of a
final job deleted by `clean`, retention, `rm`, `dlq purge` or a hand
deletion; a finished job moved back by a requeue), in the `removed` table.

The index is a cache that can be rebuilt from the directories, and a rebuild
does not see what was deleted before. So every export also keeps the highest
values exported in SPOOL/counters.json; a new index is seeded from that file
once, and an export never goes below it (a race or a hand edit that lowers a
count stalls the counter instead of making it look reset).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sqlite3
from typing import TYPE_CHECKING

from . import lazylog
from .errors import InvalidJob
from .fsio import atomic_write, read_nofollow
from .job import DEFAULT_QUEUE, check_queue, loads, now_iso

if TYPE_CHECKING:
    from .spool import Spool

log = lazylog.get("queuectl.counters")

FILE = "counters.json"
LOCK = ".counters.lock"  # in queues/, beside .retention.lock: the data file is replaced by rename
FILE_LIMIT = 1 << 20
SERIES = ("completed", "dead", "attempts", "retries")
MAX_VALUE = 2**53  # exact in a float, far beyond any real count

# Part of the index schema (index.py runs it). A row of a final job that is
# deleted takes its outcome and its attempts with it; a finished job that a
# requeue moves back keeps its attempts (its history goes on) but its finish
# happened. `seeded` says the table already holds what counters.json knew.
SCHEMA = """
CREATE TABLE IF NOT EXISTS removed (
    queue     TEXT PRIMARY KEY,
    completed INTEGER NOT NULL DEFAULT 0,
    dead      INTEGER NOT NULL DEFAULT 0,
    runs      INTEGER NOT NULL DEFAULT 0,
    jobs_run  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS removed_seeded (at TEXT);
CREATE TRIGGER IF NOT EXISTS removed_del AFTER DELETE ON jobs
WHEN old.state IN ('completed', 'dead', 'cancelled') BEGIN
    INSERT INTO removed VALUES (old.queue, old.state = 'completed', old.state = 'dead', old.runs, old.runs > 0)
    ON CONFLICT (queue) DO UPDATE SET completed = completed + excluded.completed, dead = dead + excluded.dead,
        runs = runs + excluded.runs, jobs_run = jobs_run + excluded.jobs_run;
END;
CREATE TRIGGER IF NOT EXISTS removed_requeue AFTER UPDATE OF state ON jobs
WHEN old.state IN ('completed', 'dead') AND new.state NOT IN ('completed', 'dead') BEGIN
    INSERT INTO removed VALUES (old.queue, old.state = 'completed', old.state = 'dead', 0, 0)
    ON CONFLICT (queue) DO UPDATE SET completed = completed + excluded.completed, dead = dead + excluded.dead;
END;
"""


def keep_removed(db: sqlite3.Connection) -> list[tuple]:
    """The removed table's rows, to put back after a rebuild empties the jobs table
    (its DELETE would otherwise count every finished job as removed)."""
    return list(db.execute("SELECT queue, completed, dead, runs, jobs_run FROM removed"))


def restore_removed(db: sqlite3.Connection, rows: list[tuple]) -> None:
    db.execute("DELETE FROM removed")
    db.executemany("INSERT INTO removed VALUES (?, ?, ?, ?, ?)", rows)


def live_totals(db: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """queue -> series -> value: what the index counts now (rows on disk plus removed)."""
    out: dict[str, dict[str, int]] = {}

    def add(queue: str, completed: int, dead: int, runs: int, jobs_run: int) -> None:
        q = out.setdefault(queue, dict.fromkeys(SERIES, 0))
        q["completed"] += int(completed)
        q["dead"] += int(dead)
        q["attempts"] += int(runs)
        q["retries"] += int(runs) - int(jobs_run)

    # Named queues through their partial index; `default` is the total less them.
    named = {q: [0, 0, 0, 0] for (q,) in db.execute("SELECT DISTINCT queue FROM jobs WHERE queue != 'default'")}
    # INDEXED BY: left to itself SQLite walks every finished row through jobs_run (0.8 s at 170,000).
    for q, state, n in db.execute("SELECT queue, state, count(*) FROM jobs INDEXED BY jobs_named_queue "
                                  "WHERE queue != 'default' AND state IN ('completed', 'dead') GROUP BY queue, state"):
        named[q][0 if state == "completed" else 1] = n
    for q, runs, jobs_run in db.execute("SELECT queue, total(runs), count(*) FROM jobs WHERE queue != 'default' "
                                        "AND runs > 0 GROUP BY queue"):
        named[q][2], named[q][3] = int(runs), jobs_run
    done = dict(db.execute("SELECT state, n FROM counts WHERE state IN ('completed', 'dead')"))
    runs, jobs_run = db.execute("SELECT total(runs), count(*) FROM jobs INDEXED BY jobs_run WHERE runs > 0").fetchone()
    default = [done.get("completed", 0), done.get("dead", 0), int(runs), jobs_run]
    for q, vals in named.items():
        add(q, *vals)
        default = [a - b for a, b in zip(default, vals)]
    add(DEFAULT_QUEUE, *default)
    for row in db.execute("SELECT queue, completed, dead, runs, jobs_run FROM removed"):
        add(*row)
    return out


def _read_file(spool: Spool) -> dict[str, dict[str, int]]:
    """counters.json, untrusted: a bad file or entry counts as nothing, never an error."""
    try:
        data, _ = read_nofollow(spool.path(FILE), FILE_LIMIT)
        raw = loads(data)
    except FileNotFoundError:
        return {}
    except (OSError, InvalidJob) as e:
        log.warning("ignoring %s: %s", spool.path(FILE), e)
        return {}
    queues = raw.get("exported") if isinstance(raw, dict) else None
    out: dict[str, dict[str, int]] = {}
    for q, series in (queues.items() if isinstance(queues, dict) else ()):
        try:
            q = check_queue(q)
        except InvalidJob:
            continue
        if not isinstance(series, dict):
            continue
        vals = {k: v for k, v in series.items() if k in SERIES and _count(v)}
        if vals:
            out[q] = {k: int(v) for k, v in vals.items()}
    return out


def _count(v: object) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and 0 <= v <= MAX_VALUE)


def _seed(db: sqlite3.Connection, live: dict[str, dict[str, int]], known: dict[str, dict[str, int]]) -> bool:
    """Once per index: add to `removed` what counters.json exported beyond what the index counts."""
    if db.execute("SELECT 1 FROM removed_seeded").fetchone():
        return False
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("SELECT 1 FROM removed_seeded").fetchone():  # another process seeded it meanwhile
            db.execute("ROLLBACK")
            return False
        for q, series in known.items():
            have = live.get(q, dict.fromkeys(SERIES, 0))
            gap = {k: max(0, series.get(k, 0) - have[k]) for k in SERIES}
            if any(gap.values()):
                attempts = gap["attempts"]
                db.execute("INSERT INTO removed VALUES (?, ?, ?, ?, ?) ON CONFLICT (queue) DO UPDATE SET "
                           "completed = completed + excluded.completed, dead = dead + excluded.dead, "
                           "runs = runs + excluded.runs, jobs_run = jobs_run + excluded.jobs_run",
                           (q, gap["completed"], gap["dead"], attempts, max(0, attempts - gap["retries"])))
        db.execute("INSERT INTO removed_seeded VALUES (?)", (now_iso(),))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return True


def _lock(spool: Spool) -> int | None:
    try:
        fd = os.open(spool.path("queues", LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # a filesystem without flock: the max below still holds, minus a lost race
        pass
    return fd


def totals(spool: Spool) -> dict[str, dict[str, int]]:
    """queue -> {completed, dead, attempts, retries}: monotonic counts to export.

    Read from the index (seeded once from counters.json), never below what
    counters.json says was exported; the file is raised to what is returned.
    A spool this process may not write is only read.
    """
    db = spool.index.db
    fd = None if spool.readonly else _lock(spool)
    try:
        known = _read_file(spool)
        live = live_totals(db)
        if not spool.readonly:
            try:
                if _seed(db, live, known):
                    live = live_totals(db)
            except sqlite3.Error as e:  # busy or read-only index: seeded at the next export
                log.debug("counters not seeded: %s", e)
        out = {q: dict(v) for q, v in live.items()}
        for q, series in known.items():
            mine = out.setdefault(q, dict.fromkeys(SERIES, 0))
            for k, v in series.items():
                mine[k] = max(mine[k], v)
        if out != known and not spool.readonly:
            body = {"exported": out, "at": now_iso()}
            try:
                atomic_write(spool.path("tmp"), spool.path(FILE), json.dumps(body, sort_keys=True).encode() + b"\n",
                             durable=False)
            except Exception as e:  # a full disk must not fail a scrape
                log.warning("cannot keep %s: %s", spool.path(FILE), e)
        return out
    finally:
        if fd is not None:
            os.close(fd)
