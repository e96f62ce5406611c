"""Reliability, round two (issue 9): early kills, edits of running jobs, spool ownership,
read-only spools, racing dead-letter commands. Each test failed on the code before its fix."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from queuectl.worker import RECOVER_INTERVAL

from support import cli, qc, wait_for, where

NOBODY = 65534


def _marked(job_id: str) -> list[int]:
    """Pids of processes running (a command of) this job: it carries QUEUECTL_JOB_ID."""
    needle = f"\0QUEUECTL_JOB_ID={job_id}\0".encode()
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                env = b"\0" + Path(f"/proc/{name}/environ").read_bytes()
            except OSError:
                continue
            if needle in env:
                pids.append(int(name))
    return pids


@pytest.mark.slow
def test_a_job_that_kills_its_worker_at_once_never_runs_beside_its_retry(spool_dir, tmp_path, bg):
    """Item 3: the worker dies before the job's pid reaches its heartbeat; the leftover is still killed."""
    runs = tmp_path / "runs"
    cli(spool_dir, "config", "set", "backoff_max", "0.05")
    cli(spool_dir, "enqueue", "--id", "k", "--max-retries", "2",
        f"echo start >> {runs}; kill -9 $PPID; sleep 1; echo late >> {runs}")
    sup = bg("worker", "start", "--count", "1")
    wait_for(lambda: where(spool_dir).get("k") == ["dead"], 30)
    # Every attempt's leftover was killed before the next attempt (or the burial) was recorded...
    assert _marked("k") == []
    # ...so none of them gets to write "late", however long we give it.
    time.sleep(1.5)
    assert runs.read_text().split() == ["start"] * 3
    text = "\n".join(sup.lines())
    assert text.count("recovered k (worker died") == 3


@pytest.mark.slow
def test_output_of_an_attempt_whose_worker_died_is_kept_in_the_log(spool_dir, bg):
    """The command writes into its worker's scratch file until the attempt proves worth a log;
    a worker killed before that must not take the output with it: recovery makes it the log."""
    cli(spool_dir, "config", "set", "backoff_max", "0.05")
    cli(spool_dir, "enqueue", "--id", "k", "--max-retries", "0", "echo said before dying; kill -9 $PPID; sleep 1")
    bg("worker", "start", "--count", "1")
    wait_for(lambda: where(spool_dir).get("k") == ["dead"], 30)
    log = (spool_dir / "logs" / "k.log").read_text()
    assert log.startswith("=== attempt 1/1 started ") and "\nsaid before dying\n" in log, log
    wait_for(lambda: not any(p.name.endswith(".out") and p.stat().st_size
                             for p in (spool_dir / "workers").iterdir()), 10, what="the scratch file emptied")


@pytest.mark.slow
def test_sed_i_on_a_running_job_does_not_make_another_worker_run_it(spool_dir, tmp_path, bg):
    """Item 4: an edit in place replaces the claimed inode; the claim record still names the owner."""
    runs = tmp_path / "runs"
    go = tmp_path / "go"
    cli(spool_dir, "enqueue", "--id", "ed", f"echo run >> {runs}; while [ ! -e {go} ]; do sleep 0.05; done")
    sup = bg("worker", "start", "--count", "2")
    wait_for(runs.exists, 20)
    subprocess.run(["sed", "-i", "s/echo run/echo  run/", str(spool_dir / "processing" / "ed.json")], check=True)
    r = qc(spool_dir, "check")
    assert r.returncode == 1
    assert "replaced-claim: processing/ed.json: replaced while worker-" in r.stdout
    # Nothing to wait on: a recovery pass that leaves the job alone leaves no trace.
    # Both idle workers run one every RECOVER_INTERVAL, so outlast it.
    time.sleep(RECOVER_INTERVAL + 0.5)
    go.touch()
    wait_for(lambda: where(spool_dir).get("ed") == ["done"], 20)
    assert runs.read_text() == "run\n"
    assert not any("recovered ed" in line for line in sup.lines())


def test_another_users_spool_is_refused_by_workers_and_reported_by_check(tmp_path):
    """Item 5: a spool someone else created (in a 1777 directory like /tmp) never runs its jobs as you."""
    spool = tmp_path / "spool"
    marker = tmp_path / "ran"
    assert qc(spool, "enqueue", f"touch {marker}").returncode == 0
    for dirpath, dirnames, filenames in os.walk(spool):
        for n in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
            os.chown(n, NOBODY, NOBODY)
    r = qc(spool, "worker", "start", "--burst")
    assert r.returncode == 1
    assert r.stderr.startswith(f"Error: spool {spool} is owned by uid {NOBODY}, not by you (uid {os.geteuid()})")
    assert "Traceback" not in r.stderr
    assert not marker.exists()
    r = qc(spool, "check")
    assert r.returncode == 1 and f"permissions: .: directory is owned by uid {NOBODY}" in r.stdout


def test_a_group_writable_subdirectory_is_refused(tmp_path):
    spool = tmp_path / "spool"
    marker = tmp_path / "ran"
    assert qc(spool, "enqueue", f"touch {marker}").returncode == 0
    os.chmod(spool, 0o755)
    os.chmod(spool / "pending", 0o777)
    r = qc(spool, "worker", "start", "--burst")
    assert r.returncode == 1
    assert r.stderr.startswith(f"Error: spool directory {spool / 'pending'} is writable by group or others "
                               "(mode 777)")
    assert not marker.exists()
    assert qc(spool, "worker", "start", "--burst", "--allow-shared-spool").returncode == 0
    assert marker.exists()


def test_a_dropin_owned_by_another_user_is_rejected_with_a_reason(tmp_path, run, spool_dir):
    marker = tmp_path / "ran"
    run("status")
    f = spool_dir / "pending" / "theirs.json"
    f.write_text(f'{{"command": "touch {marker}"}}')
    os.chown(f, NOBODY, NOBODY)
    r = run("status")
    assert f"queuectl: rejected theirs.json: owned by uid {NOBODY}" in r.stderr
    assert (spool_dir / "rejected" / "theirs.json").exists()
    assert "not by the spool's user" in (spool_dir / "rejected" / "theirs.json.reason").read_text()
    assert qc(spool_dir, "worker", "start", "--burst").returncode == 0
    assert not marker.exists()


@pytest.fixture
def readonly_spool(tmp_path):
    """A spool with a job in each of pending, done and dead, on a filesystem mounted read-only."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        spool = mnt / "spool"
        cli(spool, "config", "set", "backoff_max", "0.05")
        cli(spool, "enqueue", "--id", "ok", "true")
        cli(spool, "enqueue", "--id", "bad", "--max-retries", "0", "exit 3")
        assert qc(spool, "worker", "start", "--burst").returncode == 1  # 1: a job ended in dead/
        cli(spool, "enqueue", "--id", "later", "true")
        assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)]).returncode == 0
        yield spool
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_a_read_only_spool_can_be_inspected(readonly_spool):
    """Item 9: status, list, show, check and dlq list work on a snapshot or a read-only mount."""
    spool = readonly_spool
    r = qc(spool, "status", "--json")
    assert r.returncode == 0, r.stderr
    assert {k: v for k, v in __import__("json").loads(r.stdout).items()
            if k in ("pending", "completed", "dead")} == {"pending": 1, "completed": 1, "dead": 1}
    r = qc(spool, "list")
    assert r.returncode == 0 and [re.sub(r"\d+\.\d\ds", "T", x) for x in r.stdout.splitlines()] == [
        "ok - completed (exit 0, T) - true", "bad - dead (exit 3, T) - exit 3", "later - pending - true"]
    assert qc(spool, "show", "bad").returncode == 0
    r = qc(spool, "check")
    assert (r.returncode, r.stdout.startswith("ok: no problems")) == (0, True), r.stdout + r.stderr
    assert qc(spool, "dlq", "list").stdout.startswith("bad - attempts 1 - exit 3")
    r = qc(spool, "enqueue", "true")
    assert r.returncode == 1 and r.stderr.startswith("Error: ") and "Traceback" not in r.stderr


def test_two_dlq_retry_all_at_once_both_finish(spool_dir, tmp_path):
    """Item 9: the loser of a race skips the jobs the winner took, and goes on."""
    n = 60
    cli(spool_dir, "enqueue", "--quiet", "--file", "-",
        input="\n".join(f'{{"id": "d{i}", "command": "exit 1", "max_retries": 0}}' for i in range(n)))
    assert qc(spool_dir, "worker", "start", "--burst", "--count", "2").returncode == 1  # jobs died
    assert len(os.listdir(spool_dir / "dead")) == n
    argv = [sys.executable, "-m", "queuectl", "--spool", str(spool_dir), "dlq", "retry", "--all"]
    results = []

    def go():
        results.append(subprocess.run(argv, capture_output=True, text=True, timeout=60))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    requeued = [line for r in results for line in r.stdout.splitlines()]
    assert sorted(requeued) == sorted(f"requeued job d{i}" for i in range(n))
    assert len(os.listdir(spool_dir / "pending")) == n


def test_a_requeue_between_its_two_renames_is_not_taken_by_a_second_requeue(spool_dir, monkeypatch):
    """The flake of the test above (1 run in 20): requeue replaces dead/ID.json, then moves it to
    pending/. A second `dlq retry` that opened the new file in between found it unlocked and
    requeued the job again (two lines, two history events; a claim in between, two copies)."""
    import json
    from queuectl import spool as spoolmod
    from queuectl.job import JobState
    from queuectl.spool import Spool
    cli(spool_dir, "enqueue", "--quiet", "--id", "d", "--max-retries", "0", "exit 1")
    os.rename(spool_dir / "pending" / "d.json", spool_dir / "dead" / "d.json")
    a, b = Spool(str(spool_dir)), Spool(str(spool_dir))
    real_rename = os.rename
    second: list = []
    started: list = []

    def rename(src, dst):
        real_rename(src, dst)
        if dst == str(spool_dir / "dead" / "d.json") and not started:  # between the two renames
            started.append(True)
            t = threading.Thread(target=lambda: second.append(b.requeue("d", JobState.DEAD, missing_ok=True)))
            t.start()
            t.join(1.0)  # the second requeue, if nothing stops it, is done by now

    monkeypatch.setattr(spoolmod.os, "rename", rename)
    try:
        first = a.requeue("d", JobState.DEAD)
    finally:
        monkeypatch.setattr(spoolmod.os, "rename", real_rename)
    wait_for(lambda: second, what="the second requeue returned")
    assert first is not None and second == [None]
    assert os.listdir(spool_dir / "pending") == ["d.json"] and os.listdir(spool_dir / "dead") == []
    history = json.loads((spool_dir / "pending" / "d.json").read_text())["history"]
    assert sum(e["event"].startswith("requeued") for e in history) == 1
    a.close()
    b.close()


def test_a_planted_link_in_place_of_a_scratch_log_is_not_salvaged(spool_dir, tmp_path):
    """A dead worker's scratch file is read from disk: a symlink there never becomes a job's log."""
    from queuectl.recovery import prune_dead_workers
    from queuectl.registry import node_name
    from queuectl.spool import Spool
    spool = Spool(str(spool_dir))
    try:
        secret = tmp_path / "secret"
        secret.write_text("not a job's output\n")
        dead = 2 ** 22 + 12345  # above any pid this machine hands out
        key = f"{node_name()}.{dead}"
        (spool_dir / "workers" / f"{key}.json").write_text(
            '{"id": "worker-0", "role": "worker", "node": "%s", "pid": %d}' % (node_name(), dead))
        (spool_dir / "workers" / f"{key}.claim").write_text("victim 1.0".ljust(160))
        os.symlink(secret, spool_dir / "workers" / f"{key}.out")
        prune_dead_workers(spool)
        assert not os.path.lexists(spool_dir / "workers" / f"{key}.json")  # judged dead, and forgotten
        assert not os.path.lexists(spool_dir / "logs" / "victim.log")
    finally:
        spool.close()
