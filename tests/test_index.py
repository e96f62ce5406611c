"""The SQLite index is a cache: missing, empty or corrupt, the next command rebuilds it,
says so once on stderr, and answers as if nothing happened."""

from __future__ import annotations

import json
import os
import sqlite3
import stat

import pytest

from queuectl.index import Index, row_values
from queuectl.job import Job, JobState
from queuectl.spool import Spool

EXPECTED = {"pending": 2, "processing": 0, "completed": 1, "failed": 0, "dead": 1, "held": 0, "cancelled": 0}
LIST = ("j0 - pending - echo 0\n"
        "j1 - completed - echo 1\n"
        "j2 - dead - echo 2\n"
        "j3 - pending - echo 3\n")


@pytest.fixture
def filled(run, spool_dir):
    """Four jobs: two pending, one completed, one dead (moved by hand)."""
    for i in range(4):
        assert run("enqueue", "--id", f"j{i}", f"echo {i}").exit_code == 0
    os.rename(spool_dir / "pending" / "j1.json", spool_dir / "done" / "j1.json")
    os.rename(spool_dir / "pending" / "j2.json", spool_dir / "dead" / "j2.json")
    assert _counts(run("status", "--json").stdout) == EXPECTED
    return spool_dir


def _counts(status_json: str) -> dict:
    """The five state counts of `status --json` (which also has workers and spool)."""
    return {k: v for k, v in json.loads(status_json).items() if k in EXPECTED}


def _damage(spool_dir, how):
    db = spool_dir / "index.db"
    if how == "deleted":
        db.unlink()
    elif how == "deleted-with-wal":
        db.unlink()
        (spool_dir / "index.db-wal").write_bytes(b"stale wal from the deleted database")
    elif how == "truncated":
        os.truncate(db, 0)
    elif how == "garbage":
        db.write_text("garbage\n")  # echo garbage > index.db
    elif how == "half":
        con = sqlite3.connect(db)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        os.truncate(db, os.path.getsize(db) // 2)
    elif how == "zeros":
        size = os.path.getsize(db)
        with open(db, "r+b") as f:
            f.write(b"\0" * size)
    elif how == "wrong-version":
        con = sqlite3.connect(db)
        con.execute("PRAGMA user_version=99")
        con.close()
    elif how == "foreign-db":
        db.unlink()
        for suffix in ("-wal", "-shm"):
            if os.path.exists(str(db) + suffix):
                os.unlink(str(db) + suffix)
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE other (x)")
        con.commit()
        con.close()
    else:  # pragma: no cover
        raise AssertionError(how)


DAMAGE = ["deleted", "deleted-with-wal", "truncated", "garbage", "half", "zeros", "wrong-version", "foreign-db"]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("command", ["status", "list", "show", "enqueue", "reindex"])
def test_damaged_index_is_rebuilt_with_one_notice(run, filled, how, command):
    _damage(filled, how)
    if command == "status":
        r = run("status", "--json")
        assert _counts(r.stdout) == EXPECTED
    elif command == "list":
        r = run("list")
        assert r.stdout == LIST
    elif command == "show":
        r = run("show", "--json", "j2")
        assert json.loads(r.stdout)["dir"] == "dead"
    elif command == "enqueue":
        # the duplicate check must see the rebuilt index (J1 differs from j1 only in case)
        r = run("enqueue", "--id", "J1", "true")
        assert (r.exit_code, r.stdout) == (1, "")
        notice, error = r.stderr.splitlines()
        assert error == "Error: job j1 already exists (in done/)"
        r.stderr_lines = [notice]
    else:
        r = run("reindex")
        assert r.stdout == "reindexed: pending 2, processing 0, completed 1, failed 0, dead 1, held 0, cancelled 0\n"
    assert r.exit_code in (0, 1)
    lines = getattr(r, "stderr_lines", r.stderr.splitlines())
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("queuectl: index.db was ")
    assert "rebuilding it from the spool directories" in lines[0]
    # rebuilt once: the next commands are quiet and still right
    r = run("status", "--json")
    assert (r.stderr, _counts(r.stdout)) == ("", EXPECTED)
    r = run("list")
    assert (r.stderr, r.stdout) == ("", LIST)
    if how != "foreign-db":  # that one was made by another program, with its mode
        assert stat.S_IMODE(os.stat(filled / "index.db").st_mode) == 0o600


@pytest.mark.parametrize("how, word", [("deleted", "missing"), ("truncated", "empty"), ("garbage", "corrupt")])
def test_notice_names_what_happened(run, filled, how, word):
    _damage(filled, how)
    r = run("status", "--json")
    assert r.stderr.startswith(f"queuectl: index.db was {word}")


def test_missing_index_on_an_empty_spool_is_silent(run, spool_dir):
    run("status")
    (spool_dir / "index.db").unlink()
    r = run("status", "--json")
    assert r.exit_code == 0 and r.stderr == ""


def test_first_command_on_a_new_spool_is_silent(run, spool_dir):
    r = run("list")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "", "")
    assert stat.S_IMODE(os.stat(spool_dir / "index.db").st_mode) == 0o600


def test_reindex_after_hand_moves(run, spool_dir):
    for i in range(3):
        run("enqueue", "--id", f"h{i}", "true")
    os.rename(spool_dir / "pending" / "h0.json", spool_dir / "failed" / "h0.json")
    os.rename(spool_dir / "pending" / "h1.json", spool_dir / "done" / "h1.json")
    os.unlink(spool_dir / "pending" / "h2.json")
    r = run("reindex")
    assert (r.exit_code, r.stdout, r.stderr) == (
        0, "reindexed: pending 0, processing 0, completed 1, failed 1, dead 0, held 0, cancelled 0\n", "")
    assert run("list").stdout == "h0 - failed - true\nh1 - completed - true\n"


def test_reindex_accepts_pending_dropins(run, spool_dir):
    run("status")
    (spool_dir / "pending" / "d.json").write_text('{"command": "true"}')
    assert run("reindex").stdout == "reindexed: pending 1, processing 0, completed 0, failed 0, dead 0, held 0, cancelled 0\n"


def test_index_rows_follow_the_directory_not_the_state_field(run, spool_dir):
    run("enqueue", "--id", "x", "true")
    os.rename(spool_dir / "pending" / "x.json", spool_dir / "dead" / "x.json")
    (spool_dir / "index.db").unlink()
    assert run("list", "--state", "dead").stdout == "x - dead - true\n"


def test_status_and_list_do_not_read_job_files(run, spool_dir, monkeypatch):
    for i in range(5):
        run("enqueue", "--id", f"r{i}", "true")
    run("status")

    def no_reads(self, path):
        raise AssertionError(f"read {path}")

    monkeypatch.setattr(Spool, "read_job", no_reads)
    assert json.loads(run("status", "--json").stdout)["pending"] == 5
    assert len(run("list").stdout.splitlines()) == 5


def test_index_api(tmp_path):
    idx = Index(str(tmp_path / "i.db"))
    assert idx.created
    assert idx.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert idx.db.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    jobs = [Job.from_spec({"id": f"a{i}", "command": "x"}, now=1000 + i) for i in range(3)]
    idx.begin()
    idx.upsert_many((j, JobState.PENDING) for j in jobs)
    idx.commit()
    assert idx.counts() == {"pending": 3, "processing": 0, "completed": 0, "failed": 0, "dead": 0, "held": 0, "cancelled": 0}
    assert idx.lookup("A1").id == "a1"  # ignoring case
    idx.upsert(jobs[0], JobState.COMPLETED)
    assert idx.counts()["completed"] == 1 and idx.counts()["pending"] == 2
    assert [r.id for r in idx.rows()] == ["a0", "a1", "a2"]
    assert [r["id"] for r in idx.records(JobState.PENDING, limit=1)] == ["a1"]
    idx.delete(["a0"])
    assert idx.lookup("a0") is None
    idx.close()
    again = Index(str(tmp_path / "i.db"))
    assert not again.created
    assert again.counts()["pending"] == 2
    again.close()


def test_claimable_merges_pending_and_failed_in_one_order(tmp_path):
    """Priority first, then age, then id ignoring case, across both states: the index is asked
    once a state (each in its own index order) and the two lists are merged."""
    idx = Index(str(tmp_path / "index.db"))
    try:
        for job_id, state, priority, created in [("p1", JobState.PENDING, 0, 100.0), ("F1", JobState.FAILED, 5, 200.0),
                                                 ("p2", JobState.PENDING, 5, 100.0), ("f2", JobState.FAILED, 0, 50.0),
                                                 ("a3", JobState.PENDING, 0, 100.0), ("B3", JobState.FAILED, 0, 100.0)]:
            job = Job(id=job_id, command="true", state=state, priority=priority)
            job.created_at = job.updated_at = "1970-01-01T00:00:00.000000Z"
            row = list(row_values(job, state))
            row[4] = created  # the created column, in epoch seconds
            idx.upsert_rows([tuple(row)])
        assert [i for i, _, _ in idx.claimable(10, now=1e9)] == ["p2", "F1", "f2", "a3", "B3", "p1"]
        assert [i for i, _, _ in idx.claimable(2, now=1e9)] == ["p2", "F1"]
    finally:
        idx.close()
