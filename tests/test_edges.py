"""Edges of the environment a spool lives in: used-up inotify limits, replaced
and moved directories, unopenable slot files, zone names in --at, numbers
that are no numbers, non-regular files at paths a user names."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from queuectl import watcher as watcher_mod
from queuectl.watcher import Watcher

from support import cli, cli_argv, qc, wait_for


# -- inotify limits used up (issue 18, finding 7) --------------------------------------------------


class _FailingLibc:
    """libc whose inotify calls fail as they do when a limit is used up; the rest is the real one."""

    def __init__(self, fail_init: int = 0, fail_watch: int = 0):
        self._real = ctypes.CDLL(None, use_errno=True)
        self.fail_init, self.fail_watch = fail_init, fail_watch

    def __getattr__(self, name):
        return getattr(self._real, name)

    def inotify_init1(self, flags):
        if self.fail_init:
            ctypes.set_errno(self.fail_init)
            return -1
        return self._real.inotify_init1(flags)

    def inotify_add_watch(self, fd, path, mask):
        if self.fail_watch:
            ctypes.set_errno(self.fail_watch)
            return -1
        return self._real.inotify_add_watch(fd, path, mask)


def _exhaust(monkeypatch, *, init: int = 0, watch: int = 0) -> None:
    """Make inotify fail in queuectl's own reader and in watchdog's observer alike."""
    import watchdog.observers.inotify_c as wc
    fake = _FailingLibc(init, watch)
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **kw: fake)

    def fail(code):
        def f(*args):
            ctypes.set_errno(code)
            return -1
        return f

    if init:
        monkeypatch.setattr(wc, "inotify_init", fail(init))
    if watch:
        monkeypatch.setattr(wc, "inotify_add_watch", fail(watch))


@pytest.mark.parametrize("init,watch,says", [
    (errno.EMFILE, 0, "max_user_instances"),
    (0, errno.ENOSPC, "max_user_watches"),
])
def test_watcher_polls_when_inotify_is_used_up(tmp_path, monkeypatch, init, watch, says):
    _exhaust(monkeypatch, init=init, watch=watch)
    pending = tmp_path / "pending"
    pending.mkdir()
    w = Watcher([str(pending)], poll_interval=0.1)
    w.start()  # raised OSError (EMFILE / ENOSPC): every worker crashed and was restarted forever
    try:
        assert w.running and w.poll
        assert says in w.degraded
        made = []

        def arrival() -> bool:
            # A file made before the polling observer's first snapshot is no arrival: make another.
            made.append(pending / f"{len(made)}.json")
            made[-1].write_text("{}")
            w.wait(0.5)
            return w.arrived()
        wait_for(arrival, 30)
    finally:
        w.stop()


def _unshare_ok() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-U", "-r", "sh", "-c", "echo 0 > /proc/sys/user/max_inotify_instances"],
                       capture_output=True)
    return r.returncode == 0


needs_userns = pytest.mark.skipif(not _unshare_ok(), reason="needs `unshare -U -r` and per-user-namespace "
                                  "inotify limits (/proc/sys/user/max_inotify_*, Linux 5.11+)")


def _limited(limit: str, spool: Path, *args) -> subprocess.CompletedProcess:
    """queuectl ARGS in a child user namespace whose inotify LIMIT is 0: used up, as another
    program of the same user can leave it, without touching the machine's own limits."""
    argv = " ".join(f"'{a}'" for a in cli_argv(spool, *args))
    return subprocess.run(["unshare", "-U", "-r", "sh", "-c", f"echo 0 > /proc/sys/user/{limit} && exec {argv}"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.slow
@needs_userns
@pytest.mark.parametrize("limit,says", [("max_inotify_instances", "max_user_instances"),
                                        ("max_inotify_watches", "max_user_watches")])
def test_used_up_inotify_limit_makes_workers_poll_with_one_line(tmp_path, limit, says):
    spool = tmp_path / "spool"
    ids = [cli(spool, "enqueue", f"echo {i}").stdout.split()[-1] for i in range(3)]
    r = _limited(limit, spool, "worker", "start", "--burst", "--count", "2")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Traceback" not in out and "restarting" not in out
    lines = [line for line in out.splitlines() if "fs.inotify" in line]
    assert len(lines) == 1 and says in lines[0] and "poll the spool" in lines[0], out
    assert sorted(os.listdir(spool / "done")) == sorted(f"{i}.json" for i in ids)
    # `wait` said "no space left on device (spool)" and exited 1
    cli(spool, "enqueue", "--delay", "1h", "true")
    r = _limited(limit, spool, "wait", "--all", "--timeout", "0.5")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("queuectl: ") and says in r.stderr and "Error" not in r.stderr


# -- a watched directory replaced (finding 15a) ----------------------------------------------------


@pytest.mark.parametrize("how", ["remove", "move"])
def test_watcher_watches_a_replaced_directory_again(tmp_path, how):
    pending = tmp_path / "pending"
    pending.mkdir()
    w = Watcher([str(pending)])
    w.start()
    try:
        if how == "remove":
            pending.rmdir()
        else:
            pending.rename(tmp_path / "old")
        pending.mkdir()
        assert w.wait(5)  # the old directory's loss wakes, and asks for a scan
        assert w.arrived()
        (pending / "a.json").write_text("{}")
        assert w.wait(5)  # the new directory was never watched: no event, ever
        wait_for(w.arrived, 5)
        if how == "move":
            (tmp_path / "old" / "b.json").write_text("{}")  # the old directory is no longer watched
            assert not w.wait(0.3)
    finally:
        w.stop()


# -- paths a user names that are no regular file of ours (finding 16, 15d) -------------------------


def _char_device(path: Path) -> None:
    """A copy of /dev/null (character device 1:3) at path: the real one is never risked."""
    import stat
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))


def _special(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)
    elif os.geteuid() != 0:
        pytest.skip("making a character device needs root")
    else:
        _char_device(path)
    return path


@pytest.mark.parametrize("kind", ["fifo", "chardev"])
def test_index_that_is_no_regular_file_is_refused_untouched(run, tmp_path, kind):
    import stat
    path = _special(tmp_path, kind)
    before = os.lstat(path)
    r = run("--index", path, "status")
    assert r.exit_code == 1
    what = "a FIFO" if kind == "fifo" else "a character device"
    assert r.stderr == f"Error: the index {path} is {what}, not a regular file: refusing to use it\n"
    after = os.lstat(path)  # was: a SQLite database renamed over it (as root, over /dev/null)
    assert (stat.S_IFMT(after.st_mode), after.st_ino, after.st_rdev) == (
        stat.S_IFMT(before.st_mode), before.st_ino, before.st_rdev)
    assert sorted(os.listdir(tmp_path)) == sorted([kind, "spool"])  # no lock file, no -wal beside it
    # through a symlink, or named by the config, the same
    link = tmp_path / "link.db"
    link.symlink_to(path)
    assert run("--index", link, "status").exit_code == 1 and os.path.islink(link)
    assert run("config", "set", "index", str(path)).exit_code == 0
    r = run("status")
    assert r.exit_code == 1 and "refusing to use it" in r.stderr
    assert stat.S_IFMT(os.lstat(path).st_mode) == stat.S_IFMT(before.st_mode)


def test_index_that_is_some_other_file_is_not_replaced(run, tmp_path):
    text = tmp_path / "hosts"
    text.write_text("127.0.0.1 localhost\n")
    r = run("--index", text, "status")
    assert (r.exit_code, r.stderr) == (1, f"Error: the index {text} is not a queuectl index (another kind of file, "
                                          "or another program's database): refusing to use or replace it "
                                          "(give --index a file of its own)\n")
    assert text.read_text() == "127.0.0.1 localhost\n"
    # /proc/version said "no space left on device"
    r = run("--index", "/proc/version", "status")
    assert r.exit_code == 1 and "not a queuectl index" in r.stderr and "space" not in r.stderr
    # another program's database
    import sqlite3
    other = tmp_path / "app.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE accounts (name)")
    con.execute("INSERT INTO accounts VALUES ('alice')")
    con.commit()
    con.close()
    r = run("--index", other, "status")
    assert r.exit_code == 1 and "refusing to use or replace it" in r.stderr
    con = sqlite3.connect(other)  # was: queuectl's tables added to it
    assert [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["accounts"]
    assert con.execute("SELECT name FROM accounts").fetchall() == [("alice",)]
    con.close()
    # an index of this user's that broke is still rebuilt
    good = tmp_path / "good.db"
    assert run("--index", good, "enqueue", "true").exit_code == 0
    good.write_bytes(b"SQLite format 3\0" + b"\xff" * 4080)
    r = run("--index", good, "status", "--json")
    assert r.exit_code == 0 and "rebuilding" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_index_of_another_user_is_refused(run, tmp_path):
    other = tmp_path / "other.db"
    assert run("--index", other, "enqueue", "true").exit_code == 0
    os.chown(other, 65534, 65534)
    data = other.read_bytes()
    r = run("--index", other, "status")
    assert (r.exit_code, r.stderr) == (1, f"Error: the index {other} belongs to uid 65534, not to this user: "
                                          "refusing to use it\n")
    assert other.read_bytes() == data and os.stat(other).st_uid == 65534


def test_metrics_textfile_errors_name_the_real_problem(run, tmp_path):
    r = run("metrics", "--textfile", "/proc")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert "job file" not in r.stderr and "/proc/queuectl.prom" in r.stderr  # was: "writing a job file"
    out = tmp_path / "textfile"
    out.mkdir()
    os.mkfifo(out / "queuectl.prom")
    r = run("metrics", "--textfile", out)
    assert (r.exit_code, r.stderr) == (1, f"Error: {out}/queuectl.prom is a FIFO, not a regular file: "
                                          "refusing to replace it\n")
    assert os.listdir(out) == ["queuectl.prom"] and not os.path.isfile(out / "queuectl.prom")
    (out / "queuectl.prom").unlink()
    assert run("metrics", "--textfile", out).exit_code == 0
    assert "queuectl_jobs" in (out / "queuectl.prom").read_text()


# -- --at with zones (finding 13) ------------------------------------------------------------------


def _utc(*a) -> float:
    from datetime import datetime, timezone
    return datetime(*a, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("text,expected", [
    ("tomorrow 10:00 PST", _utc(2026, 11, 29, 18)),       # was 8 h early: PST dropped, read as local
    ("tomorrow 10:00 UTC+3", _utc(2026, 11, 29, 7)),      # was 6 h late: POSIX sign
    ("tomorrow 10:00 GMT-05:30", _utc(2026, 11, 29, 15, 30)),
    ("tomorrow 10:00 +03:00", _utc(2026, 11, 29, 7)),
    ("tomorrow 10:00 +3", _utc(2026, 11, 29, 7)),
    ("tomorrow 10:00 utc", _utc(2026, 11, 29, 10)),
    ("tomorrow 10:00 Z", _utc(2026, 11, 29, 10)),
    ("tomorrow 10:00 Europe/Berlin", _utc(2026, 11, 29, 9)),
    ("2027-07-01 10:00 Europe/Berlin", _utc(2027, 7, 1, 8)),  # summer time, from the zone's rules
    ("Dec 24 9am EST", _utc(2026, 12, 24, 14)),
    ("2030-01-02 10:00 -5", _utc(2030, 1, 2, 15)),
])
def test_at_reads_the_zone_a_person_means(text, expected, recwarn):
    from queuectl.when import parse_at
    now = _utc(2026, 11, 28, 12)  # noon UTC: 04:00 in California, 15:00 in Moscow
    assert parse_at(text, now) == expected
    assert not recwarn.list  # a Python warning was printed for PST


@pytest.mark.parametrize("text,says", [
    ("tomorrow 10:00 CST", "time zone CST in 'tomorrow 10:00 CST' is ambiguous"),
    ("tomorrow 10:00 IST", "is ambiguous"),
    ("tomorrow 10:00 XYZ", "unknown time zone XYZ in 'tomorrow 10:00 XYZ'"),
    ("tomorrow 10:00 Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ("tomorrow 10:00 UTC+25", "is not one a clock uses"),
    ("tomorrow 10:00 Etc/GMT+3", "counts hours the POSIX way"),
])
def test_at_refuses_a_zone_it_cannot_be_sure_of(run, text, says):
    r = run("enqueue", "--at", text, "true")
    assert r.exit_code == 1 and r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
    assert says in r.stderr
    assert "Warning" not in r.stderr and "tzinfos" not in r.stderr


# -- numbers that are no numbers (finding 14) -------------------------------------------------------


@pytest.mark.parametrize("args", [
    ("wait", "a", "--timeout", "nan"),      # waited forever
    ("wait", "a", "--timeout", "inf"),
    ("wait", "a", "--timeout", "1e20"),
    ("wait", "a", "--timeout", "-1"),
    ("enqueue", "--timeout", "nan", "true"),
    ("enqueue", "--timeout", "1e300", "true"),
    ("enqueue", "--priority", "9" * 30, "true"),
    ("priority", "a", "9" * 30),
    ("list", "-n", "9" * 30),               # a traceback: "Python int too large to convert to SQLite INTEGER"
    ("clean", "--keep", "9" * 30),
    ("worker", "start", "--burst", "--stop-timeout", "nan"),
    ("worker", "stop", "--timeout", "nan"),
    ("worker", "stop", "--timeout", "1e300"),
    ("systemd-unit", "--stop-timeout", "inf"),
])
def test_numeric_options_refuse_nan_inf_and_huge_values(spool_dir, args):
    cli(spool_dir, "enqueue", "--id", "a", "--delay", "1h", "true")
    r = qc(spool_dir, *args, timeout=30)  # `wait --timeout nan` never returned
    assert r.returncode == 2, r.stdout + r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("Error: Invalid value for ") and ("finite" in last or "range" in last), r.stderr
    assert "Traceback" not in r.stderr


# -- Ctrl-C (finding 15c) ---------------------------------------------------------------------------


def _watching(pid: int) -> bool:
    """Has the process made its inotify watch (so it is inside wait's loop)?"""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify" for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def _as_in_a_terminal() -> None:
    """SIGINT as a terminal's foreground job has it. Under a shell's background job (`cmd &` in a
    script, as CI may run the suite) it is ignored, and a program keeps that on purpose."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_the_program_starts_exits_130_without_a_traceback(spool_dir, tmp_path):
    """Ctrl-C while Python imports click (the first 40-100 ms of every command) printed a
    traceback and died of SIGINT; now it exits 130 like a Ctrl-C during the command."""
    import signal
    hook, importing = tmp_path / "hook", tmp_path / "importing"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(f"""
import sys, time
class SlowClick:
    def find_spec(self, name, path=None, target=None):
        if name == "click":
            open({str(importing)!r}, "w").close()
            time.sleep(20)
        return None
sys.meta_path.insert(0, SlowClick())
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen(cli_argv(spool_dir, "status"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_as_in_a_terminal)
    try:
        wait_for(importing.exists, 30, what="the program importing click")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=15)
    finally:
        if p.poll() is None:
            p.kill()
    assert (p.returncode, out, err) == (130, "", "")


def test_ctrl_c_in_wait_exits_130(spool_dir):
    import signal
    cli(spool_dir, "enqueue", "--id", "a", "--delay", "1h", "true")
    p = subprocess.Popen(cli_argv(spool_dir, "wait", "a"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=_as_in_a_terminal)
    try:
        wait_for(lambda: _watching(p.pid), 30)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, (out, err)  # was 1, as for a job that ended dead
    assert "Traceback" not in err and "Aborted" not in err


# -- a spool moved under its workers (finding 15b) --------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["moved", "replaced"])
def test_workers_stop_with_one_line_when_their_spool_is_moved(tmp_path, procs, how):
    from support import heartbeats, wait_exit
    spool = tmp_path / "spool"
    cli(spool, "enqueue", "--id", "first", "true")
    sup = procs.start(spool, "worker", "start", "--count", "2", name="sup")
    wait_for(lambda: len([h for h in heartbeats(spool, "worker") if h.get("watching")]) == 2
             and (spool / "done" / "first.json").exists(), 60)
    # Past each worker's first scan: a move in the very instant a worker opens the index
    # (between SQLite's open of index.db and of its -shm) can still leave an index.db-shm there.
    t0 = time.monotonic()
    wait_for(lambda: time.monotonic() - t0 >= 1.0, 10, interval=0.1)
    spool.rename(tmp_path / "elsewhere")
    if how == "replaced":
        spool.mkdir()  # an empty directory where the spool was
    code = wait_exit(sup, 60, procs)  # was: workers crashed, restarted and made a new spool here
    out = procs.output(sup)
    assert code == 1, out
    assert "Traceback" not in out and "restarting" not in out, out
    lines = [line for line in out.splitlines() if "was moved, removed or replaced" in line]
    assert len(lines) == 1 and "[supervisor]" in lines[0], out
    if how == "moved":
        assert not spool.exists()
    else:
        assert os.listdir(spool) == []
    # the spool where it is now is whole, and its jobs run there
    moved_to = tmp_path / "elsewhere"
    assert (moved_to / "done" / "first.json").exists()
    cli(moved_to, "enqueue", "--id", "second", "true")
    cli(moved_to, "worker", "start", "--burst")
    assert (moved_to / "done" / "second.json").exists()


# -- a slot file no worker can lock (finding 8) -----------------------------------------------------


@pytest.mark.slow
def test_an_unusable_slot_file_is_said_once_and_check_reports_it(tmp_path, procs):
    spool = tmp_path / "spool"
    cli(spool, "config", "set", "queue.gpu.concurrency", "1")
    cli(spool, "enqueue", "--id", "g", "--queue", "gpu", "true")
    slot = spool / "queues" / "gpu" / "slot.0"
    slot.parent.mkdir(parents=True, mode=0o700)
    slot.symlink_to(tmp_path / "nowhere")  # as a dangling link, or a root-owned file left by a sudo run
    sup = procs.start(spool, "worker", "start", "--count", "2", name="sup")
    said = "queue gpu: slot file"
    wait_for(lambda: said in procs.output(sup), 30)  # was: no line at all, and the job never ran
    t0 = time.monotonic()
    wait_for(lambda: time.monotonic() - t0 >= 4.5, 10, interval=0.1)  # two more looks by the supervisor
    lines = [line for line in procs.output(sup).splitlines() if said in line]
    assert len(lines) == 1 and "[supervisor]" in lines[0] and "symbolic link" in lines[0], procs.output(sup)
    assert "at most 0 of its 1 jobs run at once; remove it" in lines[0]
    r = qc(spool, "check")  # said "ok"
    assert r.returncode == 1
    assert r.stdout.startswith("slot: queues/gpu/slot.0: slot file of queue gpu is a symbolic link"), r.stdout
    assert not (spool / "done" / "g.json").exists()
    r = qc(spool, "check", "--repair")
    assert "[repaired: removed the link]" in r.stdout
    wait_for(lambda: (spool / "done" / "g.json").exists(), 30)


@pytest.mark.slow
def test_a_burst_does_not_wait_for_a_queue_whose_every_slot_is_unusable(tmp_path, procs):
    from support import wait_exit
    spool = tmp_path / "spool"
    cli(spool, "config", "set", "queue.gpu.concurrency", "1")
    cli(spool, "enqueue", "--id", "g", "--queue", "gpu", "true")
    cli(spool, "enqueue", "--id", "d", "true")
    slot = spool / "queues" / "gpu" / "slot.0"
    slot.parent.mkdir(parents=True, mode=0o700)
    slot.symlink_to(tmp_path / "nowhere")
    sup = procs.start(spool, "worker", "start", "--burst", name="burst")
    assert wait_exit(sup, 60, procs) == 0, procs.output(sup)  # was: a burst that never ended, without a word
    assert (spool / "done" / "d.json").exists() and (spool / "pending" / "g.json").exists()
    assert "queue gpu: slot file" in procs.output(sup)


def test_unusable_slot_reasons(tmp_path):
    from queuectl.queues import unusable_slot
    assert unusable_slot(str(tmp_path / "missing")) is None
    (tmp_path / "ok").write_bytes(b"")
    assert unusable_slot(str(tmp_path / "ok")) is None
    (tmp_path / "dir").mkdir()
    assert unusable_slot(str(tmp_path / "dir")) == "Is a directory"
    os.mkfifo(tmp_path / "fifo")
    assert unusable_slot(str(tmp_path / "fifo")) == "not a regular file"
    if os.geteuid() != 0:  # root opens any file: a root-owned slot only stops other users' workers
        (tmp_path / "foreign").write_bytes(b"")
        os.chmod(tmp_path / "foreign", 0)
        assert unusable_slot(str(tmp_path / "foreign")).startswith("not writable by this user (owner uid ")


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_detach_never_writes_its_log_into_a_fifo_or_through_a_link(tmp_path, kind):
    spool = tmp_path / "spool"
    cli(spool, "status")
    log = spool / "logs" / "_supervisor.log"
    target = tmp_path / "target"
    if kind == "fifo":
        os.mkfifo(log)  # was: `worker start --detach` blocked for ever opening it
    else:
        target.write_text("precious\n")
        log.symlink_to(target)  # was: the supervisor's lines appended to the link's target
    r = qc(spool, "worker", "start", "--detach", timeout=30)
    what = "a FIFO" if kind == "fifo" else "a symbolic link"
    assert (r.returncode, r.stderr) == (1, f"Error: the supervisor log {log} is {what}, not a regular file: "
                                           "refusing to write to it\n")
    assert qc(spool, "worker", "list", "--json").stdout.strip() in ("[]", "")
    if kind == "symlink":
        assert target.read_text() == "precious\n"


@pytest.mark.slow
def test_a_fifo_in_place_of_a_jobs_log_never_blocks_the_job(tmp_path, procs):
    from support import wait_exit
    spool = tmp_path / "spool"
    cli(spool, "enqueue", "--id", "big", "head -c 300000 /dev/zero; echo done")
    os.mkfifo(spool / "logs" / "big.log")  # nobody reads it: was a job blocked for ever at 64 KiB
    sup = procs.start(spool, "worker", "start", "--burst", name="burst")
    assert wait_exit(sup, 60, procs) == 0, procs.output(sup)
    assert (spool / "done" / "big.json").exists()
    assert not (spool / "logs" / "big.log").is_file()  # still the FIFO, never replaced
