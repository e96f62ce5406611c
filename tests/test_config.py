"""Spool settings: defaults, `config set/get/list`, validation, effect on new jobs."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from queuectl import config as configmod
from queuectl.errors import ConfigError

EMPTY_WAIT_BOUND = configmod.EMPTY_WAIT / 2  # an old empty config.json is not waited for

DEFAULT_LIST = """\
max_retries = 3
backoff_base = 2
backoff_max = 3600
backoff_jitter = 0.1
job_timeout = none
kill_grace = 5
dropin_grace = 2
max_job_size = 1048576
lease = 30
clock_skew = 5
poll_interval = 0.5
shared = false
index = none
keep_done = 7d,100000
keep_dead = 30d,100000
max_log_size = 1048576
on_finish = none
on_failure = none
hook_timeout = 60
"""


def test_defaults():
    d = configmod.defaults().as_dict()
    assert d["max_retries"] == 3
    assert d["backoff_base"] == 2
    assert d["backoff_max"] == 3600
    assert d["job_timeout"] is None
    assert d["dropin_grace"] == 2
    assert configmod.defaults().max_retries == 3  # typed attribute access


def test_config_list_on_a_brand_new_spool(run, spool_dir):
    r = run("config", "list")
    assert r.exit_code == 0, r.output
    assert r.stdout == DEFAULT_LIST
    assert r.stderr == ""
    assert not (spool_dir / "config.json").exists()  # reading writes nothing
    r = run("config", "list", "--json")
    assert json.loads(r.stdout) == configmod.defaults().as_json()


@pytest.mark.parametrize("key, value, shown, stored", [
    ("max-retries", "5", "max_retries = 5", 5),
    ("max_retries", "0", "max_retries = 0", 0),
    ("MAX_RETRIES", "7", "max_retries = 7", 7),
    ("backoff_max", "0.05", "backoff_max = 0.05", 0.05),
    ("backoff-base", "1.5", "backoff_base = 1.5", 1.5),
    ("job_timeout", "none", "job_timeout = none", None),
    ("job_timeout", "2.5", "job_timeout = 2.5", 2.5),
    ("dropin_grace", "0", "dropin_grace = 0.0", 0),
    ("dropin_grace", "0.2", "dropin_grace = 0.2", 0.2),
    ("max_job_size", "100", "max_job_size = 100", 100),
])
def test_config_set(run, spool_dir, key, value, shown, stored):
    r = run("config", "set", key, value)
    assert (r.exit_code, r.stdout, r.stderr) == (0, shown + "\n", "")
    name = shown.split(" = ")[0]
    data = json.loads((spool_dir / "config.json").read_text())
    assert data[name] == stored
    assert run("config", "get", key).stdout == shown.split(" = ")[1] + "\n"
    assert json.loads(run("config", "get", name, "--json").stdout) == stored
    assert stat.S_IMODE((spool_dir / "config.json").stat().st_mode) == 0o600


def test_config_set_keeps_other_settings(run, spool_dir):
    run("config", "set", "max-retries", "5")
    run("config", "set", "backoff_max", "0.05")
    run("config", "set", "job_timeout", "10")
    run("config", "set", "job_timeout", "none")
    r = run("config", "list")
    assert "max_retries = 5\n" in r.stdout
    assert "backoff_max = 0.05\n" in r.stdout
    assert "job_timeout = none\n" in r.stdout
    assert json.loads((spool_dir / "config.json").read_text()) == {
        **configmod.defaults().as_json(), "max_retries": 5, "backoff_max": 0.05, "job_timeout": None}


@pytest.mark.parametrize("key, value, message", [
    ("max_retries", "-1", "Error: max_retries: must be >= 0 and <= 1000, got -1"),
    ("max_retries", "1001", "Error: max_retries: must be >= 0 and <= 1000, got 1001"),
    ("max_retries", "2.5", "Error: max_retries: expected an integer, got '2.5'"),
    ("max_retries", "lots", "Error: max_retries: expected an integer, got 'lots'"),
    ("backoff_max", "0", "Error: backoff_max: must be > 0, got 0.0"),
    ("backoff_max", "-3", "Error: backoff_max: must be >= 0 and > 0, got -3.0"),
    ("backoff_max", "nan", "Error: backoff_max: must be > 0, got nan"),
    ("backoff_max", "inf", "Error: backoff_max: must be > 0, got inf"),
    ("backoff_base", "0.5", "Error: backoff_base: must be >= 1, got 0.5"),
    ("job_timeout", "0", "Error: job_timeout: must be > 0, got 0.0"),
    ("job_timeout", "soon", "Error: job_timeout: expected a number, got 'soon'"),
    ("dropin_grace", "-1", "Error: dropin_grace: must be >= 0, got -1.0"),
    ("max_job_size", "0", "Error: max_job_size: must be >= 1, got 0"),
])
def test_config_set_bad_values(run, spool_dir, key, value, message):
    r = run("config", "set", key, value)
    assert r.exit_code == 1
    assert r.stdout == ""
    # The text after the key names the bound; keep the exact line stable where it is
    # sensible and at least name the key and the value everywhere.
    line = r.stderr.strip()
    assert line.startswith(f"Error: {key.replace('-', '_')}: ")
    assert "\n" not in line
    assert not (spool_dir / "config.json").exists()


def test_config_set_bad_value_exact_text(run):
    r = run("config", "set", "max-retries", "-1")
    assert (r.exit_code, r.stderr) == (1, "Error: max_retries: must be >= 0 and <= 1000, got -1\n")
    r = run("config", "set", "backoff_max", "abc")
    assert (r.exit_code, r.stderr) == (1, "Error: backoff_max: expected a number, got 'abc'\n")


def test_config_unknown_key(run, spool_dir):
    for args in (("set", "colour", "blue"), ("get", "colour")):
        r = run("config", *args)
        assert r.exit_code == 1
        assert r.stderr.startswith("Error: unknown config key 'colour' (known: max_retries, ")
        assert r.stdout == ""
    assert not (spool_dir / "config.json").exists()


def test_config_set_missing_value_is_a_usage_error(run):
    r = run("config", "set", "max_retries")
    assert r.exit_code == 2
    assert "Missing argument 'VALUE'" in r.stderr


def test_hand_written_config_is_validated(run, spool_dir):
    run("status")
    (spool_dir / "config.json").write_text('{"max_retries": "many"}')
    r = run("config", "list")
    assert r.exit_code == 1
    assert r.stderr == "Error: max_retries: expected an integer, got 'many'\n"
    (spool_dir / "config.json").write_text("{not json")
    r = run("enqueue", "echo hi")
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: config.json is not valid JSON")
    assert list((spool_dir / "pending").iterdir()) == []


def test_hand_written_config_with_dash_key_and_missing_keys(run, spool_dir):
    run("status")
    (spool_dir / "config.json").write_text('{"max-retries": 9}')
    r = run("config", "get", "max_retries")
    assert r.stdout == "9\n"
    assert run("config", "get", "backoff_base").stdout == "2\n"


def test_from_bytes():
    assert configmod.from_bytes(b"") == configmod.defaults()
    assert configmod.from_bytes(b'{"backoff_max": 0.05}').backoff_max == 0.05
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        configmod.from_bytes(b"[1]")
    with pytest.raises(ConfigError, match="unknown config key"):
        configmod.from_bytes(b'{"nope": 1}')
    with pytest.raises(ConfigError, match="max_retries"):
        configmod.from_bytes(b'{"max_retries": true}')


def test_job_without_max_retries_takes_config_value_at_accept_time(run, spool_dir, read_job):
    assert run("enqueue", "--id", "before", "true").exit_code == 0
    run("config", "set", "max-retries", "5")
    assert run("enqueue", "--id", "after", "true").exit_code == 0
    assert run("enqueue", "--id", "own", "--max-retries", "1", "true").exit_code == 0
    (spool_dir / "job.json").write_text('{"id": "filejob", "command": "true"}')
    assert run("enqueue", "--file", spool_dir / "job.json").exit_code == 0
    # a drop-in is accepted with the value in force when it is accepted
    (spool_dir / "pending" / "dropped.json").write_text('{"command": "true"}')
    assert run("list").exit_code == 0
    run("config", "set", "max-retries", "0")
    assert read_job("pending", "before")["max_retries"] == 3
    assert read_job("pending", "after")["max_retries"] == 5
    assert read_job("pending", "own")["max_retries"] == 1
    assert read_job("pending", "filejob")["max_retries"] == 5
    assert read_job("pending", "dropped")["max_retries"] == 5


def test_an_empty_config_json_keeps_the_last_good_settings(tmp_path, collect_lines):
    """An editor truncates config.json, then writes it: a worker that rereads it in
    between must keep its queue limits and hooks, not fall back to the defaults."""
    from queuectl.spool import Spool
    spool = Spool(str(tmp_path / "s"))
    spool.set_config("queue.one.concurrency", 1)
    spool.set_config("on_finish", "echo done")
    path = tmp_path / "s" / "config.json"
    written = path.read_bytes()
    lines = collect_lines("w")
    path.write_bytes(b"")  # caught mid-rewrite
    assert spool.configfile.refresh() is False
    assert spool.config.limit("one") == 1
    assert spool.config.on_finish == "echo done"
    assert any("config.json changed but is not valid (the file is empty); keeping the previous settings" in x
               for x in lines)
    path.write_bytes(written.replace(b'"echo done"', b'"echo finished"'))  # the rewrite completes
    assert spool.configfile.refresh() is True
    assert spool.config.on_finish == "echo finished" and spool.config.limit("one") == 1
    spool.close()


def test_config_set_replaces_config_json_in_one_rename(run, spool_dir):
    """A reader sees the old file or the new one: `config set` writes a new inode through tmp/."""
    run("config", "set", "max_retries", "4")
    before = (spool_dir / "config.json").stat().st_ino
    run("config", "set", "max_retries", "5")
    assert (spool_dir / "config.json").stat().st_ino != before
    assert json.loads((spool_dir / "config.json").read_text())["max_retries"] == 5
    assert list((spool_dir / "tmp").iterdir()) == []


def test_an_empty_config_json_being_rewritten_is_read_again(spool_dir, run):
    """A command starting while config.json is empty waits a moment for its writer."""
    import threading
    run("config", "set", "max_retries", "7")
    path = spool_dir / "config.json"
    written = path.read_bytes()
    path.write_bytes(b"")
    t = threading.Timer(0.1, path.write_bytes, (written,))
    t.start()
    try:
        assert configmod.load(str(path)).max_retries == 7
    finally:
        t.join()
    path.write_bytes(b"")
    assert configmod.load(str(path)) == configmod.defaults()  # still empty: no settings (a `touch`)
    os.utime(path, (1e9, 1e9))
    t0 = time.monotonic()
    assert configmod.load(str(path)) == configmod.defaults()  # empty for long: no wait
    assert time.monotonic() - t0 < EMPTY_WAIT_BOUND
