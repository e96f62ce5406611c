"""Stop signals, crash restarts and the identity of supervisors (issue 9, items 2, 6 and 9c).

Every test runs real `python -m queuectl` processes, each supervisor in its
own session (the `bg` fixture kills its process group at teardown), and polls
with deadlines. What a stop must always look like: exit 0 with
`[supervisor] stopped` last, no process of the tree left, no heartbeat left.
The one exception is a signal that lands before the interpreter has loaded
queuectl at all: the default action ends the process before it has started
anything (no output, no heartbeat, no worker), which is as graceful as it gets.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from queuectl.registry import proc_start

from support import alive, cli, heartbeats, pid_gone, wait_for, where

pytestmark = pytest.mark.slow

STOPPED = "[supervisor] stopped"
STARTED = re.compile(r"^\[supervisor\] started PID=\d+ ")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is pgid."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            out.append(int(name))
    return out


def supervisor_started(sup) -> bool:
    return any(STARTED.match(x) for x in sup.lines())


def assert_stopped_gracefully(sup, spool, timeout: float = 15) -> list[str]:
    """The tree stopped once, cleanly; returns its output lines."""
    rc = sup.wait(timeout)
    out = sup.lines()
    if rc == -signal.SIGTERM and out == []:
        pass  # ended by the default action before queuectl was loaded: nothing had started
    else:
        assert rc == 0, f"exit {rc}\n" + "\n".join(out) + sup.stderr()
        assert out[-1] == STOPPED, "\n".join(out)
        assert sum(x == STOPPED for x in out) == 1
    assert not [x for x in out if "restarting" in x], "a worker was restarted during a stop:\n" + "\n".join(out)
    wait_for(lambda: group_members(sup.pid) == [], 5, what="every process of the tree gone")
    assert heartbeats(spool) == []
    return out


def idle_workers(spool, n: int):
    return wait_for(lambda: len(heartbeats(spool, "worker")) == n, 15, what=f"{n} workers up")


# -- item 2: a stop signal is never lost --------------------------------------------------


def test_sigterm_right_after_the_started_line_stops_the_tree(spool_dir, bg):
    for _ in range(3):
        sup = bg("worker", "start", "--count", "2")
        wait_for(lambda sup=sup: supervisor_started(sup), 15, interval=0.001, what="supervisor started")
        sup.signal(signal.SIGTERM)
        assert_stopped_gracefully(sup, spool_dir)


@pytest.mark.parametrize("after", ["spawn", "started line"])
def test_sigterm_at_any_moment_of_start_up_stops_the_tree(spool_dir, bg, after):
    """Random moments in start-up: interpreter loading, handlers, recovery, forking workers."""
    rng = random.Random(9)
    for _ in range(5):
        sup = bg("worker", "start", "--count", "2")
        if after == "started line":
            wait_for(lambda sup=sup: supervisor_started(sup), 15, interval=0.001, what="supervisor started")
        # The moment itself is what is tested, not a wait: from spawn, 0-150 ms spans the
        # interpreter's start-up, the handlers going in, recovery and the forks (~100 ms in all).
        time.sleep(rng.uniform(0, 0.15 if after == "spawn" else 0.05))
        sup.signal(signal.SIGTERM)
        assert_stopped_gracefully(sup, spool_dir)


def test_sigterm_to_the_whole_process_group_at_idle(spool_dir, bg):
    """What systemd's KillMode=control-group and `kill -TERM -PGID` do."""
    for _ in range(3):
        sup = bg("worker", "start", "--count", "2")
        idle_workers(spool_dir, 2)
        os.killpg(sup.pid, signal.SIGTERM)
        assert_stopped_gracefully(sup, spool_dir)


@pytest.mark.parametrize("to", ["supervisor", "group"])
def test_sighup_mid_job_lets_the_job_finish_and_stops(spool_dir, tmp_path, bg, to):
    """A closed terminal: the job finishes and is recorded, nothing runs on unsupervised."""
    started, marker = tmp_path / "started", tmp_path / "marker"
    cli(spool_dir, "enqueue", "--id", "j", f"touch {started}; sleep 1; echo done > {marker}")
    sup = bg("worker", "start", "--count", "2")
    wait_for(started.exists, 15, what="job started")
    if to == "supervisor":
        sup.signal(signal.SIGHUP)
    else:
        os.killpg(sup.pid, signal.SIGHUP)
    out = assert_stopped_gracefully(sup, spool_dir)
    assert marker.read_text() == "done\n"
    assert where(spool_dir) == {"j": ["done"]}
    assert re.search(r"^\[worker-[01]\] completed j$", "\n".join(out), re.MULTILINE)
    assert sup.stderr() == ""


def test_a_signal_to_one_worker_stops_the_whole_tree(spool_dir, bg):
    """Decided: a worker told to stop is a stop of the tree, never a worker to replace."""
    sup = bg("worker", "start", "--count", "2")
    idle_workers(spool_dir, 2)
    # a worker beats once before its `started PID=` line: wait for the line itself
    pid = wait_for(lambda: sup.started().get("worker-1"), 15, what="worker-1's started line")
    os.kill(pid, signal.SIGTERM)
    out = assert_stopped_gracefully(sup, spool_dir)
    assert "[supervisor] stopping: running jobs finish, no new claims (Ctrl-C again to kill them)" in out


def test_crashing_workers_are_restarted_with_backoff(spool_dir, bg):
    """A worker that cannot start (pending/ is not a directory) must not burn a core."""
    sup = bg("worker", "start", "--count", "1")
    idle_workers(spool_dir, 1)
    [worker] = heartbeats(spool_dir, "worker")
    shutil.rmtree(spool_dir / "pending")
    (spool_dir / "pending").write_text("not a directory\n")  # every new worker fails at start-up
    os.kill(worker["pid"], signal.SIGKILL)
    wait_for(lambda: any("restarting" in x for x in sup.lines()), 10, what="first restart")
    t0 = time.monotonic()
    before = sum("restarting" in x for x in sup.lines())
    wait_for(lambda: time.monotonic() - t0 >= 3, 5, interval=0.1, what="three seconds of crashes")
    restarts = sum("restarting" in x for x in sup.lines()) - before
    assert restarts <= 6, f"{restarts} restarts in 3 s:\n" + "\n".join(sup.lines())
    # a stop is still prompt while a restart waits its turn
    sup.signal(signal.SIGTERM)
    assert sup.wait(5) == 0
    assert sup.lines()[-1] == STOPPED


# -- item 6: a pid in a heartbeat is trusted only while it is the same process ---------------


@pytest.fixture
def sleeper():
    p = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    yield p
    p.kill()
    p.wait()


@pytest.mark.parametrize("pid_start", ["different", "missing"])
def test_worker_stop_never_signals_a_process_that_reused_the_pid(spool_dir, sleeper, pid_start):
    """A supervisor killed with -9 leaves its heartbeat; its pid now belongs to `sleep`."""
    cli(spool_dir, "status")  # creates the spool
    pid = sleeper.pid
    wait_for(lambda: proc_start(pid), 5, what="sleep running")
    info = {"id": "supervisor", "role": "supervisor", "host": socket.gethostname(), "pid": pid,
            "since": "2026-01-01T00:00:00Z", "heartbeat_at": "2026-01-01T00:00:00Z", "job": None}
    if pid_start == "different":
        assert proc_start(pid) != "1"
        info["pid_start"] = "1"
    # else: an older version's heartbeat: only a queuectl process is taken for its writer
    (spool_dir / "workers" / f"{socket.gethostname()}.{pid}.json").write_text(json.dumps(info))
    r = cli(spool_dir, "worker", "stop", "--timeout", "1", timeout=30)
    assert (r.stdout, r.stderr) == ("no running supervisor\n", "")
    assert sleeper.poll() is None and alive(pid)
    # Listed at most as a lapsed heartbeat (a heartbeat without a node name is an
    # older version's, judged like another node's), never as a live supervisor.
    listed = [w for w in json.loads(cli(spool_dir, "worker", "list", "--json").stdout) if w["pid"] == pid]
    assert all(w["alive"] is False for w in listed), listed


# -- item 9c: --detach returns once the supervisor can be stopped ----------------------------


def test_detach_then_stop_at_once_always_stops_it(spool_dir, bg, run):
    for _ in range(5):
        r = cli(spool_dir, "worker", "start", "--detach", "--count", "1")
        m = re.fullmatch(r"started supervisor PID=(\d+), log \S+\n", r.stdout)
        assert m, r.stdout + r.stderr
        sup = int(m.group(1))
        bg.extra_pids.append(sup)
        # In-process, so the stop follows without even an interpreter's start-up in between.
        r = run("worker", "stop", "--timeout", "10")
        assert (r.stdout, r.stderr) == (f"stopped supervisor PID={sup}\n", "")
        assert pid_gone(sup)
        wait_for(lambda sup=sup: group_members(sup) == [], 5, what="the detached tree gone")
    assert heartbeats(spool_dir) == []
