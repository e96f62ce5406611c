"""`queuectl check [--repair] [--json]`: every problem kind found, reported, and repaired safely."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from queuectl.check import check
from queuectl.job import JobState
from queuectl.spool import Spool


def _old(path: Path, hours: float = 2) -> None:
    t = time.time() - hours * 3600
    os.utime(path, (t, t), follow_symlinks=False)


@pytest.fixture
def spool(run, spool_dir: Path) -> Path:
    """A spool with three accepted pending jobs a, b, c and a synced index."""
    for i in "abc":
        assert run("enqueue", "--id", i, f"echo {i}").exit_code == 0
    assert run("status").exit_code == 0
    return spool_dir


def _problems(run, *extra) -> tuple[int, dict]:
    r = run("check", "--json", *extra)
    return r.exit_code, json.loads(r.stdout)


def _kinds(doc: dict) -> list[tuple[str, str]]:
    return sorted((p["kind"], p["path"]) for p in doc["problems"])


def _move_state(spool: Path, job_id: str, src: str, dest: str, state: str) -> None:
    """Simulate a worker having recorded a job: rewrite its state and move it."""
    data = json.loads((spool / src / f"{job_id}.json").read_bytes())
    data["state"] = state
    (spool / dest / f"{job_id}.json").write_text(json.dumps(data))
    os.chmod(spool / dest / f"{job_id}.json", 0o600)
    os.unlink(spool / src / f"{job_id}.json")


def test_clean_spool_says_ok_and_exits_0(run, spool):
    r = run("check")
    assert r.exit_code == 0
    assert r.stdout == f"ok: no problems in {spool}\n"
    code, doc = _problems(run)
    assert code == 0 and doc == {"spool": str(spool), "ok": True, "problems": [], "warnings": []}


def test_brand_new_spool_is_clean(run, spool_dir):
    r = run("check")
    assert (r.exit_code, r.stdout) == (0, f"ok: no problems in {spool_dir}\n")


def test_duplicate_keeps_most_advanced_copy(run, spool):
    # b completed, but a stale copy of it is back in pending/ (a restored backup, say)
    shutil.copy(spool / "pending" / "b.json", spool / "pending" / "b.copy")
    _move_state(spool, "b", "pending", "done", "completed")
    os.rename(spool / "pending" / "b.copy", spool / "pending" / "b.json")
    r = run("check")
    assert r.exit_code == 1
    assert r.stdout.splitlines() == [
        "duplicate: pending/b.json: job id b is in more than one place (pending/b.json, done/b.json); "
        "the copy in done/ is the most advanced"]
    before = (spool / "pending" / "b.json").read_bytes()
    r = run("check", "--repair")
    assert r.exit_code == 0, r.stdout
    assert "[repaired: moved to rejected/ with a .reason file]" in r.stdout
    assert "1 of 1 problems repaired" in r.stdout
    assert not (spool / "pending" / "b.json").exists()
    assert (spool / "done" / "b.json").exists()
    assert (spool / "rejected" / "b.json").read_bytes() == before  # never deleted, byte for byte
    assert "duplicate of job b kept in done/" in (spool / "rejected" / "b.json.reason").read_text()
    assert run("check").exit_code == 0
    assert json.loads(run("status", "--json").stdout)["completed"] == 1


def test_duplicate_ids_differing_in_case(run, spool):
    _move_state(spool, "a", "pending", "dead", "dead")
    data = json.loads((spool / "dead" / "a.json").read_bytes())
    data.update(id="A", state="failed")
    (spool / "failed" / "A.json").write_text(json.dumps(data))
    os.chmod(spool / "failed" / "A.json", 0o600)
    code, doc = _problems(run)
    assert code == 1
    assert ("duplicate", "failed/A.json") in _kinds(doc)
    code, doc = _problems(run, "--repair")
    assert code == 0, doc
    assert (spool / "dead" / "a.json").exists() and (spool / "rejected" / "A.json").exists()
    assert run("check").exit_code == 0


def test_state_field_disagreeing_with_directory(run, spool):
    _move_state(spool, "a", "pending", "done", "pending")  # moved by hand, state not updated
    r = run("check")
    assert r.exit_code == 1
    assert "state-mismatch: done/a.json: state field says pending but the file is in done/" in r.stdout
    r = run("check", "--repair")
    assert "[repaired: state field set from pending to completed]" in r.stdout
    assert json.loads((spool / "done" / "a.json").read_bytes())["state"] == "completed"
    assert run("check").exit_code == 0


def test_claimed_job_held_by_a_live_worker_is_not_a_problem(run, spool):
    sp = Spool(str(spool))
    claim = sp.claim("a", JobState.PENDING)  # as a worker does: state field still "pending"
    assert claim is not None
    try:
        r = run("check")
        assert (r.exit_code, r.stdout) == (0, f"ok: no problems in {spool}\n")
        r = run("check", "--repair")  # and repair leaves a live claim alone
        assert r.exit_code == 0 and (spool / "processing" / "a.json").exists()
    finally:
        claim.release()
        sp.close()
    # the owner is gone now: an orphan
    code, doc = _problems(run)
    assert code == 1 and _kinds(doc) == [("orphan", "processing/a.json")]


def test_orphan_is_recovered_as_a_failed_attempt(run, spool):
    os.rename(spool / "pending" / "a.json", spool / "processing" / "a.json")  # its worker died
    r = run("check")
    assert r.exit_code == 1
    assert r.stdout.startswith("orphan: processing/a.json: no live worker holds it")
    # check looked without consuming: the job is still there
    assert (spool / "processing" / "a.json").exists()
    r = run("check", "--repair")
    assert r.exit_code == 0, r.stdout
    assert "[repaired: recovered: now in failed/]" in r.stdout
    job = json.loads((spool / "failed" / "a.json").read_bytes())
    assert job["attempts"] == 1 and job["last_error"] == "worker died"
    assert run("check").exit_code == 0


def test_orphan_with_recorded_outcome_finishes_its_move(run, spool):
    _move_state(spool, "a", "pending", "processing", "completed")
    code, doc = _problems(run)
    assert code == 1 and "the file says completed" in doc["problems"][0]["message"]
    code, doc = _problems(run, "--repair")
    assert code == 0
    assert (spool / "done" / "a.json").exists()
    assert json.loads((spool / "done" / "a.json").read_bytes())["attempts"] == 0  # no attempt counted
    assert run("check").exit_code == 0


def test_stale_tmp_files(run, spool):
    fresh = spool / "tmp" / ".123.0.abc.tmp"
    fresh.write_text("{}")
    assert run("check").exit_code == 0  # a write in progress
    old = spool / "tmp" / ".99.1.def.tmp"
    old.write_text('{"id": "half')
    _old(old)
    r = run("check")
    assert r.exit_code == 1
    assert r.stdout.startswith("stale-tmp: tmp/.99.1.def.tmp: left by an interrupted write 2.0 hours ago")
    r = run("check", "--repair")
    assert r.exit_code == 0
    assert (spool / "rejected" / ".99.1.def.tmp").read_text() == '{"id": "half'
    assert fresh.exists()


def test_index_rows_without_files_and_files_without_rows(run, spool):
    # Behind the index's back: a job vanishes from pending/, another appears in done/.
    data = json.loads((spool / "pending" / "c.json").read_bytes())
    os.rename(spool / "pending" / "c.json", spool.parent / "c.json")
    data.update(id="z", state="completed")
    (spool / "done" / "z.json").write_text(json.dumps(data))
    os.chmod(spool / "done" / "z.json", 0o600)
    code, doc = _problems(run)
    assert code == 1
    assert _kinds(doc) == [("index", "done/z.json"), ("index", "index.db:c")]
    msgs = sorted(p["message"] for p in doc["problems"])
    assert msgs == ["index row (pending) has no job file", "job file has no row in the index"]
    # check did not sync: a second look reports the same
    assert _kinds(_problems(run)[1]) == _kinds(doc)
    r = run("check", "--repair")
    assert r.exit_code == 0 and "[repaired: reindexed (" in r.stdout
    assert run("check").exit_code == 0
    assert json.loads(run("status", "--json").stdout) == {
        "pending": 2, "processing": 0, "completed": 1, "failed": 0, "dead": 0, "held": 0, "cancelled": 0, "workers": 0, "spool": str(spool)}


def test_missing_index_is_one_problem(run, spool):
    os.unlink(spool / "index.db")
    code, doc = _problems(run)
    assert code == 1 and _kinds(doc) == [("index", "index.db")]
    assert run("check", "--repair").exit_code == 0
    assert run("check").exit_code == 0


def test_unexpected_files(run, spool, tmp_path):
    (spool / "done" / "notes.txt").write_text("hello")
    os.symlink(tmp_path / "elsewhere", spool / "failed" / "x.json")
    (spool / "mystuff").mkdir()
    scratch = spool / "pending" / ".writer.tmp"
    scratch.write_text("{")
    code, doc = _problems(run)
    assert _kinds(doc) == [("unexpected-file", "done/notes.txt"), ("unexpected-file", "failed/x.json"),
                           ("unexpected-file", "mystuff")]
    _old(scratch)  # a scratch file abandoned for hours is worth a line
    code, doc = _problems(run)
    assert ("unexpected-file", "pending/.writer.tmp") in _kinds(doc)
    code, doc = _problems(run, "--repair")
    assert code == 1  # the unknown top-level entry needs a person
    left = [p for p in doc["problems"] if not p["repaired"]]
    assert [p["path"] for p in left] == ["mystuff"]
    assert (spool / "rejected" / "notes.txt").read_text() == "hello"
    assert os.path.islink(spool / "rejected" / "x.json")  # moved as a link, never followed
    assert not (tmp_path / "elsewhere").exists()
    assert (spool / "mystuff").is_dir()


def test_fresh_dropins_are_not_problems_but_bad_entries_in_pending_are(run, spool):
    (spool / "pending" / "drop.json").write_text('{"command": "true"}')
    assert run("check").exit_code == 0  # waiting for the next scan
    (spool / "pending" / "sub").mkdir()
    code, doc = _problems(run)
    assert _kinds(doc) == [("unexpected-file", "pending/sub")]
    assert _problems(run, "--repair")[0] == 0
    assert (spool / "rejected" / "sub").is_dir() and (spool / "pending" / "drop.json").exists()


def test_permissions(run, spool):
    os.chmod(spool, 0o777)
    os.chmod(spool / "pending", 0o770)
    os.chmod(spool / "pending" / "a.json", 0o644)
    code, doc = _problems(run)
    assert code == 1
    assert _kinds(doc) == [("permissions", "."), ("permissions", "pending"), ("permissions", "pending/a.json")]
    assert "writable by group or others (mode 777)" in doc["problems"][0]["message"]
    code, doc = _problems(run, "--allow-shared-spool")
    assert _kinds(doc) == [("permissions", "pending/a.json")]
    code, doc = _problems(run, "--repair")
    assert code == 0
    assert os.stat(spool).st_mode & 0o777 == 0o700
    assert os.stat(spool / "pending").st_mode & 0o777 == 0o700
    assert os.stat(spool / "pending" / "a.json").st_mode & 0o777 == 0o600
    assert run("check").exit_code == 0


def test_invalid_job_file_in_a_state_dir_is_moved_not_deleted(run, spool):
    _move_state(spool, "a", "pending", "failed", "failed")
    (spool / "failed" / "a.json").write_bytes(b"{not json")
    code, doc = _problems(run)
    assert code == 1 and _kinds(doc)[0] == ("invalid-job", "failed/a.json")
    assert _problems(run, "--repair")[0] == 0
    assert (spool / "rejected" / "a.json").read_bytes() == b"{not json"
    assert run("check").exit_code == 0


def test_core_api_returns_typed_problems(spool):
    os.rename(spool / "pending" / "a.json", spool / "processing" / "a.json")
    sp = Spool(str(spool))
    try:
        problems = check(sp)
        assert [(p.kind, p.id, p.repaired, p.action) for p in problems] == [("orphan", "a", False, None)]
        problems = check(sp, repair=True)
        assert problems[0].repaired and problems[0].action == "recovered: now in failed/"
        assert check(sp) == []
    finally:
        sp.close()


def test_check_sees_a_lock_held_by_another_process(spool, tmp_path):
    """The flock a live worker holds is what makes a processing/ job owned."""
    import subprocess
    import sys
    os.rename(spool / "pending" / "a.json", spool / "processing" / "a.json")
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl,sys,time;f=open(sys.argv[1]);fcntl.flock(f,fcntl.LOCK_EX);"
                               "print('locked',flush=True);time.sleep(60)",
                               str(spool / "processing" / "a.json")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        sp = Spool(str(spool))
        assert check(sp) == []
        sp.close()
    finally:
        holder.kill()
        holder.wait()
    sp = Spool(str(spool))
    assert [p.kind for p in check(sp)] == ["orphan"]
    sp.close()
