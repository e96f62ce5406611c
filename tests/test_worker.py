"""Workers in-process: backoff, outcomes, running commands, retries, DLQ, recovery, wake-ups.

A Worker runs in the test process in burst mode (it returns when nothing is
left to do) with its output lines collected in a list, so these tests need no
subprocess of queuectl. The CLI end to end is in test_worker_cli.py, kills and
signals in test_faults.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from queuectl import recovery as recoverymod
from queuectl.fsio import write_tmp
from queuectl.job import JobState, parse_time
from queuectl.recovery import apply_outcome as _apply_outcome, backoff_delay, orphans, recover_orphan
from queuectl.runner import EXIT_KILLED_BY_STOP
from queuectl.spool import Spool
from queuectl.watcher import Watcher
from queuectl.worker import Worker

from support import cli_argv, job_file, pid_gone, read_pids, wait_for, where

HEADER_START = re.compile(r"^=== attempt (\d+)/(\d+) started \S+Z by (worker-\d+) \(\S+ pid \d+\) ===$")
HEADER_END = re.compile(r"^=== attempt (\d+)/(\d+) finished \S+Z exit (.+) after [\d.]+s ===$")


@pytest.fixture
def spool(spool_dir: Path):
    s = Spool(str(spool_dir))
    yield s
    s.close()


def add(spool: Spool, **spec):
    job = spool.new_job(spec)
    spool.enqueue(job)
    return job


def apply_outcome(job, entry, spool: Spool) -> float:
    return _apply_outcome(job, entry, spool.config)


@pytest.fixture
def drain(collect_lines):
    """drain(spool_dir, name="worker-0") runs one worker in burst mode until the queue is empty: its lines."""
    def _drain(spool_dir: Path, name: str = "worker-0", **kw) -> list[str]:
        lines = collect_lines(name)
        w = Worker(str(spool_dir), name, burst=True, **kw)
        assert w.run() == (4 if w.died else 0)  # 4: a job it ran ended in dead/
        return lines
    return _drain


def fast_retries(spool: Spool, cap: float = 0.05) -> None:
    spool.set_config("backoff_max", cap)


# -- backoff ---------------------------------------------------------------------------------


def test_backoff_grows_as_base_to_the_attempts():
    assert [backoff_delay(a, 2, 1000, 0) for a in range(1, 6)] == [2, 4, 8, 16, 32]
    assert [backoff_delay(a, 3, 1000, 0) for a in range(1, 4)] == [3, 9, 27]
    assert backoff_delay(1, 1.5, 1000, 0) == 1.5


def test_backoff_respects_the_cap():
    assert [backoff_delay(a, 2, 10, 0) for a in range(1, 6)] == [2, 4, 8, 10, 10]
    assert backoff_delay(1, 2, 0.05, 0) == 0.05
    # 2.0 ** 5000 overflows a float: still just the cap, not a crash
    assert backoff_delay(5000, 2, 60, 0) == 60
    assert backoff_delay(5000, 2, 60, 0.5) == 60


def test_backoff_jitter_adds_at_most_its_fraction(monkeypatch):
    monkeypatch.setattr(recoverymod.random, "random", lambda: 0.0)
    assert backoff_delay(3, 2, 1000, 0.25) == 8
    monkeypatch.setattr(recoverymod.random, "random", lambda: 0.5)
    assert backoff_delay(3, 2, 1000, 0.25) == 9
    monkeypatch.setattr(recoverymod.random, "random", lambda: 0.999999)
    assert 8 < backoff_delay(3, 2, 1000, 0.25) < 10
    # jitter never pushes a delay over the cap
    assert backoff_delay(3, 2, 8.5, 0.25) == 8.5


def test_backoff_jitter_is_random_within_bounds():
    delays = {backoff_delay(2, 2, 1000, 0.1) for _ in range(50)}
    assert all(4 <= d <= 4.4 for d in delays)
    assert len(delays) > 1


def _entry(code, error=None):
    return {"attempt": 0, "worker": "t", "exit_code": code, "error": error}


def test_apply_outcome_success(spool):
    job = spool.new_job({"id": "j", "command": "true"})
    job.last_error = "old"
    assert apply_outcome(job, _entry(0), spool) == 0.0
    assert (job.state, job.attempts, job.exit_code, job.last_error, job.next_run_at) == \
        (JobState.COMPLETED, 1, 0, None, None)
    assert job.history == [_entry(0)]


def test_apply_outcome_failures_back_off_then_die(spool):
    spool.set_config("backoff_base", 3)
    spool.set_config("backoff_max", 20)
    spool.set_config("backoff_jitter", 0)
    job = spool.new_job({"id": "j", "command": "false", "max_retries": 3})
    delays = []
    for attempt in (1, 2, 3):
        before = time.time()
        delay = apply_outcome(job, _entry(1, "exit 1"), spool)
        after = time.time()
        delays.append(delay)
        assert (job.state, job.attempts, job.last_error, job.exit_code) == (JobState.FAILED, attempt, "exit 1", 1)
        # next_run_at = now + delay (microsecond ISO stamps)
        due = parse_time(job.next_run_at)
        assert before + delay - 1e-5 <= due <= after + delay + 1e-5
    assert delays == [3, 9, 20]  # 27 is capped at backoff_max
    assert apply_outcome(job, _entry(1, "exit 1"), spool) == 0.0
    assert (job.state, job.attempts, job.next_run_at, job.last_error) == (JobState.DEAD, 4, None, "exit 1")
    assert len(job.history) == 4


def test_apply_outcome_error_without_exit_code(spool):
    job = spool.new_job({"id": "j", "command": "true", "max_retries": 0})
    apply_outcome(job, _entry(None, "cwd does not exist: /nowhere"), spool)
    assert (job.state, job.exit_code, job.last_error) == (JobState.DEAD, None, "cwd does not exist: /nowhere")


def test_failed_file_mtime_is_next_run_at(spool, spool_dir):
    spool.set_config("backoff_jitter", 0)
    add(spool, id="j", command="false", max_retries=2)
    claim = spool.claim("j", JobState.PENDING)
    assert claim is not None
    job = claim.job
    apply_outcome(job, _entry(1, "exit 1"), spool)
    spool.record(claim, job)
    assert where(spool_dir) == {"j": ["failed"]}
    on_disk = job_file(spool_dir, "failed", "j")
    due = parse_time(on_disk["next_run_at"])
    assert on_disk["attempts"] == 1 and on_disk["state"] == "failed"
    assert os.stat(spool_dir / "failed" / "j.json").st_mtime == pytest.approx(due, abs=1e-5)
    assert due - time.time() == pytest.approx(2, abs=1)
    # not a candidate before it is due, and the index knows when it is due
    assert spool.index.candidates(now=due - 0.5) == []
    assert spool.index.candidates(now=due + 0.01) == [("j", JobState.FAILED)]
    assert spool.index.next_due() == pytest.approx(due, abs=1e-5)


# -- running jobs --------------------------------------------------------------------------------


def test_seed_job_runs_and_logs(spool, spool_dir, drain):
    add(spool, id="job1", command="echo Hello from QueueCTL", max_retries=3)
    lines = drain(spool_dir)
    assert lines == [f"[worker-0] started PID={os.getpid()}",
                     "[worker-0] executing job job1: echo Hello from QueueCTL",
                     "[worker-0] completed job1"]
    assert where(spool_dir) == {"job1": ["done"]}
    done = job_file(spool_dir, "done", "job1")
    assert (done["state"], done["attempts"], done["exit_code"], done["last_error"]) == ("completed", 1, 0, None)
    [h] = done["history"]
    assert (h["attempt"], h["worker"], h["exit_code"], h["error"]) == (1, "worker-0", 0, None)
    log = (spool_dir / "logs" / "job1.log").read_text().splitlines()
    assert len(log) == 3
    assert HEADER_START.match(log[0]).groups() == ("1", "4", "worker-0")
    assert log[1] == "Hello from QueueCTL"
    assert HEADER_END.match(log[2]).groups() == ("1", "4", "0")
    # the worker's heartbeat file is gone once it stops
    assert os.listdir(spool_dir / "workers") == []


def test_exit_1_retries_then_dead_letter(spool, spool_dir, tmp_path, drain):
    fast_retries(spool)
    runs = tmp_path / "runs"
    add(spool, id="j", command=f"echo run >> {runs}; exit 1", max_retries=2)
    lines = drain(spool_dir)
    assert runs.read_text() == "run\n" * 3
    assert lines[1:] == [
        f"[worker-0] executing job j: echo run >> {runs}; exit 1",
        "[worker-0] failed j (attempt 1/3, exit 1), retry in 0.050s",
        f"[worker-0] executing job j: echo run >> {runs}; exit 1",
        "[worker-0] failed j (attempt 2/3, exit 1), retry in 0.050s",
        f"[worker-0] executing job j: echo run >> {runs}; exit 1",
        "[worker-0] failed j (attempt 3/3, exit 1)",
        "[worker-0] j moved to dead letter queue",
    ]
    assert where(spool_dir) == {"j": ["dead"]}
    dead = job_file(spool_dir, "dead", "j")
    assert (dead["attempts"], dead["exit_code"], dead["last_error"], dead["next_run_at"]) == (3, 1, "exit 1", None)
    assert [(h["attempt"], h["exit_code"], h["error"]) for h in dead["history"]] == \
        [(1, 1, "exit 1"), (2, 1, "exit 1"), (3, 1, "exit 1")]
    for h in dead["history"]:
        assert parse_time(h["started_at"]) <= parse_time(h["finished_at"])
    log = (spool_dir / "logs" / "j.log").read_text().splitlines()
    assert [HEADER_START.match(x).groups()[:2] for x in log if HEADER_START.match(x)] == \
        [("1", "3"), ("2", "3"), ("3", "3")]
    assert [HEADER_END.match(x).group(3) for x in log if HEADER_END.match(x)] == ["1", "1", "1"]


def test_max_retries_zero_is_dead_after_one_run(spool, spool_dir, tmp_path, drain):
    runs = tmp_path / "runs"
    add(spool, id="j", command=f"echo run >> {runs}; exit 3", max_retries=0)
    lines = drain(spool_dir)
    assert runs.read_text() == "run\n"
    assert lines[-2:] == ["[worker-0] failed j (attempt 1/1, exit 3)", "[worker-0] j moved to dead letter queue"]
    dead = job_file(spool_dir, "dead", "j")
    assert (dead["attempts"], dead["exit_code"], len(dead["history"])) == (1, 3, 1)


def test_command_not_found_is_an_ordinary_failure(spool, spool_dir, drain):
    fast_retries(spool)
    add(spool, id="j", command="queuectl-no-such-command-xyz", max_retries=1)
    lines = drain(spool_dir)
    assert "[worker-0] failed j (attempt 1/2, exit 127), retry in 0.050s" in lines
    dead = job_file(spool_dir, "dead", "j")
    assert (dead["attempts"], dead["exit_code"], dead["last_error"]) == (2, 127, "exit 127")
    assert b"not found" in (spool_dir / "logs" / "j.log").read_bytes()


def test_missing_cwd_fails_with_the_reason_and_the_worker_goes_on(spool, spool_dir, tmp_path, drain):
    fast_retries(spool)
    missing = tmp_path / "no" / "such" / "dir"
    marker = tmp_path / "marker"
    add(spool, id="a", command=f"touch {marker}", cwd=str(missing), max_retries=1, priority=1)
    add(spool, id="b", command=f"pwd > {marker}.b", cwd=str(tmp_path))
    lines = drain(spool_dir)
    reason = f"cwd does not exist: {missing}"
    assert f"[worker-0] failed a (attempt 1/2, {reason}), retry in 0.050s" in lines
    assert "[worker-0] completed b" in lines
    assert where(spool_dir) == {"a": ["dead"], "b": ["done"]}
    dead = job_file(spool_dir, "dead", "a")
    assert (dead["attempts"], dead["exit_code"], dead["last_error"]) == (2, None, reason)
    assert [h["error"] for h in dead["history"]] == [reason, reason]
    assert (spool_dir / "logs" / "a.log").read_text().count(reason + "\n") == 2
    assert not marker.exists()
    assert (tmp_path / "marker.b").read_text() == f"{tmp_path}\n"


def test_a_job_runs_in_its_cwd_and_the_worker_stays_where_it_was(spool, spool_dir, tmp_path, drain):
    """The spawn changes directory around each job with a cwd (posix_spawn cannot): it must come back,
    after a job it could not start as well."""
    here = os.getcwd()
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o000)
    add(spool, id="a", command=f"pwd > {tmp_path / 'a'}", cwd=str(locked), max_retries=0)
    add(spool, id="b", command=f"pwd > {tmp_path / 'b'}", cwd=str(tmp_path), priority=-1)
    drain(spool_dir)
    assert os.getcwd() == here
    if os.geteuid() == 0:
        assert (tmp_path / "a").read_text() == f"{locked}\n"  # root enters any directory
    else:
        assert job_file(spool_dir, "dead", "a")["last_error"].startswith("cannot start command: [Errno 13]")
    assert (tmp_path / "b").read_text() == f"{tmp_path}\n"


def test_commands_inherit_no_descriptors_but_the_claim_and_no_ignored_signals(spool_dir, run_proc):
    """The worker's own descriptors and the signals a worker ignores stay out of jobs, even a
    descriptor the worker's launcher leaked to it. One is passed on on purpose: the claim's lock
    on processing/ID.json, so that a command that outlives its worker still holds the job."""
    Spool(str(spool_dir)).close()
    # No redirection in the job's shell: dash would save a descriptor of its own for it. The signal
    # masks are grep's own: the shell's, read while it forks grep, are its own passing ones.
    run_proc("enqueue", "--id", "j", "ls -l /proc/$$/fd; grep -E '^Sig(Ign|Blk)' /proc/self/status")
    r, w = os.pipe()
    os.set_inheritable(w, True)  # what a careless launcher passes down
    try:
        p = subprocess.run(cli_argv(spool_dir, "worker", "start", "--burst"), pass_fds=(w,),
                           capture_output=True, text=True, timeout=60)
    finally:
        os.close(r)
        os.close(w)
    assert p.returncode == 0, p.stderr
    *listed, sig_ign, sig_blk = [line for line in (spool_dir / "logs" / "j.log").read_text().splitlines()
                                 if not line.startswith(("===", "total "))]
    fds = dict(line.split()[-3::2] for line in listed)  # "... 3 -> /path": {"3": "/path"}
    assert sorted(fds, key=int)[:3] == ["0", "1", "2"] and len(fds) == 4, fds
    assert [t for n, t in fds.items() if n not in ("0", "1", "2")] == [str(spool_dir / "processing" / "j.json")]
    masks = dict(line.split(":\t") for line in (sig_ign, sig_blk))
    ignored, blocked = int(masks["SigIgn"], 16), int(masks["SigBlk"], 16)
    for sig in (2, 13, 25):  # SIGINT, SIGPIPE, SIGXFSZ
        assert not ignored & (1 << (sig - 1)), f"signal {sig} ignored in the job: {masks}"
    assert blocked == 0, masks


def test_sibling_workers_try_their_own_share_of_the_queue_first(spool, spool_dir, drain):
    """Among jobs of equal priority each of N workers first takes the jobs whose id hashes to its
    lane (oldest first), then the rest in order: siblings do not all race for the same best job,
    and nothing is left behind."""
    from zlib import crc32
    ids = [f"j{i}" for i in range(10)]
    for job_id in ids:
        add(spool, id=job_id, command="true")
    lines = drain(spool_dir, lane=(1, 2))
    ran = [line.split()[-2].rstrip(":") for line in lines if "executing job" in line]
    mine = [j for j in ids if crc32(j.encode()) % 2 == 1]
    assert 0 < len(mine) < len(ids)  # the test means something only if the hash splits them
    assert ran == mine + [j for j in ids if j not in mine]
    assert ran != ids
    assert [line.split()[-2].rstrip(":") for line in drain(spool_dir) if "executing job" in line] == []


def test_lanes_order_equals_but_never_outrank_priority(spool, spool_dir, drain):
    """An idle worker whose share holds only low-priority jobs still runs a better job of its busy
    sibling's share first: lanes break ties, priority decides."""
    from zlib import crc32
    low = [f"low{i:02}" for i in range(20)]  # one query (CANDIDATES * 2) holds them all
    high = [f"high{i}" for i in range(40) if crc32(f"high{i}".encode()) % 2 == 0][:2]
    mine = [j for j in low if crc32(j.encode()) % 2 == 1]
    assert len(high) == 2 and mine  # the test means something only if the hash splits them so
    for job_id in low:
        add(spool, id=job_id, command="true")
    add(spool, id=high[0], command="true", priority=50)
    add(spool, id=high[1], command="true", priority=10)
    lines = drain(spool_dir, lane=(1, 2))  # worker 1 of 2; its sibling (lane 0) is busy elsewhere
    ran = [line.split()[-2].rstrip(":") for line in lines if "executing job" in line]
    assert ran[:2] == high, ran[:5]
    assert ran[2:] == mine + [j for j in low if j not in mine]


def test_a_freed_slot_goes_to_the_best_job_of_its_queue(spool, spool_dir, tmp_path, drain):
    """Found by the history checker (invariant 5): a worker that found queue lim's only slot held
    dropped lim's best job from its cached list, ran a job of another queue, and once the slot was
    free claimed a lower-priority lim job further down that same list. The slot is held here by
    another process until the other queue's job runs; the priority-1 job must win it."""
    import sys
    spool.set_config("queue.lim.concurrency", 1)
    slot = spool_dir / "queues" / "lim" / "slot.0"
    slot.parent.mkdir(parents=True, exist_ok=True)
    free = tmp_path / "free"
    hold = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "while not os.path.exists(sys.argv[2]): time.sleep(0.01)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(slot), str(free)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        add(spool, id="a-low", command="true", queue="lim")
        # Runs while lim's slot is held; ends once the holder has let it go (flock waits for it).
        wait_free = f"import fcntl; fcntl.flock(open({str(slot)!r}), fcntl.LOCK_EX)"
        add(spool, id="b-other", command=f"touch {free} && {sys.executable} -c \"{wait_free}\"")
        add(spool, id="c-low", command="true", queue="lim")
        add(spool, id="h-best", command="true", queue="lim", priority=1)
        lines = drain(spool_dir)
    finally:
        free.touch()
        holder.wait(10)
    ran = [re.search(r"executing job (\S+):", line)[1] for line in lines if "executing job" in line]
    assert ran == ["b-other", "h-best", "a-low", "c-low"]


def test_a_log_is_kept_for_attempts_that_wrote_or_failed_only(spool, spool_dir, tmp_path, drain):
    """A file create is the dearest thing a job does on some disks: a silent success makes none.
    Its history keeps when it ran and how it ended."""
    fast_retries(spool)
    add(spool, id="quiet", command="true")
    add(spool, id="talks", command="echo hello")
    add(spool, id="fails", command="exit 3", max_retries=0)
    add(spool, id="quiet-retry", command=f"test -e {tmp_path / 'second'} || {{ touch {tmp_path / 'second'}; exit 1; }}")
    drain(spool_dir)
    logs = spool_dir / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["fails.log", "quiet-retry.log", "talks.log"]
    talks = (logs / "talks.log").read_text().splitlines()
    assert talks[0].startswith("=== attempt 1/4 started ") and talks[1] == "hello"
    assert talks[2].startswith("=== attempt 1/4 finished ") and " exit 0 after " in talks[2] and len(talks) == 3
    assert " exit 3 after " in (logs / "fails.log").read_text()
    # The silent second attempt of a job that already has a log is appended to it, as always.
    retry = (logs / "quiet-retry.log").read_text()
    assert retry.count("started") == 2 and " exit 1 after " in retry and " exit 0 after " in retry
    quiet = job_file(spool_dir, "done", "quiet")
    assert [(h["attempt"], h["exit_code"]) for h in quiet["history"]] == [(1, 0)]
    assert quiet["history"][0]["started_at"] and quiet["history"][0]["finished_at"]
    # The worker's scratch file is gone with the worker.
    assert [p.name for p in (spool_dir / "workers").iterdir()] == []


@pytest.mark.slow
def test_a_log_never_holds_another_jobs_output(spool, spool_dir, drain):
    """A silent success may leave a process that still holds its output and writes later (in its
    process group, or in a session of its own): that output lands in its own job's log, never in
    the next job's, which the worker's reused scratch file would otherwise become."""
    add(spool, id="a", command="(sleep 0.6; echo LEAKED-A) &")
    add(spool, id="b", command="setsid sh -c 'sleep 0.6; echo LEAKED-B' &")
    add(spool, id="c", command="sleep 1.5; echo c")
    add(spool, id="d", command="true")  # after all that, a silent success still makes no log
    drain(spool_dir)
    logs = spool_dir / "logs"
    c = (logs / "c.log").read_text().splitlines()
    assert c[1:-1] == ["c"] and len(c) == 3, c
    wait_for(lambda: "LEAKED-A" in (logs / "a.log").read_text() and "LEAKED-B" in (logs / "b.log").read_text(),
             5, what="the late output in its own job's log")
    a = (logs / "a.log").read_text().splitlines()
    assert a[0].startswith("=== attempt 1/4 started ") and " exit 0 after " in a[1] and a[2:] == ["LEAKED-A"]
    assert sorted(p.name for p in logs.iterdir()) == ["a.log", "b.log", "c.log"]


def test_a_long_jobs_log_can_be_followed_while_it_runs(spool, spool_dir, tmp_path):
    go = tmp_path / "go"
    add(spool, id="long", command=f"echo first line; while [ ! -e {go} ]; do sleep 0.05; done; echo last line")
    w = Worker(str(spool_dir), "worker-0", burst=True)
    t = threading.Thread(target=w.run)
    t.start()
    try:
        log = spool_dir / "logs" / "long.log"
        wait_for(lambda: log.exists() and "first line" in log.read_text(), 10, what="the live log")
        assert (spool_dir / "processing" / "long.json").exists()
    finally:
        go.touch()
        t.join(20)
    assert not t.is_alive()
    lines = log.read_text().splitlines()
    assert lines[1:3] == ["first line", "last line"] and lines[3].startswith("=== attempt 1/4 finished ")
    assert [p.name for p in (spool_dir / "workers").iterdir()] == []


def test_job_env_reaches_the_command_on_top_of_the_workers(spool, spool_dir, tmp_path, monkeypatch, drain):
    monkeypatch.setenv("QCTL_FROM_WORKER", "inherited")
    monkeypatch.setenv("QCTL_OVERRIDDEN", "worker value")
    out = tmp_path / "out"
    add(spool, id="j", command=f'printf "%s|%s|%s" "$QCTL_A" "$QCTL_FROM_WORKER" "$QCTL_OVERRIDDEN" > {out}',
        env={"QCTL_A": "hello world; $(not expanded)", "QCTL_OVERRIDDEN": "job value"})
    drain(spool_dir)
    assert out.read_text() == "hello world; $(not expanded)|inherited|job value"


def test_stdin_is_not_the_workers(spool, spool_dir, tmp_path, drain):
    out = tmp_path / "out"
    add(spool, id="j", command=f"cat > {out}; echo rc=$? >> {out}")
    drain(spool_dir)
    assert out.read_text() == "rc=0\n"


def test_timeout_kills_the_whole_process_group(spool, spool_dir, tmp_path, drain):
    spool.set_config("kill_grace", 0.2)
    pidfile = tmp_path / "pids"
    add(spool, id="j", command=f"sleep 30 & echo $! > {pidfile}; sleep 30; wait", timeout=0.5, max_retries=0)
    t0 = time.monotonic()
    try:
        lines = drain(spool_dir)
        assert time.monotonic() - t0 < 10
        [child] = read_pids(pidfile)
        wait_for(lambda: pid_gone(child), 5, what=f"stray sleep {child} is gone")
    finally:
        for pid in read_pids(pidfile):
            if not pid_gone(pid):
                os.kill(pid, 9)
    assert "[worker-0] failed j (attempt 1/1, timed out after 0.5s)" in lines
    dead = job_file(spool_dir, "dead", "j")
    assert dead["last_error"] == "timed out after 0.5s"
    assert dead["history"][0]["error"] == "timed out after 0.5s"
    assert "timed out after 0.5s" in (spool_dir / "logs" / "j.log").read_text()


def test_config_timeout_and_sigkill_after_grace_for_a_group_ignoring_term(spool, spool_dir, tmp_path, drain):
    spool.set_config("job_timeout", 0.3)
    spool.set_config("kill_grace", 0.3)
    pidfile = tmp_path / "pids"
    # An ignored signal stays ignored across exec: the child sleep ignores TERM too.
    add(spool, id="j", command=f"trap '' TERM; sleep 30 & echo $! > {pidfile}; wait; wait", max_retries=0)
    try:
        drain(spool_dir)
        [child] = read_pids(pidfile)
        wait_for(lambda: pid_gone(child), 5, what=f"TERM-ignoring sleep {child} is killed")
    finally:
        for pid in read_pids(pidfile):
            if not pid_gone(pid):
                os.kill(pid, 9)
    dead = job_file(spool_dir, "dead", "j")
    assert dead["last_error"] == "timed out after 0.3s"


def test_huge_and_non_utf8_output(spool, spool_dir, drain):
    size = 6 * 1024 * 1024
    spool.set_config("max_log_size", 0)  # the whole log, byte for byte (the cap has its own tests)
    add(spool, id="big", priority=1,
        command=f"head -c {size} /dev/zero | tr '\\0' x; printf '\\377\\376bad\\200\\n'; printf 'err\\377' >&2")
    add(spool, id="after", command="echo still here")
    lines = drain(spool_dir)
    assert lines[-1] == "[worker-0] completed after"
    assert "[worker-0] completed big" in lines
    log = (spool_dir / "logs" / "big.log").read_bytes()
    body = log.split(b"\n", 1)[1]
    assert body.startswith(b"x" * size + b"\xff\xfebad\x80\nerr\xff\n=== attempt 1/4 finished ")
    # output without a final newline: the footer still starts its own line
    assert HEADER_END.match(log.rsplit(b"\n", 2)[1].decode())
    assert (spool_dir / "logs" / "after.log").read_text().splitlines()[1] == "still here"


def test_priority_first_then_creation_order(spool, spool_dir, tmp_path, drain):
    order = tmp_path / "order"
    # ids deliberately not in creation order, so creation order is not name order
    for job_id, prio in [("m", 0), ("z", 5), ("c", 0), ("a", -1), ("y", 5), ("b", 0), ("x", 10)]:
        add(spool, id=job_id, command=f"echo {job_id} >> {order}", priority=prio)
    drain(spool_dir)
    assert order.read_text().split() == ["x", "z", "y", "m", "c", "b", "a"]


def test_due_failed_job_competes_by_priority(spool, spool_dir, tmp_path, drain):
    fast_retries(spool, 0.02)
    order = tmp_path / "order"
    flag = tmp_path / "flag"
    # f fails once; by the time it is due again, lower-priority l is still waiting
    add(spool, id="f", priority=5, command=f"echo f >> {order}; test -e {flag} || {{ touch {flag}; exit 1; }}")
    add(spool, id="s", priority=1, command=f"sleep 0.2; echo s >> {order}")
    add(spool, id="l", priority=0, command=f"echo l >> {order}")
    drain(spool_dir)
    # f's retry is due while s runs (or sooner): it must not wait behind l
    assert order.read_text().split() in (["f", "s", "f", "l"], ["f", "f", "s", "l"])


def test_kill_jobs_interrupts_without_counting_an_attempt(spool, spool_dir, tmp_path, collect_lines):
    spool.set_config("kill_grace", 0.2)
    started = tmp_path / "started"
    pidfile = tmp_path / "pid"
    add(spool, id="j", command=f"sleep 30 & echo $! > {pidfile}; touch {started}; wait", max_retries=2)
    lines = collect_lines("worker-0")
    w = Worker(str(spool_dir), "worker-0", burst=True)

    def stop_when_started():
        wait_for(started.exists, 10)
        w.stopping = w.kill_jobs = True  # what the SIGUSR1 handler does

    t = threading.Thread(target=stop_when_started)
    t.start()
    try:
        assert w.run() == (4 if w.died else 0)  # 4: a job it ran ended in dead/
        t.join()
        [child] = read_pids(pidfile)
        wait_for(lambda: pid_gone(child), 5)
    finally:
        for pid in read_pids(pidfile):
            if not pid_gone(pid):
                os.kill(pid, 9)
    assert lines[-1] == "[worker-0] interrupted j: back to pending"
    assert where(spool_dir) == {"j": ["pending"]}
    job = job_file(spool_dir, "pending", "j")
    assert (job["state"], job["attempts"], job["next_run_at"]) == ("pending", 0, None)
    [h] = job["history"]
    assert (h["counted"], h["error"], h["attempt"]) == (False, EXIT_KILLED_BY_STOP, 1)


@pytest.mark.slow
def test_burst_waits_for_a_drop_in_still_in_its_grace_period(spool, spool_dir, drain):
    spool.set_config("dropin_grace", 0.5)
    (spool_dir / "pending" / "half.json").write_bytes(b'{"command": "echo hi"')  # still being written?
    t0 = time.monotonic()
    drain(spool_dir)
    assert time.monotonic() - t0 >= 0.4
    assert os.path.exists(spool_dir / "rejected" / "half.json")
    assert os.listdir(spool_dir / "pending") == []


def test_burst_runs_a_valid_drop_in(spool, spool_dir, tmp_path, drain):
    out = tmp_path / "out"
    (spool_dir / "pending" / ".d.tmp").write_text(json.dumps({"command": f"echo dropped > {out}"}))
    os.rename(spool_dir / "pending" / ".d.tmp", spool_dir / "pending" / "d.json")
    lines = drain(spool_dir)
    assert "[worker-0] completed d" in lines
    assert out.read_text() == "dropped\n"


def test_a_job_mid_enqueue_is_not_rejected_by_a_woken_worker(spool, spool_dir, drain):
    """enqueue links tmp/X into pending/ (waking workers), then unlinks tmp/X and writes the
    index row: a worker that lists pending/ in between must wait, not reject the job."""
    job = spool.new_job({"id": "j", "command": "true"})
    tmp, _ = write_tmp(spool.path("tmp"), job.to_json(), durable=False)
    os.link(tmp, spool_dir / "pending" / "j.json")
    worker_view = Spool(str(spool_dir))
    try:
        report = worker_view.sync()
        assert (report.rejected, report.waiting) == ([], 1)
        assert where(spool_dir) == {"j": ["pending"]}
        assert os.listdir(spool_dir / "rejected") == []
        os.unlink(tmp)
        assert worker_view.sync().accepted == ["j"]
    finally:
        worker_view.close()
    assert drain(spool_dir)[-1] == "[worker-0] completed j"


# -- recovery --------------------------------------------------------------------------------------


def _orphan(spool: Spool, spool_dir: Path, job_id: str) -> None:
    """What a worker killed mid-job leaves: the file in processing/, nobody holding its lock."""
    os.rename(spool_dir / "pending" / f"{job_id}.json", spool_dir / "processing" / f"{job_id}.json")


def test_orphan_is_recovered_counted_and_retried(spool, spool_dir, tmp_path, drain):
    fast_retries(spool)
    runs = tmp_path / "runs"
    add(spool, id="j", command=f"echo run >> {runs}", max_retries=1)
    _orphan(spool, spool_dir, "j")
    lines = drain(spool_dir)
    assert "[worker-0] recovered j (worker died, attempt 1/2): retry in 0.050s" in lines
    assert lines[-1] == "[worker-0] completed j"
    assert runs.read_text() == "run\n"
    done = job_file(spool_dir, "done", "j")
    assert done["attempts"] == 2
    assert [(h["attempt"], h["error"]) for h in done["history"]] == [(1, "worker died"), (2, None)]


def test_orphan_without_retries_left_is_buried_unrun(spool, spool_dir, tmp_path, drain):
    runs = tmp_path / "runs"
    add(spool, id="j", command=f"echo run >> {runs}", max_retries=0)
    _orphan(spool, spool_dir, "j")
    lines = drain(spool_dir)
    assert "[worker-0] recovered j (worker died, attempt 1/1): moved to dead letter queue" in lines
    assert not runs.exists()
    dead = job_file(spool_dir, "dead", "j")
    assert (dead["attempts"], dead["last_error"]) == (1, "worker died")


def test_a_retry_whose_worker_dies_counts_an_attempt(spool, spool_dir, tmp_path):
    """A job that kills its worker on every retry must still reach the dead letter queue."""
    fast_retries(spool)
    add(spool, id="j", command="exit 1", max_retries=2)
    claim = spool.claim("j", JobState.PENDING)
    job = claim.job
    apply_outcome(job, {"attempt": 1, "exit_code": 1, "error": "exit 1"}, spool)
    spool.record(claim, job)
    assert (job.state, job.attempts) == (JobState.FAILED, 1)
    for attempts in (2, 3):
        claim = spool.claim("j", JobState.FAILED)  # the retry, claimed with its file unchanged...
        claim.release()                             # ...and its worker dies
        [orphan] = list(orphans(spool))
        recover_orphan(spool, orphan, "test")
        state = JobState.FAILED if attempts == 2 else JobState.DEAD
        recovered = job_file(spool_dir, state.dirname, "j")
        assert (recovered["attempts"], recovered["last_error"]) == (attempts, "worker died")


def test_a_kill_asked_of_a_job_whose_worker_dies_ends_it_and_is_consumed(spool, spool_dir):
    """A kill request still waiting when the job's worker dies: recovery ends the job as the
    kill asked (dead, not retried) and removes the request, so it cannot end a later run."""
    add(spool, id="j", command="sleep 60", max_retries=3)
    claim = spool.claim("j", JobState.PENDING)
    (spool_dir / "kill" / "j").write_text('{"attempt": 1, "retry": false, "signal": "SIGTERM"}\n')
    claim.release()  # its worker dies
    [orphan] = list(orphans(spool))
    recover_orphan(spool, orphan, "test")
    recovered = job_file(spool_dir, "dead", "j")
    assert (recovered["attempts"], recovered["last_error"]) == (1, "worker died")
    assert os.listdir(spool_dir / "kill") == []


def test_a_locked_processing_file_is_not_an_orphan(spool, spool_dir):
    add(spool, id="j", command="true")
    claim = spool.claim("j", JobState.PENDING)  # holds the flock like a live worker
    try:
        assert list(orphans(spool)) == []
    finally:
        claim.release()
    [orphan] = list(orphans(spool))
    orphan.release()
    assert orphan.job.id == "j"


def test_recovery_finishes_a_move_the_owner_had_recorded(spool, spool_dir, drain):
    add(spool, id="j", command="true")
    claim = spool.claim("j", JobState.PENDING)
    job = claim.job
    apply_outcome(job, _entry(0), spool)
    # the owner rewrote processing/j.json with its outcome, then died before the last rename
    (spool_dir / "processing" / "j.json").write_bytes(job.to_json())
    claim.release()
    lines = drain(spool_dir)
    assert not any("recovered" in x for x in lines)
    done = job_file(spool_dir, "done", "j")
    assert (done["attempts"], len(done["history"])) == (1, 1)


def test_a_worker_that_drops_its_result_does_not_say_completed(spool, spool_dir, drain):
    """Another host's recovery moved the job on while it ran (here: to dead/, so nothing runs it
    again): the worker's outcome is not the job's, and its log must not say `completed j`."""
    add(spool, id="j", command=f"mv {spool_dir}/processing/j.json {spool_dir}/dead/j.json")
    lines = drain(spool_dir)
    assert any("job j was moved on by another worker meanwhile: dropping this worker's result" in x
               for x in lines), lines
    assert not any("completed j" in x for x in lines), lines
    assert where(spool_dir) == {"j": ["dead"]}


# -- the dead letter queue and logs through the CLI (in-process) -------------------------------------


@pytest.fixture
def dead_pair(spool, spool_dir, tmp_path, drain):
    """Two dead jobs, d1 and d2, and a completed one, ok."""
    add(spool, id="d1", command="echo one; exit 1", max_retries=0)
    add(spool, id="d2", command="exit 2", max_retries=0)
    add(spool, id="ok", command="true")
    drain(spool_dir)
    assert where(spool_dir) == {"d1": ["dead"], "d2": ["dead"], "ok": ["done"]}
    return spool_dir


def test_dlq_list(run, dead_pair):
    r = run("dlq", "list")
    assert (r.exit_code, r.stdout, r.stderr) == (
        0, "d1 - attempts 1 - exit 1 - echo one; exit 1\nd2 - attempts 1 - exit 2 - exit 2\n", "")
    r = run("dlq", "list", "--json")
    jobs = json.loads(r.stdout)
    assert [(j["id"], j["attempts"], j["last_error"], j["state"]) for j in jobs] == \
        [("d1", 1, "exit 1", "dead"), ("d2", 1, "exit 2", "dead")]


def test_dlq_list_empty(run):
    r = run("dlq", "list")
    assert (r.exit_code, r.stdout) == (0, "")
    assert json.loads(run("dlq", "list", "--json").stdout) == []


def test_dlq_retry_one_keeps_history_and_resets_attempts(run, dead_pair, tmp_path, drain):
    r = run("dlq", "retry", "d1")
    assert (r.exit_code, r.stdout) == (0, "requeued job d1\n")
    assert where(dead_pair)["d1"] == ["pending"]
    job = job_file(dead_pair, "pending", "d1")
    assert (job["state"], job["attempts"], job["next_run_at"]) == ("pending", 0, None)
    assert job["history"][0]["error"] == "exit 1"
    assert len(job["history"]) == 2
    assert run("status", "--json").stdout and json.loads(run("status", "--json").stdout)["pending"] == 1
    assert [j["id"] for j in json.loads(run("dlq", "list", "--json").stdout)] == ["d2"]
    # and it runs again, as attempt 1 of 1
    lines = drain(dead_pair)
    assert "[worker-0] failed d1 (attempt 1/1, exit 1)" in lines
    assert job_file(dead_pair, "dead", "d1")["attempts"] == 1
    assert (dead_pair / "logs" / "d1.log").read_text().count("one\n") == 2


def test_dlq_retry_all(run, dead_pair):
    r = run("dlq", "retry", "--all")
    assert (r.exit_code, r.stdout) == (0, "requeued job d1\nrequeued job d2\n")
    assert where(dead_pair) == {"d1": ["pending"], "d2": ["pending"], "ok": ["done"]}
    r = run("dlq", "retry", "--all")
    assert (r.exit_code, r.stdout) == (0, "")


@pytest.mark.parametrize("cmd", ["retry", "purge"])
def test_dlq_unknown_or_live_id_is_an_error(run, dead_pair, cmd):
    r = run("dlq", cmd, "nope")
    assert r.exit_code == 1
    assert r.stderr == "Error: no job nope\n"
    r = run("dlq", cmd, "ok")
    assert r.exit_code == 1
    assert r.stderr == "Error: job ok is not in the dead letter queue (it is completed)\n"
    # nothing happened to the others, even when a good id came first
    r = run("dlq", cmd, "d1", "nope")
    assert r.exit_code == 1
    assert where(dead_pair) == {"d1": ["dead"], "d2": ["dead"], "ok": ["done"]}


@pytest.mark.parametrize("args", [(), ("d1", "--all")])
def test_dlq_needs_ids_or_all(run, dead_pair, args):
    for cmd in ("retry", "purge"):
        r = run("dlq", cmd, *args, *(["--yes"] * (cmd == "purge" and "--all" in args)))
        assert r.exit_code == 2
        assert "Error: give job IDs or --all" in r.stderr


def test_dlq_purge(run, dead_pair):
    assert (dead_pair / "logs" / "d1.log").exists()
    r = run("dlq", "purge", "d1")
    assert (r.exit_code, r.stdout) == (0, "purged job d1\n")
    assert where(dead_pair) == {"d2": ["dead"], "ok": ["done"]}
    assert not (dead_pair / "logs" / "d1.log").exists()
    assert json.loads(run("status", "--json").stdout)["dead"] == 1


def test_dlq_purge_all_needs_yes(run, dead_pair):
    r = run("dlq", "purge", "--all")
    assert r.exit_code == 2
    assert "Error: --all deletes every dead job: add --yes to confirm" in r.stderr
    assert where(dead_pair) == {"d1": ["dead"], "d2": ["dead"], "ok": ["done"]}
    r = run("dlq", "purge", "--all", "--yes")
    assert (r.exit_code, r.stdout) == (0, "purged job d1\npurged job d2\n")
    assert where(dead_pair) == {"ok": ["done"]}
    assert json.loads(run("dlq", "list", "--json").stdout) == []


def test_logs_prints_every_attempt(run, spool, spool_dir, drain):
    fast_retries(spool)
    add(spool, id="j", command="echo out; echo err >&2; exit 4", max_retries=1)
    drain(spool_dir)
    r = run("logs", "j")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert len(lines) == 8
    assert [HEADER_START.match(x).groups() for x in lines[0::4]] == [("1", "2", "worker-0"), ("2", "2", "worker-0")]
    assert [HEADER_END.match(x).groups()[:3] for x in lines[3::4]] == [("1", "2", "4"), ("2", "2", "4")]
    assert sorted(lines[1:3]) == sorted(lines[5:7]) == ["err", "out"]
    # --follow on a finished job prints the same and returns
    assert run("logs", "j", "--follow").stdout == r.stdout


def test_logs_of_a_job_not_yet_run_is_empty_and_unknown_id_is_an_error(run, spool):
    add(spool, id="j", command="true")
    r = run("logs", "j")
    assert (r.exit_code, r.stdout) == (0, "")
    r = run("logs", "nope")
    assert (r.exit_code, r.stderr) == (1, "Error: no job nope\n")


def test_no_workers(run):
    r = run("worker", "list")
    assert (r.exit_code, r.stdout) == (0, "")
    assert json.loads(run("worker", "list", "--json").stdout) == []
    assert "workers:    0 (no workers running)" in run("status").stdout.splitlines()
    r = run("worker", "stop")
    assert (r.exit_code, r.stdout) == (0, "no running supervisor\n")


def test_worker_refuses_a_group_writable_spool(run, spool_dir):
    run("status")
    os.chmod(spool_dir, 0o770)
    r = run("worker", "start", "--burst")
    assert r.exit_code == 1
    assert r.stderr.startswith(f"Error: spool {spool_dir} is writable by group or others (mode 770)")
    assert "--allow-shared-spool" in r.stderr


# -- wake-ups ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("poll", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["inotify", "polling"])
def test_watcher_wakes_on_arrivals_not_departures(tmp_path, poll):
    pending = tmp_path / "pending"
    other = tmp_path / "tmp"
    pending.mkdir()
    other.mkdir()
    w = Watcher([str(pending)], poll=poll, poll_interval=0.1, ignore=lambda name: name.endswith(".tmp"))
    w.start()
    try:
        time.sleep(0.2) if poll else None  # the polling observer's first snapshot
        assert not w.arrived()
        # renamed in from elsewhere in the spool (a "moved" event)
        (other / "a.json").write_text("{}")
        os.rename(other / "a.json", pending / "a.json")
        assert w.wait(5)
        wait_for(w.arrived, 5)
        # written in place (a "created" event)
        (pending / "b.json").write_text("{}")
        assert w.wait(5)
        time.sleep(0.3)  # let the write's own trailing events arrive
        w.wait(0)
        assert w.arrived()
        # a claim renames a file out: no wake-up
        os.rename(pending / "a.json", other / "a.json")
        assert not w.wait(0.5)
        assert not w.arrived()
        # a writer's scratch file is no arrival; its rename to the real name is
        (pending / "c.tmp").write_text("{}")
        assert not w.wait(0.5)
        os.rename(pending / "c.tmp", pending / "c.json")
        assert w.wait(5)
    finally:
        w.stop()


def test_watcher_wake_ends_a_wait_from_another_thread(tmp_path):
    w = Watcher([str(tmp_path)])
    w.start()
    try:
        threading.Timer(0.1, w.wake).start()
        t0 = time.monotonic()
        assert w.wait(10)
        assert time.monotonic() - t0 < 5
        assert not w.wait(0.05)  # one wake-up, answered once
        w.wake()  # before the wait: that wait returns at once
        assert w.wait(10)
    finally:
        w.stop()
    assert not w.running


def test_watcher_wake_dirs_wake_without_an_arrival(tmp_path):
    jobs, done = tmp_path / "pending", tmp_path / "done"
    jobs.mkdir()
    done.mkdir()
    w = Watcher([str(jobs)], wake_dirs=[str(done)])
    w.start()
    try:
        (done / "j.json").write_text("{}")
        assert w.wait(5)
        assert not w.arrived()
    finally:
        w.stop()


def test_a_watched_directory_that_moves_away_counts_as_an_arrival(tmp_path):
    """Events are hints: when the directory goes away (or inotify drops events), only a scan can tell."""
    jobs = tmp_path / "pending"
    jobs.mkdir()
    w = Watcher([str(jobs)])
    w.start()
    try:
        if w._observer is not None:
            pytest.skip("no inotify here: watchdog's observer watches")
        jobs.rename(tmp_path / "moved")
        assert w.wait(5)
        assert w.arrived()
    finally:
        w.stop()


@pytest.mark.slow
def test_idle_worker_wakes_for_a_new_job(spool, spool_dir, tmp_path, collect_lines):
    """A non-burst worker waiting in the loop picks up a job dropped in later."""
    lines = collect_lines("worker-0")
    w = Worker(str(spool_dir), "worker-0", burst=False)
    t = threading.Thread(target=w.run)
    t.start()
    try:
        wait_for(lambda: lines and w.watcher is not None and w.watcher.running, 5)
        marker = tmp_path / "marker"
        t0 = time.monotonic()
        add(spool, id="late", command=f"echo ok > {marker}")
        wait_for(marker.exists, 5)
        # inotify wakes it well before the 1 s rescan timer would
        assert time.monotonic() - t0 < 0.9
    finally:
        w._on_stop(None, None)
        t.join(10)
    assert not t.is_alive()
    assert "[worker-0] completed late" in lines


def test_a_job_leased_by_a_live_worker_on_another_host_is_not_recovered(spool, spool_dir):
    """Where flock does not reach across hosts (sshfs), the heartbeat lease stands in for it."""
    add(spool, id="j", command="true")
    _orphan(spool, spool_dir, "j")  # lock free, as another host's lock looks from here
    hb = spool_dir / "workers" / "elsewhere.4242.json"
    hb.write_text(json.dumps({"id": "worker-0", "role": "worker", "host": "elsewhere", "pid": 4242, "job": "j"}))
    assert list(orphans(spool)) == []
    lapsed = time.time() - spool.config.lease - 1
    os.utime(hb, (lapsed, lapsed))  # its heartbeat is older than the lease: that worker is gone
    [claim] = list(orphans(spool))
    claim.release()
    assert claim.job.id == "j"


def test_a_shared_spool_spreads_claims_only_among_jobs_of_the_best_priority(spool_dir, tmp_path, monkeypatch):
    """Hosts sharing a spool claim in random order among the best few candidates, so they do not all
    collide on one job; a shuffle of the best 8 ignoring priority let a priority-0 job go before a
    priority-5 one. Only equals are shuffled."""
    import random
    from queuectl.candidates import SPREAD, candidates
    monkeypatch.setenv("QUEUECTL_SHARED", "1")
    monkeypatch.setenv("QUEUECTL_INDEX", str(tmp_path / "index.db"))
    s = Spool(str(spool_dir))
    assert s.multihost
    best = {f"best{i}" for i in range(3)}
    for i in range(12):
        add(s, id=f"low{i:02}", command="true")
    for job_id in sorted(best):
        add(s, id=job_id, command="true", priority=5)
    orders = set()
    for seed in range(40):
        random.seed(seed)
        found = [c[0] for c in candidates(s, None, set(), 0, 1)]
        assert set(found[-3:]) == best, found
        assert found[:-3] == [f"low{i:02}" for i in reversed(range(12))]
        orders.add(tuple(found[-3:]))
    assert len(orders) > 1  # still spread among the equals
    for i in range(12, 12 + SPREAD):
        add(s, id=f"low{i:02}", command="true")
    random.seed(0)
    lows = [c[0] for c in candidates(s, None, set(), 0, 1) if c[0].startswith("low")]
    assert lows == sorted(lows, reverse=True)  # never shuffled: none of them is of the best priority
    s.close()


# -- the record's file, created while the command runs ---------------------------------------------


def test_a_record_is_written_into_the_file_made_ahead_and_leaves_no_scratch_file(spool, spool_dir):
    job = add(spool, command="true")
    claim = spool.claim(job.id, JobState.PENDING)
    spool.spare.make()
    path, _fd = spool.spare.file
    ino = os.stat(path).st_ino
    assert os.path.getsize(path) == 0
    claim.job.state = JobState.COMPLETED
    assert spool.record(claim, claim.job)
    assert os.stat(spool_dir / "done" / f"{job.id}.json").st_ino == ino  # the spare, not a new file
    assert spool.read_job(str(spool_dir / "done" / f"{job.id}.json")).state is JobState.COMPLETED
    assert os.listdir(spool_dir / "tmp") == []
    spool.spare.make()
    spool.close()  # a spare never outlives its spool
    assert os.listdir(spool_dir / "tmp") == []


def test_a_drain_leaves_tmp_empty_and_a_long_job_keeps_no_spare_while_it_runs(spool, spool_dir, drain):
    for _ in range(5):
        add(spool, command="true")
    add(spool, command=f"sleep 1; ls -A {spool_dir / 'tmp'} > {spool_dir / 'seen'}")
    drain(spool_dir)
    spool.sync()
    assert spool.index.counts()["completed"] == 6
    # `check` would take a scratch file kept for the whole of a long job for a leftover
    assert (spool_dir / "seen").read_text() == ""
    assert os.listdir(spool_dir / "tmp") == []
