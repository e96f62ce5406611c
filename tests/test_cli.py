"""The enqueue/inspect CLI: exact output lines, `Error:` text, exit codes, files on disk."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import click
import pytest

from queuectl import __version__
from queuectl.cli import main

JOB1 = '{"id": "job1", "command": "echo Hello from QueueCTL", "max_retries": 3}'
STATES = ["pending", "processing", "completed", "failed", "dead", "held", "cancelled"]


@pytest.fixture
def job_file(tmp_path):
    def _write(text, name="job.json"):
        p = tmp_path / name
        p.write_bytes(text.encode() if isinstance(text, str) else text)
        return p
    return _write


def status_counts(run) -> dict:
    r = run("status", "--json")
    assert r.exit_code == 0, r.output
    return {k: v for k, v in json.loads(r.stdout).items() if k in STATES}


# -- enqueue ----------------------------------------------------------------------

def test_enqueue_file(run, job_file, spool_dir, read_job, ls):
    r = run("enqueue", "--file", job_file(JOB1))
    assert (r.exit_code, r.stdout, r.stderr) == (0, "enqueued job job1\n", "")
    assert ls("pending") == ["job1.json"]
    assert ls("tmp") == []
    rec = read_job("pending", "job1")
    assert rec["command"] == "echo Hello from QueueCTL"
    assert rec["state"] == "pending" and rec["attempts"] == 0 and rec["max_retries"] == 3
    assert stat.S_IMODE((spool_dir / "pending" / "job1.json").stat().st_mode) == 0o600


def test_enqueue_stdin(run, read_job):
    r = run("enqueue", "--file", "-", input=JOB1)
    assert (r.exit_code, r.stdout) == (0, "enqueued job job1\n")
    assert read_job("pending", "job1")["command"] == "echo Hello from QueueCTL"


def test_enqueue_json_array(run, job_file, ls):
    jobs = [{"id": f"a{i}", "command": f"echo {i}"} for i in range(3)]
    r = run("enqueue", "--file", job_file(json.dumps(jobs)))
    assert (r.exit_code, r.stdout) == (0, "enqueued job a0\nenqueued job a1\nenqueued job a2\n")
    assert ls("pending") == ["a0.json", "a1.json", "a2.json"]


def test_enqueue_json_lines(run, job_file, ls):
    text = "\n".join(json.dumps({"id": f"l{i}", "command": f"echo {i}"}) for i in range(4)) + "\n\n"
    r = run("enqueue", "--file", "-", input=text)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [f"enqueued job l{i}" for i in range(4)]
    assert ls("pending") == [f"l{i}.json" for i in range(4)]


def test_enqueue_pretty_printed_object(run, job_file):
    r = run("enqueue", "--file", job_file(json.dumps(json.loads(JOB1), indent=4)))
    assert (r.exit_code, r.stdout) == (0, "enqueued job job1\n")


def test_enqueue_quiet_prints_a_count(run, job_file):
    text = "\n".join(json.dumps({"command": f"echo {i}"}) for i in range(5))
    r = run("enqueue", "--quiet", "--file", "-", input=text)
    assert r.exit_code == 0
    assert r.stdout == "enqueued 5 jobs\n"
    assert "enqueued job" not in r.stdout
    assert status_counts(run)["pending"] == 5


def test_enqueue_empty_array_prints_no_blank_line(run):
    r = run("enqueue", "--file", "-", input="[]")
    assert r.exit_code == 0
    assert r.stdout == ""
    assert status_counts(run)["pending"] == 0


def test_enqueue_json_output(run):
    r = run("enqueue", "--json", "--id", "j", "echo hi")
    assert r.exit_code == 0
    [rec] = json.loads(r.stdout)
    assert rec["id"] == "j" and rec["command"] == "echo hi" and rec["state"] == "pending"


def test_enqueue_inline(run, read_job, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("enqueue", "--id", "hi", "--max-retries", "5", "--timeout", "2.5", "echo hi")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "enqueued job hi\n", "")
    rec = read_job("pending", "hi")
    assert rec["command"] == "echo hi"
    assert rec["max_retries"] == 5
    assert rec["timeout"] == 2.5
    assert rec["cwd"] == str(tmp_path)


def test_enqueue_inline_generated_id(run, spool_dir):
    r = run("enqueue", "echo hi")
    assert r.exit_code == 0
    [line] = r.stdout.splitlines()
    assert line.startswith("enqueued job ")
    job_id = line.split()[-1]
    assert (spool_dir / "pending" / f"{job_id}.json").is_file()


def test_cwd_recorded_unless_given(run, read_job, job_file, tmp_path, monkeypatch):
    sub = tmp_path / "work dir"
    sub.mkdir()
    monkeypatch.chdir(sub)
    run("enqueue", "--file", job_file('[{"id": "a", "command": "pwd"},'
                                      ' {"id": "b", "command": "pwd", "cwd": "/srv"}]'))
    assert read_job("pending", "a")["cwd"] == str(sub)
    assert read_job("pending", "b")["cwd"] == "/srv"


def test_enqueue_options_override_file_fields(run, job_file, read_job):
    r = run("enqueue", "--id", "other", "--max-retries", "0", "--timeout", "9", "--file", job_file(JOB1))
    assert (r.exit_code, r.stdout) == (0, "enqueued job other\n")
    rec = read_job("pending", "other")
    assert (rec["max_retries"], rec["timeout"]) == (0, 9)


def test_enqueue_id_with_a_non_object_file(run, job_file, ls):
    r = run("enqueue", "--id", "x", "--file", job_file('"echo hi"'))
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: ") and "JSON object" in r.stderr
    assert ls("pending") == []


def test_enqueue_id_needs_one_job(run, job_file):
    r = run("enqueue", "--id", "x", "--file", job_file('[{"command": "a"}, {"command": "b"}]'))
    assert r.exit_code == 2
    assert "--id needs exactly one job" in r.stderr


def test_enqueue_needs_command_or_file(run, job_file):
    r = run("enqueue")
    assert r.exit_code == 2 and "give one of CMD [ARG...], --file or --lines" in r.stderr
    r = run("enqueue", "--file", job_file(JOB1), "echo hi")
    assert r.exit_code == 2 and "not both" in r.stderr


@pytest.mark.parametrize("args", [["--max-retries", "-1"], ["--max-retries", "x"], ["--timeout", "0"],
                                  ["--timeout", "-1"], ["--timeout", "soon"]])
def test_enqueue_bad_option_values(run, ls, args):
    r = run("enqueue", *args, "echo hi")
    assert r.exit_code == 2
    assert "Invalid value" in r.stderr
    assert ls("pending") == []


def test_duplicate_is_refused_and_nothing_written(run, job_file, spool_dir, ls):
    assert run("enqueue", "--file", job_file(JOB1)).exit_code == 0
    before = (spool_dir / "pending" / "job1.json").read_bytes()
    r = run("enqueue", "--file", job_file(JOB1.replace("echo Hello", "echo Other")))
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", "Error: job job1 already exists (in pending/)\n")
    assert (spool_dir / "pending" / "job1.json").read_bytes() == before
    assert ls("pending") == ["job1.json"] and ls("tmp") == []


def test_duplicate_in_any_state(run, spool_dir, ls):
    run("enqueue", "--id", "job1", "true")
    os.rename(spool_dir / "pending" / "job1.json", spool_dir / "dead" / "job1.json")
    r = run("enqueue", "--id", "job1", "true")
    assert (r.exit_code, r.stderr) == (1, "Error: job job1 already exists (in dead/)\n")
    r = run("enqueue", "--id", "JOB1", "true")
    assert r.exit_code == 1 and r.stderr == "Error: job job1 already exists (in dead/)\n"
    assert ls("pending") == []


def test_duplicate_ignoring_case(run, ls):
    run("enqueue", "--id", "job1", "true")
    r = run("enqueue", "--id", "Job1", "true")
    assert (r.exit_code, r.stderr) == (1, "Error: job job1 already exists (in pending/)\n")
    assert ls("pending") == ["job1.json"]


def test_duplicate_within_one_file(run, job_file, ls):
    r = run("enqueue", "--file", job_file('[{"id": "a", "command": "x"}, {"id": "A", "command": "y"}]'))
    assert r.exit_code == 1
    assert r.stderr == "Error: job A appears twice\n"
    assert ls("pending") == []


@pytest.mark.parametrize("spec, message", [
    ('{"command": ""}', "command is empty"),
    ('{"id": "job1"}', "missing command"),
    ('{"id": "a/b", "command": "x"}', "id 'a/b' contains a path separator"),
    ('{"id": "..", "command": "x"}', "contains '..'"),
    ('{"command": "x", "max_retries": "3"}', "max_retries must be an integer from 0 to 1000, not '3'"),
    ('{"command": "x", "timeout": 0}', "timeout must be a number of seconds > 0, not 0"),
    ('{"command": "x", "env": {"A": 1}}', "env value of A must be a string, not an integer"),
    ('{"command": "x", "command": "y"}', "duplicate key 'command'"),
    ('{"command": ["ls"]}', "command must be a string, not a list"),
    ('{"command": "x", "t": NaN}', "NaN is not valid JSON"),
    ('{"command": "x", "t": 1e999}', "out of range"),
    ('{"command": "echo \\udc00"}', "lone surrogate"),
])
def test_enqueue_invalid_single_job(run, job_file, ls, spec, message):
    r = run("enqueue", "--file", job_file(spec))
    assert r.exit_code == 1
    assert r.stdout == ""
    [line] = r.stderr.splitlines()
    assert line.startswith("Error: ") and message in line
    assert ls("pending") == [] and ls("tmp") == []


@pytest.mark.parametrize("data, message", [
    (b"", "is empty"),
    (b"   \n", "is empty"),
    (b"{", "invalid JSON"),
    (b'{"command": "echo \xff"}', "UTF-8"),
    (b"[" * 50_000, "nested too deeply"),
    (b"[{]", "invalid JSON"),
])
def test_enqueue_unparseable_file(run, job_file, ls, data, message):
    r = run("enqueue", "--file", job_file(data))
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: ") and message in r.stderr
    assert r.stderr.count("\n") == 1
    assert ls("pending") == [] and ls("tmp") == []


def test_inline_invalid_id(run, ls):
    r = run("enqueue", "--id", "a b", "echo hi")
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", "Error: id 'a b' contains whitespace\n")
    r = run("enqueue", "   ")
    assert (r.exit_code, r.stderr) == (1, "Error: command is empty\n")
    assert ls("pending") == []


def test_bulk_with_bad_records_reports_all_and_enqueues_none(run, job_file, ls):
    lines = [
        '{"id": "ok1", "command": "echo 1"}',
        '{"id": "bad id", "command": "x"}',
        '{"command": ',
        '',
        '{"id": "ok2", "command": "echo 2"}',
        '{"id": "noc"}',
    ]
    r = run("enqueue", "--file", job_file("\n".join(lines)))
    assert r.exit_code == 1
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        "Error: line 2: id 'bad id' contains whitespace",
        "Error: line 3: invalid JSON: Expecting value at line 1 column 13",
        "Error: line 6: missing command",
        "Error: 3 of 5 jobs are invalid; nothing enqueued (--skip-invalid enqueues the valid ones)",
    ]
    assert ls("pending") == [] and ls("tmp") == []
    assert status_counts(run)["pending"] == 0


def test_bulk_array_reports_items(run, job_file, ls):
    r = run("enqueue", "--file", job_file('[{"command": "a"}, 5, {"command": ""}, {"command": "b"}]'))
    assert r.exit_code == 1
    assert r.stderr.splitlines() == [
        "Error: item 2: a job must be a JSON object, not an integer",
        "Error: item 3: command is empty",
        "Error: 2 of 4 jobs are invalid; nothing enqueued (--skip-invalid enqueues the valid ones)",
    ]
    assert ls("pending") == []


def test_bulk_skip_invalid(run, job_file, ls):
    text = '{"id": "ok1", "command": "echo 1"}\n{"id": "x/y", "command": "z"}\n{"id": "ok2", "command": "echo 2"}\n'
    r = run("enqueue", "--skip-invalid", "--file", job_file(text))
    assert r.exit_code == 0
    assert r.stdout == "enqueued job ok1\nenqueued job ok2\n"
    assert r.stderr == "skipped line 2: id 'x/y' contains a path separator\n"
    assert ls("pending") == ["ok1.json", "ok2.json"]


def test_bulk_skip_invalid_skips_a_record_whose_after_names_no_job(run, job_file, ls):
    """A record whose `after` names a job that does not exist (never was, or was cleaned), or whose
    id is taken, is one bad record: --skip-invalid skips it (and the records waiting for it) and says
    so, like any other; without the flag the whole file is refused."""
    run("enqueue", "--id", "taken", "true")
    text = "\n".join(json.dumps(r) for r in [
        {"id": "ok1", "command": "echo 1"},
        {"id": "orphan", "command": "echo 2", "after": ["gone"]},
        {"id": "child", "command": "echo 3", "after": ["orphan"]},
        {"id": "taken", "command": "echo 4"},
        {"id": "ok2", "command": "echo 5", "after": ["ok1"]},
    ]) + "\n"
    r = run("enqueue", "--file", job_file(text))
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", "Error: after: no job gone\n")
    assert ls("pending") == ["taken.json"]
    r = run("enqueue", "--skip-invalid", "--file", job_file(text))
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "enqueued job ok1\nenqueued job ok2\n"
    assert r.stderr.splitlines() == [
        "skipped line 2: after: no job gone",
        "skipped line 3: after: no job orphan",
        "skipped line 4: job taken already exists (in pending/)",
    ]
    assert ls("pending") == ["ok1.json", "ok2.json", "taken.json"]
    assert run("check").exit_code == 0


def test_bulk_duplicate_of_existing_enqueues_none(run, job_file, ls):
    run("enqueue", "--id", "b", "true")
    r = run("enqueue", "--file", job_file('[{"id": "a", "command": "x"}, {"id": "b", "command": "y"}]'))
    assert (r.exit_code, r.stderr) == (1, "Error: job b already exists (in pending/)\n")
    assert ls("pending") == ["b.json"]


# -- list ------------------------------------------------------------------------

def _enqueue_three(run):
    for i, cmd in enumerate(["echo Hello from QueueCTL", "sleep 1", "false"], 1):
        assert run("enqueue", "--id", f"job{i}", cmd).exit_code == 0


def test_list(run):
    _enqueue_three(run)
    r = run("list")
    assert (r.exit_code, r.stderr) == (0, "")
    assert r.stdout == ("job1 - pending - echo Hello from QueueCTL\n"
                        "job2 - pending - sleep 1\n"
                        "job3 - pending - false\n")


def test_list_oldest_first_not_by_name(run):
    for job_id in ["zz", "aa", "mm"]:
        run("enqueue", "--id", job_id, "true")
    assert [line.split()[0] for line in run("list").stdout.splitlines()] == ["zz", "aa", "mm"]


def test_list_state_limit_json(run, spool_dir):
    _enqueue_three(run)
    os.rename(spool_dir / "pending" / "job2.json", spool_dir / "done" / "job2.json")
    os.rename(spool_dir / "pending" / "job3.json", spool_dir / "dead" / "job3.json")
    assert run("list", "--state", "done").stdout == "job2 - completed - sleep 1\n"
    assert run("list", "--state", "completed").stdout == "job2 - completed - sleep 1\n"
    assert run("list", "--state", "DEAD").stdout == "job3 - dead - false\n"
    assert run("list", "--state", "pending").stdout == "job1 - pending - echo Hello from QueueCTL\n"
    assert run("list", "--state", "failed").stdout == ""
    assert run("list", "--state", "processing").stdout == ""
    assert run("list", "--limit", "2").stdout.splitlines() == [
        "job1 - pending - echo Hello from QueueCTL", "job2 - completed - sleep 1"]
    recs = json.loads(run("list", "--json").stdout)
    assert [r["id"] for r in recs] == ["job1", "job2", "job3"]
    assert recs[0]["command"] == "echo Hello from QueueCTL"
    assert {"state", "attempts", "max_retries", "created_at", "history"} <= set(recs[0])
    assert json.loads(run("list", "--json", "--state", "failed").stdout) == []
    assert [r["id"] for r in json.loads(run("list", "--json", "--limit", "1").stdout)] == ["job1"]


def test_list_bad_options(run):
    r = run("list", "--state", "finished")
    assert r.exit_code == 2 and "Invalid value for '-s' / '--state'" in r.stderr
    r = run("list", "--limit", "0")
    assert r.exit_code == 2


def test_list_multiline_command_stays_on_one_line(run):
    run("enqueue", "--id", "m", "echo a\necho b")
    assert run("list").stdout == "m - pending - echo a\\necho b\n"


# -- status ------------------------------------------------------------------------

def test_status_json_on_a_brand_new_spool(run, spool_dir):
    r = run("status", "--json")
    assert r.exit_code == 0 and r.stderr == ""
    assert json.loads(r.stdout) == {"pending": 0, "processing": 0, "completed": 0, "failed": 0, "dead": 0, "held": 0, "cancelled": 0,
                                    "workers": 0, "spool": str(spool_dir)}
    assert list(json.loads(r.stdout)) == [*STATES, "workers", "spool"]


def test_status_human(run, spool_dir):
    r = run("status")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[:7] == ["pending:    0", "processing: 0", "completed:  0", "failed:     0", "dead:       0",
                         "held:       0", "cancelled:  0"]
    assert f"spool:      {spool_dir}" in lines
    _enqueue_three(run)
    os.rename(spool_dir / "pending" / "job3.json", spool_dir / "failed" / "job3.json")
    assert run("status").stdout.splitlines()[:7] == [
        "pending:    2", "processing: 0", "completed:  0", "failed:     1", "dead:       0",
        "held:       0", "cancelled:  0"]
    assert status_counts(run) == {"pending": 2, "processing": 0, "completed": 0, "failed": 1, "dead": 0, "held": 0, "cancelled": 0}


# -- show ------------------------------------------------------------------------------

def test_show(run, spool_dir):
    run("enqueue", "--file", "-", input=JOB1)
    r = run("show", "job1")
    assert r.exit_code == 0
    first, rest = r.stdout.split("\n", 1)
    path = spool_dir / "pending" / "job1.json"
    assert first == f"job1 is in pending/ ({path})"
    assert json.loads(rest) == json.loads(path.read_text())


def test_show_json(run, spool_dir):
    run("enqueue", "--file", "-", input=JOB1)
    out = json.loads(run("show", "--json", "job1").stdout)
    assert out["state"] == "pending"
    assert out["dir"] == "pending"
    assert out["path"] == str(spool_dir / "pending" / "job1.json")
    assert out["job"] == json.loads((spool_dir / "pending" / "job1.json").read_text())


def test_show_reports_the_directory_state_after_a_hand_move(run, spool_dir):
    run("enqueue", "--file", "-", input=JOB1)
    os.rename(spool_dir / "pending" / "job1.json", spool_dir / "done" / "job1.json")
    out = json.loads(run("show", "--json", "job1").stdout)
    assert (out["dir"], out["state"], out["job"]["state"]) == ("done", "completed", "completed")
    assert run("show", "job1").stdout.startswith("job1 is in done/ ")


def test_show_other_case(run):
    run("enqueue", "--id", "Job1", "true")
    assert json.loads(run("show", "--json", "job1").stdout)["job"]["id"] == "Job1"


def test_show_unknown(run):
    r = run("show", "nope")
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", "Error: no job nope\n")
    r = run("show", "../etc/passwd")
    assert r.exit_code == 1 and r.stderr.startswith("Error: id '../etc/passwd' contains")


def test_show_a_dropped_in_job_before_anything_else(run, spool_dir):
    run("status")
    (spool_dir / "pending" / "drop.json").write_text('{"command": "echo dropped"}')
    r = run("show", "drop")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("drop is in pending/ ")


# -- reindex -----------------------------------------------------------------------------

def test_reindex(run, spool_dir):
    r = run("reindex")
    assert (r.exit_code, r.stdout) == (0, "reindexed: pending 0, processing 0, completed 0, failed 0, dead 0, held 0, cancelled 0\n")
    _enqueue_three(run)
    os.rename(spool_dir / "pending" / "job1.json", spool_dir / "done" / "job1.json")
    r = run("reindex")
    assert r.stdout == "reindexed: pending 2, processing 0, completed 1, failed 0, dead 0, held 0, cancelled 0\n"
    assert json.loads(run("reindex", "--json").stdout) == {
        "pending": 2, "processing": 0, "completed": 1, "failed": 0, "dead": 0, "held": 0, "cancelled": 0}


# -- a brand-new spool ---------------------------------------------------------------

@pytest.mark.parametrize("args, out", [
    (["status", "--json"], None),
    (["list"], ""),
    (["list", "--json"], "[]\n"),
    (["list", "--state", "dead"], ""),
    (["reindex"], "reindexed: pending 0, processing 0, completed 0, failed 0, dead 0, held 0, cancelled 0\n"),
    (["config", "list"], None),
    (["config", "get", "max_retries"], "3\n"),
    (["enqueue", "--id", "x", "true"], "enqueued job x\n"),
])
def test_every_command_on_a_brand_new_spool(run, spool_dir, args, out):
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert r.stderr == ""
    if out is not None:
        assert r.stdout == out
    for sub in ["tmp", "pending", "processing", "done", "failed", "dead", "rejected", "logs", "workers"]:
        assert (spool_dir / sub).is_dir()
        assert stat.S_IMODE((spool_dir / sub).stat().st_mode) == 0o700
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700


def test_show_on_a_brand_new_spool(run):
    assert run("show", "x").exit_code == 1


def test_nested_spool_path_is_created(run, tmp_path):
    deep = tmp_path / "a" / "b" / "spool"
    r = run("status", "--json", spool=deep)
    assert r.exit_code == 0
    assert (deep / "pending").is_dir()


def test_missing_subdirectory_is_recreated(run, spool_dir):
    run("enqueue", "--id", "a", "true")
    os.rmdir(spool_dir / "failed")
    assert status_counts(run)["pending"] == 1
    assert (spool_dir / "failed").is_dir()


def test_spool_from_environment(tmp_path):
    from click.testing import CliRunner
    env_spool = tmp_path / "envspool"
    r = CliRunner().invoke(main, ["enqueue", "--id", "e", "true"], env={"QUEUECTL_SPOOL": str(env_spool)})
    assert r.exit_code == 0
    assert (env_spool / "pending" / "e.json").is_file()


def test_default_spool_under_xdg_data_home(tmp_path):
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    env.pop("QUEUECTL_SPOOL", None)
    p = subprocess.run([sys.executable, "-m", "queuectl", "enqueue", "--id", "x", "true"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "xdg" / "queuectl" / "spool" / "pending" / "x.json").is_file()


# -- help and version ---------------------------------------------------------------------

def _all_commands(group: click.Group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        path = (*prefix, name)
        yield path
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, path)


def test_every_command_has_help_with_an_example(run, spool_dir):
    paths = list(_all_commands(main))
    assert {("enqueue",), ("list",), ("status",), ("show",), ("reindex",), ("config", "set")} <= set(paths)
    for path in [(), *paths]:
        r = run(*path, "--help")
        assert r.exit_code == 0, (path, r.output)
        assert "Usage: " in r.stdout
        assert "Example" in r.stdout, f"queuectl {' '.join(path)} --help has no example"
    assert not spool_dir.exists()  # --help touches no disk


def test_version():
    p = subprocess.run([sys.executable, "-m", "queuectl", "--version"], capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout, p.stderr) == (0, f"queuectl, version {__version__}\n", "")


def test_python_m_queuectl_usage_names_queuectl(run_proc):
    p = run_proc("status", "--bogus")
    assert p.returncode == 2
    assert "Usage: queuectl status" in p.stderr
