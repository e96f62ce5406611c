"""Many hosts, the parts a local disk can show: node names, liveness by heartbeat_at,
a lost claim's result dropped, no final rename replacing a file, filesystem types,
the local index of a network spool, and what `check` ignores."""

from __future__ import annotations

import json
import os
import time

import pytest

from queuectl import hosts, registry
from queuectl.errors import WorkerError
from queuectl.job import Job, JobState, now_iso
from queuectl.recovery import orphans, recover_orphan
from queuectl.spool import Spool


@pytest.fixture
def spool(spool_dir):
    s = Spool(str(spool_dir))
    yield s
    s.close()


def add(spool: Spool, **spec) -> Job:
    return spool.enqueue(spool.new_job(spec))


def heartbeat(spool_dir, node: str, pid: int, *, age: float, job: str | None = None, claim: str | None = None):
    info = {"id": "worker-0", "role": "worker", "node": node, "host": node, "pid": pid,
            "pid_start": "1", "since": now_iso(), "heartbeat_at": now_iso(time.time() - age), "job": job}
    path = spool_dir / "workers" / f"{node}.{pid}.json"
    path.write_text(json.dumps(info))
    if claim is not None:
        (spool_dir / "workers" / f"{node}.{pid}.claim").write_text(f"{claim} {time.time():.3f}".ljust(160))
    return path


def test_node_name_defaults_to_hostname_and_machine_id(monkeypatch):
    monkeypatch.delenv("QUEUECTL_NODE", raising=False)
    name = registry.check_node(registry.node_name())
    if os.path.exists("/etc/machine-id"):
        with open("/etc/machine-id") as f:
            assert name.endswith("-" + f.read().strip()[:8])
    monkeypatch.setenv("QUEUECTL_NODE", "hostA")
    assert registry.node_name() == "hostA"
    for bad in ("", "a/b", ".hidden", "x" * 65, "a b"):
        with pytest.raises(WorkerError):
            registry.check_node(bad)


def test_another_node_is_alive_by_its_heartbeat_at_never_by_the_file_mtime(spool, spool_dir):
    cfg = spool.config
    fresh = heartbeat(spool_dir, "elsewhere", 4242, age=1)
    old = time.time() - 3600
    os.utime(fresh, (old, old))  # a cached, coarse mtime says nothing
    stale = heartbeat(spool_dir, "faraway", 4343, age=cfg.lease + cfg.clock_skew + 1)
    os.utime(stale, None)  # a fresh mtime says nothing either
    by_node = {w.node: w for w in registry.read_workers(spool)}
    assert by_node["elsewhere"].alive and not by_node["elsewhere"].local
    assert not by_node["faraway"].alive
    assert by_node["faraway"].age == pytest.approx(cfg.lease + cfg.clock_skew + 1, abs=1)


def test_a_claim_record_of_a_live_remote_worker_protects_a_short_job(spool, spool_dir):
    add(spool, id="j", command="true")
    claim = spool.claim("j", JobState.PENDING)
    claim.release()  # the lock is free, as another host's looks from here
    heartbeat(spool_dir, "elsewhere", 4242, age=0.5, claim="j")
    assert list(orphans(spool)) == []
    # Its heartbeat lapses: the job is an orphan at once, whatever its file times say.
    heartbeat(spool_dir, "elsewhere", 4242, age=spool.config.lease + spool.config.clock_skew + 1, claim="j")
    [orphan] = list(orphans(spool))
    orphan.release()
    assert orphan.job.id == "j"


def test_a_dead_remote_node_is_pruned_after_a_few_leases(spool, spool_dir):
    from queuectl.recovery import prune_dead_workers
    cfg = spool.config
    recent = heartbeat(spool_dir, "elsewhere", 4242, age=cfg.lease + cfg.clock_skew + 1)
    gone = heartbeat(spool_dir, "faraway", 4343, age=4 * (cfg.lease + cfg.clock_skew), claim="x")
    prune_dead_workers(spool)
    assert recent.exists()
    assert not gone.exists() and not gone.with_suffix(".claim").exists()


def test_a_stolen_claim_never_comes_back(spool, spool_dir, caplog):
    add(spool, id="j", command="true")
    mine = spool.claim("j", JobState.PENDING)
    # Another host thought this worker dead and recovered the job (a new history entry)...
    thief = spool.adopt(os.open(spool_dir / "processing" / "j.json", os.O_RDONLY), JobState.PROCESSING, "j")
    assert recover_orphan(spool, thief, "worker-9") is not None
    assert (spool_dir / "failed" / "j.json").exists()
    # ...so the owner's outcome is dropped, not recreated beside the thief's copy.
    job = mine.job
    job.state = JobState.COMPLETED
    job.history.append({"attempt": 1, "exit_code": 0})
    assert spool.record(mine, job) is False
    assert not (spool_dir / "done" / "j.json").exists()
    assert not (spool_dir / "processing" / "j.json").exists()
    assert "job j was moved on by another worker meanwhile: dropping this worker's result" in caplog.text


def test_an_edit_in_place_keeps_the_claim(spool, spool_dir):
    add(spool, id="j", command="true")
    claim = spool.claim("j", JobState.PENDING)
    path = spool_dir / "processing" / "j.json"
    data = json.loads(path.read_text())
    data["command"] = "echo edited"
    tmp = spool_dir / "tmp" / "edit"
    tmp.write_text(json.dumps(data))
    os.rename(tmp, path)  # sed -i: a new inode, the same history
    job = claim.job
    job.state = JobState.COMPLETED
    assert spool.record(claim, job) is True
    assert (spool_dir / "done" / "j.json").exists()


def test_the_final_move_never_replaces_a_file(spool, spool_dir, caplog):
    add(spool, id="j", command="true")
    claim = spool.claim("j", JobState.PENDING)
    (spool_dir / "done" / "j.json").write_text("the other copy")
    job = claim.job
    job.state = JobState.COMPLETED
    assert spool.record(claim, job) is False
    assert (spool_dir / "done" / "j.json").read_text() == "the other copy"
    assert not (spool_dir / "processing" / "j.json").exists()  # one job in one directory
    assert "job j is already in done/" in caplog.text


def test_filesystem_types():
    assert hosts.fs_type("/proc") == "proc"
    assert hosts.fs_type("/nonexistent/spool/below") == hosts.fs_type("/")
    for kind in ("nfs", "nfs4", "fuse.sshfs", "cifs", "smb3", "ceph", "lustre", "gpfs", "9p"):
        assert hosts.is_network_fs(kind), kind
    for kind in ("ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs"):
        assert not hosts.is_network_fs(kind), kind


def test_a_network_spool_keeps_its_index_on_local_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("QUEUECTL_NODE", "hostA")
    root = tmp_path / "spool"
    spool = Spool(str(root))
    spool.network = True  # as fs_type() would say on NFS or sshfs
    add(spool, id="j", command="true")
    spool_id = (root / ".id").read_text().strip()
    local = tmp_path / "cache" / "queuectl" / f"{spool_id}-hostA" / "index.db"
    assert spool.indexes.path == str(local) and local.exists()
    assert not (root / "index.db").exists()
    assert spool.index.counts()["pending"] == 1
    spool.close()
    # The id is made once: another node finds the same one.
    assert hosts.spool_id(str(root)) == spool_id


def test_index_option_and_config(run, spool_dir, tmp_path):
    chosen = tmp_path / "elsewhere" / "my.db"
    chosen.parent.mkdir()
    assert run("--index", chosen, "enqueue", "true").exit_code == 0
    assert chosen.exists() and not (spool_dir / "index.db").exists()
    assert run("config", "set", "shared", "true").stdout == "shared = true\n"
    assert run("config", "get", "clock_skew").stdout == "5\n"


def test_check_ignores_network_filesystem_leftovers(run, spool_dir):
    run("enqueue", "--id", "a", "true")
    for d in ("done", "tmp", "pending", "processing"):
        (spool_dir / d / ".fuse_hidden0000001a00000001").write_text("x")
        (spool_dir / d / ".nfs000000000012345600000001").write_text("x")
    r = run("check")
    assert r.exit_code == 0 and r.stdout.startswith("ok:"), r.stdout


@pytest.mark.parametrize("text", ["../../etc", "a/b", "x" * 65, "é"])
def test_a_spool_id_that_is_not_a_name_is_refused(tmp_path, text):
    """SPOOL/.id names a directory of the local cache: a path in it must never reach the disk."""
    from queuectl.errors import SpoolError
    from queuectl.hosts import spool_id
    (tmp_path / "tmp").mkdir()
    (tmp_path / ".id").write_text(text + "\n")
    with pytest.raises(SpoolError, match="not a spool id"):
        spool_id(str(tmp_path))


def test_a_job_another_host_claimed_is_tried_once_until_the_next_scan(spool_dir, monkeypatch):
    """A node's index learns of other hosts' claims only by listing the spool: a worker whose
    claim finds the job gone keeps that id out of its candidates until the next scan, rather
    than trying it again at each refetch from the index (and then waiting poll_interval)."""
    from queuectl import worker as workermod
    from queuectl.registry import Heartbeat

    monkeypatch.setenv("QUEUECTL_SHARED", "1")
    s = Spool(str(spool_dir))
    for job_id in ("a", "b"):
        add(s, id=job_id, command="true")
    s.sync()
    s.close()
    # Another host claims a: its file leaves pending/, this node's index still lists it.
    os.rename(spool_dir / "pending" / "a.json", spool_dir / "processing" / "a.json")
    w = workermod.Worker(str(spool_dir), "worker-0")
    w.spool = Spool(str(spool_dir), worker=True)
    assert w.spool.multihost
    w.hb = Heartbeat(w.spool, "worker", "worker-0@test")
    tried = []
    real = w.spool.claim
    monkeypatch.setattr(w.spool, "claim", lambda job_id, *a, **k: (tried.append(job_id), real(job_id, *a, **k))[1])
    listed = ["a", "b"]  # what this node's index holds as pending, best first

    def fake_candidates(spool, queues, skip, lane, lanes, taken=frozenset()):
        return [(i, JobState.PENDING, "default", 0) for i in reversed(listed) if i not in taken]

    monkeypatch.setattr(workermod, "candidates", fake_candidates)
    try:
        first = w._next_claim()
        assert first is not None and first.job.id == "b"
        first.release()
        os.rename(spool_dir / "processing" / "b.json", spool_dir / "done" / "b.json")  # b ran
        listed.remove("b")
        assert w._next_claim() is None
        assert tried.count("a") == 1 and w.taken == {"a"}
    finally:
        w.hb.remove()
        w.spool.close()
