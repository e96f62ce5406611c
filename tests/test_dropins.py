"""Files other programs put into pending/: accepted in canonical form, or moved to
rejected/ unchanged with a one-line reason. Never run, never deleted."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest


@pytest.fixture
def spool(run, spool_dir):
    """A spool that exists (dirs and index made by a first command)."""
    assert run("status").exit_code == 0
    return spool_dir


@pytest.fixture
def short_grace(run, spool):
    assert run("config", "set", "dropin_grace", "0.2").exit_code == 0
    return spool


def drop(spool_dir: Path, name: str | bytes, data: str | bytes) -> Path:
    """Write a file straight into pending/, as another tool would."""
    pending = os.fsencode(spool_dir / "pending")
    path = os.path.join(pending, os.fsencode(name))
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return Path(os.fsdecode(path))


def ids(run, *args) -> list[str]:
    r = run("list", *args)
    assert r.exit_code == 0, r.output
    return [line.split(" - ")[0] for line in r.stdout.splitlines()]


def counts(run) -> dict:
    r = run("status", "--json")
    assert r.exit_code == 0, r.output
    return {k: v for k, v in json.loads(r.stdout).items() if k not in ("workers", "spool")}


def assert_rejected(spool_dir: Path, name: str, original: bytes | None, *words: str) -> str:
    """NAME is in rejected/ byte for byte, NAME.reason is one line naming the problem."""
    assert not os.path.lexists(spool_dir / "pending" / name)
    dest = spool_dir / "rejected" / name
    assert os.path.lexists(dest), sorted(os.listdir(spool_dir / "rejected"))
    if original is not None:
        assert dest.read_bytes() == original
    reason = (spool_dir / "rejected" / f"{name}.reason").read_text()
    assert reason.endswith("\n") and reason.count("\n") == 1, reason
    for w in words:
        assert w in reason, reason
    return reason


# -- accepted -----------------------------------------------------------------------

def test_copied_in_file_shows_in_list_and_status_with_no_other_command(run, spool, tmp_path, read_job):
    src = tmp_path / "job1.json"
    src.write_text('{"id": "job1", "command": "echo Hello from QueueCTL", "max_retries": 3}')
    shutil.copy(src, spool / "pending" / "job1.json")
    r = run("list")
    assert (r.exit_code, r.stdout) == (0, "job1 - pending - echo Hello from QueueCTL\n")
    assert counts(run)["pending"] == 1
    rec = read_job("pending", "job1")  # rewritten in canonical form
    assert rec["state"] == "pending" and rec["attempts"] == 0 and rec["created_at"]
    assert rec["max_retries"] == 3
    assert stat.S_IMODE((spool / "pending" / "job1.json").stat().st_mode) == 0o600


def test_status_first_sees_a_dropin(run, spool):
    drop(spool, "a.json", '{"command": "true"}')
    assert counts(run) == {"pending": 1, "processing": 0, "completed": 0, "failed": 0, "dead": 0, "held": 0, "cancelled": 0}


def test_dropin_into_a_spool_with_only_pending_made_by_hand(run, spool_dir):
    (spool_dir / "pending").mkdir(parents=True)
    drop(spool_dir, "hand.json", '{"command": "echo hand"}')
    r = run("list")
    assert (r.exit_code, r.stdout) == (0, "hand - pending - echo hand\n")


def test_id_from_file_name_when_no_id_field(run, spool, read_job):
    drop(spool, "from-name.json", '{"command": "echo x"}')
    assert ids(run) == ["from-name"]
    assert read_job("pending", "from-name")["id"] == "from-name"


def test_id_field_wins_over_file_name(run, spool, ls, read_job):
    drop(spool, "whatever.json", '{"id": "real", "command": "echo x"}')
    assert ids(run) == ["real"]
    assert ls("pending") == ["real.json"]
    assert read_job("pending", "real")["id"] == "real"


def test_file_name_that_is_not_an_id_is_fine_with_an_id_field(run, spool, ls):
    drop(spool, "my job (copy).json", '{"id": "ok", "command": "true"}')
    assert ids(run) == ["ok"]
    assert ls("pending") == ["ok.json"]


def test_unknown_fields_kept_and_bookkeeping_reset(run, spool, read_job):
    drop(spool, "k.json", '{"command": "true", "owner": "ops", "state": "dead", "attempts": 7}')
    assert ids(run) == ["k"]
    rec = read_job("pending", "k")
    assert rec["owner"] == "ops" and rec["state"] == "pending" and rec["attempts"] == 0


def test_many_dropins_at_once(run, spool, ls):
    for i in range(120):
        drop(spool, f"j{i:03}.json", json.dumps({"command": f"echo {i}"}))
    assert counts(run)["pending"] == 120
    assert sorted(ids(run)) == [f"j{i:03}" for i in range(120)]
    assert len(ls("pending")) == 120 and ls("rejected") == []


def test_canonical_file_from_elsewhere_keeps_its_history(run, spool, tmp_path, read_job):
    other = tmp_path / "other"
    run("enqueue", "--id", "moved", "echo x", spool=other)
    rec = json.loads((other / "pending" / "moved.json").read_text())
    rec.update(state="dead", attempts=4, last_error="boom", history=[{"attempt": 1}])
    drop(spool, "moved.json", json.dumps(rec))
    assert ids(run) == ["moved"]
    back = read_job("pending", "moved")
    assert back["created_at"] == rec["created_at"]
    assert back["state"] == "pending"
    assert back["history"] == [{"attempt": 1}]


def test_shell_style_tmp_then_rename(run, spool, ls):
    tmp = spool / "pending" / ".job.json.tmp"
    tmp.write_text('{"command": "echo half')
    assert ids(run) == []
    assert ls("rejected") == []
    tmp.write_text('{"command": "echo whole"}')
    os.rename(tmp, spool / "pending" / "shell.json")
    assert run("list").stdout == "shell - pending - echo whole\n"


# -- grace for files that do not parse (yet) -----------------------------------------

def test_fresh_unparseable_file_is_not_rejected_inside_the_grace(run, spool, ls, age):
    run("config", "set", "dropin_grace", "30")
    p = drop(spool, "partial.json", '{"command": "echo')
    assert ids(run) == []
    assert counts(run)["pending"] == 0
    assert ls("rejected") == []
    assert ls("pending") == ["partial.json"]
    # once it has not been written to for longer than the grace, it is rejected
    age(p, 60)
    assert ids(run) == []
    assert_rejected(spool, "partial.json", b'{"command": "echo', "invalid JSON")


def test_waiting_file_is_looked_at_again_after_the_directory_settles(run, spool, ls, age):
    # The directory's mtime changes when a file is created, not when it is written.
    # A file still being written when the directory was last listed must be read again.
    run("config", "set", "dropin_grace", "30")
    p = drop(spool, "slow.json", '{"command": "echo sl')
    age(spool / "pending", 10)  # as if the file was created a while ago
    assert ids(run) == []
    with open(p, "ab") as f:
        f.write(b'ow"}')
    assert ids(run) == ["slow"]
    assert ls("rejected") == []


def test_waiting_file_is_rejected_after_the_grace_even_if_nothing_else_changes(run, spool, age):
    run("config", "set", "dropin_grace", "30")
    p = drop(spool, "never.json", "{oops")
    age(spool / "pending", 10)
    assert ids(run) == []
    age(p, 60)
    assert ids(run) == []
    assert_rejected(spool, "never.json", b"{oops", "invalid JSON")


@pytest.mark.slow
def test_slowly_written_file_is_accepted_whole(run, spool, ls, monkeypatch):
    # No racy window: each `list` below trusts pending/'s mark unless the
    # waiting file itself asked for a second look.
    monkeypatch.setattr("queuectl.spool.RACY_NS", 0)
    run("config", "set", "dropin_grace", "1.5")
    path = spool / "pending" / "slow.json"
    with open(path, "wb") as f:
        f.write(b'{"id": "slow", "command": "echo sl')
        f.flush()
        assert ids(run) == []
        assert ids(run) == []
        assert ls("rejected") == []
        f.write(b'ow written"}')
    assert run("list").stdout == "slow - pending - echo slow written\n"
    assert ls("rejected") == []


def test_unparseable_after_short_grace(run, short_grace, age):
    p = drop(short_grace, "bad.json", "{not json")
    age(p, 5)
    r = run("list")
    assert (r.exit_code, r.stdout) == (0, "")
    assert "rejected bad.json" in r.stderr
    assert_rejected(short_grace, "bad.json", b"{not json", "invalid JSON")


# -- rejected kinds ---------------------------------------------------------------------

BAD_CONTENT = [
    ("array.json", "[1, 2]", ["a job must be a JSON object, not a list"]),
    ("string.json", '"echo hi"', ["a job must be a JSON object, not a string"]),
    ("number.json", "5", ["not an integer"]),
    ("null.json", "null", ["not null"]),
    ("nocmd.json", '{"id": "nocmd"}', ["missing command"]),
    ("emptycmd.json", '{"command": ""}', ["command is empty"]),
    ("blankcmd.json", '{"command": "  "}', ["command is empty"]),
    ("listcmd.json", '{"command": ["ls", "-l"]}', ["command must be a string"]),
    ("retries.json", '{"command": "x", "max_retries": "3"}', ["max_retries"]),
    ("negretries.json", '{"command": "x", "max_retries": -1}', ["max_retries"]),
    ("timeout.json", '{"command": "x", "timeout": 0}', ["timeout"]),
    ("timeout2.json", '{"command": "x", "timeout": "10"}', ["timeout"]),
    ("env.json", '{"command": "x", "env": {"A": 1}}', ["env value of A"]),
    ("cwd.json", '{"command": "x", "cwd": 5}', ["cwd"]),
    ("dupkey.json", '{"command": "x", "command": "y"}', ["duplicate key"]),
    ("nan.json", '{"command": "x", "timeout": NaN}', ["NaN"]),
    ("slash.json", '{"id": "a/b", "command": "x"}', ["path separator"]),
    ("dots.json", '{"id": "..", "command": "x"}', ["'..'"]),
    ("dotdot.json", '{"id": "../../etc/x", "command": "x"}', ["'..'"]),
    ("space.json", '{"id": "a b", "command": "x"}', ["whitespace"]),
    ("ctrl.json", '{"id": "a\\u0001b", "command": "x"}', ["control character"]),
    ("long.json", json.dumps({"id": "x" * 129, "command": "x"}), ["longer than 128"]),
    ("intid.json", '{"id": 7, "command": "x"}', ["id must be a string"]),
    ("con.json", '{"id": "CON", "command": "x"}', ["reserved"]),
    ("bad name.json", '{"command": "x"}', ["whitespace"]),
    ("a..b.json", '{"command": "x"}', ["'..'"]),
    ("notjson.txt", '{"command": "x"}', ["does not end in .json"]),
    ("noext", '{"command": "x"}', ["does not end in .json"]),
    (".json", '{"command": "x"}', ["no job id"]),
    ("latin1.json", b'{"command": "echo \xe9"}', ["UTF-8"]),
    ("bom.json", b'\xef\xbb\xbf{"command": "x"}', ["invalid JSON"]),
    ("deep.json", "[" * 10000 + "]" * 10000, ["nested too deeply"]),
    ("surrogate.json", '{"command": "echo \\udc80"}', ["surrogate"]),
    ("huge.json", '{"command": "x", "n": ' + "9" * 5000 + "}", ["invalid JSON"]),
]


@pytest.mark.parametrize("name, data, words", BAD_CONTENT, ids=[c[0] for c in BAD_CONTENT])
def test_bad_content_is_rejected_unchanged(run, short_grace, age, name, data, words):
    raw = data.encode() if isinstance(data, str) else data
    p = drop(short_grace, name, raw)
    age(p, 5)
    r = run("list")
    assert (r.exit_code, r.stdout) == (0, ""), r.output
    assert f"queuectl: rejected {name}: " in r.stderr
    assert_rejected(short_grace, name, raw, *words)
    assert counts(run)["pending"] == 0
    assert os.listdir(short_grace / "pending") == []


def test_duplicate_id_in_any_state_is_rejected(run, spool):
    for i, d in enumerate(["pending", "processing", "done", "failed", "dead"]):
        run("enqueue", "--id", f"j{i}", "true")
        if d != "pending":
            os.rename(spool / "pending" / f"j{i}.json", spool / d / f"j{i}.json")
    assert counts(run) == {"pending": 1, "processing": 1, "completed": 1, "failed": 1, "dead": 1, "held": 0, "cancelled": 0}
    for i in range(5):
        drop(spool, f"x{i}.json", json.dumps({"id": f"j{i}", "command": "dup"}))
    # name only, the id coming from the file name: a copy of done/j2.json as pending/j2.json
    shutil.copy(spool / "done" / "j2.json", spool / "pending" / "j2.json")
    r = run("list")
    assert r.exit_code == 0
    for i in range(5):
        raw = json.dumps({"id": f"j{i}", "command": "dup"}).encode()
        assert_rejected(spool, f"x{i}.json", raw, f"job j{i} already exists")
    assert_rejected(spool, "j2.json", (spool / "done" / "j2.json").read_bytes(), "already exists (in done/)")
    assert counts(run) == {"pending": 1, "processing": 1, "completed": 1, "failed": 1, "dead": 1, "held": 0, "cancelled": 0}
    assert "dup" not in run("list").stdout


def test_duplicate_id_differing_only_in_case_is_rejected(run, spool, ls):
    run("enqueue", "--id", "job1", "true")
    drop(spool, "JOB1.json", '{"command": "from name"}')
    drop(spool, "other.json", '{"id": "Job1", "command": "from field"}')
    assert ids(run) == ["job1"]
    assert_rejected(spool, "JOB1.json", b'{"command": "from name"}', "already exists")
    assert_rejected(spool, "other.json", b'{"id": "Job1", "command": "from field"}', "already exists")
    assert ls("pending") == ["job1.json"]


def test_two_dropins_in_one_scan_differing_only_in_case(run, spool, ls):
    drop(spool, "abc.json", '{"command": "lower"}')
    drop(spool, "ABC.json", '{"command": "upper"}')
    r = run("list")
    assert len(r.stdout.splitlines()) == 1
    assert len(ls("pending")) == 1
    assert len([n for n in ls("rejected") if not n.endswith(".reason")]) == 1
    assert counts(run)["pending"] == 1


def test_two_dropins_with_the_same_id_field(run, spool, ls):
    drop(spool, "a.json", '{"id": "same", "command": "first"}')
    drop(spool, "b.json", '{"id": "same", "command": "second"}')
    assert ids(run) == ["same"]
    assert ls("pending") == ["same.json"]
    assert_rejected(spool, "b.json", b'{"id": "same", "command": "second"}', "already exists")


def test_symlink_is_rejected_and_its_target_untouched(run, spool, tmp_path):
    target = tmp_path / "target.json"
    content = b'{"id": "t", "command": "echo t"}'
    target.write_bytes(content)
    os.symlink(target, spool / "pending" / "link.json")
    os.symlink(tmp_path / "missing.json", spool / "pending" / "dangling.json")
    assert ids(run) == []
    assert target.read_bytes() == content
    moved = spool / "rejected" / "link.json"
    assert moved.is_symlink() and os.readlink(moved) == str(target)
    assert_rejected(spool, "link.json", None, "symlink")
    assert_rejected(spool, "dangling.json", None, "symlink")
    assert (spool / "rejected" / "dangling.json").is_symlink()


def test_directory_is_rejected(run, spool):
    d = spool / "pending" / "dir.json"
    d.mkdir()
    (d / "inner.json").write_text('{"command": "x"}')
    assert ids(run) == []
    assert_rejected(spool, "dir.json", None, "directory")
    assert (spool / "rejected" / "dir.json" / "inner.json").read_text() == '{"command": "x"}'


def test_fifo_is_rejected_without_blocking(run, spool):
    os.mkfifo(spool / "pending" / "fifo.json")
    assert ids(run) == []
    assert_rejected(spool, "fifo.json", None, "not a regular file")
    assert stat.S_ISFIFO(os.lstat(spool / "rejected" / "fifo.json").st_mode)


def test_hard_link_is_rejected(run, spool, tmp_path):
    orig = tmp_path / "orig.json"
    orig.write_text('{"command": "echo linked"}')
    os.link(orig, spool / "pending" / "hl.json")
    assert ids(run) == []
    assert_rejected(spool, "hl.json", b'{"command": "echo linked"}', "hard-linked")
    assert orig.read_text() == '{"command": "echo linked"}'


def test_oversize_file_is_rejected(run, spool):
    run("config", "set", "max_job_size", "100")
    small = json.dumps({"command": "echo small"})
    big = json.dumps({"command": "echo " + "x" * 200})
    drop(spool, "small.json", small)
    drop(spool, "big.json", big)
    assert ids(run) == ["small"]
    assert_rejected(spool, "big.json", big.encode(), "over the limit of 100", "max_job_size")


def test_non_utf8_file_name(run_proc, spool):
    drop(spool, b"\xff.json", '{"command": "x"}')
    drop(spool, "ok.json", '{"command": "x"}')
    p = run_proc("list")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "ok - pending - x\n"
    assert "Traceback" not in p.stderr
    rejected = os.listdir(os.fsencode(spool / "rejected"))
    assert sorted(rejected) == [b"\xff.json", b"\xff.json.reason"]


def test_rejected_name_clash_keeps_both(run, short_grace, age):
    for _ in range(2):
        age(drop(short_grace, "x.json", "[]"), 5)
        run("list")
    names = sorted(os.listdir(short_grace / "rejected"))
    assert names == ["x.json", "x.json.1", "x.json.1.reason", "x.json.reason"]


# -- ignored --------------------------------------------------------------------------

@pytest.mark.parametrize("name", [".x", ".hidden.json", "x.tmp", "job.json.tmp", ".x.tmp"])
def test_ignored_names_are_left_alone(run, short_grace, age, ls, name):
    p = drop(short_grace, name, "{garbage")
    age(p, 60)
    assert ids(run) == []
    assert counts(run)["pending"] == 0
    assert ls("pending") == [name]
    assert ls("rejected") == []
    assert p.read_text() == "{garbage"


# -- other tools moving and deleting files ---------------------------------------------

def test_files_deleted_or_moved_by_other_tools_disappear(run, spool):
    for i in range(3):
        run("enqueue", "--id", f"j{i}", f"echo {i}")
    assert ids(run) == ["j0", "j1", "j2"]
    os.unlink(spool / "pending" / "j0.json")
    assert ids(run) == ["j1", "j2"]
    assert counts(run)["pending"] == 2
    os.rename(spool / "pending" / "j1.json", spool / "done" / "j1.json")
    assert run("list").stdout == "j1 - completed - echo 1\nj2 - pending - echo 2\n"
    assert counts(run) == {"pending": 1, "processing": 0, "completed": 1, "failed": 0, "dead": 0, "held": 0, "cancelled": 0}
    os.rename(spool / "pending" / "j2.json", spool / "elsewhere.json")
    assert run("list").stdout == "j1 - completed - echo 1\n"
    os.unlink(spool / "done" / "j1.json")
    assert run("status", "--json").stdout.count(": 0") == 8  # seven states and workers


def test_deletion_noticed_even_when_the_directory_mtime_looks_old(run, spool, age):
    run("enqueue", "--id", "a", "true")
    run("enqueue", "--id", "b", "true")
    age(spool / "pending", 100)
    assert ids(run) == ["a", "b"]
    os.unlink(spool / "pending" / "a.json")
    assert ids(run) == ["b"]


def test_job_moved_back_into_pending_by_hand(run, spool, read_job):
    run("enqueue", "--id", "back", "true")
    os.rename(spool / "pending" / "back.json", spool / "dead" / "back.json")
    assert run("list").stdout == "back - dead - true\n"
    os.rename(spool / "dead" / "back.json", spool / "pending" / "back.json")
    assert run("list").stdout == "back - pending - true\n"
    assert read_job("pending", "back")["state"] == "pending"


def test_dropin_in_canonical_form_without_max_retries_takes_the_config_value(run, spool_dir, read_job):
    assert run("config", "set", "max_retries", "7").exit_code == 0
    record = {"id": "moved", "command": "true", "state": "pending",
              "created_at": "2026-01-01T00:00:00.000000Z", "history": []}
    (spool_dir / "pending" / "moved.json").write_text(json.dumps(record))
    assert run("list").stdout == "moved - pending - true\n"
    rec = read_job("pending", "moved")
    assert (rec["max_retries"], rec["created_at"]) == (7, "2026-01-01T00:00:00.000000Z")


def test_canonical_dropin_kept_as_is_is_still_made_durable(run, spool, tmp_path, read_job, monkeypatch):
    from queuectl import dropins
    other = tmp_path / "other"
    run("enqueue", "--id", "kept", "echo x", spool=other)
    data = (other / "pending" / "kept.json").read_bytes()
    path = drop(spool, "kept.json", data)
    ino = path.stat().st_ino
    synced: list[str] = []
    real = dropins.syncfs
    monkeypatch.setattr(dropins, "syncfs", lambda p: (synced.append(p), real(p)))
    assert ids(run) == ["kept"]
    assert path.stat().st_ino == ino and path.read_bytes() == data  # not rewritten
    assert synced, "a drop-in kept without rewrite was never synced"
