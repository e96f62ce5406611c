"""Everyday use as a newcomer from task-spooler, nq or pueue meets it: a command
with its arguments, why a job sits still, requeue and rm, a live worker count,
what `list` says about each job, answers that are never silent, exit codes and
short options, and an example spool that reading leaves as it was."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import click
import pytest

from support import cli, heartbeats, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _record(spool: Path, state_dir: str, job_id: str) -> dict:
    return json.loads((spool / state_dir / f"{job_id}.json").read_text())


# -- 1. a command and its arguments ------------------------------------------------------


def test_enqueue_takes_a_command_and_its_arguments(run, spool_dir):
    assert run("enqueue", "--id", "a", "echo", "hi").stdout == "enqueued job a\n"
    # Options end at the command's first word: -c is sh's, not enqueue's.
    assert run("enqueue", "--id", "b", "sh", "-c", "echo $HOME").exit_code == 0
    assert run("enqueue", "--id", "c", "--", "ls", "-l", "a b").exit_code == 0
    assert run("enqueue", "--id", "d", "echo a; echo b").exit_code == 0  # one word: a shell command, as written
    commands = {i: _record(spool_dir, "pending", i)["command"] for i in "abcd"}
    assert commands == {"a": "echo hi", "b": "sh -c 'echo $HOME'", "c": "ls -l 'a b'", "d": "echo a; echo b"}


def test_arguments_reach_the_command_unchanged(spool_dir):
    cli(spool_dir, "enqueue", "--id", "q", "printf", "[%s]\\n", "two words", "$HOME", "it's")
    cli(spool_dir, "worker", "start", "--burst")
    assert cli(spool_dir, "logs", "q").stdout.splitlines()[1:4] == ["[two words]", "[$HOME]", "[it's]"]


# -- 2. why a job sits still -----------------------------------------------------------------


def _fake_live_worker(spool: Path) -> None:
    """A heartbeat file written just now, which is all enqueue's hint looks at."""
    (spool / "workers" / "node.1.json").write_text("{}")


def _on_a_terminal(spool: Path, *args) -> tuple[str, str]:
    """(stdout, stderr) of queuectl with its stderr on a pseudo-terminal, as a person sees it."""
    import pty
    import subprocess
    import sys
    master, slave = pty.openpty()
    p = subprocess.run([sys.executable, "-m", "queuectl", "--spool", str(spool), *args], stdout=subprocess.PIPE,
                       stderr=slave, stdin=subprocess.DEVNULL, text=True, timeout=60)
    os.close(slave)
    err = b""
    try:
        while chunk := os.read(master, 4096):
            err += chunk
    except OSError:  # EIO: the terminal's other end is closed and drained
        pass
    os.close(master)
    return p.stdout, err.decode().replace("\r\n", "\n")


def test_enqueue_on_a_terminal_says_when_no_worker_would_take_the_job(run, spool_dir):
    assert _on_a_terminal(spool_dir, "enqueue", "--id", "a", "true") == (
        "enqueued job a\n",
        "queuectl: no worker is running on this spool: start one with `queuectl worker start --detach`\n")
    assert _on_a_terminal(spool_dir, "enqueue", "--quiet", "--id", "b", "true")[1] == ""
    assert _on_a_terminal(spool_dir, "enqueue", "--hold", "--id", "c", "true")[1] == ""  # it waits for release
    assert run("enqueue", "--id", "x", "true").stderr == ""  # not a terminal: scripts and cron are spared it
    assert "workers:    0 (no workers running)" in run("status").stdout.splitlines()
    _fake_live_worker(spool_dir)
    assert _on_a_terminal(spool_dir, "enqueue", "--id", "d", "true")[1] == ""
    run("pause", "--queue", "gpu")
    assert _on_a_terminal(spool_dir, "enqueue", "--queue", "gpu", "--id", "e", "true")[1] == \
        "queuectl: queue gpu is paused: `queuectl resume --queue gpu` lifts that\n"
    run("pause")
    assert "every queue is paused" in _on_a_terminal(spool_dir, "enqueue", "--id", "f", "true")[1]


# -- 3. requeue and rm ------------------------------------------------------------------------


@pytest.fixture
def finished(run, spool_dir):
    """a completed, b dead, c cancelled, w pending."""
    run("enqueue", "--id", "a", "echo a")
    run("enqueue", "--id", "b", "--max-retries", "0", "echo b; exit 3")
    run("enqueue", "--id", "c", "true")
    run("cancel", "c")
    assert cli(spool_dir, "worker", "start", "--burst", check=False).returncode == 1
    run("enqueue", "--id", "w", "true")
    return spool_dir


def test_requeue_runs_finished_jobs_again_with_their_history(run, finished):
    r = run("requeue", "a", "b", "c")
    assert (r.exit_code, r.stdout) == (0, "requeued job a\nrequeued job b\nrequeued job c\n")
    for i, before in (("a", "done/"), ("b", "dead/"), ("c", "cancelled/")):
        rec = _record(finished, "pending", i)
        assert (rec["state"], rec["attempts"]) == ("pending", 0)
        assert rec["history"][-1]["event"] == f"requeued from {before}"
    assert _record(finished, "pending", "a")["history"][0]["attempt"] == 1  # the first run is kept
    cli(finished, "worker", "start", "--burst", check=False)
    assert cli(finished, "logs", "a").stdout.count("=== attempt 1/4 started") == 2


def test_rm_deletes_finished_jobs_and_frees_their_ids(run, finished):
    assert (finished / "logs" / "b.log").exists()
    r = run("rm", "a", "b", "c")
    assert (r.exit_code, r.stdout) == (0, "removed job a\nremoved job b\nremoved job c\n")
    left = sorted(p.name for d in ("done", "dead", "cancelled", "logs") for p in (finished / d).iterdir())
    assert left == []
    assert run("enqueue", "--id", "a", "true").exit_code == 0  # the id is free again


@pytest.mark.parametrize("command", ["rm", "requeue"])
def test_rm_and_requeue_refuse_a_waiting_job_and_change_nothing(run, finished, command):
    before = sorted(str(p.relative_to(finished)) for p in finished.rglob("*.json"))
    r = run(command, "a", "w")
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"Error: job w is pending: only completed, dead or cancelled jobs can be "
        f"{'removed' if command == 'rm' else 'requeued'}"]
    assert sorted(str(p.relative_to(finished)) for p in finished.rglob("*.json")) == before
    assert run(command, "nope").stderr == "Error: no job nope\n"


# -- 4. worker scale ----------------------------------------------------------------------------


def _workers(spool: Path) -> list[dict]:
    return [h for h in heartbeats(spool, "worker")]


@pytest.mark.slow
def test_worker_scale_grows_and_shrinks_a_running_supervisor(spool_dir):
    out = cli(spool_dir, "worker", "start", "--detach", "--count", "1").stdout
    pid = int(re.search(r"PID=(\d+)", out).group(1))
    try:
        wait_for(lambda: len(_workers(spool_dir)) == 1, 30)
        t0 = time.monotonic()
        assert cli(spool_dir, "worker", "scale", "3").stdout == f"supervisor PID={pid}: 1 -> 3 workers\n"
        took = time.monotonic() - t0
        wait_for(lambda: len(_workers(spool_dir)) == 3, 30, what="three workers")
        assert took < 3, took  # the supervisor looks every 0.5 s; the rest is this loaded machine
        # Shrinking lets a running job finish.
        cli(spool_dir, "enqueue", "--id", "long", "sleep 2; echo finished")
        wait_for(lambda: (spool_dir / "processing" / "long.json").exists(), 30)
        assert cli(spool_dir, "worker", "scale", "1").stdout == f"supervisor PID={pid}: 3 -> 1 worker\n"
        wait_for(lambda: (spool_dir / "done" / "long.json").exists(), 30, what="the running job done")
        assert _record(spool_dir, "done", "long")["attempts"] == 1
        wait_for(lambda: len(_workers(spool_dir)) == 1, 30, what="one worker left")
    finally:
        cli(spool_dir, "worker", "stop", "--timeout", "10")
    log = (spool_dir / "logs" / "_supervisor.log").read_text()
    assert "scaled from 1 to 3 workers" in log and "scaled from 3 to 1 worker;" in log


def test_worker_scale_without_a_supervisor_is_one_error_line(run):
    r = run("worker", "scale", "2")
    assert r.exit_code == 1
    assert r.stderr == ("Error: no supervisor of this spool runs on this node: start one with "
                        "`queuectl worker start --count 2 --detach`\n")
    assert run("worker", "scale", "0").exit_code == 2


# -- 5. what list says ------------------------------------------------------------------------


def test_list_shows_exit_code_run_time_retry_schedule_and_dependencies(run, spool_dir):
    run("config", "set", "backoff_base", "60")
    run("config", "set", "backoff_jitter", "0")
    run("enqueue", "--id", "ok", "true")
    run("enqueue", "--id", "bad", "--max-retries", "0", "exit 3")
    run("enqueue", "--id", "flaky", "--max-retries", "2", "exit 4")
    # A burst would wait for flaky's retry: a detached supervisor, stopped once flaky waits in failed/.
    cli(spool_dir, "worker", "start", "--detach")
    try:
        wait_for(lambda: all((spool_dir / d / f"{i}.json").exists()
                             for d, i in (("done", "ok"), ("dead", "bad"), ("failed", "flaky"))), 30)
    finally:
        cli(spool_dir, "worker", "stop", "--timeout", "10")
    run("enqueue", "--id", "later", "--at", "2099-01-01T10:00:00Z", "true")
    run("enqueue", "--id", "child", "--after", "flaky", "true")
    lines = run("list").stdout.splitlines()
    assert re.fullmatch(r"ok - completed \(exit 0, \d+\.\d\ds\) - true", lines[0]), lines
    assert re.fullmatch(r"bad - dead \(exit 3, \d+\.\d\ds\) - exit 3", lines[1]), lines
    assert re.fullmatch(r"flaky - failed \(exit 4, retry in (\d+s|1m)\) - exit 4", lines[2]), lines
    assert re.fullmatch(r"later - pending \(at 2099-01-01 \d\d:00, in \d+d(\d+h)?\) - true", lines[3]), lines
    assert lines[4] == "child - pending (after flaky: failed) - true"
    records = {r["id"]: r for r in json.loads(run("list", "--json").stdout)}
    assert records["ok"]["duration"] >= 0 and records["ok"]["exit_code"] == 0
    assert records["child"]["waiting_for"] == ["flaky"] and records["later"]["waiting_for"] == []
    assert records["later"]["duration"] is None
    streamed = [json.loads(x) for x in run("list", "--json-lines").stdout.splitlines()]
    assert [r["waiting_for"] for r in streamed] == [r["waiting_for"] for r in records.values()]


# -- 6. never silent -----------------------------------------------------------------------------


def test_empty_answers_say_so_on_stderr(run, spool_dir):
    run("enqueue", "--id", "quiet", "true")
    cli(spool_dir, "worker", "start", "--burst")
    r = run("logs", "quiet")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "", "(no output)\n")
    r = run("dlq", "list")
    assert (r.stdout, r.stderr) == ("", "(none)\n")
    r = run("worker", "list")
    assert r.stdout == "" and r.stderr.startswith("(none: no worker is running")
    assert run("dlq", "list", "--json").stdout == "[]\n" and run("worker", "list", "--json").stderr == ""


@pytest.mark.slow
def test_a_burst_waiting_for_a_far_retry_says_what_it_waits_for(spool_dir):
    cli(spool_dir, "config", "set", "backoff_base", "10")  # 5 s past the threshold: room for a loaded machine
    cli(spool_dir, "config", "set", "backoff_jitter", "0")
    cli(spool_dir, "enqueue", "--id", "flaky", "--max-retries", "1", "exit 4")
    out = cli(spool_dir, "worker", "start", "--burst", check=False, timeout=60).stdout
    said = [line for line in out.splitlines() if "waiting for" in line]
    assert len(said) == 1, out
    assert re.search(r"\[worker-0\] waiting for the retry of flaky at \d\d:\d\d:\d\d \(in \d+\.\ds\)", said[0])


# -- 7. exit codes and short options ---------------------------------------------------------------


def _all_commands() -> dict[str, click.Command]:
    from queuectl.cli import main
    out: dict[str, click.Command] = {}

    def walk(group: click.Group, prefix: str) -> None:
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            if isinstance(cmd, click.Group):
                walk(cmd, f"{prefix}{name} ")
            else:
                out[f"{prefix}{name}"] = cmd
    walk(main, "")
    return out


def test_each_short_option_means_one_thing_across_the_cli():
    meaning: dict[str, set[str]] = {}
    for name, cmd in _all_commands().items():
        for p in cmd.params:
            longs = [o for o in p.opts if o.startswith("--")]
            for short in (o for o in (*p.opts, *p.secondary_opts) if re.fullmatch(r"-\w", o)):
                meaning.setdefault(short, set()).update(longs)
    clashes = {s: sorted(v) for s, v in meaning.items() if len(v) > 1}
    assert not clashes, f"short options with two meanings: {clashes}"
    assert meaning["-q"] == {"--quiet"} and meaning["-Q"] == {"--queue"}


def test_usage_errors_exit_2_and_every_other_error_1(run):
    r = run("list", "--bogus")
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert lines[0].startswith("Usage: ") and lines[1].startswith("Try ") and lines[-1].startswith("Error: ")
    r = run("show", "nope")
    assert (r.exit_code, r.stderr) == (1, "Error: no job nope\n")


def test_the_readme_documents_the_exit_codes_once():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Exit codes"):].split("\n\n")[1]
    assert [row.split("|")[1].strip() for row in table.splitlines()[2:]] == ["0", "1", "2", "130"]
    assert text.count("## Exit codes") == 1
    docs = (ROOT / "docs" / "json.md").read_text()
    assert "exit code 1" not in docs and "exit code 1" not in text.replace("exit code 1,", "")


# -- 10. the example spool ----------------------------------------------------------------------------


def _tree(root: Path) -> list[tuple]:
    return sorted((str(p.relative_to(root)), p.stat().st_mode, p.stat().st_size, p.stat().st_mtime_ns,
                   p.read_bytes() if p.is_file() else b"") for p in [root, *root.rglob("*")])


def test_reading_the_example_spool_leaves_it_as_it_was(tmp_path):
    example = tmp_path / "spool_example"
    shutil.copytree(ROOT / "spool_example", example)
    before = _tree(example)
    for args in (["status"], ["list"], ["list", "--json"], ["show", "greet"], ["logs", "hello"], ["dlq", "list"],
                 ["worker", "list"], ["check"], ["check", "--json"], ["config", "list"], ["metrics"]):
        r = cli(example, *args, check=False)
        assert r.returncode in (0, 1) and "Traceback" not in r.stderr, (args, r.stderr)
    assert _tree(example) == before
    assert not (example / "index.db").exists() and not (example / ".lock").exists()


def test_check_on_the_example_explains_what_it_finds(tmp_path):
    example = tmp_path / "spool_example"
    shutil.copytree(ROOT / "spool_example", example)
    r = cli(example, "check", check=False)
    assert r.returncode == 1
    note = r.stdout.splitlines()[0]
    assert note.startswith("note: this spool is read-only (.readonly): This is the example spool")
    assert "mode 644" in note and "processing/backup.json" in note and "orphan" in note
    assert "tmp/.gitkeep" in note
    kinds = {line.split(":")[0] for line in r.stdout.splitlines()[1:]}
    assert kinds - {"stale-tmp"} == {"permissions", "orphan"}  # stale-tmp: an hour after the checkout


def test_the_example_refuses_jobs_and_workers_and_a_copy_does_not(tmp_path):
    example = tmp_path / "spool_example"
    shutil.copytree(ROOT / "spool_example", example)
    r = cli(example, "enqueue", "true", check=False)
    assert r.returncode == 1 and r.stderr.startswith(f"Error: the spool {example} is read-only")
    for detach in ([], ["--detach"]):
        r = cli(example, "worker", "start", "--burst", *detach, check=False)
        assert r.returncode == 1 and "read-only (marked so by its .readonly file)" in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1
    (example / ".readonly").unlink()
    os.chmod(example, 0o700)
    assert cli(example, "enqueue", "--id", "new", "true").returncode == 0
