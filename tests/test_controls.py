"""Everyday control of jobs (issue 11): cancel, hold/release, priority, kill, wait,
delays, dependencies, labels, environment, --lines, and the races with workers."""

from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime, timedelta, timezone

import pytest

from queuectl.errors import InvalidJob
from queuectl.spool import Spool
from queuectl.when import parse_at, parse_delay

from support import cli, qc, wait_for, where

pytestmark = []


def enq(run, *args) -> str:
    r = run("enqueue", "--print-id", *args)
    assert r.exit_code == 0, r.stderr
    return r.stdout.strip()


def counts(run) -> dict:
    return json.loads(run("status", "--json").stdout)


def snapshot(spool_dir) -> dict:
    """Every job file's bytes, by path: `nothing changed on disk` compares two of these."""
    out = {}
    for d in ("pending", "processing", "done", "failed", "dead", "held", "cancelled"):
        p = spool_dir / d
        for n in sorted(os.listdir(p)) if p.exists() else []:
            out[f"{d}/{n}"] = (p / n).read_bytes()
    return out


def burst(spool_dir, *extra):
    return cli(spool_dir, "worker", "start", "--burst", *extra, check=False, timeout=60)


# -- cancel -------------------------------------------------------------------------------


def test_cancel_moves_a_pending_job_to_cancelled(run, spool_dir, read_job):
    enq(run, "--id", "job1", "echo 1")
    r = run("cancel", "job1")
    assert (r.exit_code, r.stdout) == (0, "cancelled job job1\n")
    assert where(spool_dir) == {"job1": ["cancelled"]}
    job = read_job("cancelled", "job1")
    assert job["state"] == "cancelled" and job["last_error"] == "cancelled by user"
    assert job["history"][-1]["event"] == "cancelled" and job["history"][-1]["from"] == "pending"
    assert counts(run)["cancelled"] == 1 and counts(run)["pending"] == 0
    assert run("list").stdout == "job1 - cancelled - echo 1\n"
    assert "job1 is in cancelled/" in run("show", "job1").stdout
    assert run("check").exit_code == 0
    assert run("reindex").stdout.endswith("held 0, cancelled 1\n")


@pytest.mark.parametrize("setup, message", [
    ("completed", "Error: job job1 is completed: only pending, failed or held jobs can be cancelled"),
    ("dead", "Error: job job1 is dead: only pending, failed or held jobs can be cancelled"),
    ("cancelled", "Error: job job1 is already cancelled"),
    ("processing", "Error: job job1 is running: stop it with `queuectl kill job1`"),
])
def test_cancel_refuses_jobs_that_are_not_waiting(run, spool_dir, setup, message):
    enq(run, "--id", "job1", "echo 1")
    d = {"completed": "done"}.get(setup, setup)
    os.rename(spool_dir / "pending" / "job1.json", spool_dir / d / "job1.json")
    before = snapshot(spool_dir)
    r = run("cancel", "job1")
    assert r.exit_code == 1 and r.stderr.strip() == message
    assert snapshot(spool_dir) == before


def test_cancel_checks_every_id_before_changing_any(run, spool_dir):
    enq(run, "--id", "a", "echo a")
    before = snapshot(spool_dir)
    r = run("cancel", "a", "nope")
    assert r.exit_code == 1 and r.stderr == "Error: no job nope\n"
    assert snapshot(spool_dir) == before
    assert run("cancel").exit_code == 2  # neither ids nor --label


def test_cancel_failed_and_held_jobs_and_by_label(run, spool_dir):
    enq(run, "--id", "f1", "--label", "batch", "false")
    os.rename(spool_dir / "pending" / "f1.json", spool_dir / "failed" / "f1.json")
    enq(run, "--id", "h1", "--label", "batch", "--hold", "echo h")
    enq(run, "--id", "p1", "--label", "batch", "echo p")
    enq(run, "--id", "other", "echo o")
    r = run("cancel", "--label", "batch")
    assert r.exit_code == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["cancelled job f1", "cancelled job h1", "cancelled job p1"]
    assert where(spool_dir) == {"f1": ["cancelled"], "h1": ["cancelled"], "p1": ["cancelled"], "other": ["pending"]}
    assert run("cancel", "--label", "nosuch").stderr == "Error: no job has label nosuch\n"


# -- hold / release -----------------------------------------------------------------------


def test_hold_and_release(run, spool_dir, read_job):
    enq(run, "--id", "job1", "echo 1")
    assert run("hold", "job1").stdout == "held job job1\n"
    assert where(spool_dir) == {"job1": ["held"]} and read_job("held", "job1")["state"] == "held"
    assert run("list").stdout == "job1 - held - echo 1\n"
    r = run("hold", "job1")
    assert (r.exit_code, r.stderr) == (1, "Error: job job1 is already held\n")
    assert run("release", "job1").stdout == "released job job1\n"
    assert where(spool_dir) == {"job1": ["pending"]} and read_job("pending", "job1")["state"] == "pending"
    before = snapshot(spool_dir)
    r = run("release", "job1")
    assert (r.exit_code, r.stderr) == (1, "Error: job job1 is not held (it is pending)\n")
    assert snapshot(spool_dir) == before
    assert [h["event"] for h in read_job("pending", "job1")["history"]] == ["held", "released"]


def test_enqueue_hold_is_never_claimed_until_released(run, spool_dir):
    enq(run, "--id", "h", "--hold", "echo held")
    assert where(spool_dir) == {"h": ["held"]}
    r = burst(spool_dir)
    assert r.returncode == 0 and "executing" not in r.stdout
    assert "0 jobs remain scheduled for later, 1 held" in r.stdout
    assert where(spool_dir) == {"h": ["held"]}
    run("release", "h")
    assert burst(spool_dir).returncode == 0
    assert where(spool_dir) == {"h": ["done"]}


# -- priority and hand edits ------------------------------------------------------------------


def test_priority_takes_effect_at_the_next_claim(run, spool_dir, read_job):
    for i in (1, 2, 3):
        enq(run, "--id", f"j{i}", f"echo {i}")
    r = run("priority", "j3", "10")
    assert (r.exit_code, r.stdout) == (0, "job j3 priority 10\n")
    assert run("priority", "j1", "-5").exit_code == 0
    assert read_job("pending", "j3")["priority"] == 10
    spool = Spool(str(spool_dir))
    spool.sync()
    assert [i for i, _ in spool.index.candidates()] == ["j3", "j2", "j1"]
    spool.close()
    assert run("priority", "nope", "1").stderr == "Error: no job nope\n"
    os.rename(spool_dir / "pending" / "j2.json", spool_dir / "done" / "j2.json")
    r = run("priority", "j2", "1")
    assert r.stderr == "Error: job j2 is completed: only pending, failed or held jobs can be given a new priority\n"


def test_hand_edit_moved_over_a_pending_file_takes_effect_without_reindex(run, spool_dir):
    enq(run, "--id", "a", "echo a")
    enq(run, "--id", "b", "echo b")
    assert json.loads(run("list", "--json").stdout)[1]["priority"] == 0
    job = json.loads((spool_dir / "pending" / "b.json").read_bytes())
    job["priority"] = 7
    job["command"] = "echo edited"
    tmp = spool_dir / "tmp" / ".b.tmp"
    tmp.write_text(json.dumps(job))
    os.rename(tmp, spool_dir / "pending" / "b.json")  # the README's way: write in tmp/, mv over
    rec = {r["id"]: r for r in json.loads(run("list", "--json").stdout)}
    assert rec["b"]["priority"] == 7 and rec["b"]["command"] == "echo edited"
    spool = Spool(str(spool_dir))
    spool.sync()
    assert spool.index.candidates()[0][0] == "b"
    spool.close()
    # An edit that breaks the file is quarantined with a reason, never run.
    (spool_dir / "tmp" / ".a.tmp").write_text('{"id": "a", "command": 5, "state": "pending", "created_at": "x"}')
    os.rename(spool_dir / "tmp" / ".a.tmp", spool_dir / "pending" / "a.json")
    run("list")
    assert "command must be a string" in (spool_dir / "rejected" / "a.json.reason").read_text()


# -- delays ------------------------------------------------------------------------------------


def test_parse_delay():
    assert parse_delay("90s") == 90 and parse_delay("90") == 90
    assert parse_delay("10m") == 600 and parse_delay("2h") == 7200 and parse_delay("1d") == 86400
    assert parse_delay("1h30m") == 5400 and parse_delay("1.5h") == 5400
    for bad in ("-5m", "soon", "", "5x", "m"):
        with pytest.raises(InvalidJob):
            parse_delay(bad)


def test_parse_at_forms():
    now = datetime(2026, 11, 28, 8, 0, 0).astimezone().timestamp()
    local = datetime.fromtimestamp(now).astimezone()
    tomorrow10 = (local + timedelta(days=1)).replace(hour=10, minute=0, second=0, microsecond=0)
    assert parse_at("tomorrow 10:00", now) == tomorrow10.timestamp()
    assert parse_at("today 18:30", now) == local.replace(hour=18, minute=30).timestamp()
    # ISO 8601 with an offset, with Z, basic format, and without an offset (local time)
    assert parse_at("2030-01-02T03:04:05+02:00", now) == datetime(2030, 1, 2, 1, 4, 5, tzinfo=timezone.utc).timestamp()
    assert parse_at("2030-01-02T03:04:05Z", now) == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()
    assert parse_at("20300102T030405Z", now) == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()
    assert parse_at("2030-01-02T03:04", now) == datetime(2030, 1, 2, 3, 4).astimezone().timestamp()
    assert parse_at("2030-01-02", now) == datetime(2030, 1, 2).astimezone().timestamp()
    for bad in ("yesterday", "yesterday 10:00", "2020-01-01T00:00Z", "not a time", "today 07:00"):
        with pytest.raises(InvalidJob):
            parse_at(bad, now)


def test_enqueue_delay_and_at_schedule_the_job(run, spool_dir, read_job):
    t0 = time.time()
    enq(run, "--id", "d", "--delay", "90s", "echo d")
    due = datetime.fromisoformat(read_job("pending", "d")["next_run_at"].replace("Z", "+00:00")).timestamp()
    assert t0 + 89 <= due <= time.time() + 91
    enq(run, "--id", "t", "--at", "2099-01-01T00:00:00Z", "echo t")
    assert read_job("pending", "t")["next_run_at"] == "2099-01-01T00:00:00.000000Z"
    lines = run("list").stdout.splitlines()
    # 1m29s if more than half a second went by since the enqueue (a loaded machine); a date after midnight
    assert re.fullmatch(r"d - pending \(at (\d{4}-\d\d-\d\d )?\d\d:\d\d, in 1m(29|30)s\) - echo d", lines[0]), lines
    assert lines[1].startswith("t - pending (at 2099-01-01 ")
    r = burst(spool_dir)  # nothing due: a burst worker does not wait for them
    assert r.returncode == 0 and "[supervisor] 2 jobs remain scheduled for later" in r.stdout
    assert "executing" not in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--delay", "-5m"], "Error: delay '-5m' is negative: a job cannot run in the past"),
    (["--at", "yesterday"], "is in the past"),
    (["--at", "2001-01-01T00:00:00Z"], "is in the past"),
    (["--at", "someday"], "bad time 'someday'"),
    (["--delay", "5 parsecs"], "bad delay"),
    (["--after", "nope"], "Error: after: no job nope"),
    (["--after-any", "nope"], "Error: after_any: no job nope"),
    (["--id", "me", "--after", "me"], "Error: job me cannot wait for itself (after)"),
    (["--label", "bad label"], "label 'bad label' must be"),
    (["--env", "NOEQUALS"], "expected NAME=VALUE"),
])
def test_enqueue_bad_options_change_nothing(run, spool_dir, args, message):
    enq(run, "--id", "x", "echo x")
    before = snapshot(spool_dir)
    r = run("enqueue", *args, "echo y")
    assert r.exit_code != 0 and message in r.stderr
    assert r.stderr.count("Error:") == 1
    assert snapshot(spool_dir) == before
    assert os.listdir(spool_dir / "tmp") == []


# -- labels, env, cwd, --print-id, --lines -----------------------------------------------------------


def test_labels_env_cwd_and_print_id(run, spool_dir, tmp_path, read_job):
    r = run("enqueue", "--print-id", "--label", "a", "--label", "b", "--env", "X=1", "--env", "Y=two=2",
            "--cwd", str(tmp_path), "echo hi")
    job_id = r.stdout.strip()
    assert r.exit_code == 0 and "\n" not in job_id and job_id in where(spool_dir)
    job = read_job("pending", job_id)
    assert job["labels"] == ["a", "b"] and job["env"] == {"X": "1", "Y": "two=2"} and job["cwd"] == str(tmp_path)
    enq(run, "--id", "other", "echo other")
    assert run("list", "--label", "b").stdout == f"{job_id} - pending - echo hi\n"
    assert [j["id"] for j in json.loads(run("list", "--label", "a", "--json").stdout)] == [job_id]
    assert run("list", "--label", "zzz").stdout == ""


def test_enqueue_lines(run, spool_dir, tmp_path, read_job):
    f = tmp_path / "cmds.txt"
    f.write_text("echo one\n\necho 'two words'\n   \necho three\n")
    r = run("enqueue", "--lines", str(f), "--label", "batch", "--priority", "3")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 3
    jobs = json.loads(run("list", "--json").stdout)
    assert [j["command"] for j in jobs] == ["echo one", "echo 'two words'", "echo three"]
    assert all(j["labels"] == ["batch"] and j["priority"] == 3 for j in jobs)
    r = run("enqueue", "--lines", "-", "--print-id", "--hold", input="echo a\necho b\n")
    assert r.exit_code == 0 and len(r.stdout.split()) == 2
    assert counts(run)["held"] == 2
    assert run("enqueue", "--lines", "-", input="\n\n").exit_code == 1


def test_every_job_sees_its_id_attempt_spool_and_env(run, spool_dir, tmp_path):
    out = tmp_path / "env.txt"
    job_id = enq(run, "--env", "EXTRA=yes", "--max-retries", "1",
                 f'echo "$QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT $QUEUECTL_SPOOL $EXTRA" >> {out}; '
                 f'[ "$QUEUECTL_ATTEMPT" = 2 ]')
    run("config", "set", "backoff_base", "0")
    r = burst(spool_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.read_text().splitlines() == [f"{job_id} 1 {spool_dir} yes", f"{job_id} 2 {spool_dir} yes"]


# -- dependencies --------------------------------------------------------------------------


def test_dependent_waits_and_becomes_claimable_when_its_dependency_completes(run, spool_dir):
    enq(run, "--id", "a", "--delay", "1h", "echo a")
    enq(run, "--id", "b", "--after", "a", "echo b")
    assert run("list").stdout.splitlines()[1] == "b - pending (after a: pending) - echo b"
    spool = Spool(str(spool_dir))
    spool.sync()
    assert spool.index.candidates() == [] and spool.index.next_due() > time.time() + 3000
    done = json.loads((spool_dir / "pending" / "a.json").read_bytes())
    done["state"] = "completed"
    (spool_dir / "done" / "a.json").write_text(json.dumps(done))
    os.unlink(spool_dir / "pending" / "a.json")
    spool.sync()  # one scan
    assert [i for i, _ in spool.index.candidates()] == ["b"]
    spool.close()


def test_a_dependency_that_dies_cancels_its_dependents_transitively(run, spool_dir, read_job):
    enq(run, "--id", "a", "--max-retries", "0", "exit 3")
    enq(run, "--id", "b", "--after", "a", "echo b")
    enq(run, "--id", "c", "--after", "b", "echo c")
    enq(run, "--id", "d", "--after-any", "a", "echo d")
    enq(run, "--id", "e", "--after", "a,d", "echo e")
    r = burst(spool_dir)
    assert r.returncode == 1, r.stdout + r.stderr  # a job ended in dead/
    assert where(spool_dir) == {"a": ["dead"], "b": ["cancelled"], "c": ["cancelled"], "d": ["done"],
                                "e": ["cancelled"]}
    assert read_job("cancelled", "b")["last_error"] == "dependency a ended dead"
    assert read_job("cancelled", "c")["last_error"] == "dependency b was cancelled"
    assert "[worker-0] cancelled b: dependency a ended dead" in r.stdout


def test_cancelling_a_dependency_cancels_the_dependents(run, spool_dir):
    enq(run, "--id", "a", "echo a")
    enq(run, "--id", "b", "--after", "a", "echo b")
    r = run("cancel", "a")
    assert r.stdout == "cancelled job a\ncancelled b: dependency a was cancelled\n"
    assert where(spool_dir) == {"a": ["cancelled"], "b": ["cancelled"]}


def test_after_in_drop_in_files(run, spool_dir):
    enq(run, "--id", "a", "echo a")
    pending = spool_dir / "pending"
    (pending / "ok.json").write_text('{"command": "echo ok", "after": ["a"], "after_any": "a"}')
    (pending / "bad1.json").write_text('{"command": "echo x", "after": 5}')
    (pending / "bad2.json").write_text('{"command": "echo x", "after": ["nope"]}')
    (pending / "bad3.json").write_text('{"command": "echo x", "after": ["../x"]}')
    (pending / "bad4.json").write_text('{"command": "echo x", "after": ["bad4"]}')
    run("list")
    reasons = {p.name: p.read_text().strip() for p in (spool_dir / "rejected").glob("*.reason")}
    assert reasons == {
        "bad1.json.reason": "after must be a list of job ids, not an integer",
        "bad2.json.reason": "after: no job nope",
        "bad3.json.reason": "after: id '../x' contains '..'",
        "bad4.json.reason": "job bad4 cannot wait for itself (after)",
    }
    assert run("list").stdout.splitlines()[1] == "ok - pending (after a: pending) - echo ok"


def test_two_drop_ins_naming_each_other_are_not_a_cycle_that_waits_forever(run, spool_dir, read_job):
    """Each one's file is in pending/ when the other is admitted, so both are accepted;
    the next scan cancels both with the cycle as the reason. The burst ends with nothing left."""
    run("status")
    pending = spool_dir / "pending"
    (pending / "a.json").write_text('{"command": "echo a", "after": ["b"]}')
    (pending / "b.json").write_text('{"command": "echo b", "after": ["a"]}')
    (pending / "c.json").write_text('{"command": "echo c", "after": ["a"]}')
    r = burst(spool_dir)
    assert where(spool_dir) == {"a": ["cancelled"], "b": ["cancelled"], "c": ["cancelled"]}
    assert read_job("cancelled", "a")["last_error"] == "dependency cycle a -> b -> a"
    assert read_job("cancelled", "b")["last_error"] == "dependency cycle b -> a -> b"
    assert read_job("cancelled", "c")["last_error"] == "dependency a was cancelled"
    assert "remain" not in r.stdout and "cancelled b: dependency cycle b -> a -> b" in r.stdout, r.stdout


def test_a_hand_edit_that_closes_a_cycle_cancels_its_members_with_the_reason(run, spool_dir, read_job):
    enq(run, "--id", "a", "--delay", "1h", "echo a")
    enq(run, "--id", "b", "--after", "a", "echo b")
    enq(run, "--id", "c", "--after", "b", "echo c")
    enq(run, "--id", "d", "--after-any", "c", "echo d")
    rec = read_job("pending", "a")
    rec.update(after=["c"], run_at=rec["created_at"], next_run_at=None)
    tmp = spool_dir / "tmp" / "edit"
    tmp.write_text(json.dumps(rec))
    os.rename(tmp, spool_dir / "pending" / "a.json")  # a canonical file is kept as it is: no admission check
    r = burst(spool_dir)
    assert where(spool_dir) == {"a": ["cancelled"], "b": ["cancelled"], "c": ["cancelled"], "d": ["done"]}
    assert read_job("cancelled", "a")["last_error"] == "dependency cycle a -> c -> b -> a"
    assert read_job("cancelled", "b")["last_error"] == "dependency cycle b -> a -> c -> b"
    assert read_job("cancelled", "c")["history"][-1]["reason"] == "dependency cycle c -> b -> a -> c"
    assert "[worker-0] cancelled a: dependency cycle a -> c -> b -> a" in r.stdout
    assert "remain" not in r.stdout, r.stdout


def test_wait_ends_a_cycle_without_a_worker(run, spool_dir, read_job):
    enq(run, "--id", "a", "echo a")
    enq(run, "--id", "b", "--after", "a", "echo b")
    rec = read_job("pending", "a")
    rec["after"] = ["b"]
    tmp = spool_dir / "tmp" / "edit"
    tmp.write_text(json.dumps(rec))
    os.rename(tmp, spool_dir / "pending" / "a.json")
    r = run("wait", "a", "b", "--timeout", "30")
    assert r.exit_code == 1 and "0 completed, 0 dead, 2 cancelled" in r.stdout, r.stdout


def test_enqueue_refuses_a_job_that_closes_a_cycle(run, spool_dir, read_job):
    """An existing job names an id that does not exist yet (a hand edit); enqueueing that
    id with --after the job would close a cycle: one Error line, nothing written."""
    enq(run, "--id", "x", "--delay", "1h", "echo x")
    rec = read_job("pending", "x")
    rec["after"] = ["z"]
    tmp = spool_dir / "tmp" / "edit"
    tmp.write_text(json.dumps(rec))
    os.rename(tmp, spool_dir / "pending" / "x.json")
    run("list")
    before = snapshot(spool_dir)
    r = run("enqueue", "--id", "z", "--after", "x", "echo z")
    assert (r.exit_code, r.stderr) == (1, "Error: after: dependency cycle z -> x -> z\n")
    assert snapshot(spool_dir) == before
    r = run("enqueue", "--id", "y", "--after-any", "x", "echo y")  # no cycle: accepted
    assert r.exit_code == 0, r.stderr


def test_cycles_finds_each_group_that_waits_for_itself():
    from queuectl.deps import cycles, describe, path_back
    edges = [("a", "b"), ("b", "a"), ("c", "d"), ("d", "e"), ("e", "C"), ("f", "a"), ("g", "g")]
    found = sorted(describe(c) for c in cycles(edges))
    assert found == ["a -> b -> a", "c -> d -> e -> c", "g -> g"]
    chain = [(f"j{i}", f"j{i + 1}") for i in range(50_000)]  # no recursion limit
    assert cycles(chain) == []
    cyc = cycles(chain + [("j50000", "j0")])
    assert len(cyc) == 1 and len(cyc[0]) == 50_001
    graph = {"a": ["b", "c"], "b": ["d"], "c": ["a"], "d": []}
    assert path_back("a", lambda n: graph.get(n, [])) == ["a", "c"]
    assert path_back("b", lambda n: graph.get(n, [])) is None


def test_cycles_agrees_with_reachability_on_random_graphs():
    """Each cycle found is real, every node on a cycle shares a group with exactly one found."""
    import random
    from queuectl.deps import cycles
    rng = random.Random(18)

    def reach(g, start):
        seen, todo = set(), [start]
        while todo:
            for nxt in g.get(todo.pop(), []):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    for _ in range(2000):
        n = rng.randint(1, 9)
        edges = [(f"n{rng.randrange(n)}", f"n{rng.randrange(n)}") for _ in range(rng.randint(0, 15))]
        g: dict = {}
        for a, b in edges:
            g.setdefault(a, []).append(b)
        found = cycles(edges)
        for c in found:
            assert all(c[(i + 1) % len(c)] in g[x] for i, x in enumerate(c)), (edges, c)
        for x in (x for x in g if x in reach(g, x)):
            same = [c for c in found if x in reach(g, c[0]) and c[0] in reach(g, x)]
            assert len(same) == 1, (edges, found, x)


# -- worker --burst exit codes ------------------------------------------------------------------


def test_burst_exit_status(run, spool_dir):
    enq(run, "echo fine")
    r = burst(spool_dir)
    assert r.returncode == 0 and "remain scheduled" not in r.stdout
    enq(run, "--max-retries", "0", "exit 1")
    enq(run, "echo fine again")
    r = burst(spool_dir, "--count", "2")
    assert r.returncode == 1, r.stdout
    assert "status 0 if every job run completed, 1 if one ended in dead/" in " ".join(
        run("worker", "start", "--help").stdout.split())


def test_burst_waits_for_its_own_retry(run, spool_dir, tmp_path):
    flag = tmp_path / "flag"
    run("config", "set", "backoff_base", "1.5")
    enq(run, "--max-retries", "1", f"[ -e {flag} ] || {{ touch {flag}; exit 1; }}")
    r = burst(spool_dir)
    assert r.returncode == 0 and r.stdout.count("executing") == 2, r.stdout


# -- wait -------------------------------------------------------------------------------------------


def test_wait_without_workers_times_out_with_status_2(run, spool_dir):
    enq(run, "--id", "a", "echo a")
    t0 = time.monotonic()
    r = run("wait", "a", "--timeout", "0.5")
    assert r.exit_code == 2 and time.monotonic() - t0 < 5
    assert r.stdout.startswith("timed out after 0.") and "0 of 1 jobs final" in r.stdout and "(a)" in r.stdout


def test_wait_errors(run, spool_dir):
    r = run("wait", "nope")
    assert (r.exit_code, r.stderr) == (1, "Error: no job nope\n")
    assert run("wait").exit_code == 2
    assert run("wait", "--label", "x").stderr == "Error: no job has label x\n"


def test_wait_for_final_jobs_returns_at_once(run, spool_dir):
    enq(run, "--id", "a", "echo a")
    enq(run, "--id", "b", "echo b")
    os.rename(spool_dir / "pending" / "a.json", spool_dir / "done" / "a.json")
    assert run("wait", "a").exit_code == 0
    run("cancel", "b")
    r = run("wait", "a", "b", "--json")
    assert r.exit_code == 1
    # the directory is the truth: a.json was moved to done/ by hand and still says "pending"
    assert [(j["id"], j["state"]) for j in json.loads(r.stdout)] == [("a", "completed"), ("b", "cancelled")]


@pytest.mark.slow
def test_wait_while_workers_run_in_another_process(run, spool_dir, bg):
    ids = [enq(run, "--label", "batch", f"sleep 0.{i}") for i in range(4)]
    dead = enq(run, "--max-retries", "0", "sleep 0.3; exit 1")
    bg("worker", "start", "--count", "2")
    r = qc(spool_dir, "wait", *ids, timeout=60)
    assert r.returncode == 0 and r.stdout == "4 jobs final after " + r.stdout.split("after ")[1]
    assert "4 completed, 0 dead, 0 cancelled" in r.stdout
    r = qc(spool_dir, "wait", dead, "--json", timeout=60)
    assert r.returncode == 1 and json.loads(r.stdout)[0]["state"] == "dead"
    r = qc(spool_dir, "wait", "--label", "batch", timeout=60)
    assert r.returncode == 0


def test_a_sync_never_drops_a_job_moving_between_two_directories(run, spool_dir):
    """A sync lists processing/ before failed/: a retry claimed in between is in
    neither listing, and its row must survive (wait said "1 missing")."""
    from queuectl.dropins import SyncReport
    from queuectl.indexsync import sync_dir
    from queuectl.job import JobState
    enq(run, "--id", "r", "exit 1")
    os.rename(spool_dir / "pending" / "r.json", spool_dir / "failed" / "r.json")
    spool = Spool(str(spool_dir))
    spool.sync(force=True)
    idx = spool.index
    assert idx.lookup("r").state is JobState.FAILED
    idx.begin()
    sync_dir(spool, idx, JobState.PROCESSING, SyncReport())  # r is not there yet
    os.rename(spool_dir / "failed" / "r.json", spool_dir / "processing" / "r.json")  # the claim
    sync_dir(spool, idx, JobState.FAILED, SyncReport())  # r is not there any more
    idx.commit()
    assert idx.lookup("r") is not None
    spool.sync()  # the next sync lists processing/ again and reads the file there
    assert idx.lookup("r").state is JobState.PROCESSING
    assert spool.reindex() == idx.counts() and idx.lookup("r").state is JobState.PROCESSING
    spool.close()


def test_a_scan_that_skips_done_still_follows_a_job_moved_there(run, spool_dir):
    """Workers' scans list pending/, failed/ and processing/ only: a job that left
    pending/ for done/ is read where it is now, not dropped or left pending."""
    from queuectl.job import JobState
    enq(run, "--id", "x", "echo x")
    spool = Spool(str(spool_dir))
    spool.sync()
    os.rename(spool_dir / "pending" / "x.json", spool_dir / "done" / "x.json")  # by hand, or a worker
    spool.sync(dirs=("pending", "failed", "processing"))
    assert spool.index.lookup("x").state is JobState.COMPLETED
    assert spool.index.claimable() == []
    spool.close()


def test_wait_tells_a_job_in_flight_from_a_job_gone_by_the_files(run, spool_dir):
    """With no index row, `wait` looks for the job's file before it calls it missing."""
    from queuectl.controls import wait_for
    enq(run, "--id", "r", "exit 1")
    spool = Spool(str(spool_dir))
    seen = []

    def progress(result):
        seen.append(result.states["r"])
        if len(seen) == 1:
            os.rename(spool_dir / "pending" / "r.json", spool_dir / "processing" / "r.json")
            spool.sync()
            spool.index.delete(["r"])  # the row a racing sync dropped
            for d in ("pending", "processing"):  # and its listings trusted: no relisting brings it back
                mtime = os.stat(spool_dir / d).st_mtime_ns
                spool.index.set_dirmark(d, mtime, mtime + 10**10)
        elif len(seen) == 2:
            os.rename(spool_dir / "processing" / "r.json", spool_dir / "done" / "r.json")

    result = wait_for(spool, ["r"], timeout=30, progress=progress)
    assert seen[:2] == ["pending", "processing"] and result.states == {"r": "completed"}
    assert not result.timed_out and result.failed == 0
    spool.close()


def test_a_job_seen_final_stays_final_when_it_is_cleaned_during_the_wait(run, spool_dir):
    from queuectl.controls import wait_for
    from queuectl.job import JobState
    enq(run, "--id", "a", "echo a")
    enq(run, "--id", "b", "echo b")
    os.rename(spool_dir / "pending" / "a.json", spool_dir / "done" / "a.json")
    spool = Spool(str(spool_dir))
    calls = []

    def progress(result):
        calls.append(dict(result.states))
        if len(calls) == 1:
            assert result.states == {"a": "completed", "b": "pending"}
            assert spool.purge("a", JobState.COMPLETED)  # `clean` (or keep_done) removes it
            os.rename(spool_dir / "pending" / "b.json", spool_dir / "done" / "b.json")

    result = wait_for(spool, ["a", "b"], timeout=30, progress=progress)
    assert result.states == {"a": "completed", "b": "completed"} and result.failed == 0
    spool.close()


@pytest.mark.parametrize("by", [["a"], ["--label", "batch"]])
def test_a_job_found_final_stays_final_when_it_is_cleaned_before_the_first_look(run, spool_dir, monkeypatch, by):
    """`wait` found the job completed, then a `clean` removed it before wait's first look (seen
    on GlusterFS, where the two ran 35 ms apart): it is completed, not missing."""
    from queuectl import controls
    from queuectl.job import JobState
    enq(run, "--id", "a", "--label", "batch", "echo a")
    os.rename(spool_dir / "pending" / "a.json", spool_dir / "done" / "a.json")
    real = controls.wait_for

    def cleaned_first(spool, ids, **kw):
        assert spool.purge("a", JobState.COMPLETED)
        return real(spool, ids, **kw)

    monkeypatch.setattr(controls, "wait_for", cleaned_first)
    r = run("wait", "--json", *by)
    assert r.exit_code == 0, r.output
    assert [(j["id"], j["state"]) for j in json.loads(r.stdout)] == [("a", "completed")]
    assert not (spool_dir / "done" / "a.json").exists()


# -- kill -------------------------------------------------------------------------------------------


def test_kill_a_job_that_is_not_running(run, spool_dir):
    enq(run, "--id", "a", "echo a")
    r = run("kill", "a")
    assert (r.exit_code, r.stderr) == (1, "Error: job a is not running (it is pending)\n")
    assert run("kill", "nope").stderr == "Error: no job nope\n"
    assert run("kill", "--signal", "NOPE", "a").exit_code == 2


@pytest.mark.slow
@pytest.mark.parametrize("retry", [False, True])
def test_kill_a_running_job(run, spool_dir, bg, read_job, retry):
    run("config", "set", "backoff_base", "100")
    enq(run, "--id", "long", "--max-retries", "2", "sleep 60")
    enq(run, "--id", "next", "--after", "long", "echo next")
    bg("worker", "start")
    wait_for(lambda: (spool_dir / "processing" / "long.json").exists(), what="job claimed")
    r = run("kill", "long", *(["--retry"] if retry else []))
    assert r.exit_code == 0 and r.stdout.startswith("sent SIGTERM to job long (process group "), r.stderr
    state = "failed" if retry else "dead"
    wait_for(lambda: where(spool_dir).get("long") == [state], what=f"long in {state}/")
    job = read_job(state, "long")
    assert job["last_error"] == "killed by user (SIGTERM)" and job["attempts"] == 1
    if not retry:
        wait_for(lambda: where(spool_dir).get("next") == ["cancelled"], what="dependent cancelled")
    assert os.listdir(spool_dir / "kill") == []


def _kill_request(spool_dir, job_id: str, attempt: int) -> None:
    """What `queuectl kill` leaves before it signals, naming the attempt it saw running."""
    (spool_dir / "kill" / job_id).write_text(json.dumps(
        {"attempt": attempt, "retry": False, "signal": "SIGTERM", "at": "2026-12-03T00:00:00Z", "by_pid": 1}) + "\n")


@pytest.mark.slow
def test_a_kill_that_lands_on_the_next_attempt_ends_the_job(run, spool_dir, bg, read_job, tmp_path):
    """`kill` read the job while attempt 1 ran; attempt 1 failed on its own, and the signal hit
    attempt 2: the request names attempt 1, and the kill still ends the job."""
    from support import read_pids
    pids = tmp_path / "pids"
    run("config", "set", "backoff_max", "0.05")
    enq(run, "--id", "long", "--max-retries", "3", f'echo $$ >> {pids}; [ "$QUEUECTL_ATTEMPT" = 1 ] && exit 1; sleep 60')
    bg("worker", "start")
    wait_for(lambda: len(read_pids(pids)) == 2 and (spool_dir / "processing" / "long.json").exists(),
             what="attempt 2 running")
    _kill_request(spool_dir, "long", 1)
    os.killpg(read_pids(pids)[1], 15)
    wait_for(lambda: where(spool_dir).get("long") == ["dead"], 10, what="long in dead/")
    job = read_job("dead", "long")
    assert job["last_error"] == "killed by user (SIGTERM)" and job["attempts"] == 2
    assert os.listdir(spool_dir / "kill") == [] and len(read_pids(pids)) == 2


@pytest.mark.slow
def test_a_kill_that_missed_an_attempt_ending_on_its_own_ends_the_next_one(run, spool_dir, bg, read_job, tmp_path):
    """`kill` wrote its request just as attempt 1 failed on its own, and its signal reached nothing:
    attempt 2 finds the request when it starts and is killed at once, not left to run."""
    from support import read_pids
    pids = tmp_path / "pids"
    run("config", "set", "backoff_base", "3")
    enq(run, "--id", "long", "--max-retries", "3", f'echo $$ >> {pids}; [ "$QUEUECTL_ATTEMPT" = 1 ] && exit 1; sleep 60')
    bg("worker", "start")
    wait_for(lambda: where(spool_dir).get("long") == ["failed"], what="attempt 1 failed, retry in 3 s")
    _kill_request(spool_dir, "long", 1)
    wait_for(lambda: where(spool_dir).get("long") == ["dead"], 15, what="long in dead/")
    job = read_job("dead", "long")
    assert job["last_error"] == "killed by user (SIGTERM)" and job["attempts"] == 2
    assert os.listdir(spool_dir / "kill") == [] and len(read_pids(pids)) <= 2  # killed as it started


# -- races ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("action, target", [("cancel", "cancelled"), ("hold", "held")])
def test_move_races_a_claiming_worker(run, spool_dir, bg, tmp_path, action, target):
    """Many jobs, each moved the instant a worker may claim it: exactly one side wins,
    and a job that was cancelled or held never ran."""
    ran = tmp_path / "ran"
    ran.mkdir()
    bg("worker", "start", "--count", "2")
    wins = losses = 0
    for i in range(40):
        job_id = f"r{i}"
        enq(run, "--id", job_id, f"touch {ran}/{job_id}")
        r = run(action, job_id)
        if r.exit_code == 0:
            wins += 1
        else:
            losses += 1
            assert "is running" in r.stderr or "is completed" in r.stderr, r.stderr
    wait_for(lambda: not os.listdir(spool_dir / "pending") and not os.listdir(spool_dir / "processing"),
             what="every job claimed or moved")
    found = where(spool_dir)
    for i in range(40):
        job_id = f"r{i}"
        assert len(found[job_id]) == 1, found[job_id]
        if found[job_id] == [target]:
            assert not (ran / job_id).exists(), f"{job_id} was {target} and ran"
        else:
            assert found[job_id] == ["done"] and (ran / job_id).exists()
    assert wins + losses == 40
    assert qc(spool_dir, "check").returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("action", ["cancel", "hold"])
def test_move_and_claim_started_together_exactly_one_wins(spool_dir, action):
    """The lock-then-rename protocol, raced head on: a worker's claim and a move
    released by the same barrier, many times. Exactly one succeeds, and the job
    ends in exactly one directory."""
    import threading
    from queuectl.controls import move
    from queuectl.errors import QueueError
    from queuectl.job import Job, JobState
    setup, worker_side, user_side = (Spool(str(spool_dir)) for _ in range(3))
    outcomes = {"claim": 0, "move": 0}
    for i in range(150):
        job_id = f"j{i}"
        setup.enqueue(Job.from_spec({"id": job_id, "command": "true"}))
        barrier = threading.Barrier(2)
        result = {}

        def claim():
            barrier.wait()
            c = worker_side.claim(job_id, JobState.PENDING)
            result["claim"] = c is not None
            if c is not None:
                c.release()

        def do_move():
            barrier.wait()
            try:
                move(user_side, job_id, action)
                result["move"] = True
            except QueueError as e:
                assert "is running" in str(e), e
                result["move"] = False

        threads = [threading.Thread(target=claim), threading.Thread(target=do_move)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert result["claim"] != result["move"], result
        outcomes["claim" if result["claim"] else "move"] += 1
        expected = "processing" if result["claim"] else {"cancel": "cancelled", "hold": "held"}[action]
        assert where(spool_dir)[job_id] == [expected]
    for s in (setup, worker_side, user_side):
        s.close()
    assert sum(outcomes.values()) == 150


def test_a_cancel_between_an_admission_s_read_and_its_row_leaves_the_index_cancelled(spool_dir, monkeypatch):
    """Seen once in CI (test_move_races_a_claiming_worker: `check` found "index says pending but
    the file is in cancelled/"). An admission pass reads a file it keeps as it is; `cancel` moves
    it and writes its row; the pass then writes its own row (a syncfs later): pending. Nothing
    lists cancelled/ again soon. The pass now reads again each file no longer in pending/."""
    from queuectl import controls, dropins
    from queuectl.job import Job
    user, admitter = Spool(str(spool_dir)), Spool(str(spool_dir))
    user.enqueue(Job.from_spec({"id": "j", "command": "true"}))
    admitter.index.delete(["j"])  # a file this pass has never indexed (a drop-in already canonical)
    admitter.index.set_dirmark("pending", 0, 0)
    real_syncfs = dropins.syncfs

    def syncfs_while_a_cancel_runs(path):
        real_syncfs(path)
        if not getattr(syncfs_while_a_cancel_runs, "done", False):
            syncfs_while_a_cancel_runs.done = True
            controls.move(user, "j", "cancel")

    monkeypatch.setattr(dropins, "syncfs", syncfs_while_a_cancel_runs)
    admitter.sync()
    assert syncfs_while_a_cancel_runs.done
    assert admitter.index.lookup("j").state.value == "cancelled"
    assert user.index.lookup("j").state.value == "cancelled"
    user.close()
    admitter.close()


def test_release_racing_an_admission_pass_and_a_claim_leaves_one_copy(spool_dir, read_job):
    """Found by the history checker (invariant 1): `release` renames held/ID.json into
    pending/ (old contents, state "held"), then writes the new contents over it. A
    drop-in admission pass that read the file in that moment rewrote it in place after a
    worker had claimed the job: a second copy in pending/, later rejected as a duplicate.
    Replayed step by step here: the pass reads, release finishes, a worker claims, the pass commits."""
    import threading
    from queuectl import controls, dropins
    from queuectl.job import Job, JobState
    user, admitter, worker = (Spool(str(spool_dir)) for _ in range(3))
    user.enqueue(Job.from_spec({"id": "j", "command": "true"}))
    controls.move(user, "j", "hold")
    admitter.sync()
    read, claimed = threading.Event(), threading.Event()
    real_rewrite, real_commit = controls._rewrite, dropins._commit
    errors: list[BaseException] = []

    def admit():
        try:
            admitter.sync()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
            read.set()

    def commit_after_the_claim(*args, **kwargs):
        read.set()
        assert claimed.wait(10)
        return real_commit(*args, **kwargs)

    def rewrite_after_the_read(*args, **kwargs):
        thread = threading.Thread(target=admit)
        thread.start()
        assert read.wait(10)
        rewrite_after_the_read.thread = thread
        return real_rewrite(*args, **kwargs)

    controls._rewrite, dropins._commit = rewrite_after_the_read, commit_after_the_claim
    try:
        controls.move(user, "j", "release")
        claim = worker.claim("j", JobState.PENDING)
        claimed.set()
        rewrite_after_the_read.thread.join(10)
    finally:
        controls._rewrite, dropins._commit = real_rewrite, real_commit
        claimed.set()
    assert not errors, errors
    assert claim is not None
    claim.release()
    assert where(spool_dir) == {"j": ["processing"]}
    assert read_job("processing", "j")["state"] == "pending"
    admitter.sync()
    assert os.listdir(spool_dir / "rejected") == []
    for s in (user, admitter, worker):
        s.close()


@pytest.mark.parametrize("as_json", [False, True])
def test_wait_on_a_full_disk_keeps_waiting_by_the_files(run, spool_dir, bg, monkeypatch, as_json):
    """`wait` only reads: on a full disk (its index cannot take the news) it says so once and goes on
    by the job files, and its exit status still means what the jobs did. It exited 1 with an
    Error: line, which a script reads as "a job ended dead or cancelled"."""
    from queuectl.errors import SpoolError

    def full(self, **kw):
        raise SpoolError("no space left on device while updating index.db (database or disk is full)")

    enq(run, "--id", "a", "sleep 0.3")
    monkeypatch.setattr(Spool, "sync", full)  # this process only: the worker below writes as usual
    bg("worker", "start", "--burst")
    r = run("wait", "--timeout", "60", "a", *(["--json"] if as_json else []))
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ("queuectl: no space left on device while updating index.db (database or disk is full): "
                        "waiting on, reading the job files until there is room\n")
    if as_json:
        [record] = json.loads(r.stdout)
        assert (record["id"], record["state"], record["command"]) == ("a", "completed", "sleep 0.3")
    else:
        assert r.stdout.startswith("1 job final after ") and r.stdout.endswith(": 1 completed, 0 dead, 0 cancelled\n")


def test_wait_all(run, spool_dir):
    enq(run, "--id", "a", "echo a")
    enq(run, "--id", "b", "echo b")
    run("cancel", "b")
    r = run("wait", "--all", "--timeout", "0.3")
    assert r.exit_code == 2 and "0 of 1 jobs final" in r.stdout and "(a)" in r.stdout
    run("cancel", "a")
    r = run("wait", "--all")
    assert (r.exit_code, r.stdout) == (0, "nothing to wait for\n")


@pytest.mark.parametrize("command", ["wait", "cancel", "kill", "hold", "release", "priority", "enqueue"])
def test_every_control_command_has_help_with_an_example(run, command):
    r = run(command, "--help")
    assert r.exit_code == 0 and "Example" in r.stdout and f"queuectl {command}" in r.stdout


def test_a_purged_dependency(run, spool_dir, read_job):
    enq(run, "--id", "a", "exit 1")
    enq(run, "--id", "strict", "--after", "a", "echo strict")
    enq(run, "--id", "lenient", "--after-any", "a", "echo lenient")
    os.rename(spool_dir / "pending" / "a.json", spool_dir / "dead" / "a.json")
    assert run("dlq", "purge", "a").exit_code == 0
    spool = Spool(str(spool_dir))
    spool.sync()
    assert [i for i, _ in spool.index.candidates()] == ["lenient"]  # after_any: a deleted job was final
    from queuectl.controls import resolve_dependencies
    assert resolve_dependencies(spool) == ["cancelled strict: dependency a no longer exists"]
    spool.close()
    assert read_job("cancelled", "strict")["last_error"] == "dependency a no longer exists"


# -- requeue and remove (the core functions `queuectl requeue` / `rm` call) ----------------


def _finished_spool(spool_dir, run) -> Spool:
    enq(run, "--id", "ok1", "echo fine")
    enq(run, "--id", "bad1", "--max-retries", "0", "echo oops >&2; exit 3")
    enq(run, "--id", "later", "--delay", "1h", "true")
    enq(run, "--id", "gone", "--delay", "1h", "true")
    assert run("cancel", "gone").exit_code == 0
    burst(spool_dir)
    return Spool(str(spool_dir))


def test_requeue_moves_final_jobs_back_to_pending_with_history(run, spool_dir, read_job):
    from queuectl import controls
    sp = _finished_spool(spool_dir, run)
    try:
        jobs = controls.requeue(sp, ["ok1", "BAD1", "gone"])
    finally:
        sp.close()
    assert [j.id for j in jobs] == ["ok1", "bad1", "gone"]
    assert where(spool_dir) == {"ok1": ["pending"], "bad1": ["pending"], "gone": ["pending"], "later": ["pending"]}
    job = read_job("pending", "bad1")
    assert job["attempts"] == 0 and job["state"] == "pending"
    assert job["history"][0]["exit_code"] == 3  # the failed attempt is kept
    assert job["history"][-1]["event"] == "requeued from dead/"
    assert counts(run)["pending"] == 4 and counts(run)["dead"] == 0


def test_requeue_and_remove_check_every_id_before_changing_anything(run, spool_dir):
    from queuectl import controls
    from queuectl.errors import JobNotFound, WrongState
    sp = _finished_spool(spool_dir, run)
    before = snapshot(spool_dir)
    try:
        with pytest.raises(WrongState, match="job later is pending: only completed, dead or cancelled jobs "
                                             "can be requeued"):
            controls.requeue(sp, ["ok1", "later"])
        with pytest.raises(WrongState, match="can be removed"):
            controls.remove(sp, ["bad1", "later"])
        with pytest.raises(JobNotFound):
            controls.remove(sp, ["ok1", "nosuch"])
    finally:
        sp.close()
    assert snapshot(spool_dir) == before


def test_remove_deletes_final_jobs_and_logs_and_frees_the_id(run, spool_dir):
    from queuectl import controls
    sp = _finished_spool(spool_dir, run)
    assert (spool_dir / "logs" / "bad1.log").exists()
    try:
        assert controls.remove(sp, ["bad1", "ok1", "gone"]) == ["bad1", "ok1", "gone"]
    finally:
        sp.close()
    assert where(spool_dir) == {"later": ["pending"]}
    assert not (spool_dir / "logs" / "bad1.log").exists()
    assert counts(run)["dead"] == 0 and counts(run)["completed"] == 0
    enq(run, "--id", "ok1", "true")  # the id is free again
    assert where(spool_dir)["ok1"] == ["pending"]
