"""Running queuectl as a service (issue 12): named queues and their concurrency across
supervisors, pause/resume, retention, log caps, completion hooks, live settings,
sd_notify, supervisor log lines and the systemd unit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from queuectl import sdnotify
from queuectl.spool import Spool

from support import STAMP_RE, cli, cli_argv, heartbeats, unstamped, wait_for, where

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[(supervisor|worker-\d+)\] ")


def enqueue(spool_dir: Path, *args: str) -> None:
    r = cli(spool_dir, "enqueue", *args)
    assert r.returncode == 0, r.stderr


def drain(spool_dir: Path, *args: str, timeout: float = 60, code: int = 0) -> subprocess.CompletedProcess:
    """A burst run; `code` 1 when a job it runs ends in dead/."""
    r = cli(spool_dir, "worker", "start", "--burst", *args, timeout=timeout, check=False)
    assert r.returncode == code, r.stdout + r.stderr
    return r


def state_of(spool_dir: Path, job_id: str) -> str:
    return json.loads(cli(spool_dir, "show", job_id, "--json").stdout)["state"]


# -- named queues --------------------------------------------------------------------------


def test_queue_field_is_validated_kept_and_filtered(run, spool_dir):
    assert run("enqueue", "--queue", "gpu", "--id", "g1", "true").exit_code == 0
    assert run("enqueue", "--id", "d1", "true").exit_code == 0
    rec = json.loads((spool_dir / "pending" / "g1.json").read_text())
    assert rec["queue"] == "gpu"
    assert "queue" not in json.loads((spool_dir / "pending" / "d1.json").read_text())  # default: left out
    assert run("list", "--queue", "gpu").stdout == "g1 - pending - true\n"
    assert run("list", "--queue", "default").stdout == "d1 - pending - true\n"
    r = run("status")
    assert "queue default: pending 1, processing 0, completed 0, failed 0, dead 0" in r.stdout
    assert "queue gpu: pending 1, processing 0, completed 0, failed 0, dead 0" in r.stdout
    assert json.loads(run("status", "--queue", "gpu", "--json").stdout)["pending"] == 1
    for bad, why in [("a b", "queue 'a b' contains whitespace"), ("ALL", "queue 'ALL' is reserved"),
                     ("../x", "queue '../x' contains '..'")]:
        r = run("enqueue", "--queue", bad, "true")
        assert r.exit_code == 1 and r.stderr.startswith(f"Error: {why}"), r.stderr
    # a drop-in names its queue too
    (spool_dir / "pending" / "drop.json").write_text('{"command": "true", "queue": "io"}')
    assert run("list", "--queue", "io").stdout == "drop - pending - true\n"
    (spool_dir / "pending" / "bad.json").write_text('{"command": "true", "queue": 7}')
    run("status")
    assert (spool_dir / "rejected" / "bad.json.reason").read_text().startswith("queue must be a string")


def test_an_old_index_is_rebuilt_with_the_queue_column(run, spool_dir):
    import sqlite3
    assert run("enqueue", "--queue", "gpu", "--id", "g", "true").exit_code == 0
    db = sqlite3.connect(spool_dir / "index.db")
    db.execute("PRAGMA user_version=3")
    db.close()
    r = run("list", "--queue", "gpu")
    assert r.stdout == "g - pending - true\n"
    assert "rebuilding it" in r.stderr


def test_worker_queues_and_unknown_queue_warning(spool_dir):
    enqueue(spool_dir, "--queue", "gpu", "--id", "g", "true")
    enqueue(spool_dir, "--id", "d", "true")
    out = unstamped(drain(spool_dir, "--queue", "nope").stdout)
    assert "[supervisor] no job names queue nope yet" in out
    drain(spool_dir, "--queue", "gpu")
    assert where(spool_dir) == {"d": ["pending"], "g": ["done"]}
    r = cli(spool_dir, "worker", "start", "--queue", "a/b", check=False)
    assert r.returncode == 1 and r.stderr == "Error: queue 'a/b' contains a path separator\n"


@pytest.mark.slow
def test_queue_concurrency_holds_across_two_supervisors(spool_dir, tmp_path, bg):
    """queue.gpu.concurrency 1, two supervisors of two workers each: never two gpu jobs at once."""
    stamps = tmp_path / "stamps"
    assert cli(spool_dir, "config", "set", "queue.gpu.concurrency", "1").stdout == "queue.gpu.concurrency = 1\n"
    job = f'echo "$QUEUECTL_JOB_ID start $(date +%s.%N)" >> {stamps}; sleep 0.2; ' \
          f'echo "$QUEUECTL_JOB_ID end $(date +%s.%N)" >> {stamps}'
    specs = [{"id": f"g{i}", "command": job, "queue": "gpu"} for i in range(6)]
    specs += [{"id": f"d{i}", "command": job} for i in range(4)]
    r = cli(spool_dir, "enqueue", "--quiet", "--file", "-", input="\n".join(map(json.dumps, specs)))
    assert r.returncode == 0, r.stderr
    a = bg("worker", "start", "--count", "2", "--burst")
    b = bg("worker", "start", "--count", "2", "--burst")
    assert a.wait(60) == 0 and b.wait(60) == 0
    spans: dict[str, dict[str, float]] = {}
    for line in stamps.read_text().splitlines():
        job_id, what, ts = line.split()
        spans.setdefault(job_id, {})[what] = float(ts)
    assert sorted(spans) == sorted(s["id"] for s in specs)
    events = sorted((t, 1 if what == "start" else -1) for j, s in spans.items() if j.startswith("g")
                    for what, t in s.items())
    running = peak = 0
    for _t, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 1, spans
    # the default queue has no limit: its jobs did overlap with others
    all_events = sorted((t, 1 if w == "start" else -1) for s in spans.values() for w, t in s.items())
    running = peak_all = 0
    for _t, step in all_events:
        running += step
        peak_all = max(peak_all, running)
    assert peak_all > 1
    # every slot lock was released with its process
    assert sorted(os.listdir(spool_dir / "queues" / "gpu")) == ["slot.0"]


def test_slots_are_shared_locks_that_die_with_their_process(tmp_path):
    from queuectl.queues import release_slot, take_slot
    spool = Spool(str(tmp_path / "s"))
    a, b = take_slot(spool, "gpu", 2), take_slot(spool, "gpu", 2)
    assert a is not None and b is not None and take_slot(spool, "gpu", 2) is None
    release_slot(a)
    c = take_slot(spool, "gpu", 2)
    assert c is not None
    release_slot(b)
    release_slot(c)
    # another process holds both slots; kill -9 frees them
    code = ("import sys, time; from queuectl.spool import Spool; from queuectl.queues import take_slot; "
            f"s = Spool({str(tmp_path / 's')!r}); fds = [take_slot(s, 'gpu', 2) for _ in range(2)]; "
            "print(None not in fds, flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "True\n"
        assert take_slot(spool, "gpu", 2) is None
        p.kill()
        p.wait(10)
        fd = take_slot(spool, "gpu", 2)
        assert fd is not None
        release_slot(fd)
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    spool.close()


def test_a_finished_jobs_leftover_process_does_not_hold_its_slot(spool_dir, tmp_path):
    """The command inherits its slot's lock (so a killed worker's command keeps it), but a
    recorded outcome frees the slot even while a background process of the job still runs."""
    import time
    pids = tmp_path / "pids"
    cli(spool_dir, "config", "set", "queue.gpu.concurrency", "1")
    enqueue(spool_dir, "--queue", "gpu", "--id", "a", f"sleep 30 & echo $! > {pids}")
    enqueue(spool_dir, "--queue", "gpu", "--id", "b", "true")
    t0 = time.monotonic()
    try:
        drain(spool_dir)
        assert where(spool_dir) == {"a": ["done"], "b": ["done"]}
        assert time.monotonic() - t0 < 20  # b did not wait for a's `sleep 30`
    finally:
        os.kill(int(pids.read_text()), signal.SIGKILL)


def test_two_supervisors_never_share_worker_names(spool_dir, bg):
    a = bg("worker", "start", "--count", "2")
    b = bg("worker", "start", "--count", "2")
    wait_for(lambda: len(heartbeats(spool_dir, "worker")) == 4, 20, what="four workers")
    ids = [h["id"] for h in heartbeats(spool_dir)]
    assert len(set(ids)) == len(ids) == 6, ids
    a.signal(signal.SIGTERM)
    b.signal(signal.SIGTERM)
    assert a.wait() == 0 and b.wait() == 0


# -- pause and resume ---------------------------------------------------------------------


def test_pause_one_queue_survives_restarts_and_shows(spool_dir):
    enqueue(spool_dir, "--queue", "gpu", "--id", "g", "true")
    enqueue(spool_dir, "--id", "d", "true")
    assert cli(spool_dir, "pause", "--queue", "gpu").stdout == "paused queue gpu\n"
    assert cli(spool_dir, "pause", "--queue", "gpu").stdout == "queue gpu already paused\n"
    assert os.listdir(spool_dir / "paused") == ["gpu"]
    out = cli(spool_dir, "status").stdout
    assert "paused:     gpu" in out and "[paused]" in out
    assert json.loads(cli(spool_dir, "status", "--json").stdout)["queues"]["gpu"]["paused"] is True
    drain(spool_dir)  # a burst does not wait for a paused queue
    assert where(spool_dir) == {"d": ["done"], "g": ["pending"]}
    drain(spool_dir)  # a new supervisor: still paused
    assert where(spool_dir)["g"] == ["pending"]
    assert cli(spool_dir, "resume", "--queue", "gpu").stdout == "resumed queue gpu\n"
    drain(spool_dir)
    assert where(spool_dir)["g"] == ["done"]


def test_pause_all_lets_the_running_job_finish_and_claims_nothing(spool_dir, tmp_path, bg):
    started = tmp_path / "started"
    enqueue(spool_dir, "--id", "long", f"touch {started}; sleep 1")
    sup = bg("worker", "start")
    wait_for(started.exists, 20, what="the long job to start")
    assert cli(spool_dir, "pause").stdout == "paused all queues\n"
    enqueue(spool_dir, "--id", "later", "true")
    wait_for(lambda: where(spool_dir).get("long") == ["done"], 20, what="the running job to finish")
    # Claims are checked once per scan (1 s): a job that waits 3 scans was not claimed.
    with pytest.raises(pytest.fail.Exception):
        wait_for(lambda: where(spool_dir)["later"] != ["pending"], 3, interval=0.2)
    assert "paused:     all queues" in cli(spool_dir, "status").stdout
    assert cli(spool_dir, "resume").stdout == "resumed all queues\n"
    wait_for(lambda: where(spool_dir)["later"] == ["done"], 20, what="the job after resume")
    sup.signal(signal.SIGTERM)
    assert sup.wait() == 0


# -- retention --------------------------------------------------------------------------------


def _done_jobs(spool_dir: Path, n: int, age) -> list[str]:
    ids = [f"j{i}" for i in range(n)]
    for i in ids:
        enqueue(spool_dir, "--id", i, f"echo {i}")
    drain(spool_dir)
    for k, i in enumerate(ids):  # j0 oldest: finished k+1 hours ago, j0 the longest
        age(spool_dir / "done" / f"{i}.json", (n - k) * 3600)
    return ids


def test_clean_by_age_and_count_removes_jobs_and_logs(spool_dir, age):
    _done_jobs(spool_dir, 5, age)
    r = cli(spool_dir, "clean", "--older-than", "4h", "--dry-run")
    assert r.stdout == "would remove job j0 (completed)\nwould remove job j1 (completed)\n"
    assert len(os.listdir(spool_dir / "done")) == 5
    r = cli(spool_dir, "clean", "--older-than", "4h")
    assert r.stdout == "removed job j0 (completed)\nremoved job j1 (completed)\n"
    assert not (spool_dir / "logs" / "j0.log").exists() and (spool_dir / "logs" / "j2.log").exists()
    r = cli(spool_dir, "clean", "--keep", "1", "--quiet")
    assert r.stdout == "removed 2 jobs\n"
    assert where(spool_dir) == {"j4": ["done"]}
    assert sorted(os.listdir(spool_dir / "logs")) == ["j4.log"]
    assert json.loads(cli(spool_dir, "status", "--json").stdout)["completed"] == 1


def test_clean_refuses_without_a_filter_and_bad_values(spool_dir):
    for args, err in [((), "Error: give --older-than, --keep, or --all to delete every finished job"),
                      (("--older-than", "soon"), "Error: expected an age like 90s, 15m, 12h, 7d or 2w, got 'soon'"),
                      (("--state", "pending", "--all"), "Error: only finished jobs are cleaned"),
                      (("--keep", "-1"), "Error: Invalid value for '--keep'")]:
        r = cli(spool_dir, "clean", *args, check=False)
        assert r.returncode != 0 and err in r.stderr, (args, r.stderr)
    for key, value in [("keep_done", "7x"), ("keep_dead", "0"), ("keep_done", "1d,2d"), ("max_log_size", "-1"),
                       ("hook_timeout", "0"), ("queue.a b.concurrency", "1"), ("queue.gpu.concurrency", "two")]:
        r = cli(spool_dir, "config", "set", key, value, check=False)
        assert r.returncode == 1 and r.stderr.startswith("Error: ") and len(r.stderr.splitlines()) == 1, r.stderr
    assert cli(spool_dir, "config", "set", "keep_done", "2w,500").stdout == "keep_done = 14d,500\n"
    assert cli(spool_dir, "config", "set", "keep_dead", "none").stdout == "keep_dead = none\n"


def test_workers_apply_keep_done_in_the_background(spool_dir, age):
    _done_jobs(spool_dir, 5, age)
    cli(spool_dir, "config", "set", "keep_done", "2")
    enqueue(spool_dir, "--id", "new", "echo new")  # it prints: a silent success keeps no log
    drain(spool_dir)  # a worker's first pass applies the settings, then it runs `new`
    assert sorted(os.listdir(spool_dir / "done")) == ["j3.json", "j4.json", "new.json"]
    assert sorted(os.listdir(spool_dir / "logs")) == ["j3.log", "j4.log", "new.log"]
    cli(spool_dir, "config", "set", "keep_done", "1h")
    drain(spool_dir)
    assert os.listdir(spool_dir / "done") == ["new.json"]


def test_clean_keeps_a_completed_parent_while_a_dependent_needs_it(spool_dir, age):
    """Deleting fetch would cancel build ("dependency fetch no longer exists"):
    clean keeps it, says so, and deletes it once nothing needs it any more."""
    enqueue(spool_dir, "--id", "fetch", "echo fetched")
    enqueue(spool_dir, "--id", "other", "echo other")
    drain(spool_dir)
    enqueue(spool_dir, "--id", "build", "--after", "fetch", "--hold", "echo built")
    enqueue(spool_dir, "--id", "notify", "--after-any", "other", "--hold", "echo notified")
    r = cli(spool_dir, "clean", "--state", "completed", "--all", "--dry-run")
    assert r.stdout == ("would remove job other (completed)\n"
                        "would keep job fetch (completed): job build depends on it\n"), r.stdout
    r = cli(spool_dir, "clean", "--state", "completed", "--all")
    assert r.stdout == "removed job other (completed)\nkept job fetch (completed): job build depends on it\n"
    assert cli(spool_dir, "clean", "--state", "completed", "--all", "--quiet").stdout == "removed 0 jobs\n"
    cli(spool_dir, "release", "build", "notify")
    drain(spool_dir)
    assert where(spool_dir) == {"fetch": ["done"], "build": ["done"], "notify": ["done"]}
    r = cli(spool_dir, "clean", "--state", "completed", "--all")
    assert sorted(r.stdout.splitlines()) == ["removed job build (completed)", "removed job fetch (completed)",
                                             "removed job notify (completed)"]
    assert where(spool_dir) == {}


def test_keep_done_keeps_a_parent_whose_dependent_is_dead_and_may_be_retried(spool_dir, age, tmp_path):
    flag = tmp_path / "flag"
    enqueue(spool_dir, "--id", "fetch", "echo fetched")
    drain(spool_dir)
    enqueue(spool_dir, "--id", "build", "--after", "fetch", "--max-retries", "0", f"[ -e {flag} ]")
    drain(spool_dir, code=1)  # build ends dead
    age(spool_dir / "done" / "fetch.json", 2 * 3600)
    cli(spool_dir, "config", "set", "keep_done", "1h")
    enqueue(spool_dir, "--id", "new", "true")
    drain(spool_dir)  # a worker's first pass applies keep_done
    assert where(spool_dir) == {"fetch": ["done"], "build": ["dead"], "new": ["done"]}
    flag.touch()
    cli(spool_dir, "dlq", "retry", "build")
    drain(spool_dir)
    assert where(spool_dir) == {"fetch": ["done"], "build": ["done"], "new": ["done"]}
    drain(spool_dir)  # the next pass: nothing needs fetch any more
    assert where(spool_dir) == {"build": ["done"], "new": ["done"]}


def test_max_log_size_keeps_head_and_tail(spool_dir):
    cli(spool_dir, "config", "set", "max_log_size", "2000")
    enqueue(spool_dir, "--id", "big", "echo FIRST; head -c 20000 /dev/zero | tr '\\0' x; echo; echo LAST")
    drain(spool_dir)
    log = (spool_dir / "logs" / "big.log").read_bytes()
    assert len(log) <= 2000
    assert log.startswith(b"=== attempt 1/4 started ") and b"FIRST\n" in log
    assert re.search(rb"\n=== queuectl: \d+ bytes dropped here \(max_log_size 2000\) ===\n", log)
    assert log.rstrip().endswith(b"exit 0 after " + log.rsplit(b"after ", 1)[1].rstrip())
    assert b"LAST\n=== attempt 1/4 finished" in log


@pytest.mark.slow
def test_max_log_size_never_drops_the_lines_of_an_attempt_still_writing(spool_dir, bg):
    """Attempt 1's worker caps the log after its on_failure hook, while attempt 2 runs on the other
    worker and writes to the same log: the cap waits for the writer instead of replacing the file
    under it, and the log is capped once the last attempt ends."""
    cli(spool_dir, "config", "set", "max_log_size", "4000")
    cli(spool_dir, "config", "set", "backoff_max", "0.05")
    cli(spool_dir, "config", "set", "on_failure", "sleep 1.5")
    enqueue(spool_dir, "--id", "big", "if [ $QUEUECTL_ATTEMPT = 1 ]; then head -c 20000 /dev/zero | tr '\\0' x; "
                                      "echo; exit 1; fi; echo SECOND-START; sleep 3; echo SECOND-LAST")
    sup = bg("worker", "start", "--count", "2")  # not --burst: the idle worker stays for the retry
    wait_for(lambda: (spool_dir / "done" / "big.json").exists(), 30, what="big completed")
    sup.signal(signal.SIGTERM)
    assert sup.wait(30) == 0
    runs = [h["worker"] for h in json.loads((spool_dir / "done" / "big.json").read_text())["history"]]
    assert len(set(runs)) == 2, runs  # attempt 2 ran beside attempt 1's hook and cap
    log = (spool_dir / "logs" / "big.log").read_bytes()
    assert b"SECOND-START\n" in log and b"SECOND-LAST\n=== attempt 2/4 finished " in log, log[-600:]
    assert b"=== hook on_failure finished " in log
    assert len(log) <= 4000 and re.search(rb"\n=== queuectl: \d+ bytes dropped here \(max_log_size 4000\) ===\n", log)
    assert log.startswith(b"=== attempt 1/4 started ")


# -- hooks -------------------------------------------------------------------------------------


def test_on_finish_and_on_failure_get_the_job_in_their_environment(spool_dir, tmp_path):
    out = tmp_path / "hooks"
    hook = f'echo "$0 $QUEUECTL_JOB_ID $QUEUECTL_STATE $QUEUECTL_EXIT_CODE $QUEUECTL_ATTEMPTS" >> {out}'
    cli(spool_dir, "config", "set", "on_finish", f"sh -c '{hook}' finish")
    cli(spool_dir, "config", "set", "on_failure", f"sh -c '{hook}' failure; echo hook says hi")
    cli(spool_dir, "config", "set", "backoff_max", "0.05")
    enqueue(spool_dir, "--id", "ok", "true")
    enqueue(spool_dir, "--id", "bad", "--max-retries", "1", "exit 3")
    drain(spool_dir, code=1)
    assert sorted(out.read_text().splitlines()) == sorted([
        "finish ok completed 0 1", "failure bad failed 3 1", "failure bad dead 3 2", "finish bad dead 3 2"])
    log = (spool_dir / "logs" / "bad.log").read_text()
    assert "=== hook on_failure started" in log and "hook says hi\n" in log
    assert re.search(r"=== hook on_finish finished \S+ exit 0 after", log)


def test_per_job_on_finish_replaces_the_setting(spool_dir, tmp_path):
    cli(spool_dir, "config", "set", "on_finish", f"touch {tmp_path}/spool-hook")
    enqueue(spool_dir, "--id", "j", "--on-finish", f"touch {tmp_path}/job-hook", "true")
    assert json.loads((spool_dir / "pending" / "j.json").read_text())["on_finish"] == f"touch {tmp_path}/job-hook"
    drain(spool_dir)
    assert (tmp_path / "job-hook").exists() and not (tmp_path / "spool-hook").exists()


def test_a_failing_missing_or_hanging_hook_changes_nothing(spool_dir, tmp_path):
    cli(spool_dir, "config", "set", "hook_timeout", "0.5")
    cli(spool_dir, "config", "set", "kill_grace", "0.2")
    enqueue(spool_dir, "--id", "hangs", "--on-finish", "sleep 30", "true")
    enqueue(spool_dir, "--id", "fails", "--on-finish", "exit 9", "true")
    enqueue(spool_dir, "--id", "missing", "--on-finish", "no-such-command-xyz", "true")
    r = drain(spool_dir, timeout=20)
    assert where(spool_dir) == {"hangs": ["done"], "fails": ["done"], "missing": ["done"]}
    out = unstamped(r.stdout)
    assert "[worker-0] hook on_finish of job hangs failed (timed out after 0.5s); the job stays completed" in out
    assert "[worker-0] hook on_finish of job fails failed (exit 9); the job stays completed" in out
    assert "[worker-0] hook on_finish of job missing failed (exit 127); the job stays completed" in out
    assert "no-such-command-xyz" in (spool_dir / "logs" / "missing.log").read_text()


# -- live settings --------------------------------------------------------------------------------


def test_config_set_reaches_a_running_worker(spool_dir, bg):
    sup = bg("worker", "start")
    enqueue(spool_dir, "--id", "first", "true")
    wait_for(lambda: where(spool_dir).get("first") == ["done"], 20, what="the first job")
    cli(spool_dir, "config", "set", "job_timeout", "0.5")
    cli(spool_dir, "config", "set", "kill_grace", "0.1")
    enqueue(spool_dir, "--id", "slow", "--max-retries", "0", "sleep 30")
    wait_for(lambda: where(spool_dir).get("slow") == ["dead"], 20, what="the slow job to time out")
    rec = json.loads((spool_dir / "dead" / "slow.json").read_text())
    assert rec["last_error"] == "timed out after 0.5s"
    assert "[worker-0] settings changed: reloaded config.json" in sup.lines()
    sup.signal(signal.SIGTERM)
    assert sup.wait() == 0


def test_garbage_config_keeps_the_previous_settings(tmp_path, collect_lines):
    spool = Spool(str(tmp_path / "s"))
    spool.set_config("job_timeout", 5)
    assert spool.configfile.refresh() is False
    (tmp_path / "s" / "config.json").write_text("{garbage")
    lines = collect_lines("w")
    assert spool.configfile.refresh() is False
    assert spool.config.job_timeout == 5
    assert any("config.json changed but is not valid" in x for x in lines)
    spool.close()


# -- systemd -----------------------------------------------------------------------------------------


def _receiver(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(20)
    return s, path


def _messages_until(s: socket.socket, field: str) -> list[str]:
    got = []
    while field not in got:
        got += s.recv(4096).decode().split("\n")
    return got


def test_sd_notify_ready_and_stopping(spool_dir, tmp_path, bg, monkeypatch):
    s, path = _receiver(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    sup = bg("worker", "start", "--count", "2")
    got = _messages_until(s, "READY=1")
    assert any(x.startswith("STATUS=2 workers on ") for x in got)
    assert f"MAINPID={sup.pid}" in got
    # READY only once both workers watch the spool
    assert sum(1 for h in heartbeats(spool_dir, "worker") if h.get("watching")) == 2
    sup.signal(signal.SIGTERM)
    assert "STOPPING=1" in _messages_until(s, "STOPPING=1")
    assert sup.wait() == 0
    s.close()


def test_sd_notify_abstract_socket_and_no_socket(monkeypatch):
    name = f"queuectl-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    assert sdnotify.notify("READY=1", "STATUS=ok") is True
    assert s.recv(100) == b"READY=1\nSTATUS=ok"
    s.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sdnotify.notify("READY=1") is False


def test_systemd_unit_has_what_the_service_needs(spool_dir):
    unit = cli(spool_dir, "systemd-unit", "--stop-timeout", "30").stdout
    for line in ["Type=notify", "KillMode=mixed", "TimeoutStopSec=50", "Restart=on-failure",
                 "NoNewPrivileges=yes", "PrivateTmp=yes", "WantedBy=default.target"]:
        assert f"\n{line}\n" in unit, line
    assert f"--spool {spool_dir} worker start --count 2 --stop-timeout 30" in unit
    assert "User=" in cli(spool_dir, "systemd-unit", "--system").stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("which", ["generated", "contrib"])
def test_systemd_analyze_verify_accepts_the_units(spool_dir, tmp_path, which):
    if which == "generated":
        unit = tmp_path / "queuectl-worker.service"
        unit.write_text(cli(spool_dir, "systemd-unit").stdout)
    else:
        unit = tmp_path / "queuectl-worker@x.service"
        unit.write_text((Path(__file__).parent.parent / "contrib/systemd/queuectl-worker@.service").read_text())
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [x for x in (r.stdout + r.stderr).splitlines() if unit.name in x]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


# -- supervisor log lines ------------------------------------------------------------------------------


def test_lines_carry_a_timestamp_unless_journald_reads_them(spool_dir, tmp_path):
    enqueue(spool_dir, "--id", "j", "true")
    out = drain(spool_dir).stdout.splitlines()
    assert out and all(STAMP.match(x) for x in out), out
    enqueue(spool_dir, "--id", "k", "true")
    path = tmp_path / "journal"
    with open(path, "wb") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        subprocess.run(cli_argv(spool_dir, "worker", "start", "--burst"), stdout=f, env=env, timeout=60, check=True)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("[supervisor] started PID=") and not any(STAMP_RE.match(x) for x in lines)


@pytest.mark.slow
def test_detach_appends_to_one_log_and_follows_logrotate(spool_dir, bg):
    log = spool_dir / "logs" / "_supervisor.log"
    for k in range(1, 3):
        r = cli(spool_dir, "worker", "start", "--detach", "--burst")
        assert r.stdout.endswith(f", log {log}\n")
        wait_for(lambda: unstamped(log.read_text()).count("[supervisor] stopped") == k, 20,
                 what=f"burst {k} to end")
    assert all(STAMP.match(x) for x in log.read_text().splitlines())
    assert sorted(os.listdir(spool_dir / "logs")) == ["_supervisor.log"]
    r = cli(spool_dir, "worker", "start", "--detach")
    pid = int(re.search(r"PID=(\d+)", r.stdout).group(1))
    bg.extra_pids.append(pid)
    os.rename(log, str(log) + ".1")  # what logrotate does
    n = 0

    def rotated() -> bool:
        nonlocal n
        n += 1
        enqueue(spool_dir, "--id", f"r{n}", "true")
        return log.exists() and "completed r" in log.read_text()

    wait_for(rotated, 20, interval=0.3, what="a line in the new log file")
    cli(spool_dir, "worker", "stop")
    assert "[supervisor] stopped" in unstamped(log.read_text())
