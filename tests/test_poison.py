"""Issue 9, items 1, 7 and 8: values that pass a shallow check but crash whatever
reads them next (job files, config.json), and a full disk during a sync.

Every poison value must be refused once, where the file is read, with one line
naming the field; the queue goes on around it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from support import cli

from queuectl import config as configmod
from queuectl.config import Config
from queuectl.errors import ConfigError, InvalidJob, SpoolError
from queuectl.index import Index, IndexCorrupt
from queuectl.job import Job, JobState, now_iso, parse_time
from queuectl.recovery import apply_outcome
from queuectl.spool import Spool

BIG = 100000000000000000000  # 1e20 as a JSON integer: over SQLite's int64

POISON_RUN_AT = [1e20, BIG, 10**400, -1, float(2**40) * 1000,
                 "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "1969-12-31T23:59:59Z"]


def canonical(job_id: str, **fields) -> dict:
    """A file in queuectl's own form (id == file stem, created_at, state)."""
    return {"id": job_id, "command": "echo bad", "state": "pending", "attempts": 0, "max_retries": 3,
            "priority": 0, "timeout": None, "created_at": "2026-11-27T09:01:00.733902Z",
            "updated_at": "2026-11-27T09:01:00.733902Z", "next_run_at": None, "last_error": None,
            "exit_code": None, "history": [], **fields}


POISON_RECORDS = [
    ({"created_at": "yesterday"}, "created_at"),
    ({"created_at": "10000-01-01T00:00:00Z"}, "created_at"),
    ({"created_at": "9999-12-31T23:59:59-01:00"}, "created_at"),
    ({"updated_at": "0001-01-01T00:00:00+01:00"}, "updated_at"),
    ({"updated_at": 5}, "updated_at"),
    ({"next_run_at": "9999-12-31T23:59:59-01:00"}, "next_run_at"),
    ({"next_run_at": "garbage"}, "next_run_at"),
    ({"attempts": BIG}, "attempts"),
    ({"attempts": 1_000_001}, "attempts"),
    ({"exit_code": BIG}, "exit_code"),
    ({"exit_code": 2**31 + 1}, "exit_code"),
    ({"priority": BIG}, "priority"),
    ({"max_retries": BIG}, "max_retries"),
    ({"timeout": 1e300}, "timeout"),
    ({"timeout": BIG}, "timeout"),
    ({"history": "x"}, "history"),
    ({"history": [1, 2]}, "history"),
    ({"history": [{}] * 10_001}, "history"),
    ({"last_error": ["x"]}, "last_error"),
]


def _one_line(message: str, field: str) -> None:
    assert "\n" not in message and field in message and len(message) < 300, message


# -- item 1: the job model refuses them, with one line naming the field ---------------


@pytest.mark.parametrize("run_at", POISON_RUN_AT, ids=lambda v: repr(v)[:30])
def test_from_spec_refuses_run_at_out_of_range(run_at):
    with pytest.raises(InvalidJob) as e:
        Job.from_spec({"command": "echo bad", "run_at": run_at})
    _one_line(str(e.value), "run_at")


@pytest.mark.parametrize("fields, field", POISON_RECORDS, ids=lambda v: str(v)[:40])
def test_from_record_refuses_poison_fields(fields, field):
    with pytest.raises(InvalidJob) as e:
        Job.from_record(canonical("p", **fields))
    _one_line(str(e.value), field)


@pytest.mark.parametrize("value", [1e300, 10 * 366 * 86400, float("nan")])
def test_from_spec_refuses_huge_timeouts(value):
    with pytest.raises(InvalidJob, match="timeout"):
        Job.from_spec({"command": "x", "timeout": value})


def test_long_bad_values_are_truncated_in_messages():
    with pytest.raises(InvalidJob) as e:
        Job.from_record(canonical("p", created_at="y" * 100_000))
    _one_line(str(e.value), "created_at")


def test_times_are_bounded_both_ways():
    assert parse_time("1970-01-01T00:00:00Z") == 0
    assert parse_time("9999-12-31T23:59:59Z") == 253402300799
    assert now_iso(253402300799) == "9999-12-31T23:59:59.000000Z"
    for bad in ("9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", 5, None):
        with pytest.raises(InvalidJob):
            parse_time(bad)
    for bad in (1e20, -1.0, float("inf"), float("nan")):
        with pytest.raises(InvalidJob):
            now_iso(bad)


def test_edge_values_are_accepted_and_round_trip():
    job = Job.from_record(canonical("p", attempts=1_000_000, exit_code=-2**31, timeout=10 * 365 * 86400,
                                    next_run_at="9999-12-31T23:59:59Z", priority=2**31,
                                    history=[{"attempt": 1}] * 10_000))
    assert Job.from_record(json.loads(job.to_json())) == job
    assert job.run_ts == 253402300799
    assert Job.from_spec({"command": "x", "run_at": 0}).next_run_at == "1970-01-01T00:00:00.000000Z"


def test_run_ts_and_created_ts_never_raise():
    job = Job.from_spec({"command": "x"})
    job.created_at, job.next_run_at = "yesterday", "10000-01-01T00:00:00Z"
    assert job.created_ts == 0.0 and job.run_ts == 0.0


# -- item 1 through the CLI: quarantined or skipped, never a traceback -------------------


def _drop(spool_dir: Path, sub: str, name: str, obj) -> Path:
    d = spool_dir / sub
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(json.dumps(obj))
    return p


def _reason(spool_dir: Path, name: str) -> str:
    return (spool_dir / "rejected" / f"{name}.reason").read_text()


@pytest.mark.parametrize("command", ["status", "list", "enqueue"])
@pytest.mark.parametrize("run_at", POISON_RUN_AT[:3] + POISON_RUN_AT[5:7], ids=lambda v: repr(v)[:30])
def test_a_poison_drop_in_is_rejected_by_any_command(run, spool_dir, command, run_at):
    assert run("status").exit_code == 0
    _drop(spool_dir, "pending", "bad.json", {"command": "echo bad", "run_at": run_at})
    args = ["enqueue", "--id", "good", "echo good"] if command == "enqueue" else [command]
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert "run_at" in _reason(spool_dir, "bad.json")
    assert not (spool_dir / "pending" / "bad.json").exists()


@pytest.mark.parametrize("fields, field", POISON_RECORDS[:12], ids=lambda v: str(v)[:40])
def test_a_poison_canonical_drop_in_goes_through_from_record_and_is_rejected(run, spool_dir, fields, field):
    assert run("status").exit_code == 0
    _drop(spool_dir, "pending", "p.json", canonical("p", **fields))
    r = run("list")
    assert r.exit_code == 0, r.output
    reason = _reason(spool_dir, "p.json")
    assert field in reason and reason.count("\n") == 1, reason


@pytest.mark.parametrize("run_at", POISON_RUN_AT[:3] + POISON_RUN_AT[5:7], ids=lambda v: repr(v)[:30])
def test_enqueue_refuses_a_poison_spec_in_one_line(run, spool_dir, run_at):
    r = run("enqueue", "--file", "-", input=json.dumps({"command": "echo bad", "run_at": run_at}))
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1 and "run_at" in r.stderr
    assert not list((spool_dir / "pending").iterdir())


@pytest.mark.parametrize("sub", ["done", "failed", "dead"])
@pytest.mark.parametrize("fields, field", [POISON_RECORDS[0], POISON_RECORDS[5], POISON_RECORDS[7],
                                           POISON_RECORDS[9], POISON_RECORDS[13]],
                         ids=lambda v: str(v)[:40])
def test_a_hand_edited_job_outside_pending_is_skipped_and_reported(run, spool_dir, sub, fields, field):
    assert run("enqueue", "--id", "ok", "echo ok").exit_code == 0
    state = JobState.parse(sub).value
    _drop(spool_dir, sub, "p.json", canonical("p", state=state, **fields))
    for args in (["status", "--json"], ["list"], ["reindex"], ["status", "--json"]):
        r = run(*args)
        assert r.exit_code == 0, (args, r.output)
    assert json.loads(r.stdout)[state] == 0
    r = run("check", "--json")
    assert r.exit_code == 1
    problems = json.loads(r.stdout)["problems"]
    assert [(p["kind"], p["path"]) for p in problems] == [("invalid-job", f"{sub}/p.json")]
    assert field in problems[0]["message"]
    assert run("check").stdout != ""
    assert not run("check").stdout.startswith("ok")


def test_check_reports_a_poison_canonical_file_in_pending(run, spool_dir):
    assert run("status").exit_code == 0
    p = _drop(spool_dir, "pending", "p.json", canonical("p", attempts=BIG))
    r = run("check", "--json")
    assert r.exit_code == 1
    kinds = [(x["kind"], x["path"]) for x in json.loads(r.stdout)["problems"]]
    assert ("invalid-job", "pending/p.json") in kinds
    assert p.exists()


def test_a_burst_worker_rejects_poison_files_and_runs_the_good_job(run, spool_dir):
    assert run("enqueue", "--id", "good", "echo good").exit_code == 0
    _drop(spool_dir, "pending", "bad1.json", {"command": "echo bad", "run_at": 1e20})
    _drop(spool_dir, "pending", "bad2.json", {"command": "echo bad", "run_at": "9999-12-31T23:59:59-01:00"})
    _drop(spool_dir, "pending", "p.json", canonical("p", created_at="yesterday"))
    _drop(spool_dir, "pending", "q.json", canonical("q", attempts=BIG))
    r = cli(spool_dir, "worker", "start", "--burst", timeout=60)
    assert "Traceback" not in r.stderr + r.stdout
    assert sorted(os.listdir(spool_dir / "done")) == ["good.json"]
    assert sorted(n for n in os.listdir(spool_dir / "rejected") if not n.endswith(".reason")) == \
        ["bad1.json", "bad2.json", "p.json", "q.json"]
    assert os.listdir(spool_dir / "pending") == []


# -- item 7: config values that would crash workers ---------------------------------------

MAX_SETTINGS = {"max_retries": 1000, "backoff_base": 100, "backoff_max": 365 * 86400, "backoff_jitter": 1,
                "job_timeout": 10 * 365 * 86400, "kill_grace": 86400, "dropin_grace": 86400,
                "max_job_size": 64 * 1024 * 1024, "lease": 86400}


@pytest.mark.parametrize("key", sorted(MAX_SETTINGS))
def test_every_setting_has_an_upper_bound(key):
    assert configmod.parse_value(key, MAX_SETTINGS[key]) == MAX_SETTINGS[key]
    for too_big in (MAX_SETTINGS[key] * 2, 1e300, str(10**400), 10**400):
        with pytest.raises(ConfigError, match=key):
            configmod.parse_value(key, too_big)


@pytest.mark.parametrize("key", ["backoff_max", "backoff_base"])
def test_config_set_refuses_values_that_overflow(run, key):
    r = run("config", "set", key, "1e300")
    assert r.exit_code == 1 and r.stderr.startswith(f"Error: {key}: ") and r.stderr.count("\n") == 1


def test_a_long_bad_value_is_truncated(run):
    r = run("config", "set", "max_retries", "9" * 5000)
    assert r.exit_code == 1 and len(r.stderr) < 300, r.stderr


def test_the_largest_settings_never_overflow_a_retry():
    config = Config(**MAX_SETTINGS)
    job = Job.from_spec({"command": "false", "max_retries": 1000})
    job.attempts = 999
    delay = apply_outcome(job, {"exit_code": 1, "error": "exit 1"}, config)
    assert job.state is JobState.FAILED and delay == MAX_SETTINGS["backoff_max"]
    assert Job.from_record(json.loads(job.to_json())).run_ts > time.time()


GARBAGE_CONFIGS = [
    ("[" * 100_000 + "]" * 100_000, "config.json"),
    ('{"max_retries": ' + "9" * 5000 + "}", "config.json"),
    ('{"max_retries": ' + "9" * 400 + "}", "max_retries"),
    ('{"backoff_max": 1e300}', "backoff_max"),
    ('{"backoff_base": 1e999}', "config.json"),
    ('{"max_retries": 1, "max_retries": 2}', "max_retries"),
    ('{"lease": NaN}', "config.json"),
    ("[1]", "config.json"),
    ('"x"', "config.json"),
    (b'{"lease": "\xff"}', "config.json"),
]


@pytest.mark.parametrize("text, names", GARBAGE_CONFIGS, ids=lambda v: str(v)[:30])
def test_from_bytes_refuses_garbage_with_one_line(text, names):
    data = text if isinstance(text, bytes) else text.encode()
    with pytest.raises(ConfigError) as e:
        configmod.from_bytes(data)
    msg = str(e.value)
    assert names in msg and "\n" not in msg and len(msg) < 300, msg


@pytest.mark.parametrize("text, names", GARBAGE_CONFIGS[:6], ids=lambda v: str(v)[:30])
def test_garbage_config_gives_one_error_line_in_every_command(spool_dir, text, names):
    cli(spool_dir, "status")
    (spool_dir / "config.json").write_text(text)
    for args in (["config", "list"], ["status"], ["worker", "start", "--burst"]):
        r = cli(spool_dir, *args, check=False, timeout=60)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr + r.stdout, (args, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and names in lines[0], (args, r.stderr)


# -- item 8: a full disk during a sync is not corruption -----------------------------------


def _full(*args, **kw):
    raise sqlite3.OperationalError("database or disk is full")


@pytest.mark.parametrize("method", ["dirmarks", "upsert_rows"])
def test_a_full_disk_during_sync_keeps_the_index(run, spool_dir, monkeypatch, method):
    assert run("enqueue", "--id", "a", "echo a").exit_code == 0
    spool = Spool(str(spool_dir))
    spool.sync()
    _drop(spool_dir, "pending", "b.json", {"command": "echo b"})
    monkeypatch.setattr(Index, method, _full)
    with pytest.raises(SpoolError, match="no space left"):
        spool.sync()
    assert (spool_dir / "index.db").exists() and (spool_dir / "index.db-wal").exists()
    spool.close()


def test_a_full_disk_during_sync_is_one_error_line(run, spool_dir, monkeypatch):
    assert run("enqueue", "--id", "a", "echo a").exit_code == 0
    _drop(spool_dir, "pending", "b.json", {"command": "echo b"})
    monkeypatch.setattr(Index, "dirmarks", _full)
    r = run("status")
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1 and "no space left" in r.stderr
    assert (spool_dir / "index.db").exists()


def test_a_failed_build_leaves_no_index_db_new_files(spool_dir, monkeypatch):
    """A close that cannot checkpoint (full disk) leaves the WAL of index.db.new behind."""
    close = Index.close

    def close_leaving_wal(self):
        close(self)
        if self.path.endswith(".new"):
            for suffix in ("-wal", "-shm"):
                Path(self.path + suffix).write_bytes(b"")

    monkeypatch.setattr(Index, "close", close_leaving_wal)
    spool = Spool(str(spool_dir))
    spool.sync()
    spool.close()
    assert not [n for n in os.listdir(spool_dir) if n.startswith("index.db.new")]


def test_a_build_that_fails_for_a_full_disk_leaves_nothing(spool_dir, monkeypatch):
    init = Index.__init__

    def init_then_full(self, path):
        init(self, path)  # its WAL files now exist, and the connection stays open
        if path.endswith(".new"):
            raise IndexCorrupt("database or disk is full")

    monkeypatch.setattr(Index, "__init__", init_then_full)
    spool = Spool(str(spool_dir))
    with pytest.raises(SpoolError, match="no space left"):
        spool.sync()
    spool.close()
    assert not [n for n in os.listdir(spool_dir) if n.startswith("index.db")]


@pytest.mark.parametrize("run_at", POISON_RUN_AT[:3] + POISON_RUN_AT[5:7], ids=lambda v: repr(v)[:30])
def test_check_reports_a_poison_drop_in_before_the_next_scan(run, spool_dir, run_at):
    assert run("status").exit_code == 0
    p = _drop(spool_dir, "pending", "bad.json", {"command": "echo bad", "run_at": run_at})
    r = run("check", "--json")
    assert r.exit_code == 1
    problems = json.loads(r.stdout)["problems"]
    assert [(x["kind"], x["path"]) for x in problems] == [("invalid-job", "pending/bad.json")]
    assert "run_at" in problems[0]["message"]
    assert p.exists()  # check reports; the next scan (or check --repair) rejects it
    assert run("check", "--repair").exit_code == 0
    assert "run_at" in _reason(spool_dir, "bad.json")


@pytest.mark.parametrize("request_bytes", [b"[" * 4000, b"\xff\xfe", b'{"attempt": 1, "signal": {"x": [1]}}' + b" " * 5000])
def test_a_garbage_kill_request_never_crashes_the_worker(run, spool_dir, request_bytes):
    """kill/<id> is read from disk like any job file: a bad one is dropped, the job's outcome stands."""
    run("enqueue", "--id", "k", "--max-retries", "0", "exit 3")
    (spool_dir / "kill" / "k").write_bytes(request_bytes)
    r = cli(spool_dir, "worker", "start", "--burst", check=False)
    assert r.returncode == 1, r.stdout + r.stderr  # the job ended dead, as its exit 3 says
    assert "Traceback" not in r.stderr
    job = json.loads((spool_dir / "dead" / "k.json").read_bytes())
    assert job["last_error"] == "exit 3"
    assert not (spool_dir / "kill" / "k").exists()
