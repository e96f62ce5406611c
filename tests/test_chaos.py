"""Faults while jobs run: kill -9 storms, everything killed at once, a wrecked index,
and many enqueuers racing many workers. Each job appends its id to one file, so
the jobs themselves count how often they ran."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from support import (all_ids_once, assert_check_clean, children, configure, dir_counts,  # noqa: F401
                          enqueue_lines, names, qc, status_json, wait_exit, wait_for,
                          worker_pids)

pytestmark = pytest.mark.slow


def _jobs(out: Path, prefix: str, n: int, then: str = "") -> list[dict]:
    return [{"id": f"{prefix}{i}", "command": f"echo {prefix}{i} >> {out}{then}"} for i in range(n)]


def _runs(out: Path) -> Counter:
    return Counter(out.read_text().split()) if out.exists() else Counter()


def _final_checks(spool: Path, out: Path, ids: set[str], max_doubles: int,
                  status_first: bool = False) -> None:
    all_ids_once(spool, ids)
    if status_first:  # the next command rebuilds whatever the last wreck left
        assert status_json(spool) == dir_counts(spool)
    assert names(spool, "processing") == []
    runs = _runs(out)
    assert set(runs) == ids, "a job that ran is not in the queue, or one never ran"
    doubles = sum(runs.values()) - len(runs)
    assert doubles <= max_doubles, f"{doubles} double executions, allowed {max_doubles}"
    assert_check_clean(spool)
    assert status_json(spool) == dir_counts(spool) == {
        "pending": 0, "processing": 0, "completed": len(ids), "failed": 0, "dead": 0, "held": 0, "cancelled": 0}


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    s = tmp_path / "spool"
    # a killed job is retried at once and never buried for being killed
    configure(s, backoff_max=0.05, max_retries=50, dropin_grace=0.2)
    return s


def test_kill_9_storm_on_workers(spool, tmp_path, procs):
    out = tmp_path / "out"
    # A few ms a job, so the storm (a kill every ~200 ms while the first 600 run)
    # lasts long enough to land several kills however fast the workers are.
    jobs = _jobs(out, "c", 1000, then="; sleep 0.01")
    enqueue_lines(spool, jobs)
    sup = procs.start(spool, "worker", "start", "--count", "4", "--burst", name="sup")
    kills: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        rng = random.Random(4)
        t_end = time.monotonic() + 8
        while not stop.is_set() and time.monotonic() < t_end and len(_runs(out)) < 600:
            # workers registered in SPOOL/workers/, and really children of our supervisor
            pids = [p for p in worker_pids(spool) if p in children(sup.pid)]
            if pids:
                pid = rng.choice(pids)
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
                except ProcessLookupError:
                    pass
            stop.wait(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        code = wait_exit(sup, 120, procs)
    finally:
        stop.set()
        t.join()
    log = procs.output(sup)
    assert code == 0, log[-3000:]
    assert len(kills) >= 3, "the storm never hit"
    assert log.count("exited with code -9; restarting") == len(kills)
    _final_checks(spool, out, {j["id"] for j in jobs}, max_doubles=len(kills))


def test_kill_9_supervisor_and_workers_together(spool, tmp_path, procs):
    out = tmp_path / "out"
    jobs = [{"id": f"k{i}", "command": f"echo k{i} >> {out}; sleep 0.005"} for i in range(400)]
    enqueue_lines(spool, jobs)
    sup = procs.start(spool, "worker", "start", "--count", "4", name="sup")
    wait_for(lambda: len(_runs(out)) >= 100, what="100 jobs ran")
    victims = [sup.pid, *children(sup.pid)]
    os.killpg(sup.pid, signal.SIGKILL)  # the supervisor and its workers, in one blow
    sup.wait()
    wait_for(lambda: not any(os.path.exists(f"/proc/{p}") and _not_zombie(p) for p in victims),
             what="all dead")
    assert len(victims) == 5
    assert 100 <= len(_runs(out)) < 400
    r = qc(spool, "worker", "start", "--count", "4", "--burst", timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    # each killed worker had at most one job in flight
    _final_checks(spool, out, {j["id"] for j in jobs}, max_doubles=4)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_index_wrecked_while_workers_run(spool, tmp_path, procs):
    out = tmp_path / "out"
    jobs = [{"id": f"i{i}", "command": f"echo i{i} >> {out}; sleep 0.01"} for i in range(600)]
    enqueue_lines(spool, jobs)
    sup = procs.start(spool, "worker", "start", "--count", "4", "--burst", name="sup")
    db = spool / "index.db"
    wrecks = 0
    deadline = time.monotonic() + 60
    # wreck it until most jobs are done; the workers must notice and rebuild it by themselves
    while sup.poll() is None and time.monotonic() < deadline and len(_runs(out)) < 500:
        kind = wrecks % 3
        if kind == 0:
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.unlink(f"{db}{suffix}")
                except FileNotFoundError:
                    pass
        elif kind == 1:
            try:
                os.truncate(db, 0)
            except FileNotFoundError:
                pass
        else:
            db.write_bytes(b"garbage " * 1000)
        wrecks += 1
        time.sleep(0.15)
    code = wait_exit(sup, 60, procs)
    log = procs.output(sup)
    assert code == 0, log[-3000:]
    assert wrecks >= 6
    assert "Traceback" not in log, log[log.index("Traceback"):][:3000]
    assert "restarting" not in log, "a worker died of a broken index"
    _final_checks(spool, out, {j["id"] for j in jobs}, max_doubles=0, status_first=True)


ENQUEUE_LOOP = """
import sys
from queuectl.spool import Spool
root, prefix, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
spool = Spool(root)
for i in range(n):
    spool.enqueue(spool.new_job({"id": f"{prefix}{i}", "command": f"echo {prefix}{i} >> {out}"}))
spool.close()
"""


def test_ten_enqueuers_racing_four_workers(spool, tmp_path, procs):
    out = tmp_path / "out"
    sup = procs.start(spool, "worker", "start", "--count", "4", name="sup")
    wait_for(lambda: len(worker_pids(spool)) == 4, what="4 workers up")
    ids: set[str] = set()
    enqueuers = []
    for p in range(10):
        prefix = f"p{p}-"
        ids |= {f"{prefix}{i}" for i in range(200)}
        if p % 2 == 0:  # one bulk enqueue of 200 through the CLI
            data = "\n".join(json.dumps(j) for j in _jobs(out, prefix, 200))
            e = subprocess.Popen([sys.executable, "-m", "queuectl", "--spool", str(spool), "enqueue",
                                  "--quiet", "--file", "-"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            e.stdin.write(data)
            e.stdin.close()
        else:  # 200 separate enqueues, one at a time
            e = subprocess.Popen([sys.executable, "-c", ENQUEUE_LOOP, str(spool), prefix, str(out), "200"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        enqueuers.append(e)
    # check while everything moves: a job moving on is never mistaken for a
    # duplicate, an orphan or a bad file (the index may lag: that is its job)
    seen_kinds: set[str] = set()
    for _ in range(3):
        r = qc(spool, "check", "--json")
        assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr
        seen_kinds |= {p["kind"] for p in json.loads(r.stdout)["problems"]}
    assert seen_kinds <= {"index"}, seen_kinds
    for e in enqueuers:
        try:
            e.wait(timeout=60)
        except subprocess.TimeoutExpired:
            e.kill()
        assert e.returncode == 0, e.stderr.read()
    wait_for(lambda: len(names(spool, "done")) == 2000, timeout=60, what="2000 jobs done")
    os.kill(sup.pid, signal.SIGTERM)
    assert wait_exit(sup, 30, procs) == 0
    _final_checks(spool, out, ids, max_doubles=0)
