"""The job model: validation of every field, strict JSON, the canonical form."""

from __future__ import annotations

import json

import pytest

from queuectl.errors import InvalidJob
from queuectl.job import Job, JobState, check_id, loads, new_id, parse_time


def spec(**fields):
    return {"command": "echo hi", **fields}


# -- ids ---------------------------------------------------------------------

@pytest.mark.parametrize("job_id", [
    "job1", "a", "A-b_c.d:e@f+g=h", "9", "x" * 128, "2026-11-27T18:30:00Z",
])
def test_valid_ids(job_id):
    assert check_id(job_id) == job_id
    assert Job.from_spec(spec(id=job_id)).id == job_id


@pytest.mark.parametrize("job_id, why", [
    ("a/b", "path separator"),
    ("/abs", "path separator"),
    ("a\\b", "path separator"),
    ("..", "'..'"),
    ("a..b", "'..'"),
    ("../etc", "'..'"),
    (".", ""),
    (".hidden", "must start with a letter or digit"),
    ("a b", "whitespace"),
    ("tab\there", "whitespace"),
    ("nl\n", "whitespace"),
    ("bell\x07", "control character"),
    ("del\x7f", "control character"),
    ("nul\x00", "control character"),
    ("x" * 129, "longer than 128"),
    ("", "empty"),
    ("CON", "reserved"),
    ("con", "reserved"),
    ("nul.json", "reserved"),
    ("LPT1", "reserved"),
    ("-dash", "must start with a letter or digit"),
    ("semi;colon", "must start with a letter or digit and use only"),
])
def test_bad_ids_are_refused_with_a_reason(job_id, why):
    with pytest.raises(InvalidJob, match="id") as e:
        Job.from_spec(spec(id=job_id))
    assert why in str(e.value)


@pytest.mark.parametrize("job_id", [5, 1.5, True, None, ["a"], {"a": 1}])
def test_non_string_ids(job_id):
    if job_id is None:
        # An explicit null id means "generate one", like no id at all.
        assert Job.from_spec(spec(id=None)).id
        return
    with pytest.raises(InvalidJob, match="id must be a string"):
        Job.from_spec(spec(id=job_id))


def test_generated_ids_sort_by_creation_time():
    assert new_id(1000.0) < new_id(1000.000001) < new_id(2000.0) < new_id(1e10)
    ids = [Job.from_spec(spec(), now=1_800_000_000 + i * 0.001).id for i in range(200)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 200
    for i in ids:
        check_id(i)  # a generated id is itself a valid id


def test_generated_ids_within_one_instant_differ_in_a_random_suffix():
    # 24 random bits: a handful of ids in one microsecond practically never collide
    # (and a collision is a refused duplicate, never an overwrite).
    ids = [new_id(1_800_000_000.0) for _ in range(20)]
    assert len(set(ids)) == 20
    stamps = {i.rsplit("-", 1)[0] for i in ids}
    assert stamps == {"20270115T080000000000"}
    assert all(len(i.rsplit("-", 1)[1]) == 6 for i in ids)


# -- command -------------------------------------------------------------------

@pytest.mark.parametrize("value, message", [
    ("", "command is empty"),
    ("   \t\n", "command is empty"),
    (["echo", "hi"], "command must be a string, not a list"),
    (5, "command must be a string, not an integer"),
    (1.5, "command must be a string, not a number"),
    (None, "command must be a string, not null"),
    (True, "command must be a string, not a boolean"),
    ({"sh": "x"}, "command must be a string, not an object"),
    ("echo \x00", "command contains a NUL byte"),
])
def test_bad_commands(value, message):
    with pytest.raises(InvalidJob) as e:
        Job.from_spec({"command": value})
    assert str(e.value) == message


def test_missing_command():
    with pytest.raises(InvalidJob, match="^missing command$"):
        Job.from_spec({"id": "x"})


@pytest.mark.parametrize("value", [[], "x", 5, None, True])
def test_a_job_must_be_an_object(value):
    with pytest.raises(InvalidJob, match="a job must be a JSON object"):
        Job.from_spec(value)


# -- max_retries, timeout, env, cwd, priority -------------------------------------

@pytest.mark.parametrize("value", [0, 1, 3, 1000])
def test_good_max_retries(value):
    assert Job.from_spec(spec(max_retries=value)).max_retries == value


@pytest.mark.parametrize("value", [-1, "3", 1e9, 10**9, 3.0, 2.5, True, False, None, 1001, [3]])
def test_bad_max_retries(value):
    with pytest.raises(InvalidJob, match="max_retries must be an integer from 0 to 1000"):
        Job.from_spec(spec(max_retries=value))


def test_max_retries_default_comes_from_the_caller():
    assert Job.from_spec(spec()).max_retries == 3
    assert Job.from_spec(spec(), default_max_retries=7).max_retries == 7
    assert Job.from_spec(spec(max_retries=0), default_max_retries=7).max_retries == 0


@pytest.mark.parametrize("value", [0.001, 1, 2.5, 86400])
def test_good_timeouts(value):
    assert Job.from_spec(spec(timeout=value)).timeout == value


def test_null_timeout_means_none():
    assert Job.from_spec(spec(timeout=None)).timeout is None
    assert Job.from_spec(spec()).timeout is None


@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, "5", "", True, [1], float("nan"), float("inf")])
def test_bad_timeouts(value):
    with pytest.raises(InvalidJob, match="timeout must be a number of seconds > 0"):
        Job.from_spec(spec(timeout=value))


def test_env():
    assert Job.from_spec(spec(env={"A": "1", "B": ""})).env == {"A": "1", "B": ""}
    assert Job.from_spec(spec(env={})).env == {}


@pytest.mark.parametrize("env, message", [
    ({"A": 1}, "env value of A must be a string, not an integer"),
    ({"A": None}, "env value of A must be a string, not null"),
    ({"A": True}, "env value of A must be a string, not a boolean"),
    ({"A": ["x"]}, "env value of A must be a string, not a list"),
    ({"A": {"b": "c"}}, "env value of A must be a string, not an object"),
    ({"": "x"}, "env name '' is not a valid variable name"),
    ({"A=B": "x"}, "env name 'A=B' is not a valid variable name"),
    ({"A": "x\x00y"}, "env value of A contains a NUL byte"),
    (["A=1"], "env must be an object of strings, not a list"),
    ("A=1", "env must be an object of strings, not a string"),
])
def test_bad_env(env, message):
    with pytest.raises(InvalidJob) as e:
        Job.from_spec(spec(env=env))
    assert str(e.value) == message


def test_cwd():
    assert Job.from_spec(spec(cwd="/tmp")).cwd == "/tmp"
    assert Job.from_spec(spec()).cwd is None
    for bad in ("", 5, ["/tmp"], True, "/tmp\x00x"):
        with pytest.raises(InvalidJob, match="cwd"):
            Job.from_spec(spec(cwd=bad))


@pytest.mark.parametrize("value", [1.5, "1", True, 2**40])
def test_bad_priority(value):
    with pytest.raises(InvalidJob, match="priority must be an integer"):
        Job.from_spec(spec(priority=value))


# -- strict JSON ---------------------------------------------------------------------

def test_loads_rejects_duplicate_keys():
    with pytest.raises(InvalidJob, match="duplicate key 'command'"):
        loads('{"command": "a", "command": "b"}')
    with pytest.raises(InvalidJob, match="duplicate key 'x'"):
        loads('{"command": "a", "env": {"x": "1", "x": "2"}}')


@pytest.mark.parametrize("text", [
    '{"command": "x", "timeout": NaN}',
    '{"command": "x", "timeout": Infinity}',
    '{"command": "x", "timeout": -Infinity}',
])
def test_loads_rejects_nan_and_infinity(text):
    with pytest.raises(InvalidJob, match="is not valid JSON"):
        loads(text)


def test_loads_rejects_numbers_that_overflow_to_infinity():
    # float("1e400") is inf: the job file could never be written back as JSON.
    with pytest.raises(InvalidJob, match="not valid JSON|out of range|finite"):
        loads('{"command": "x", "weight": 1e400}')


def test_loads_rejects_huge_integers_cleanly():
    # Python refuses to convert > 4300 digits; that must be InvalidJob, not ValueError.
    with pytest.raises(InvalidJob):
        loads('{"command": "x", "n": ' + "1" * 5000 + "}")


@pytest.mark.parametrize("depth", [5000, 100_000])
def test_loads_rejects_deep_nesting(depth):
    with pytest.raises(InvalidJob, match="nested too deeply"):
        loads('{"command": "x", "a": ' + "[" * depth + "]" * depth + "}")


def test_deep_but_parseable_nesting_never_crashes_the_writer():
    # Whatever depth loads accepts, the canonical form must be writable and readable.
    for depth in (50, 200, 900):
        text = '{"command": "x", "a": ' + "[" * depth + "]" * depth + "}"
        try:
            job = Job.from_spec(loads(text))
        except InvalidJob:
            continue
        assert Job.from_record(loads(job.to_json())).to_json() == job.to_json()


@pytest.mark.parametrize("data", [b'{"command": "echo \xff"}', b"\xfe\xff{}", b'{"command": "\xc3"}'])
def test_loads_rejects_non_utf8(data):
    with pytest.raises(InvalidJob, match="not UTF-8"):
        loads(data)


def test_loads_rejects_lone_surrogates():
    # "\ud800" parses, but cannot be encoded as UTF-8: the file could never be written.
    with pytest.raises(InvalidJob):
        loads('{"command": "echo \\ud800"}')
    with pytest.raises(InvalidJob):
        loads('{"command": "x", "meta": {"k": ["\\udfff"]}}')


def test_loads_reports_position_of_bad_json():
    with pytest.raises(InvalidJob, match=r"^invalid JSON: .* at line 2 column \d+$"):
        loads('{"command": "x",\n ]')


def test_loads_accepts_non_ascii_text():
    assert loads('{"command": "echo h\\u00e9 \u2603"}') == {"command": "echo hé ☃"}
    assert loads('{"command": "echo hé"}'.encode()) == {"command": "echo hé"}


# -- canonical form -----------------------------------------------------------------

def test_canonical_round_trip():
    job = Job.from_spec(spec(id="job1", max_retries=5, timeout=2.5, env={"A": "é"}, cwd="/srv",
                             priority=-3, owner={"team": "ops"}, tags=["a", "b"]), now=1_800_000_000.25)
    data = job.to_json()
    assert data.endswith(b"\n")
    back = Job.from_record(loads(data))
    assert back == job
    assert back.to_json() == data
    record = json.loads(data)
    assert record["id"] == "job1"
    assert record["state"] == "pending"
    assert record["attempts"] == 0
    assert record["max_retries"] == 5
    assert record["timeout"] == 2.5
    assert record["env"] == {"A": "é"}
    assert record["cwd"] == "/srv"
    assert record["priority"] == -3
    assert record["created_at"] == record["updated_at"] == "2027-01-15T08:00:00.250000Z"
    assert parse_time(record["created_at"]) == 1_800_000_000.25
    assert record["next_run_at"] is None and record["last_error"] is None
    assert record["exit_code"] is None and record["history"] == []
    # unknown fields are kept as given
    assert record["owner"] == {"team": "ops"} and record["tags"] == ["a", "b"]
    assert "é".encode() in data  # UTF-8, not \u escapes: readable with cat


def test_spec_bookkeeping_fields_are_reset():
    job = Job.from_spec(spec(id="j", state="dead", attempts=9, last_error="boom", exit_code=3,
                             history=[{"x": 1}], created_at="2000-01-01T00:00:00Z"))
    assert job.state is JobState.PENDING
    assert job.attempts == 0
    assert job.last_error is None and job.exit_code is None and job.history == []
    assert not job.created_at.startswith("2000")
    assert "state" not in job.extra and "attempts" not in job.extra


def test_run_at_becomes_next_run_at():
    job = Job.from_spec(spec(run_at="2030-01-01T00:00:00Z"))
    assert job.next_run_at == "2030-01-01T00:00:00.000000Z"
    assert job.run_ts == parse_time("2030-01-01T00:00:00Z")
    assert Job.from_spec(spec(run_at=1_900_000_000)).run_ts == 1_900_000_000
    with pytest.raises(InvalidJob, match="ISO 8601"):
        Job.from_spec(spec(run_at="tomorrow"))
    with pytest.raises(InvalidJob, match="run_at"):
        Job.from_spec(spec(run_at=[1]))


@pytest.mark.parametrize("record, message", [
    ({"command": "x"}, "missing id"),
    ({"id": "x"}, "missing command"),
    ({"id": "x", "command": "y", "attempts": -1}, "attempts must be an integer >= 0"),
    ({"id": "x", "command": "y", "attempts": "1"}, "attempts must be an integer >= 0"),
    ({"id": "x", "command": "y", "state": "weird"}, "unknown state"),
    ({"id": "x", "command": "y", "state": 3}, "state must be a string"),
    ({"id": "x", "command": "y", "history": {}}, "history must be a list"),
    ({"id": "x", "command": "y", "exit_code": "1"}, "exit_code must be an integer"),
    ({"id": "x", "command": "y", "next_run_at": "soon"}, "ISO 8601"),
    ({"id": "x", "command": "y", "created_at": 5}, "created_at must be a string"),
    ({"id": "x/y", "command": "y"}, "path separator"),
])
def test_from_record_validates(record, message):
    with pytest.raises(InvalidJob, match=message):
        Job.from_record(record)


def test_state_parse():
    assert JobState.parse("done") is JobState.COMPLETED
    assert JobState.parse("DONE") is JobState.COMPLETED
    assert JobState.parse("completed") is JobState.COMPLETED
    assert JobState.parse(" Pending ") is JobState.PENDING
    for s in JobState:
        assert JobState.parse(s.value) is s
    with pytest.raises(InvalidJob, match="unknown state 'finished'"):
        JobState.parse("finished")
    assert [s.dirname for s in JobState] == ["pending", "processing", "done", "failed", "dead", "held", "cancelled"]
    assert [s.value for s in JobState] == ["pending", "processing", "completed", "failed", "dead", "held", "cancelled"]
    # str-valued: usable directly as text
    assert JobState.DEAD == "dead"
