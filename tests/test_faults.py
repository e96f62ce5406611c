"""Faults: kill -9 of a worker or of the supervisor, graceful stop, killed stops.

Each test runs a real supervisor in its own session (the `bg` fixture kills
its process group at teardown) and polls the spool with deadlines.
Delivery is at-least-once: a job whose worker was killed may run again.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from queuectl.runner import EXIT_KILLED_BY_STOP

from support import unstamped, cli, heartbeats, job_file, pid_gone, read_pids, wait_for, where  # noqa: F401

pytestmark = pytest.mark.slow


def lines_in(path) -> list[str]:
    return unstamped(path.read_text()).splitlines() if path.exists() else []


@pytest.fixture
def strays(tmp_path):
    """A file jobs append their shell's pid to; whatever still runs is killed at teardown."""
    path = tmp_path / "job-pids"
    yield path
    for pid in read_pids(path):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def test_kill_9_worker_mid_job_is_recovered_and_completes(spool_dir, tmp_path, bg, strays):
    cli(spool_dir, "config", "set", "backoff_max", "0.05")
    started, marker = tmp_path / "started", tmp_path / "marker"
    cli(spool_dir, "enqueue", "--id", "long",
        f"echo $$ >> {strays}; echo start >> {started}; sleep 1; echo done >> {marker}")
    sup = bg("worker", "start", "--count", "1")
    wait_for(lambda: lines_in(started), 10, what="job started")
    # a job running for a moment is in its worker's heartbeat, with the shell's pid
    wait_for(lambda: [h.get("job_pid") for h in heartbeats(spool_dir, "worker")] == [read_pids(strays)[0]],
             10, what="job pid in the heartbeat")
    [hb] = heartbeats(spool_dir, "worker")
    victim = hb["pid"]
    assert sup.started() == {"worker-0": victim}  # the heartbeat and the `started PID=` line agree
    os.kill(victim, signal.SIGKILL)

    wait_for(lambda: (spool_dir / "done" / "long.json").exists(), 15, what="long completed")
    done = job_file(spool_dir, "done", "long")
    assert [(h["attempt"], h["error"]) for h in done["history"]] == [(1, "worker died"), (2, None)]
    assert done["attempts"] == 2
    assert lines_in(started) == ["start", "start"]
    # the orphaned first run was killed before the retry started: only the retry finished
    assert lines_in(marker) == ["done"]
    assert pid_gone(read_pids(strays)[0])
    assert where(spool_dir) == {"long": ["done"]}
    out = sup.lines()
    assert f"[supervisor] worker-0 (PID {victim}) exited with code -9; restarting" in out
    assert "[worker-0] recovered long (worker died, attempt 1/4): retry in 0.050s" in out
    assert sup.started()["worker-0"] != victim
    # the restarted worker is alive and registered
    assert [w["pid"] for w in heartbeats(spool_dir, "worker")] == [sup.started()["worker-0"]]

    sup.signal(signal.SIGTERM)
    assert sup.wait(10) == 0
    assert sup.stderr() == ""


def test_a_killed_workers_command_keeps_its_queue_slot_until_it_is_gone(spool_dir, tmp_path, bg, strays):
    """queue.gpu.concurrency 1: after a kill -9 of the worker running a gpu job, its command runs on
    until recovery kills it, and the queue's next job must not start beside it. Each job holds a
    probe lock while it runs; a job that finds it taken ran at the same time as another."""
    cli(spool_dir, "config", "set", "backoff_max", "0.05")
    cli(spool_dir, "config", "set", "queue.gpu.concurrency", "1")
    probe, started, overlaps = tmp_path / "probe", tmp_path / "started", tmp_path / "overlaps"
    job = (f"echo $$ >> {strays}; flock -n {probe} -c 'echo $QUEUECTL_JOB_ID >> {started}; sleep 1.5' "
           f"|| echo $QUEUECTL_JOB_ID >> {overlaps}")
    cli(spool_dir, "enqueue", "--queue", "gpu", "--id", "g1", job)
    sup = bg("worker", "start", "--count", "2")
    wait_for(lambda: lines_in(started) == ["g1"], 15, what="g1 started")
    cli(spool_dir, "enqueue", "--queue", "gpu", "--id", "g2", job)
    [victim] = wait_for(lambda: [h["pid"] for h in heartbeats(spool_dir, "worker") if h.get("job") == "g1"], 10,
                        what="g1's worker in its heartbeat")
    os.kill(victim, signal.SIGKILL)  # its sibling is idle, waiting for the gpu slot
    wait_for(lambda: (spool_dir / "done" / "g1.json").exists() and (spool_dir / "done" / "g2.json").exists(),
             30, what="both gpu jobs completed")
    assert not overlaps.exists(), overlaps.read_text()
    assert sorted(lines_in(started)) == ["g1", "g1", "g2"]  # g1 again: its first run was killed
    assert [h["error"] for h in job_file(spool_dir, "done", "g1")["history"]] == ["worker died", None]
    sup.signal(signal.SIGTERM)
    assert sup.wait(10) == 0


def test_a_command_that_outlives_its_worker_and_supervisor_still_holds_its_job(spool_dir, tmp_path, bg, strays):
    """kill -9 of the supervisor, then of the worker, while the job's command runs on (its own
    session): nobody is left on this host to kill the command, as on a host cut off from a shared
    spool. The command inherited the claim's lock, so no recovery (another host's, here this
    test's) takes the job until the command is gone: it never runs twice at once."""
    from queuectl.recovery import orphans
    from queuectl.spool import Spool
    started, marker = tmp_path / "started", tmp_path / "marker"
    cli(spool_dir, "enqueue", "--id", "long",
        f"echo $$ >> {strays}; echo start >> {started}; sleep 1.5; echo done >> {marker}")
    sup = bg("worker", "start", "--count", "1")
    wait_for(lambda: [h.get("job_pid") for h in heartbeats(spool_dir, "worker")] == read_pids(strays)[:1] != [],
             10, what="job pid in the heartbeat")
    [hb] = heartbeats(spool_dir, "worker")
    os.kill(sup.pid, signal.SIGKILL)
    os.kill(hb["pid"], signal.SIGKILL)
    wait_for(lambda: pid_gone(hb["pid"]), 10, what="the worker gone")
    spool = Spool(str(spool_dir))
    try:
        deadline = time.monotonic() + 15
        while not lines_in(marker):
            assert [c.job.id for c in orphans(spool)] == [], "recovered while its command still runs"
            assert time.monotonic() < deadline, "the command never finished"
            time.sleep(0.05)
        wait_for(lambda: pid_gone(read_pids(strays)[0]), 10, what="the command gone")
        claims = wait_for(lambda: list(orphans(spool)), 10, what="the job recoverable once its command is gone")
        assert [c.job.id for c in claims] == ["long"]
        for c in claims:
            c.release()
    finally:
        spool.close()


@pytest.mark.parametrize("victims", ["supervisor", "supervisor+workers"])
def test_kill_9_supervisor_mid_run_then_restart_finishes_everything(spool_dir, tmp_path, bg, strays, victims):
    cli(spool_dir, "config", "set", "backoff_max", "0.05")
    out = tmp_path / "out"
    ids = [f"j{i:02d}" for i in range(12)]
    cli(spool_dir, "enqueue", "--file", "-", input="".join(
        json.dumps({"id": i, "command": f"echo $$ >> {strays}; sleep 0.4; echo {i} >> {out}"}) + "\n"
        for i in ids))
    sup = bg("worker", "start", "--count", "2")
    wait_for(lambda: len(lines_in(out)) >= 2 and os.listdir(spool_dir / "processing"), 20,
             what="some jobs done, some running")
    if victims == "supervisor":
        os.kill(sup.pid, signal.SIGKILL)  # its workers finish their job and leave
    else:
        os.killpg(sup.pid, signal.SIGKILL)  # every queuectl process at once; jobs keep running
    sup.proc.wait(5)

    r = cli(spool_dir, "worker", "start", "--count", "2", "--burst", timeout=60)
    assert r.stderr == ""
    found = where(spool_dir)
    assert found == {i: ["done"] for i in ids}  # every job, in exactly one directory
    assert os.listdir(spool_dir / "processing") == []
    assert set(lines_in(out)) == set(ids)  # at least once
    recovered = [i for i in ids if any(h.get("error") == "worker died"
                                       for h in job_file(spool_dir, "done", i)["history"])]
    if victims == "supervisor":
        assert recovered == []  # its workers were told (PDEATHSIG) and finished their jobs
    else:
        assert recovered  # jobs of the killed workers were counted as failed attempts and rerun
        assert any(f"recovered {i} (worker died" in r.stdout for i in recovered)


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_graceful_stop_lets_the_running_job_finish(spool_dir, tmp_path, bg, strays, how):
    marker, other = tmp_path / "marker", tmp_path / "other"
    cli(spool_dir, "enqueue", "--id", "a", "--priority", "1", f"echo $$ >> {strays}; sleep 1; echo ok > {marker}")
    cli(spool_dir, "enqueue", "--id", "b", f"echo b > {other}")
    sup = bg("worker", "start", "--count", "1")
    wait_for(lambda: read_pids(strays), 10, what="job a started")
    if how == "sigterm":
        sup.signal(signal.SIGTERM)
    else:
        os.killpg(sup.pid, signal.SIGINT)  # what a terminal sends the foreground group
    assert sup.wait(15) == 0
    assert marker.read_text() == "ok\n"
    assert where(spool_dir) == {"a": ["done"], "b": ["pending"]}  # no new claims after the stop
    assert not other.exists()
    out = sup.lines()
    assert "[supervisor] stopping: running jobs finish, no new claims (Ctrl-C again to kill them)" in out
    assert "[worker-0] completed a" in out
    assert out[-1] == "[supervisor] stopped"
    assert sup.stderr() == ""
    assert heartbeats(spool_dir) == []


@pytest.mark.parametrize("how", ["second signal", "--stop-timeout"])
def test_killed_stop_puts_the_job_back_uncounted(spool_dir, tmp_path, bg, strays, how):
    cli(spool_dir, "config", "set", "kill_grace", "0.2")
    started = tmp_path / "started"
    child = tmp_path / "child"
    cli(spool_dir, "enqueue", "--id", "j", "--max-retries", "2",
        f"echo $$ >> {strays}; sleep 30 & echo $! > {child}; touch {started}; wait")
    extra = ["--stop-timeout", "0.2"] if how == "--stop-timeout" else []
    sup = bg("worker", "start", "--count", "1", *extra)
    wait_for(started.exists, 10, what="job started")
    sup.signal(signal.SIGTERM)
    if how == "second signal":
        wait_for(lambda: any(x.startswith("[supervisor] stopping") for x in sup.lines()), 5)
        sup.signal(signal.SIGTERM)
    assert sup.wait(10) == 0
    out = sup.lines()
    assert "[supervisor] killing running jobs" in out
    assert "[worker-0] interrupted j: back to pending" in out
    assert where(spool_dir) == {"j": ["pending"]}
    job = job_file(spool_dir, "pending", "j")
    assert (job["state"], job["attempts"]) == ("pending", 0)
    [h] = job["history"]
    assert (h["counted"], h["error"]) == (False, EXIT_KILLED_BY_STOP)
    [pid] = read_pids(child)
    wait_for(lambda: pid_gone(pid), 5, what="the job's child sleep is gone")
    assert sup.stderr() == ""


def test_worker_stop_timeout_kills_the_job_and_waits(spool_dir, tmp_path, bg, strays):
    cli(spool_dir, "config", "set", "kill_grace", "0.2")
    started = tmp_path / "started"
    cli(spool_dir, "enqueue", "--id", "j", f"echo $$ >> {strays}; touch {started}; sleep 30")
    r = cli(spool_dir, "worker", "start", "--detach")
    sup = int(r.stdout.split("PID=")[1].split(",")[0])
    bg.extra_pids.append(sup)
    wait_for(started.exists, 10, what="job started")
    r = cli(spool_dir, "worker", "stop", "--timeout", "0.3", timeout=30)
    assert (r.returncode, r.stdout) == (0, f"stopped supervisor PID={sup}\n")
    assert pid_gone(sup)
    assert heartbeats(spool_dir) == []
    job = job_file(spool_dir, "pending", "j")
    assert job["attempts"] == 0 and job["history"][-1]["counted"] is False
    [shell] = read_pids(strays)
    wait_for(lambda: pid_gone(shell), 5)
