"""The worker CLI end to end: real `python -m queuectl` processes on a spool under tmp_path.

Covers the seed walkthrough, retries into the dead letter queue and back,
500 jobs on 4 workers, --detach / worker list / worker stop, wake-ups when a
file is dropped into pending/, and `logs --follow`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess

import pytest

from support import unstamped, cli, cli_argv, heartbeats, job_file, pid_gone, wait_for, where  # noqa: F401

PID = r"(\d+)"


def lines_of(text: str) -> list[str]:
    return unstamped(text).splitlines()


@pytest.mark.slow
def test_seed_walkthrough(spool_dir, tmp_path):
    spec = tmp_path / "job.json"
    spec.write_text('{"id": "job1", "command": "echo Hello from QueueCTL", "max_retries": 3}\n')
    r = cli(spool_dir, "enqueue", "--file", spec)
    assert (r.stdout, r.stderr) == ("enqueued job job1\n", "")
    assert cli(spool_dir, "list").stdout == "job1 - pending - echo Hello from QueueCTL\n"

    r = cli(spool_dir, "worker", "start", "--count", "1", "--burst", timeout=30)
    assert r.returncode == 0
    assert r.stderr == ""
    out = lines_of(r.stdout)
    assert len(out) == 5, r.stdout
    m = re.fullmatch(rf"\[supervisor\] started PID={PID} with 1 worker on (.+)", out[0])
    assert m and m.group(2) == str(spool_dir)
    m = re.fullmatch(rf"\[worker-0\] started PID={PID}", out[1])
    assert m and m.group(1) != out[0]
    assert out[2:] == ["[worker-0] executing job job1: echo Hello from QueueCTL",
                       "[worker-0] completed job1",
                       "[supervisor] stopped"]

    status = lines_of(cli(spool_dir, "status").stdout)
    assert status[:8] == ["pending:    0", "processing: 0", "completed:  1", "failed:     0", "dead:       0",
                          "held:       0", "cancelled:  0", "workers:    0 (no workers running)"]
    assert json.loads(cli(spool_dir, "status", "--json").stdout) == \
        {"pending": 0, "processing": 0, "completed": 1, "failed": 0, "dead": 0, "held": 0, "cancelled": 0, "workers": 0, "spool": str(spool_dir)}
    assert re.fullmatch(r"job1 - completed \(exit 0, \d\.\d\ds\) - echo Hello from QueueCTL\n",
                        cli(spool_dir, "list").stdout)
    assert where(spool_dir) == {"job1": ["done"]}

    log = lines_of(cli(spool_dir, "logs", "job1").stdout)
    assert len(log) == 3
    assert re.fullmatch(r"=== attempt 1/4 started \S+Z by worker-0 \(\S+ pid \d+\) ===", log[0])
    assert log[1] == "Hello from QueueCTL"
    assert re.fullmatch(r"=== attempt 1/4 finished \S+Z exit 0 after [\d.]+s ===", log[2])
    assert (spool_dir / "logs" / "job1.log").read_text().splitlines() == log


@pytest.mark.slow
def test_retry_dead_letter_and_back(spool_dir, tmp_path):
    runs = tmp_path / "runs"
    command = f"echo run >> {runs}; exit 1"
    assert cli(spool_dir, "config", "set", "backoff_max", "0.05").stdout == "backoff_max = 0.05\n"
    cli(spool_dir, "enqueue", "--id", "j", "--max-retries", "2", command)

    r = cli(spool_dir, "worker", "start", "--count", "1", "--burst", timeout=30, check=False)
    assert (r.returncode, r.stderr) == (1, "")  # 1: the job ended in dead/
    assert runs.read_text() == "run\n" * 3
    assert lines_of(r.stdout)[2:-1] == [
        f"[worker-0] executing job j: {command}",
        "[worker-0] failed j (attempt 1/3, exit 1), retry in 0.050s",
        f"[worker-0] executing job j: {command}",
        "[worker-0] failed j (attempt 2/3, exit 1), retry in 0.050s",
        f"[worker-0] executing job j: {command}",
        "[worker-0] failed j (attempt 3/3, exit 1)",
        "[worker-0] j moved to dead letter queue",
    ]
    assert where(spool_dir) == {"j": ["dead"]}
    dead = job_file(spool_dir, "dead", "j")
    assert (dead["state"], dead["attempts"], dead["last_error"]) == ("dead", 3, "exit 1")
    assert [h["attempt"] for h in dead["history"]] == [1, 2, 3]

    assert cli(spool_dir, "dlq", "list").stdout == f"j - attempts 3 - exit 1 - {command}\n"
    [listed] = json.loads(cli(spool_dir, "dlq", "list", "--json").stdout)
    assert (listed["id"], listed["attempts"], listed["last_error"]) == ("j", 3, "exit 1")
    assert json.loads(cli(spool_dir, "status", "--json").stdout)["dead"] == 1

    assert cli(spool_dir, "dlq", "retry", "j").stdout == "requeued job j\n"
    assert where(spool_dir) == {"j": ["pending"]}
    back = job_file(spool_dir, "pending", "j")
    assert (back["state"], back["attempts"]) == ("pending", 0)
    assert back["history"][:3] == dead["history"]
    assert cli(spool_dir, "dlq", "list").stdout == ""

    # it gets its full retries again
    r = cli(spool_dir, "worker", "start", "--burst", timeout=30, check=False)
    assert r.returncode == 1
    assert runs.read_text() == "run\n" * 6
    assert "[worker-0] failed j (attempt 1/3, exit 1), retry in 0.050s" in r.stdout
    assert job_file(spool_dir, "dead", "j")["attempts"] == 3

    r = cli(spool_dir, "dlq", "retry", "nope", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "Error: no job nope\n")
    r = cli(spool_dir, "dlq", "purge", "--all", check=False)
    assert r.returncode == 2 and "add --yes to confirm" in r.stderr
    assert where(spool_dir) == {"j": ["dead"]}
    assert cli(spool_dir, "dlq", "purge", "--all", "--yes").stdout == "purged job j\n"
    assert where(spool_dir) == {}
    assert not (spool_dir / "logs" / "j.log").exists()


@pytest.mark.slow
def test_four_workers_five_hundred_jobs(spool_dir, tmp_path):
    out = tmp_path / "out"
    ids = [f"j{i:03d}" for i in range(500)]
    specs = "".join(json.dumps({"id": i, "command": f"echo {i} >> {out}"}) + "\n" for i in ids)
    r = cli(spool_dir, "enqueue", "--quiet", "--file", "-", input=specs)
    assert r.stdout == "enqueued 500 jobs\n"

    r = cli(spool_dir, "worker", "start", "--count", "4", "--burst", timeout=100)
    assert r.stderr == ""
    assert sorted(out.read_text().split()) == ids  # every id exactly once
    completed = [x.split()[-1] for x in lines_of(r.stdout) if " completed " in x]
    assert sorted(completed) == ids
    started = {x.split()[0] for x in lines_of(r.stdout) if " started PID=" in x}
    assert started == {"[supervisor]", "[worker-0]", "[worker-1]", "[worker-2]", "[worker-3]"}
    assert os.listdir(spool_dir / "processing") == []
    assert where(spool_dir) == {i: ["done"] for i in ids}
    assert json.loads(cli(spool_dir, "status", "--json").stdout) == \
        {"pending": 0, "processing": 0, "completed": 500, "failed": 0, "dead": 0, "held": 0, "cancelled": 0, "workers": 0, "spool": str(spool_dir)}
    for i in ("j000", "j499"):
        assert job_file(spool_dir, "done", i)["attempts"] == 1


@pytest.mark.slow
def test_detach_list_status_stop(spool_dir, tmp_path, bg):
    r = cli(spool_dir, "worker", "start", "--detach", "--count", "2")
    m = re.fullmatch(rf"started supervisor PID={PID}, log ({re.escape(str(spool_dir))}/logs/_supervisor\.log)\n",
                     r.stdout)
    assert m, r.stdout
    sup, log = int(m.group(1)), m.group(2)
    bg.extra_pids.append(sup)
    assert r.stderr == ""

    def live():
        ws = json.loads(cli(spool_dir, "worker", "list", "--json").stdout)
        return ws if sum(w["role"] == "worker" for w in ws) == 2 else None

    ws = wait_for(live, 15, what="two live workers")
    # ids name host and supervisor pid: two supervisors on one spool never share one
    assert sorted(w["id"].split("@")[0] for w in ws) == ["supervisor", "worker-0", "worker-1"]
    assert all(w["id"].endswith(f":{sup}") for w in ws)
    assert {w["host"] for w in ws} == {socket.gethostname()}
    assert [w["pid"] for w in ws if w["role"] == "supervisor"] == [sup]
    worker_pids = [w["pid"] for w in ws if w["role"] == "worker"]
    assert all(w["since"] and w["heartbeat_at"] for w in ws)
    human = lines_of(cli(spool_dir, "worker", "list").stdout)
    assert len(human) == 3
    assert any(re.fullmatch(rf"worker-0@\S+:{sup} host=\S+ pid={PID} since=\S+ job=- heartbeat=\S+ node=\S+ age=\S+",
                            x) for x in human)
    assert "workers:    2" in lines_of(cli(spool_dir, "status").stdout)

    # a running job shows up as the worker's current job
    marker = tmp_path / "marker"
    cli(spool_dir, "enqueue", "--id", "long", f"sleep 1; echo done > {marker}")
    wait_for(lambda: any(w["job"] == "long" for w in json.loads(
        cli(spool_dir, "worker", "list", "--json").stdout)), 10, what="worker list shows job long")
    wait_for(lambda: (spool_dir / "done" / "long.json").exists(), 10)
    assert marker.read_text() == "done\n"

    r = cli(spool_dir, "worker", "stop", "--timeout", "10", timeout=30)
    assert (r.stdout, r.stderr) == (f"stopped supervisor PID={sup}\n", "")
    assert pid_gone(sup)
    wait_for(lambda: all(pid_gone(p) for p in worker_pids), 5, what="worker processes gone")
    assert cli(spool_dir, "worker", "list").stdout == ""
    assert heartbeats(spool_dir) == []
    assert "workers:    0 (no workers running)" in lines_of(cli(spool_dir, "status").stdout)
    text = unstamped(open(log).read())
    assert re.search(r"^\[worker-[01]\] completed long$", text, re.M)
    assert text.splitlines()[-1] == "[supervisor] stopped"
    assert cli(spool_dir, "worker", "stop").stdout == "no running supervisor\n"


@pytest.mark.slow
@pytest.mark.parametrize("flags", [(), ("--poll",)], ids=["inotify", "poll"])
def test_a_dropped_in_file_wakes_an_idle_worker(spool_dir, tmp_path, bg, flags):
    sup = bg("worker", "start", *flags)
    wait_for(lambda: heartbeats(spool_dir, "worker"), 10, what="worker started")
    marker = tmp_path / "marker"
    for n in range(2):  # twice: the worker goes back to sleep and wakes again
        tmp = spool_dir / "pending" / f".drop{n}.tmp"
        tmp.write_text(json.dumps({"command": f"echo ok{n} > {marker}{n}"}))
        os.rename(tmp, spool_dir / "pending" / f"drop{n}.json")
        wait_for(lambda: os.path.exists(f"{marker}{n}"), 3, what=f"drop{n} ran")
        wait_for(lambda: (spool_dir / "done" / f"drop{n}.json").exists(), 3)
        assert open(f"{marker}{n}").read() == f"ok{n}\n"
    sup.signal(signal.SIGTERM)
    assert sup.wait(10) == 0
    assert sup.stderr() == ""
    assert "[worker-0] completed drop1" in sup.lines()


@pytest.mark.slow
def test_logs_follow_returns_when_the_job_is_done(spool_dir, tmp_path, bg):
    cli(spool_dir, "config", "set", "backoff_max", "0.05")
    flag = tmp_path / "flag"
    cli(spool_dir, "enqueue", "--id", "j", "--max-retries", "1",
        f"echo first; sleep 0.3; test -e {flag} || {{ touch {flag}; exit 1; }}; echo second")
    follow = subprocess.Popen(cli_argv(spool_dir, "logs", "j", "--follow"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        sup = bg("worker", "start", "--burst")
        out, err = follow.communicate(timeout=20)
    finally:
        if follow.poll() is None:
            os.killpg(follow.pid, signal.SIGKILL)
            follow.wait()
    assert (follow.returncode, err) == (0, "")
    assert sup.wait(10) == 0
    lines = lines_of(out)
    assert [x.split()[1:3] for x in lines if x.startswith("=== ")] == \
        [["attempt", "1/2"], ["attempt", "1/2"], ["attempt", "2/2"], ["attempt", "2/2"]]
    assert [x for x in lines if not x.startswith("=== ")] == ["first", "first", "second"]
    assert re.fullmatch(r"=== attempt 2/2 finished \S+ exit 0 after [\d.]+s ===", lines[-1])
    assert out == (spool_dir / "logs" / "j.log").read_text()
