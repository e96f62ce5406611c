"""`queuectl metrics`: the Prometheus text agrees with the spool after a real run,
--textfile is atomic, the index's timing columns, the JSON of status and list."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from queuectl.registry import node_name, proc_start

from queuectl.rowfields import timing
from queuectl.job import JobState, parse_time


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fam, name: str | None = None) -> dict:
    """{frozenset(labels): value} of one family's samples (of one sample name)."""
    return {frozenset(s.labels.items()): s.value for s in fam.samples if name is None or s.name == name}


def value(fams: dict, family: str, sample: str | None = None, **labels) -> float:
    return samples(fams[family], sample or family)[frozenset(labels.items())]


def metrics(run) -> dict:
    r = run("metrics")
    assert r.exit_code == 0, r.output
    return families(r.stdout)


@pytest.fixture
def ran(run, run_proc, spool_dir):
    """A scripted run: `sleep 0.2` and `true` complete, `false` (1 retry) dies."""
    assert run("config", "set", "backoff_max", "0.05").exit_code == 0
    assert run("enqueue", "--id", "slow", "sleep 0.2").exit_code == 0
    assert run("enqueue", "--id", "quick", "true").exit_code == 0
    assert run("enqueue", "--id", "bad", "--max-retries", "1", "false").exit_code == 0
    p = run_proc("worker", "start", "--burst", timeout=120)
    assert p.returncode == 1, p.stderr  # 1: a job it ran (bad) ended in dead/
    return spool_dir


def _last_run(rec: dict) -> float:
    h = rec["history"][-1]
    return parse_time(h["finished_at"]) - parse_time(h["started_at"])


def test_metrics_match_the_spool_after_a_run(run, ran, spool_dir):
    fams = metrics(run)
    jobs = samples(fams["queuectl_jobs"])
    assert jobs == {frozenset({("queue", "default"), ("state", s)}): v for s, v in
                    [("pending", 0), ("processing", 0), ("completed", 2), ("failed", 0), ("dead", 1),
                     ("held", 0), ("cancelled", 0)]}
    q = {"queue": "default"}
    assert value(fams, "queuectl_jobs_finished", "queuectl_jobs_finished_total", outcome="completed", **q) == 2
    assert value(fams, "queuectl_jobs_finished", "queuectl_jobs_finished_total", outcome="dead", **q) == 1
    assert value(fams, "queuectl_attempts", "queuectl_attempts_total", **q) == 4  # 1 + 1 + 2
    assert value(fams, "queuectl_retries", "queuectl_retries_total", **q) == 1
    assert "queuectl_dead_letter_jobs" not in fams  # a copy of queuectl_jobs{state="dead"}
    assert value(fams, "queuectl_rejected_files") == 0
    assert value(fams, "queuectl_oldest_pending_age_seconds", **q) == 0
    # the burst workers are gone; this node still has a sample, 0
    assert samples(fams["queuectl_workers"]) == {frozenset({("node", node_name())}): 0}

    # The run-time histogram holds the last attempt of each finished job, and
    # its buckets agree with the run times recorded in the job files.
    recs = {i: json.loads((spool_dir / d / f"{i}.json").read_text())
            for i, d in [("slow", "done"), ("quick", "done"), ("bad", "dead")]}
    runs = {i: _last_run(r) for i, r in recs.items()}
    assert runs["slow"] >= 0.2
    buckets = samples(fams["queuectl_job_run_seconds"], "queuectl_job_run_seconds_bucket")
    for labels, n in buckets.items():
        le = float(dict(labels)["le"])
        assert n == sum(1 for t in runs.values() if t <= le), (le, runs)
    assert buckets[frozenset({("le", "0.1")})] < 3  # `sleep 0.2` is not in it
    assert buckets[frozenset({("le", "+Inf")})] == 3
    assert value(fams, "queuectl_job_run_seconds", "queuectl_job_run_seconds_count") == 3
    assert value(fams, "queuectl_job_run_seconds", "queuectl_job_run_seconds_sum") == \
        pytest.approx(sum(runs.values()), abs=1e-3)

    waits = [parse_time(r["history"][0]["started_at"]) - parse_time(r["created_at"]) for r in recs.values()]
    wait_buckets = samples(fams["queuectl_job_queue_wait_seconds"], "queuectl_job_queue_wait_seconds_bucket")
    for labels, n in wait_buckets.items():
        le = float(dict(labels)["le"])
        assert n == sum(1 for t in waits if t <= le), (le, waits)
    assert value(fams, "queuectl_job_queue_wait_seconds", "queuectl_job_queue_wait_seconds_count") == 3


def test_metrics_follow_later_changes(run, ran, spool_dir):
    assert run("enqueue", "--id", "later", "true").exit_code == 0
    (spool_dir / "pending" / "junk.json").write_text("[1, 2]")
    fams = metrics(run)  # syncs first: the drop-in is rejected
    assert value(fams, "queuectl_jobs", queue="default", state="pending") == 1
    assert value(fams, "queuectl_rejected_files") == 1  # junk.json, not junk.json.reason
    assert 0 <= value(fams, "queuectl_oldest_pending_age_seconds", queue="default") < 60
    assert run("dlq", "retry", "bad").exit_code == 0
    fams = metrics(run)
    assert value(fams, "queuectl_jobs", queue="default", state="dead") == 0
    assert value(fams, "queuectl_attempts", "queuectl_attempts_total", queue="default") == 4  # the history is kept
    # its finish happened: the counter keeps it
    assert value(fams, "queuectl_jobs_finished", "queuectl_jobs_finished_total", queue="default", outcome="dead") == 1


def test_live_and_busy_workers_per_node(run, spool_dir):
    run("status")
    host = socket.gethostname()
    beats = {"w1": ("worker", "job1"), "w2": ("worker", None), "sup": ("supervisor", None)}
    for name, (role, job) in beats.items():
        (spool_dir / "workers" / f"{host}.{name}.json").write_text(json.dumps(
            {"id": name, "role": role, "host": host, "pid": os.getpid(), "pid_start": proc_start(os.getpid()), "job": job}))
    (spool_dir / "workers" / "gone.json").write_text(json.dumps(
        {"id": "w9", "role": "worker", "host": "elsewhere", "pid": 1, "job": None}))
    os.utime(spool_dir / "workers" / "gone.json", (time.time() - 3600,) * 2)  # lease ran out
    fams = metrics(run)
    # labelled by node id: these heartbeats name no node, so their host stands for it (as for older workers)
    assert samples(fams["queuectl_workers"]) == {frozenset({("node", host)}): 2,
                                                 frozenset({("node", node_name())}): 0} if host != node_name() \
        else {frozenset({("node", host)}): 2}  # not w9 (lease ran out)
    assert samples(fams["queuectl_workers_busy"])[frozenset({("node", host)})] == 1


def test_textfile_is_written_whole(run, spool_dir, tmp_path):
    out = tmp_path / "textfile"
    out.mkdir()
    assert run("enqueue", "true").exit_code == 0
    r = run("metrics", "--textfile", out)
    assert (r.exit_code, r.stdout, r.stderr) == (0, "", "")
    assert os.listdir(out) == ["queuectl.prom"]  # no temporary file left behind
    assert value(families((out / "queuectl.prom").read_text()), "queuectl_jobs", queue="default", state="pending") == 1
    r = run("metrics", "--textfile", tmp_path / "nowhere")
    assert r.exit_code == 1 and r.stderr.splitlines() == [f"Error: no directory {tmp_path / 'nowhere'}"]


def test_an_index_of_the_old_schema_is_rebuilt(run, ran, spool_dir):
    db = sqlite3.connect(spool_dir / "index.db")
    db.execute("PRAGMA user_version=3")
    db.close()
    r = run("metrics")
    assert r.exit_code == 0
    assert r.stderr.startswith("queuectl: index.db was corrupt (schema version 3, this queuectl uses 8)")
    fams = families(r.stdout)
    assert value(fams, "queuectl_jobs", queue="default", state="completed") == 2
    assert value(fams, "queuectl_job_run_seconds", "queuectl_job_run_seconds_count") == 3
    assert run("metrics").stderr == ""


def test_timing_from_history():
    hist = [
        {"attempt": 1, "started_at": "2026-01-01T00:00:10Z", "finished_at": "2026-01-01T00:00:11Z"},
        {"event": "requeued from dead/", "at": "2026-01-01T00:01:00Z"},
        {"attempt": 1, "started_at": "2026-01-01T00:02:00Z", "finished_at": "2026-01-01T00:02:00.5Z",
         "counted": False},
        {"attempt": 1, "started_at": None, "finished_at": "2026-01-01T00:03:00Z", "error": "worker died"},
        "not an entry",
        {"attempt": 2, "started_at": "bogus", "finished_at": "2026-01-01T00:04:00Z"},
        {"attempt": 3, "started_at": "2026-01-01T00:05:00Z", "finished_at": "2026-01-01T00:05:02.5Z"},
    ]
    started, finished, run_seconds, runs = timing(hist, JobState.COMPLETED)
    assert started == parse_time("2026-01-01T00:00:10Z")
    assert finished == parse_time("2026-01-01T00:05:02.5Z")
    assert run_seconds == pytest.approx(2.5)
    assert runs == 4  # the interrupted attempt does not count
    assert timing(hist, JobState.FAILED)[1] is None  # not finished
    assert timing([], JobState.PENDING) == (None, None, None, 0)
    odd = [{"attempt": 1, "started_at": "0001-01-01T00:00:00+14:00", "finished_at": "9999-12-31T23:59:59-14:00"},
           {"attempt": 2, "started_at": 5, "finished_at": ["x"]}, {"attempt": 3, "started_at": "", "counted": 0}]
    # Odd, but never an exception; times outside 1970..9999 are no times at all (job.parse_time's bounds).
    assert timing(odd, JobState.DEAD) == (None, None, None, 3)


def test_enqueue_imports_neither_flask_nor_prometheus(spool_dir):
    code = ("import sys; from queuectl.cli import main\n"
            f"try: main(['--spool', {str(spool_dir)!r}, 'enqueue', 'true'])\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in ('flask', 'prometheus_client', 'werkzeug', 'jinja2') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.splitlines()[-1] == "[]", p.stdout + p.stderr


# -- JSON output of the data commands ----------------------------------------------------


def test_status_json_has_workers_and_spool_beside_the_counts(run, spool_dir):
    assert run("enqueue", "true").exit_code == 0
    out = json.loads(run("status", "--json").stdout)
    assert out == {"pending": 1, "processing": 0, "completed": 0, "failed": 0, "dead": 0, "held": 0, "cancelled": 0,
                   "workers": 0, "spool": str(spool_dir)}


def test_list_json_lines_streams_one_record_a_line(run):
    for i in range(3):
        assert run("enqueue", "--id", f"j{i}", f"echo {i}").exit_code == 0
    r = run("list", "--json-lines")
    lines = r.stdout.splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["j0", "j1", "j2"]
    assert json.loads(lines[0]) == json.loads(run("list", "--json").stdout)[0]
    assert run("list", "--json-lines", "--limit", "1").stdout.count("\n") == 1
    assert run("list", "--json-lines", "--state", "dead").stdout == ""
    r = run("list", "--json", "--json-lines")
    assert r.exit_code == 2 and "not both" in r.stderr


def test_list_json_lines_into_head_is_not_an_error(run, spool_dir):
    lines = "".join(json.dumps({"command": f"echo {i}"}) + "\n" for i in range(5000))
    assert run("enqueue", "--file", "-", "--quiet", input=lines).exit_code == 0
    p = subprocess.run(f"{sys.executable} -m queuectl --spool {spool_dir} list --json-lines | head -1",
                       shell=True, capture_output=True, text=True, timeout=60)
    assert json.loads(p.stdout)["command"] == "echo 0" and p.stderr == ""


def test_show_help_describes_its_output(run):
    assert run("enqueue", "--id", "job1", "true").exit_code == 0
    help_text = run("show", "--help").stdout
    out = run("show", "job1").stdout
    assert out.startswith("job1 is in pending/ (") and "ID is in DIR/ (PATH)" in help_text
    keys = json.loads(run("show", "--json", "job1").stdout).keys()
    assert "{" + ", ".join(keys) + "}" in help_text


# -- shell completion ------------------------------------------------------------------------


def _complete(spool, words: str, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "_QUEUECTL_COMPLETE": "bash_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
    return subprocess.run([sys.executable, "-c", "from queuectl.cli import main; main(prog_name='queuectl')"],
                          env=env, capture_output=True, text=True, timeout=60)


def test_completion_of_commands_and_job_ids(run, spool_dir):
    for job_id in ("alpha-1", "alpha-2", "beta"):
        assert run("enqueue", "--id", job_id, "false" if job_id == "beta" else "true").exit_code == 0
    p = _complete(spool_dir, f"queuectl --spool {spool_dir} sh")
    assert p.returncode == 0 and "plain,show" in p.stdout.splitlines()
    p = _complete(spool_dir, f"queuectl --spool {spool_dir} show al")
    assert p.stdout.splitlines() == ["plain,alpha-1", "plain,alpha-2"]
    p = _complete(spool_dir, f"queuectl --spool {spool_dir} logs ")
    assert p.stdout.splitlines() == ["plain,alpha-1", "plain,alpha-2", "plain,beta"]
    # dlq retry offers dead jobs only
    os.rename(spool_dir / "pending" / "beta.json", spool_dir / "dead" / "beta.json")
    run("status")
    p = _complete(spool_dir, f"queuectl --spool {spool_dir} dlq retry ")
    assert p.stdout.splitlines() == ["plain,beta"]


def test_completion_never_fails_nor_creates_a_spool(tmp_path):
    missing = tmp_path / "nothing-here"
    p = _complete(missing, f"queuectl --spool {missing} show ")
    assert (p.returncode, p.stdout.strip(), p.stderr) == (0, "", "")
    assert not missing.exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.db").write_text("garbage")
    p = _complete(broken, f"queuectl --spool {broken} show ")
    assert (p.returncode, p.stdout.strip()) == (0, "")


# -- issue 21: counters that never go down, due-only ages, queue and node labels ----------


def finished(fams, outcome: str, queue: str = "default") -> float:
    return value(fams, "queuectl_jobs_finished", "queuectl_jobs_finished_total", queue=queue, outcome=outcome)


def attempts(fams, queue: str = "default") -> float:
    return value(fams, "queuectl_attempts", "queuectl_attempts_total", queue=queue)


def test_counters_survive_clean_rm_requeue_and_an_index_rebuild(run, ran, spool_dir):
    fams = metrics(run)
    assert (finished(fams, "completed"), finished(fams, "dead"), attempts(fams)) == (2, 1, 4)
    assert run("clean", "--all").exit_code == 0
    assert sorted(os.listdir(spool_dir / "done")) == [] and os.listdir(spool_dir / "dead") == []
    fams = metrics(run)
    # They fell to 0 before: rate() reads that as a counter reset.
    assert (finished(fams, "completed"), finished(fams, "dead"), attempts(fams)) == (2, 1, 4)
    assert value(fams, "queuectl_retries", "queuectl_retries_total", queue="default") == 1
    assert value(fams, "queuectl_jobs", queue="default", state="completed") == 0  # the gauge does fall
    # New work adds to the kept counts.
    assert run("enqueue", "--id", "again", "true").exit_code == 0
    assert cli_burst(spool_dir) == 0
    fams = metrics(run)
    assert (finished(fams, "completed"), attempts(fams)) == (3, 5)
    # The index is a cache: rebuilt from the directories, it is seeded from counters.json.
    os.unlink(spool_dir / "index.db")
    fams = metrics(run)
    assert (finished(fams, "completed"), finished(fams, "dead"), attempts(fams)) == (3, 1, 5)
    assert run("enqueue", "--id", "more", "true").exit_code == 0
    assert cli_burst(spool_dir) == 0
    fams = metrics(run)
    assert (finished(fams, "completed"), attempts(fams)) == (4, 6)  # counting on from there
    # A hand deletion (no clean, no rm) does not lower them either.
    os.unlink(spool_dir / "done" / "more.json")
    fams = metrics(run)
    assert (finished(fams, "completed"), attempts(fams)) == (4, 6)
    saved = json.loads((spool_dir / "counters.json").read_text())
    assert saved["exported"]["default"] == {"completed": 4, "dead": 1, "attempts": 6, "retries": 1}
    assert run("check").exit_code == 0  # counters.json is a known file of the spool


def cli_burst(spool_dir) -> int:
    from support import cli
    return cli(spool_dir, "worker", "start", "--burst", check=False, timeout=60).returncode


def test_a_bad_counters_file_is_ignored(run, ran, spool_dir):
    for junk in ("[", '{"exported": {"default": {"completed": 1e400, "dead": -5, "attempts": "x"}, '
                      '"../x": {"completed": 99}}}', '{"exported": [1]}'):
        (spool_dir / "counters.json").write_text(junk)
        fams = metrics(run)
        assert (finished(fams, "completed"), finished(fams, "dead"), attempts(fams)) == (2, 1, 4)
        assert "../x" not in {dict(k).get("queue") for k in samples(fams["queuectl_jobs"])}


def test_oldest_pending_age_counts_only_due_unblocked_jobs(run, spool_dir):
    assert run("enqueue", "--id", "tomorrow", "--delay", "1d", "true").exit_code == 0
    assert run("enqueue", "--id", "first", "--hold", "true").exit_code == 0
    assert run("enqueue", "--id", "blocked", "--after", "first", "true").exit_code == 0
    db = sqlite3.connect(spool_dir / "index.db")
    db.execute("UPDATE jobs SET created = created - 3600")  # all of them enqueued an hour ago
    db.commit()
    db.close()
    fams = metrics(run)
    q = {"queue": "default"}
    # It grew from the delayed job's enqueue before and would have paged someone.
    assert value(fams, "queuectl_oldest_pending_age_seconds", **q) == 0
    assert value(fams, "queuectl_jobs_scheduled", **q) == 1
    assert value(fams, "queuectl_jobs_blocked", **q) == 1
    assert run("enqueue", "--id", "due", "true").exit_code == 0
    time.sleep(0.05)
    age = value(metrics(run), "queuectl_oldest_pending_age_seconds", **q)
    assert 0 < age < 60


def test_queue_labels_and_the_pause_gauge(run, spool_dir):
    assert run("enqueue", "--queue", "gpu", "--id", "g1", "true").exit_code == 0
    assert run("enqueue", "--queue", "gpu", "--id", "g2", "--max-retries", "0", "false").exit_code == 0
    assert run("enqueue", "--id", "d1", "true").exit_code == 0
    assert run("config", "set", "queue.gpu.concurrency", "2").exit_code == 0
    cli_burst(spool_dir)
    assert run("enqueue", "--queue", "gpu", "--id", "g3", "true").exit_code == 0
    assert run("pause", "--queue", "gpu").exit_code == 0
    fams = metrics(run)
    assert value(fams, "queuectl_jobs", queue="gpu", state="completed") == 1
    assert value(fams, "queuectl_jobs", queue="gpu", state="dead") == 1
    assert value(fams, "queuectl_jobs", queue="gpu", state="pending") == 1
    assert value(fams, "queuectl_jobs", queue="default", state="completed") == 1
    assert finished(fams, "dead", "gpu") == 1 and finished(fams, "dead") == 0
    assert attempts(fams, "gpu") == 2 and attempts(fams) == 1
    assert value(fams, "queuectl_queue_paused", queue="gpu") == 1
    assert value(fams, "queuectl_queue_paused", queue="default") == 0
    assert value(fams, "queuectl_queue_limit", queue="gpu") == 2
    assert run("clean", "--all").exit_code == 0
    fams = metrics(run)
    assert finished(fams, "dead", "gpu") == 1 and attempts(fams, "gpu") == 2
