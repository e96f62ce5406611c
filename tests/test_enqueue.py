"""Enqueue: atomic and durable writes, bulk enqueue, and several processes at once."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

import queuectl.spool as spoolmod
from queuectl.errors import DuplicateJob, SpoolError
from queuectl.job import Job
from queuectl.spool import Spool


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # pragma: no cover - no /proc
        return f"fd {fd}"


def _jsonl(n: int, prefix: str, command: str = "echo {i}") -> str:
    return "".join(json.dumps({"id": f"{prefix}{i}", "command": command.format(i=i)}) + "\n"
                   for i in range(n))


def _fail_on_call(n: int, err: int = errno.ENOSPC, real=None):
    """A replacement for an os function that raises OSError(err) on its n-th call."""
    calls = {"n": 0}

    def fake(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= n:
            raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)

    return fake


def _assert_nothing_written(spool_dir, run):
    assert os.listdir(spool_dir / "pending") == []
    assert os.listdir(spool_dir / "tmp") == []
    assert json.loads(run("status", "--json").stdout)["pending"] == 0


# -- atomic write ----------------------------------------------------------------

@pytest.mark.parametrize("func", ["write", "fsync"])
def test_enospc_during_single_enqueue_writes_nothing(run, spool_dir, monkeypatch, func):
    run("status")
    monkeypatch.setattr(os, func, _fail_on_call(1, real=getattr(os, func)))
    r = run("enqueue", "--id", "job1", "echo hi")
    monkeypatch.undo()
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == "Error: no space left on device while writing a job file\n"
    _assert_nothing_written(spool_dir, run)
    # and the id is still free
    assert run("enqueue", "--id", "job1", "echo hi").stdout == "enqueued job job1\n"


def test_enospc_on_the_rename_into_pending_writes_nothing(run, spool_dir, monkeypatch):
    run("status")
    monkeypatch.setattr(os, "link", _fail_on_call(1, real=os.link))
    monkeypatch.setattr(os, "rename", _fail_on_call(1, real=os.rename))
    r = run("enqueue", "--id", "job1", "echo hi")
    monkeypatch.undo()
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: no space left on device")
    _assert_nothing_written(spool_dir, run)


def test_other_write_errors_are_reported(run, spool_dir, monkeypatch):
    run("status")
    monkeypatch.setattr(os, "write", _fail_on_call(1, err=errno.EIO, real=os.write))
    r = run("enqueue", "echo hi")
    monkeypatch.undo()
    assert (r.exit_code, r.stderr) == (1, "Error: writing a job file: Input/output error\n")
    _assert_nothing_written(spool_dir, run)


@pytest.mark.parametrize("n, fail_at", [(3, 3), (40, 30)])
def test_enospc_during_bulk_enqueue_writes_nothing(run, spool_dir, monkeypatch, n, fail_at):
    run("status")
    monkeypatch.setattr(os, "write", _fail_on_call(fail_at, real=os.write))
    r = run("enqueue", "--file", "-", input=_jsonl(n, "b"))
    monkeypatch.undo()
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == "Error: no space left on device while writing a job file\n"
    _assert_nothing_written(spool_dir, run)


def test_partial_file_never_visible_in_pending(tmp_path, monkeypatch):
    """While the bytes are being written the file is only in tmp/, under a dot name."""
    spool = Spool(str(tmp_path / "spool"))
    seen = []
    real_write = os.write

    def spy(fd, data):
        seen.append((_fd_path(fd), sorted(os.listdir(tmp_path / "spool" / "pending"))))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    spool.enqueue(Job.from_spec({"id": "x", "command": "true"}))
    monkeypatch.undo()
    assert seen
    for path, pending in seen:
        assert os.path.dirname(path) == str(tmp_path / "spool" / "tmp")
        assert os.path.basename(path).startswith(".") and path.endswith(".tmp")
        assert pending == []
    assert os.listdir(tmp_path / "spool" / "pending") == ["x.json"]
    spool.close()


# -- durability ---------------------------------------------------------------------

def _trace(monkeypatch, events):
    real_fsync, real_link, real_rename = os.fsync, os.link, os.rename

    def fsync(fd):
        events.append(("fsync", _fd_path(fd)))
        return real_fsync(fd)

    def link(src, dst, *a, **k):
        events.append(("place", str(dst)))
        return real_link(src, dst, *a, **k)

    def rename(src, dst, *a, **k):
        events.append(("place", str(dst)))
        return real_rename(src, dst, *a, **k)

    def noreplace(src, dst):
        events.append(("place", str(dst)))
        return real_noreplace(src, dst)

    def syncfs(path):
        events.append(("syncfs", path))

    real_noreplace = spoolmod.rename_noreplace
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(spoolmod, "syncfs", syncfs)
    if real_noreplace is not None:
        monkeypatch.setattr(spoolmod, "rename_noreplace", noreplace)


def test_single_enqueue_fsyncs_file_then_renames_then_fsyncs_directory(tmp_path, monkeypatch):
    root = tmp_path / "spool"
    spool = Spool(str(root))
    spool.sync()
    events = []
    _trace(monkeypatch, events)
    spool.enqueue(Job.from_spec({"id": "d1", "command": "true"}))
    monkeypatch.undo()
    pending = str(root / "pending")
    file_sync = next(i for i, e in enumerate(events) if e[0] == "fsync" and e[1].startswith(str(root / "tmp")))
    place = events.index(("place", f"{pending}/d1.json"))
    dir_sync = max(i for i, e in enumerate(events) if e == ("fsync", pending))
    assert file_sync < place < dir_sync
    spool.close()


@pytest.mark.parametrize("n", [5, 40])
def test_bulk_enqueue_flushes_before_renaming_and_fsyncs_directory(tmp_path, monkeypatch, n):
    root = tmp_path / "spool"
    spool = Spool(str(root))
    spool.sync()
    events = []
    _trace(monkeypatch, events)
    spool.enqueue_many([Job.from_spec({"id": f"b{i}", "command": "true"}) for i in range(n)])
    monkeypatch.undo()
    pending = str(root / "pending")
    places = [i for i, e in enumerate(events) if e[0] == "place" and e[1].startswith(pending + "/")]
    assert len(places) == n
    flushes = [i for i, e in enumerate(events)
               if e[0] == "syncfs" or (e[0] == "fsync" and e[1].startswith(str(root / "tmp") + "/"))]
    assert flushes and max(flushes) < min(places), events
    assert any(i > max(places) for i, e in enumerate(events) if e == ("fsync", pending))
    assert sorted(os.listdir(root / "pending")) == sorted(f"b{i}.json" for i in range(n))
    assert os.listdir(root / "tmp") == []
    spool.close()


# -- bulk -------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 16, 17, 300])
def test_bulk_enqueue_sizes(run, spool_dir, n):
    r = run("enqueue", "--file", "-", input=_jsonl(n, "k"))
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [f"enqueued job k{i}" for i in range(n)]
    assert len(os.listdir(spool_dir / "pending")) == n
    assert os.listdir(spool_dir / "tmp") == []
    assert json.loads(run("status", "--json").stdout)["pending"] == n
    assert [line.split(" - ")[0] for line in run("list").stdout.splitlines()] == [f"k{i}" for i in range(n)]


@pytest.mark.parametrize("n", [5, 40])
def test_bulk_duplicates_of_existing_jobs_enqueue_none(run, spool_dir, n):
    run("enqueue", "--id", "K3", "true")
    os.rename(spool_dir / "pending" / "K3.json", spool_dir / "failed" / "K3.json")
    r = run("enqueue", "--file", "-", input=_jsonl(n, "k"))
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == "Error: job K3 already exists (in failed/)\n"
    assert os.listdir(spool_dir / "pending") == [] and os.listdir(spool_dir / "tmp") == []


@pytest.mark.parametrize("n", [5, 40])
def test_bulk_duplicate_inside_the_file(run, spool_dir, n):
    text = _jsonl(n, "k") + json.dumps({"id": "K1", "command": "again"}) + "\n"
    r = run("enqueue", "--file", "-", input=text)
    assert (r.exit_code, r.stderr) == (1, "Error: job K1 appears twice\n")
    assert os.listdir(spool_dir / "pending") == []


def test_bulk_skip_invalid_many(run, spool_dir):
    lines = [json.dumps({"id": f"s{i}", "command": "true" if i % 5 else ""}) for i in range(50)]
    r = run("enqueue", "--skip-invalid", "--quiet", "--file", "-", input="\n".join(lines))
    assert (r.exit_code, r.stdout) == (0, "enqueued 40 jobs\n")
    assert len(r.stderr.splitlines()) == 10
    assert all(line.startswith("skipped line ") and line.endswith(": command is empty")
               for line in r.stderr.splitlines())
    assert len(os.listdir(spool_dir / "pending")) == 40


def test_core_enqueue_refuses_a_taken_id(tmp_path):
    spool = Spool(str(tmp_path / "spool"))
    spool.enqueue(Job.from_spec({"id": "a", "command": "true"}))
    with pytest.raises(DuplicateJob, match=r"^job a already exists \(in pending/\)$"):
        spool.enqueue(Job.from_spec({"id": "a", "command": "other"}))
    assert json.loads((tmp_path / "spool" / "pending" / "a.json").read_text())["command"] == "true"
    spool.close()


def test_spool_error_when_spool_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError, match="cannot create spool"):
        Spool(str(blocker / "spool"))


def test_cli_error_when_spool_cannot_be_created(run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run("status", spool=blocker / "spool")
    assert r.exit_code == 1
    assert r.stderr.startswith(f"Error: cannot create spool at {blocker / 'spool'}: ")


# -- several processes at once ------------------------------------------------------------

# Each process enqueues its ids one at a time through the CLI code; per id it
# prints the CLI's own "enqueued job ID" line, or "dup ID". Running the CLI in-process in a loop keeps the
# test fast while every process still has its own connections, locks and fds.
DRIVER = r"""
import sys
import click
from queuectl.cli import main
spool, tag, ids = sys.argv[1], sys.argv[2], sys.argv[3:]
for job_id in ids:
    try:
        main(["--spool", spool, "enqueue", "--id", job_id, f"echo {tag} {job_id}"],
             standalone_mode=False)
    except click.ClickException as e:
        if "already exists" not in e.format_message():
            print("error", job_id, e.format_message(), flush=True)
            continue
        print("dup", job_id, flush=True)
    else:
        pass
"""


def _drivers(spool_dir, id_lists):
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, str(spool_dir), f"p{k}", *ids],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, ids in enumerate(id_lists)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "Traceback" not in err, err
        outs.append(out)
    return outs


def _check_consistent(run, spool_dir, expected_ids):
    on_disk = sorted(n[:-5] for n in os.listdir(spool_dir / "pending"))
    assert on_disk == sorted(expected_ids)
    assert os.listdir(spool_dir / "tmp") == []
    assert os.listdir(spool_dir / "rejected") == []  # no racing enqueue mistaken for a bad drop-in
    for job_id in expected_ids:  # every file whole and valid
        rec = json.loads((spool_dir / "pending" / f"{job_id}.json").read_text())
        assert rec["id"] == job_id and rec["state"] == "pending"
    # the index agrees without a reindex
    status = json.loads(run("status", "--json").stdout)
    assert status == {"pending": len(expected_ids), "processing": 0, "completed": 0, "failed": 0, "dead": 0, "held": 0, "cancelled": 0,
                      "workers": 0, "spool": str(spool_dir)}
    listed = [r["id"] for r in json.loads(run("list", "--json").stdout)]
    assert sorted(listed) == sorted(expected_ids)
    assert run("reindex").stdout == f"reindexed: pending {len(expected_ids)}, processing 0, completed 0, failed 0, dead 0, held 0, cancelled 0\n"


@pytest.mark.slow
def test_four_processes_distinct_ids(run, spool_dir):
    id_lists = [[f"p{k}-{i}" for i in range(50)] for k in range(4)]
    outs = _drivers(spool_dir, id_lists)  # brand-new spool: they also race to create it
    for out, ids in zip(outs, id_lists):
        assert out.splitlines() == [f"enqueued job {i}" for i in ids]
    _check_consistent(run, spool_dir, [i for ids in id_lists for i in ids])


@pytest.mark.slow
def test_four_processes_racing_on_the_same_ids(run, spool_dir):
    ids = [f"same-{i}" for i in range(50)]
    run("status")
    # different orders, so the races happen at different points of each process's loop
    id_lists = [ids, ids[::-1], ids[25:] + ids[:25], ids[::2] + ids[1::2]]
    outs = _drivers(spool_dir, id_lists)
    assert os.listdir(spool_dir / "rejected") == []
    dups = [{line.split()[1] for line in out.splitlines() if line.startswith("dup ")} for out in outs]
    oks = [{line.split()[2] for line in out.splitlines() if line.startswith("enqueued job ")} for out in outs]
    for k, id_list in enumerate(id_lists):  # every attempt answered exactly once
        assert sorted(dups[k] | oks[k]) == sorted(id_list) and not dups[k] & oks[k]
    assert not any(line.startswith("error") for out in outs for line in out.splitlines()), outs
    winners = {}
    for k, id_list in enumerate(id_lists):
        for job_id in id_list:
            if job_id not in dups[k]:
                assert job_id not in winners, f"{job_id} enqueued by p{winners[job_id]} and p{k}"
                winners[job_id] = k
    assert sorted(winners) == sorted(ids)  # exactly one success per id
    _check_consistent(run, spool_dir, ids)
    for job_id, k in winners.items():  # and the file on disk is the winner's
        rec = json.loads((spool_dir / "pending" / f"{job_id}.json").read_text())
        assert rec["command"] == f"echo p{k} {job_id}"


@pytest.mark.slow
def test_four_processes_racing_on_ids_differing_only_in_case(run, spool_dir):
    ids = [f"case-{i}" for i in range(30)]
    run("status")
    spellings = [str.lower, str.upper, str.title, lambda s: s[:1].upper() + s[1:]]
    id_lists = [[f(i) for i in ids] for f in spellings]
    outs = _drivers(spool_dir, id_lists)
    assert not any(line.startswith("error") for out in outs for line in out.splitlines()), outs
    on_disk = [n[:-5].lower() for n in os.listdir(spool_dir / "pending")]
    assert sorted(on_disk) == sorted(ids), "an id was enqueued twice in different case"
    assert json.loads(run("status", "--json").stdout)["pending"] == len(ids)


@pytest.mark.slow
def test_four_bulk_enqueues_at_once(run_proc, start_proc, run, spool_dir, tmp_path):
    files = []
    for k in range(4):
        f = tmp_path / f"jobs{k}.jsonl"
        f.write_text(_jsonl(50, f"bulk{k}-"))
        files.append(f)
    procs = [start_proc("enqueue", "--quiet", "--file", f) for f in files]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert (p.returncode, out) == (0, "enqueued 50 jobs\n"), err
        assert "Traceback" not in err
    _check_consistent(run, spool_dir, [f"bulk{k}-{i}" for k in range(4) for i in range(50)])


@pytest.mark.slow
def test_four_bulk_enqueues_racing_on_the_same_ids(start_proc, run, spool_dir, tmp_path):
    run("status")
    f = tmp_path / "same.jsonl"
    f.write_text(_jsonl(50, "s"))
    procs = [start_proc("enqueue", "--quiet", "--file", f) for _ in range(4)]
    results = [(p.communicate(timeout=120), p.returncode) for p in procs]
    for (out, err), rc in results:
        assert "Traceback" not in err, err
        assert rc in (0, 1)
        if rc == 1:
            assert err.startswith("Error: job s") and "already exists" in err
    # each id exactly once on disk and in the index, whatever the interleaving
    _check_consistent(run, spool_dir, [f"s{i}" for i in range(50)])


@pytest.mark.slow
def test_enqueue_while_another_process_lists(start_proc, run, spool_dir):
    run("status")
    procs = [start_proc("enqueue", "--quiet", "--file", "-", stdin=subprocess.PIPE) for _ in range(2)]
    readers = [start_proc("status", "--json") for _ in range(4)]
    for k, p in enumerate(procs):
        out, err = p.communicate(_jsonl(40, f"w{k}-"), timeout=120)
        assert (p.returncode, out) == (0, "enqueued 40 jobs\n"), err
    for p in readers:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "Traceback" not in err, err
        assert 0 <= json.loads(out)["pending"] <= 80
    _check_consistent(run, spool_dir, [f"w{k}-{i}" for k in range(2) for i in range(40)])


def test_tmp_names_are_unique_and_differ_after_fork(tmp_path):
    from queuectl import fsio
    names = {fsio.tmp_name(str(tmp_path)) for _ in range(100)}
    assert len(names) == 100
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, fsio.tmp_name(str(tmp_path)).encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 4096).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert f".{pid}." in child and child not in names
    assert os.path.basename(child).startswith(".") and child.endswith(".tmp")
