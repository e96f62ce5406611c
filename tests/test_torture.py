"""Hostile input: a corpus of bad drop-ins, symlinks, hard links, permissions,
job specs that try to get evaluated, hand-edited job files, and a full disk.

Every command a bad job carries would leave a marker file if it ever ran.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import stat
import time
from pathlib import Path

import pytest

from support import (STATE_DIRS, age_file, assert_check_clean, configure, dir_counts, fill_disk,  # noqa: F401
                     mount_tmpfs, names, qc, status_json, unmount, wait_exit, wait_for)

pytestmark = pytest.mark.slow


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    s = tmp_path / "spool"
    configure(s, dropin_grace=0.2, backoff_max=0.05)
    return s


def _touch(path: Path) -> str:
    return f"touch {shlex.quote(str(path))}"


# -- the corpus ----------------------------------------------------------------------


def bad_corpus(mark: Path) -> list[tuple[str, object, str]]:
    """(file name, content, what the .reason must say). Content is bytes, a dict/list
    (written as JSON), or a special kind: "symlink", "dir", "fifo", "socket", "hardlink",
    "sparse50m". Every command would create mark/<n> if executed."""
    def cmd(n: str) -> str:
        return _touch(mark / n)

    def js(n: str, **fields) -> bytes:
        return json.dumps({"command": cmd(n), **fields}).encode()

    deep = b'{"command": "' + cmd("deep").encode() + b'", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return [
        # does not parse (after dropin_grace)
        ("garbage.json", os.urandom(2048) + b"\xff\xfe", "not UTF-8"),
        ("nul.json", b'{"command": "' + cmd("nul").encode() + b'"}\x00\x00', "invalid JSON"),
        ("empty.json", b"", "invalid JSON"),
        ("truncated.json", b'{"command": "' + cmd("truncated").encode(), "invalid JSON"),
        ("trailing.json", js("trailing") + b" {}", "invalid JSON"),
        ("bom.json", b"\xef\xbb\xbf" + js("bom"), "invalid JSON"),
        ("single-quotes.json", b"{'command': '" + cmd("sq").encode() + b"'}", "invalid JSON"),
        ("nan.json", b'{"command": "' + cmd("nan").encode() + b'", "timeout": NaN}', "NaN"),
        ("huge-number.json", b'{"command": "' + cmd("huge").encode() + b'", "timeout": 1e400}', "out of range"),
        ("surrogate.json", b'{"command": "' + cmd("surrogate").encode() + b'\\ud800"}', "surrogate"),
        ("deep.json", deep, "nested too deeply"),
        ("deep-array.json", b"[" * 200_000, "nested too deeply"),
        ("dupkey.json", b'{"command": "true", "command": "' + cmd("dupkey").encode() + b'"}', "duplicate key"),
        # not an object, no command
        ("array.json", [{"command": cmd("array")}], "must be a JSON object"),
        ("string.json", cmd("string"), "must be a JSON object"),
        ("number.json", 42, "must be a JSON object"),
        ("null.json", None, "must be a JSON object"),
        ("no-command.json", {"cmd": cmd("nocommand")}, "missing command"),
        ("empty-command.json", {"command": ""}, "command is empty"),
        ("blank-command.json", {"command": "  \n\t "}, "command is empty"),
        ("nul-command.json", {"command": cmd("nulcmd") + "\x00"}, "NUL"),
        # wrong field types
        ("command-list.json", {"command": ["touch", str(mark / "list")]}, "command must be a string"),
        ("command-number.json", {"command": 7}, "command must be a string"),
        ("retries-negative.json", js("rneg", max_retries=-1), "max_retries must be"),
        ("retries-string.json", js("rstr", max_retries="3"), "max_retries must be"),
        ("retries-1e9.json", js("r1e9", max_retries=1e9), "max_retries must be"),
        ("retries-bool.json", js("rbool", max_retries=True), "max_retries must be"),
        ("timeout-zero.json", js("t0", timeout=0), "timeout must be"),
        ("timeout-negative.json", js("tneg", timeout=-5), "timeout must be"),
        ("timeout-string.json", js("tstr", timeout="10"), "timeout must be"),
        ("env-int.json", js("envint", env={"A": 1}), "env value of A must be a string"),
        ("env-null.json", js("envnull", env={"A": None}), "env value of A must be a string"),
        ("env-list.json", js("envlist", env=["A=1"]), "env must be an object"),
        ("env-name.json", js("envname", env={"A=B": "x"}), "not a valid variable name"),
        ("cwd-number.json", js("cwd", cwd=5), "cwd must be"),
        ("priority-string.json", js("prio", priority="high"), "priority must be"),
        ("run-at.json", js("runat", run_at="tomorrow"), "bad time"),
        # bad ids
        ("id-slash.json", js("idslash", id="a/b"), "path separator"),
        ("id-backslash.json", js("idbs", id="a\\b"), "path separator"),
        ("id-dot.json", js("iddot", id="."), "id '.' names a directory"),
        ("id-dotdot.json", js("iddotdot", id=".."), "'..'"),
        ("id-dotdot-inside.json", js("iddd2", id="a..b"), "'..'"),
        ("id-space.json", js("idspace", id="a b"), "whitespace"),
        ("id-control.json", js("idctl", id="a\x01b"), "control character"),
        ("id-long.json", js("idlong", id="x" * 129), "longer than 128"),
        ("id-number.json", js("idnum", id=5), "id must be a string"),
        ("id-empty.json", js("idempty", id=""), "id is empty"),
        ("id-leading-dash.json", js("iddash", id="-rf"), "must start with a letter or digit"),
        ("id-con.json", js("idcon", id="CON"), "reserved device name"),
        ("CON.json", {"command": cmd("confile")}, "reserved device name"),
        ("nul.txt.json", {"command": cmd("nultxt"), "id": "nul.txt"}, "reserved device name"),
        ("a b.json", {"command": cmd("namespace")}, "whitespace"),
        # ids that already exist (in any state, ignoring case), or disagree with another file's
        ("CASEJOB.json", {"command": cmd("case1")}, "already exists"),
        ("case-field.json", js("case2", id="CaseJob"), "already exists"),
        ("impostor.json", js("impostor", id="victim"), "already exists"),
        # names
        (".json", {"command": cmd("emptyname")}, "empty file name"),
        ("job.txt", {"command": cmd("txt")}, "does not end in .json"),
        ("noext", {"command": cmd("noext")}, "does not end in .json"),
        # not regular files, links, size
        ("link.json", "symlink", "symlink"),
        ("dir.json", "dir", "directory"),
        ("fifo.json", "fifo", "not a regular file"),
        ("sock.json", "socket", "not a regular file"),
        ("hardlink.json", "hardlink", "hard-linked"),
        ("big.json", "sparse50m", "over the limit of 1048576"),
        ("justover.json", "justover", "over the limit of 1048576"),
    ]


def _make(path: Path, content, stage: Path, mark: Path) -> None:
    """Create one corpus entry at path (staged elsewhere first, then renamed in)."""
    staged = stage / (path.name or "empty-name")
    if content == "symlink":
        outside = stage / "outside-job.json"
        outside.write_text(json.dumps({"command": _touch(mark / "symlink")}))
        os.symlink(outside, path)
    elif content == "dir":
        path.mkdir()
        (path / "inner.json").write_text(json.dumps({"command": _touch(mark / "dir")}))
    elif content == "fifo":
        os.mkfifo(path)
    elif content == "socket":
        s = socket.socket(socket.AF_UNIX)
        cwd = os.getcwd()
        os.chdir(path.parent)  # AF_UNIX paths are short; bind relative to the directory
        try:
            s.bind(path.name)
        finally:
            os.chdir(cwd)
            s.close()
    elif content == "hardlink":
        staged.write_text(json.dumps({"command": _touch(mark / "hardlink")}))
        os.link(staged, path)  # the staged name stays: two links
    elif content in ("sparse50m", "justover"):
        with open(staged, "wb") as f:
            if content == "sparse50m":
                f.write(json.dumps({"command": _touch(mark / "big")}).encode())
                f.truncate(50 << 20)  # sparse: instant, no disk used
            else:  # a valid job padded to 1 MiB + 1 byte
                head = json.dumps({"command": _touch(mark / "justover"), "pad": ""}).encode()
                f.write(head[:-2] + b" " * ((1 << 20) + 1 - len(head)) + head[-2:])
        os.rename(staged, path)
    else:
        data = content if isinstance(content, bytes) else json.dumps(content).encode()
        staged.write_bytes(data)
        os.rename(staged, path)


def test_corpus_of_bad_dropins_is_rejected_and_never_runs(spool, tmp_path, procs):
    mark, ok, stage = tmp_path / "mark", tmp_path / "ok", tmp_path / "stage"
    for d in (mark, ok, stage):
        d.mkdir()
    corpus = bad_corpus(mark)
    assert len(corpus) >= 40
    # jobs that exist before the drop: ids the corpus collides with, and one that
    # keeps the burst worker busy while the drop happens
    for job_id in ("victim", "casejob"):
        r = qc(spool, "enqueue", "--id", job_id, _touch(ok / job_id))
        assert r.returncode == 0, r.stderr
    r = qc(spool, "enqueue", "--id", "holder", f"sleep 1.5; {_touch(ok / 'holder')}")
    assert r.returncode == 0
    sup = procs.start(spool, "worker", "start", "--count", "2", "--burst", name="worker")
    wait_for(lambda: (spool / "processing" / "holder.json").exists() or (ok / "holder").exists(),
             what="holder claimed")
    pending = spool / "pending"
    t0 = time.monotonic()
    valid = [f"good{i}" for i in range(10)]
    for i, (name, content, _) in enumerate(corpus):
        _make(pending / name, content, stage, mark)
        if i % 7 == 0:  # valid jobs interleaved with the bad ones, in the same second
            job_id = valid[i // 7]
            (stage / job_id).write_text(json.dumps({"command": _touch(ok / job_id)}))
            os.rename(stage / job_id, pending / f"{job_id}.json")
    for job_id in valid[len(corpus) // 7 + 1:]:
        (stage / job_id).write_text(json.dumps({"id": job_id, "command": _touch(ok / job_id)}))
        os.rename(stage / job_id, pending / f"dropped-{job_id}.json")
    assert time.monotonic() - t0 < 1.0, "the drop took more than a second"
    assert wait_exit(sup, 60, procs) == 0, procs.output(sup)

    assert sorted(os.listdir(mark)) == [], "a bad drop-in was executed"
    assert sorted(os.listdir(ok)) == sorted(["victim", "casejob", "holder", *valid])
    assert names(spool, "pending") == []
    assert sorted(names(spool, "done")) == sorted(f"{j}.json" for j in ["victim", "casejob", "holder", *valid])
    rejected = set(names(spool, "rejected"))
    for name, _content, reason in corpus:
        stored = name or "unnamed"
        assert stored in rejected, f"{name!r} not in rejected/"
        text = (spool / "rejected" / (stored + ".reason")).read_text()
        assert reason in text, f"{name}: reason {text!r} does not say {reason!r}"
        assert text.endswith("\n") and text.count("\n") == 1
    assert len(rejected) == 2 * len(corpus)
    # kept unchanged: byte for byte, and still the same kind of thing
    assert (spool / "rejected" / "garbage.json").stat().st_size == 2050
    assert (spool / "rejected" / "big.json").stat().st_size == 50 << 20
    assert os.path.islink(spool / "rejected" / "link.json")
    assert stat.S_ISFIFO(os.lstat(spool / "rejected" / "fifo.json").st_mode)
    assert (spool / "rejected" / "dir.json" / "inner.json").exists()
    assert_check_clean(spool)


def test_symlink_in_pending_is_never_followed_read_or_moved_through(spool, tmp_path, procs):
    mark = tmp_path / "mark"
    mark.mkdir()
    target = tmp_path / "outside.json"
    target.write_text(json.dumps({"id": "evil", "command": _touch(mark / "symlink")}))
    past = time.time_ns() - 1000 * 10**9
    old_atime = past - 500 * 10**9
    os.utime(target, ns=(old_atime, past))  # atime < mtime: a read would move atime (relatime)
    before = os.stat(target)
    data = target.read_bytes()
    os.utime(target, ns=(old_atime, past))
    control = tmp_path / "control"
    control.write_text("x")
    os.utime(control, ns=(old_atime, past))
    control.read_bytes()
    atime_works = os.stat(control).st_atime_ns != old_atime
    target_dir = tmp_path / "outside-dir"
    target_dir.mkdir()
    (target_dir / "x.json").write_text(json.dumps({"command": _touch(mark / "dir")}))
    os.symlink(target, spool / "pending" / "evil.json")
    os.symlink(target, spool / "pending" / "relative.json")
    os.unlink(spool / "pending" / "relative.json")
    os.symlink(os.path.relpath(target, spool / "pending"), spool / "pending" / "relative.json")
    os.symlink(target_dir, spool / "pending" / "dirlink.json")
    os.symlink(tmp_path / "does-not-exist", spool / "pending" / "dangling.json")
    sup = procs.start(spool, "worker", "start", "--burst", name="worker")
    assert wait_exit(sup, 30, procs) == 0
    assert os.listdir(mark) == []
    after = os.stat(target)
    assert target.read_bytes() == data
    assert after.st_mtime_ns == before.st_mtime_ns and after.st_ino == before.st_ino
    if atime_works:
        assert after.st_atime_ns == old_atime, "the symlink target was read"
    assert sorted(os.listdir(target_dir)) == ["x.json"]
    for name in ("evil.json", "relative.json", "dirlink.json", "dangling.json"):
        link = spool / "rejected" / name
        assert os.path.islink(link), name
        assert "symlink" in (spool / "rejected" / (name + ".reason")).read_text()
    assert os.readlink(spool / "rejected" / "evil.json") == str(target)
    assert names(spool, "pending") == [] and dir_counts(spool)["completed"] == 0


def test_hard_linked_job_file_is_suspect(spool, tmp_path, procs):
    mark = tmp_path / "mark"
    mark.mkdir()
    outside = tmp_path / "mine.json"
    outside.write_text(json.dumps({"command": _touch(mark / "hard")}))
    os.link(outside, spool / "pending" / "hard.json")
    sup = procs.start(spool, "worker", "start", "--burst", name="worker")
    assert wait_exit(sup, 30, procs) == 0
    assert os.listdir(mark) == []
    assert "hard-linked" in (spool / "rejected" / "hard.json.reason").read_text()
    assert json.loads(outside.read_text()) == {"command": _touch(mark / "hard")}


# -- permissions ----------------------------------------------------------------------


def test_spool_is_private_whatever_the_umask(tmp_path):
    spool = tmp_path / "spool"
    umask0 = {"preexec_fn": lambda: os.umask(0)}
    assert qc(spool, "config", "set", "dropin_grace", "0.2", **umask0).returncode == 0
    assert qc(spool, "enqueue", "--id", "a", "echo hi", **umask0).returncode == 0
    assert qc(spool, "enqueue", "--id", "b", "exit 3", "--max-retries", "0", **umask0).returncode == 0
    (spool / "pending" / "bad.json").write_text("[]")
    r = qc(spool, "worker", "start", "--burst", **umask0)
    assert r.returncode == 1, r.stdout + r.stderr  # 1: job b ended in dead/
    assert stat.S_IMODE(os.stat(spool).st_mode) == 0o700
    for dirpath, dirnames, filenames in os.walk(spool):
        for d in dirnames:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, d)).st_mode) == 0o700, d
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.relpath(p, spool) == "rejected/bad.json":
                continue  # kept as it was dropped, mode included
            assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, os.path.relpath(p, spool)
    assert names(spool, "done") == ["a.json"] and names(spool, "dead") == ["b.json"]


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_worker_refuses_a_spool_others_can_write(spool, tmp_path, mode):
    mark = tmp_path / "ran"
    assert qc(spool, "enqueue", "--id", "j", _touch(mark)).returncode == 0
    os.chmod(spool, mode)
    for extra in ([], ["--detach"]):
        r = qc(spool, "worker", "start", "--burst", *extra)
        assert r.returncode == 1
        assert r.stderr.startswith(f"Error: spool {spool} is writable by group or others (mode {mode:o})")
        assert f"chmod 700 {spool}" in r.stderr and "--allow-shared-spool" in r.stderr
        assert r.stdout == ""
    assert not mark.exists() and names(spool, "pending") == ["j.json"]
    r = qc(spool, "worker", "start", "--burst", "--allow-shared-spool")
    assert r.returncode == 0, r.stderr
    assert mark.exists() and names(spool, "done") == ["j.json"]


# -- nothing in a job file is evaluated ------------------------------------------------------


def test_job_specs_are_data_not_code(spool, tmp_path):
    out, mark = tmp_path / "out", tmp_path / "mark"
    out.mkdir()
    mark.mkdir()
    m = str(mark / "m")
    jobs = [
        {"id": "subst", "command": f"echo $(echo sub-ok) > {out}/subst"},
        {"id": "fmt", "command": f"echo '%s {{}} {{id}} %(id)s {{0}} {{command}}' > {out}/fmt"},
        {"id": "x", "command": f"echo ran > {out}/x", "__import__": "os", "eval": f"open({m!r}, 'w')",
         "exec": f"import os; os.system('touch {m}')", "pre": f"touch {m}", "shell": "/bin/bash",
         "args": [f"touch {m}"], f"$(touch {m})": "`touch " + m + "`", "on_success": f"touch {m}",
         "__class__": {"__init__": f"touch {m}"}},
        {"id": "env", "command": f'printf %s "$V" > {out}/env', "env": {"V": f"$(touch {m}); `touch {m}` %s {{}}"}},
        {"id": "cwd", "command": f"pwd > {out}/cwd", "cwd": str(tmp_path)},
        {"id": "quote", "command": f"printf '%s\\n' \"it's\" 'a \"b\"' > {out}/quote"},
    ]
    for spec in jobs[:3]:
        r = qc(spool, "enqueue", "--file", "-", input=json.dumps(spec))
        assert r.returncode == 0, r.stderr
    for spec in jobs[3:]:  # and the same as drop-ins
        (spool / "pending" / f"{spec['id']}.json").write_text(json.dumps(spec))
    r = qc(spool, "worker", "start", "--burst")
    assert r.returncode == 0, r.stderr
    assert os.listdir(mark) == []
    assert (out / "subst").read_text() == "sub-ok\n"
    assert (out / "fmt").read_text() == "%s {} {id} %(id)s {0} {command}\n"
    assert (out / "x").read_text() == "ran\n"
    assert (out / "env").read_text() == f"$(touch {m}); `touch {m}` %s {{}}"
    assert (out / "cwd").read_text() == f"{tmp_path}\n"
    assert (out / "quote").read_text() == "it's\na \"b\"\n"
    assert f"executing job fmt: echo '%s {{}} {{id}} %(id)s {{0}} {{command}}' > {out}/fmt" in r.stdout
    done = json.loads((spool / "done" / "x.json").read_bytes())
    for key in ("__import__", "eval", "exec", "pre", "shell", "args", f"$(touch {m})", "__class__"):
        assert done[key] == jobs[2][key]  # unknown fields are kept verbatim, never used
    assert len(names(spool, "done")) == len(jobs)


# -- a job file edited by hand while pending ---------------------------------------------------


def test_pending_job_edited_into_invalid_json(spool, tmp_path, procs):
    ok = tmp_path / "ok"
    ok.mkdir()
    for j in ("j1", "j2", "j3"):
        assert qc(spool, "enqueue", "--id", j, _touch(ok / j)).returncode == 0
    # a scheduled job, edited while a worker is already waiting for it
    later = time.time() + 1.5
    r = qc(spool, "enqueue", "--file", "-",
           input=json.dumps({"id": "later", "command": _touch(ok / "later"), "run_at": later}))
    assert r.returncode == 0
    with open(spool / "pending" / "j2.json", "w") as f:  # in place, as an editor might
        f.write('{"id": "j2", "command": "' + _touch(ok / "j2-edited") + '",')
    sup = procs.start(spool, "worker", "start", "--burst", name="worker")
    # A burst worker leaves jobs scheduled for later alone (and says how many).
    assert wait_exit(sup, 30, procs) == 0
    assert "[supervisor] 1 job remains scheduled for later" in procs.output(sup)
    assert (ok / "j3").exists()
    with open(spool / "pending" / "later.json", "w") as f:
        f.write("not json at all")
    wait_for(lambda: time.time() > later + 0.1, what="the scheduled job is due")
    assert qc(spool, "worker", "start", "--burst").returncode == 0
    assert sorted(os.listdir(ok)) == ["j1", "j3"]
    assert names(spool, "done") == ["j1.json", "j3.json"]
    assert sorted(names(spool, "rejected")) == ["j2.json", "j2.json.reason", "later.json", "later.json.reason"]
    assert "invalid JSON" in (spool / "rejected" / "j2.json.reason").read_text()
    assert (spool / "rejected" / "later.json").read_text() == "not json at all"
    assert status_json(spool) == {"pending": 0, "processing": 0, "completed": 2, "failed": 0, "dead": 0, "held": 0, "cancelled": 0}
    assert_check_clean(spool)


# -- disk full ------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / "small"
    try:
        mount_tmpfs(mnt, "2m")
    except OSError as e:
        pytest.skip(str(e))
    try:
        yield mnt
    finally:
        unmount(mnt)


def test_enqueue_on_a_full_disk_fails_cleanly(small_fs):
    spool = small_fs / "spool"
    assert qc(spool, "enqueue", "--id", "before", "true").returncode == 0
    for d in STATE_DIRS:  # listed well after their last change: no racy second look needed
        age_file(spool / d, 5)
    assert qc(spool, "status").returncode == 0
    ballast = fill_disk(small_fs)
    r = qc(spool, "enqueue", "--id", "one", "echo hi")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.startswith("Error: no space left"), r.stderr
    assert "Traceback" not in r.stderr
    assert names(spool, "pending") == ["before.json"] and names(spool, "tmp") == []
    # Room for the index but not for 300 job files: the write fails half way.
    os.truncate(ballast, ballast.stat().st_size - (256 << 10))
    specs = "\n".join(json.dumps({"id": f"bulk{i}", "command": "true"}) for i in range(300))
    r = qc(spool, "enqueue", "--quiet", "--file", "-", input=specs)
    assert r.returncode == 1, r.stdout
    assert r.stderr.startswith("Error: no space left on device while writing a job file"), r.stderr
    assert names(spool, "pending") == ["before.json"]
    assert names(spool, "tmp") == []
    ballast.unlink()
    r = qc(spool, "enqueue", "--quiet", "--file", "-", input=specs)
    assert r.returncode == 0, r.stderr
    assert status_json(spool)["pending"] == 301


def _job_that_waits_for_go(small_fs: Path, tmp_path: Path, *, silent: bool = False):
    """A spool on the small filesystem with job `full`: it counts its runs in
    `runs`, touches `started`, then waits until `go` exists. It prints a line
    unless silent: a silent success truncates the worker's scratch log, which
    frees the block its header took, room enough for the job's record."""
    spool = small_fs / "spool"
    configure(spool, backoff_max=0.05)
    started, go, runs = tmp_path / "started", tmp_path / "go", tmp_path / "runs"
    cmd = (f"{'' if silent else 'echo started; '}echo run >> {runs}; touch {started}; "
           f"while [ ! -e {go} ]; do sleep 0.02; done")
    assert qc(spool, "enqueue", "--id", "full", cmd).returncode == 0
    return spool, started, go, runs


def _disk_fills_mid_job(small_fs: Path, tmp_path: Path, procs, notice: str, *, silent: bool = False):
    """A burst worker runs job `full`; the disk fills, then the job ends: (spool, supervisor,
    ballast, runs) once the worker has said `notice` and had a second more."""
    spool, started, go, runs = _job_that_waits_for_go(small_fs, tmp_path, silent=silent)
    sup = procs.start(spool, "worker", "start", "--burst", name="worker")
    wait_for(lambda: started.exists(), what="job started")
    ballast = fill_disk(small_fs)
    go.touch()
    wait_for(lambda: notice in procs.output(sup), what="worker noticed the full disk")
    time.sleep(1.0)
    return spool, sup, ballast, runs


def test_worker_that_cannot_record_a_result_keeps_the_job(small_fs, tmp_path, procs):
    spool, sup, ballast, runs = _disk_fills_mid_job(small_fs, tmp_path, procs, "cannot record full")
    # not lost, not moved on, not run again: still claimed by its live worker
    assert names(spool, "processing") == ["full.json"]
    assert sup.poll() is None
    ballast.unlink()
    assert wait_exit(sup, 30, procs) == 0, procs.output(sup)
    assert runs.read_text() == "run\n"
    job = json.loads((spool / "done" / "full.json").read_bytes())
    assert job["attempts"] == 1 and job["state"] == "completed"
    assert dir_counts(spool) == {"pending": 0, "processing": 0, "completed": 1, "failed": 0, "dead": 0, "held": 0, "cancelled": 0}
    assert_check_clean(spool)


def test_a_worker_waits_out_a_full_disk_wherever_it_strikes(small_fs, tmp_path, procs):
    """Whether the record or the index is the write that finds no room, the worker neither
    crashes nor loses the job: it says so once, waits, and carries on when there is room."""
    spool, sup, ballast, runs = _disk_fills_mid_job(small_fs, tmp_path, procs, "no space left on device",
                                                    silent=True)
    assert sup.poll() is None
    ballast.unlink()
    assert wait_exit(sup, 30, procs) == 0, procs.output(sup)
    assert "Traceback" not in procs.output(sup) and "exited with code" not in procs.output(sup)
    assert runs.read_text() == "run\n"
    assert dir_counts(spool)["completed"] == 1
    assert_check_clean(spool)


def test_worker_killed_on_a_full_disk_loses_nothing(small_fs, tmp_path, procs):
    spool, started, go, runs = _job_that_waits_for_go(small_fs, tmp_path)
    assert qc(spool, "enqueue", "--id", "other", "true").returncode == 0
    sup = procs.start(spool, "worker", "start", "--burst", name="worker")
    wait_for(lambda: started.exists(), what="job started")
    ballast = fill_disk(small_fs)
    go.touch()
    wait_for(lambda: "cannot record full" in procs.output(sup), what="worker noticed the full disk")
    os.killpg(sup.pid, 9)
    sup.wait()
    assert names(spool, "processing") == ["full.json"]
    ballast.unlink()
    r = qc(spool, "worker", "start", "--burst", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "recovered full (worker died" in r.stdout
    assert runs.read_text() == "run\nrun\n"  # at least once: the unrecorded run is repeated
    job = json.loads((spool / "done" / "full.json").read_bytes())
    assert job["attempts"] == 2 and job["history"][0]["error"] == "worker died"
    assert sorted(names(spool, "done")) == ["full.json", "other.json"]
    assert_check_clean(spool)
