"""What a network filesystem does that a local disk never does, injected on a local disk:
inode numbers past 2**63 (GlusterFS), ESTALE on open/read/close (NFS, GlusterFS), a read
short or stale for a second (a file rewritten through another client), a name whose cache
outlives the file, a record whose file another host's recovery moved on. The same cases on
real mounts: tests/test_cluster.py (sshfs and GlusterFS)."""

from __future__ import annotations

import errno
import json
import os
import time
from types import SimpleNamespace

import pytest

from queuectl import dropins, fsio
from queuectl.job import JobState
from queuectl.recovery import orphans
from queuectl.spool import Spool


@pytest.fixture
def spool(spool_dir):
    s = Spool(str(spool_dir))
    yield s
    s.close()


@pytest.fixture
def shared(spool_dir, monkeypatch):
    """A spool in shared mode (as on a network filesystem): other hosts may use it."""
    monkeypatch.setenv("QUEUECTL_SHARED", "1")
    s = Spool(str(spool_dir))
    assert s.multihost
    yield s
    s.close()


def estale(*_a, **_k):
    raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))


def once(monkeypatch, module, name, fail, *, when=lambda *a: True):
    """Replace module.name by `fail` for its first call that `when` accepts, then restore it."""
    real = getattr(module, name)
    state = {"done": False}

    def patched(*a, **k):
        if not state["done"] and when(*a):
            state["done"] = True
            return fail(*a, **k)
        return real(*a, **k)

    monkeypatch.setattr(module, name, patched)
    return state


def test_inode_numbers_past_2_63_fit_the_index(spool):
    """GlusterFS numbers every inode >= 2**63: SQLite's INTEGER is signed 64-bit. (The same on real
    GlusterFS mounts: test_enqueue_status_and_a_worker_on_glusterfs.) A stamp hashes the inode with
    times that a hand edit can put past 2**63 ns (year 2262) too."""
    from queuectl.index import row_values
    from queuectl.stamps import stamp_of
    job = spool.enqueue(spool.new_job({"command": "true", "id": "big"}))
    far = 10**20  # year 5138, in ns
    stamps = [fsio.db_ino(2**64 - 1), fsio.db_ino(2**63), 2**63 - 1, 1]
    for ino in (2**64 - 1, 2**63):
        st = SimpleNamespace(st_ino=ino, st_size=2**62, st_mtime_ns=far, st_ctime_ns=far)
        stamps.append(stamp_of(st, now_ns=far + 2 * 10**9))
    for stamp in stamps:
        spool.indexes.upsert(row_values(job, JobState.PENDING, None, stamp))
        spool.flush_index()
        assert spool.index.stamps_in(JobState.PENDING)["big"] == stamp
    assert {fsio.db_ino(2**64 - 1), fsio.db_ino(2**63)} == {-1, -(2**63)}


def test_enqueue_status_and_a_worker_on_glusterfs(gluster, tmp_path):
    """The first enqueue on a GlusterFS mount failed: OverflowError from the index's ino column."""
    c, name = gluster, f"first-{tmp_path.name}"
    r = c.cli(0, name, "enqueue", "--id", "g1", "true")
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    for i in range(3):
        r = c.cli(i, name, "status", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["pending"] == 1, (r.stdout, r.stderr)
    r = c.cli(1, name, "worker", "start", "--shared", "--burst")
    assert r.returncode == 0 and "completed g1" in r.stdout and "Traceback" not in r.stdout + r.stderr, r.stdout
    r = c.cli(2, name, "check")
    assert r.returncode == 0 and r.stdout.startswith("ok:"), (r.stdout, r.stderr)


def test_a_stale_handle_at_close_is_not_an_error(tmp_path, monkeypatch):
    """GlusterFS reports a file replaced through another mount at close(2): lock_file must not crash."""
    f = tmp_path / "j.json"
    f.write_text("{}")
    held = fsio.lock_file(str(f))
    assert held is not None
    real_close = os.close

    def close_then_estale(fd):
        real_close(fd)
        raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))

    monkeypatch.setattr(os, "close", close_then_estale)
    try:
        assert fsio.lock_file(str(f)) is None  # locked: its descriptor is closed, ESTALE and all
        data, _ = fsio.read_nofollow(str(f))
        assert data == b"{}"
    finally:
        monkeypatch.undo()
        os.close(held)


def test_a_drop_in_read_with_estale_is_looked_at_again_not_a_crash(shared, spool_dir, monkeypatch):
    (spool_dir / "pending" / "d1.json").write_text(json.dumps({"command": "true"}))
    state = once(monkeypatch, os, "pread", estale)
    report = shared.sync()
    assert state["done"]
    assert report.accepted == [] and report.rejected == []
    assert os.listdir(spool_dir / "rejected") == []
    assert shared.sync().accepted == ["d1"]


def test_a_listing_with_estale_is_looked_at_again(spool, spool_dir, monkeypatch):
    spool.enqueue(spool.new_job({"command": "true", "id": "x1"}))
    state = once(monkeypatch, os, "scandir", estale)
    spool.sync(force=True)
    assert state["done"]
    assert spool.index.counts()["pending"] == 1


def test_a_claim_read_with_estale_is_left_alone_not_quarantined(spool, spool_dir, monkeypatch):
    spool.enqueue(spool.new_job({"command": "true", "id": "c1"}))
    once(monkeypatch, os, "pread", estale)
    assert spool.claim("c1", JobState.PENDING) is None
    assert os.listdir(spool_dir / "rejected") == []
    assert os.listdir(spool_dir / "processing") == ["c1.json"]  # unlocked: recovery takes it from here


def test_a_short_read_of_a_claim_on_a_shared_spool_is_read_again(shared, spool_dir, monkeypatch):
    """sshfs truncates a read at the size it cached before another host rewrote the file."""
    from queuectl import spool as spoolmod
    shared.enqueue(shared.new_job({"command": "true", "id": "s1"}))
    once(monkeypatch, spoolmod, "read_fd", lambda fd, limit=None: fsio.read_fd(fd, limit)[:20])
    claim = shared.claim("s1", JobState.PENDING)
    assert claim is not None and claim.job.id == "s1"
    assert os.listdir(spool_dir / "rejected") == []
    claim.release()


def test_a_short_read_of_a_rewritten_pending_file_is_not_rejected_until_it_stays_invalid(
        shared, spool_dir, monkeypatch):
    """`queuectl priority` on another host replaces pending/ID.json; a short read here is no bad file."""
    shared.enqueue(shared.new_job({"command": "true", "id": "p1"}))
    path = spool_dir / "pending" / "p1.json"
    (spool_dir / "tmp" / "new").write_text(path.read_text().replace('"priority": 0', '"priority": 5'))
    os.rename(spool_dir / "tmp" / "new", path)  # another file: admitted again, as after a rewrite elsewhere
    old = time.time() - 3600
    os.utime(path, (old, old))  # the cached mtime is no guide either
    monkeypatch.setattr(dropins, "read_fd", lambda fd, limit=None: fsio.read_fd(fd, limit)[:20])
    report = shared.sync()
    assert report.rejected == [] and report.waiting == 1
    assert os.listdir(spool_dir / "rejected") == []
    monkeypatch.setattr(dropins, "STALE_READ", 0.0)  # invalid for longer than any cache: rejected then
    assert [name for name, _ in shared.sync().rejected] == ["p1.json"]


def test_recovery_confirms_an_orphan_by_a_fresh_listing_not_by_its_cached_name(shared, spool_dir, monkeypatch):
    """A name's cached stat (and a file opened through it) outlive the file by a second on a network
    filesystem: an owner that finished meanwhile must not have its job recovered again."""
    shared.enqueue(shared.new_job({"command": "true", "id": "o1"}))
    claim = shared.claim("o1", JobState.PENDING)
    claim.release()  # its owner is gone; the job sits in processing/, as the listing saw it
    real_scandir = os.scandir

    def server_listing(path="."):
        # The server's view: the owner moved it on already; only this client's name cache still has it.
        if str(path).endswith("processing"):
            return real_scandir(spool_dir / "held")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", server_listing)
    assert list(orphans(shared)) == []
    monkeypatch.undo()
    assert [c.job.id for c in orphans(shared)] == ["o1"]  # listed on the server too: an orphan


def test_a_record_whose_file_was_moved_on_meanwhile_is_dropped_not_an_error(shared, spool_dir, monkeypatch, caplog):
    shared.enqueue(shared.new_job({"command": "true", "id": "r1"}))
    claim = shared.claim("r1", JobState.PENDING)
    job = claim.job
    job.state = JobState.COMPLETED

    def enoent(src, dst):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), src)

    once(monkeypatch, os, "rename", enoent, when=lambda src, dst: str(dst).endswith("processing/r1.json"))
    assert shared.record(claim, job) is False
    assert claim.fd == -1


def test_a_clone_in_another_pid_namespace_is_refused(spool, spool_dir, run_proc):
    """Two containers from one image share a node name, and here a mount too: the other's
    supervisor is judged by its heartbeat_at (from the shared file), never by a pid that
    means another process in this namespace."""
    from queuectl.registry import namespace_id
    from queuectl.job import now_iso
    me = namespace_id()
    assert me
    info = {"id": "supervisor@hostX:7", "role": "supervisor", "node": "hostX", "host": "hostX", "pid": os.getpid(),
            "pid_start": "1", "dev": os.stat(spool_dir).st_dev, "ns": "0badc0de:4026531999", "since": now_iso(),
            "heartbeat_at": now_iso(), "job": None}
    (spool_dir / "workers" / f"hostX.{os.getpid()}.json").write_text(json.dumps(info))
    r = run_proc("worker", "start", "--burst", env={**os.environ, "QUEUECTL_NODE": "hostX"})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("Error: node name hostX is already in use by another machine (live heartbeat "
                               f"workers/hostX.{os.getpid()}.json"), r.stderr
    # The same heartbeat from this namespace is this machine's own (a dead pid start: gone), not a clone.
    info["ns"] = me
    (spool_dir / "workers" / f"hostX.{os.getpid()}.json").write_text(json.dumps(info))
    r = run_proc("worker", "start", "--burst", env={**os.environ, "QUEUECTL_NODE": "hostX"})
    assert r.returncode == 0, (r.stdout, r.stderr)


def test_poll_interval_is_how_often_an_idle_worker_scans_a_shared_spool(shared, spool_dir, run, monkeypatch):
    from queuectl.worker import RESCAN_INTERVAL, idle_rescan
    assert idle_rescan(shared) == 0.5
    assert run("config", "set", "poll_interval", "0.2").exit_code == 0
    shared.configfile.forget()
    assert idle_rescan(shared) == 0.2
    r = run("config", "set", "poll_interval", "0.01")
    assert r.exit_code != 0 and "poll_interval" in r.output
    monkeypatch.delenv("QUEUECTL_SHARED")
    assert not shared.multihost and idle_rescan(shared) == RESCAN_INTERVAL  # a local disk: inotify and 1 s


def test_a_pending_file_replaced_on_a_shared_spool_is_seen_at_once_and_a_same_tick_edit_once_sure(
        shared, spool_dir, monkeypatch):
    """Where other hosts write, a young file (its stamp under stamps.racy_ns old) already read by this
    host is not read again at every listing: a read is a round trip there. Another file under its
    name, or a change of its size or times, still shows at once; an edit in the same tick of the
    server's clock (all four fields alike: sshfs keeps whole seconds and numbers inodes by path)
    shows once the stamp is sure."""
    from queuectl import indexsync, stamps
    shared.enqueue(shared.new_job({"command": "true", "id": "j", "priority": 1}))
    path = spool_dir / "pending" / "j.json"
    (spool_dir / "tmp" / "new").write_text(path.read_text().replace('"priority": 1', '"priority": 2'))
    os.rename(spool_dir / "tmp" / "new", path)  # another host's `priority`
    shared.sync()
    assert shared.index.lookup("j").priority == 2
    same = os.lstat(path)
    with open(path, "r+") as f:
        f.write(path.read_text().replace('"priority": 2', '"priority": 3'))
    real_stat = os.stat
    monkeypatch.setattr(indexsync.os, "stat", lambda p, **kw: same if p == "j.json" else real_stat(p, **kw))
    shared.sync()
    assert shared.index.lookup("j").priority == 2  # young, and read already: not yet
    later = time.time_ns() + stamps.racy_ns(shared) + 10**9
    monkeypatch.setattr(indexsync.time, "time_ns", lambda: later)
    shared.sync()
    assert shared.index.lookup("j").priority == 3


def test_config_json_read_with_estale_is_read_again(spool, spool_dir, monkeypatch):
    """`config set` on another host replaces config.json; this client's cached name then gives ESTALE
    for a moment (seen as `wait`'s "Error: Stale file handle: .../config.json" on GlusterFS)."""
    from queuectl import config as configmod
    spool.set_config("max_retries", "7")
    path = str(spool_dir / "config.json")
    monkeypatch.setattr(configmod, "open", estale_once(open), raising=False)
    assert configmod.load(path).max_retries == 7
    once(monkeypatch, configmod.os, "stat", estale)
    assert configmod._ident(path) is not None


def estale_once(real):
    state = {"done": False}

    def opener(*a, **k):
        if not state["done"]:
            state["done"] = True
            estale()
        return real(*a, **k)
    return opener


def test_a_stat_of_a_pending_file_with_estale_is_left_to_the_next_sync(shared, spool_dir, monkeypatch):
    """The index's sync stats each known file of pending/: a name moved on under this client's cache
    (ESTALE) is not an error, only not looked at this time."""
    from queuectl import indexsync
    shared.enqueue(shared.new_job({"command": "true", "id": "j"}))
    real = os.stat
    monkeypatch.setattr(indexsync.os, "stat", lambda p, **kw: estale() if p == "j.json" else real(p, **kw))
    shared.sync()  # each of Spool.sync's looks again sees ESTALE there
    monkeypatch.setattr(indexsync.os, "stat", real)
    assert shared.index.lookup("j") is not None
    shared.sync()


def test_enqueue_after_a_parent_another_host_cleaned_is_refused_despite_a_cached_name(
        shared, spool_dir, monkeypatch):
    """GlusterFS (a checker run at seed 303): `enqueue --after P` was accepted 18 ms after another
    host's `clean` removed P. This client still had P's name cached and believed it; the dependent
    then waited for nothing and was cancelled. On a shared spool a parent's name is opened first."""
    from queuectl.errors import InvalidJob
    shared.enqueue(shared.new_job({"id": "p", "command": "true"}))
    os.rename(spool_dir / "pending" / "p.json", spool_dir / "done" / "p.json")
    gone = str(spool_dir / "done" / "p.json")
    os.unlink(gone)  # another host's clean
    real = os.path.lexists
    monkeypatch.setattr(os.path, "lexists", lambda p: p == gone or real(p))  # this client's cached name
    with pytest.raises(InvalidJob, match="after: no job p"):
        shared.enqueue(shared.new_job({"id": "c", "command": "true", "after": ["p"]}))
    assert os.listdir(spool_dir / "pending") == []


def test_clean_on_one_host_keeps_a_parent_another_host_just_gave_a_dependent(shared, spool_dir, tmp_path,
                                                                              monkeypatch):
    """A completed job a dependent still needs is never cleaned: on one host the dependent's
    index row proves it, written under the enqueue lock that `clean` takes. Another host's
    dependent is in its own index only: `clean` on a shared spool reads the files under the lock."""
    from queuectl import retention
    from queuectl.config import Retention
    shared.enqueue(shared.new_job({"id": "p", "command": "true"}))
    os.rename(spool_dir / "pending" / "p.json", spool_dir / "done" / "p.json")
    shared.sync()
    other_host = Spool(str(spool_dir), index_path=str(tmp_path / "other-host.db"))
    real_expired = retention.expired

    def expired_then_a_dependent_elsewhere(*a, **kw):
        found = real_expired(*a, **kw)
        other_host.enqueue(other_host.new_job({"id": "c", "command": "true", "after": ["p"]}))
        return found

    monkeypatch.setattr(retention, "expired", expired_then_a_dependent_elsewhere)
    kept: list = []
    assert list(retention.clean(shared, [JobState.COMPLETED], Retention(0, None), kept=kept)) == []
    assert kept == [("p", "c")] and (spool_dir / "done" / "p.json").exists()
    other_host.close()
