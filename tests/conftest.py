"""Shared fixtures: a spool under tmp_path and two ways to run the CLI.

`run` invokes the click app in-process (fast; stdout and stderr kept apart),
`run_proc` / `start_proc` run `python -m queuectl` as real processes, for
tests that need several processes at once or a real exit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from queuectl.cli import main

STATE_DIRS = ["pending", "processing", "done", "failed", "dead"]


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """Where the test's spool lives; not created (every command creates it)."""
    return tmp_path / "spool"


@pytest.fixture
def run(spool_dir: Path) -> Callable:
    """run("enqueue", "echo hi", input=None, spool=None, env=None) -> click Result.

    Unexpected exceptions propagate (a traceback is a test failure, not an
    exit code to compare). Arguments are turned into strings.
    """
    runner = CliRunner()

    def _run(*args, input=None, spool=None, env=None):
        argv = ["--spool", str(spool if spool is not None else spool_dir), *map(str, args)]
        return runner.invoke(main, argv, input=input, env=env, catch_exceptions=False)

    return _run


def _proc_argv(spool: Path, args) -> list[str]:
    return [sys.executable, "-m", "queuectl", "--spool", str(spool), *map(str, args)]


@pytest.fixture
def run_proc(spool_dir: Path) -> Callable:
    """run_proc(*args, input=None, cwd=None, env=None, spool=None, timeout=60) -> CompletedProcess (text)."""

    def _run(*args, input=None, cwd=None, env=None, spool=None, timeout=60):
        return subprocess.run(_proc_argv(spool or spool_dir, args), input=input, cwd=cwd,
                              env=env, capture_output=True, text=True, timeout=timeout)

    return _run


@pytest.fixture
def start_proc(spool_dir: Path):
    """start_proc(*args, stdin=None, ...) -> Popen with text pipes; killed at teardown if still running."""
    procs: list[subprocess.Popen] = []

    def _start(*args, cwd=None, env=None, spool=None, stdin=subprocess.DEVNULL):
        p = subprocess.Popen(_proc_argv(spool or spool_dir, args), cwd=cwd, env=env, stdin=stdin,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        return p

    yield _start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()


# -- small helpers, as fixtures so test modules need not import conftest ----


def _names(directory: Path) -> list[str]:
    """Sorted entry names of a directory, dotfiles included."""
    return sorted(os.listdir(directory)) if directory.exists() else []


@pytest.fixture
def ls(spool_dir: Path) -> Callable[[str], list[str]]:
    """ls("pending") -> sorted names in SPOOL/pending (dotfiles included)."""
    return lambda sub: _names(spool_dir / sub)


@pytest.fixture
def read_job(spool_dir: Path) -> Callable[[str, str], dict]:
    """read_job("pending", "job1") -> the parsed SPOOL/pending/job1.json."""
    return lambda sub, job_id: json.loads((spool_dir / sub / f"{job_id}.json").read_bytes())


def age_file(path: Path | str, seconds: float) -> None:
    """Set a file's atime/mtime `seconds` into the past (without following symlinks)."""
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


@pytest.fixture
def age() -> Callable[[Path | str, float], None]:
    return age_file


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
             what: str | None = None):
    """Poll predicate until it returns something truthy; fail the test after timeout.

    The one polling helper of the suite (worker_helpers and torture_util use it).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what or predicate}")
        time.sleep(interval)


@pytest.fixture
def poll() -> Callable:
    """poll(predicate, timeout=10) -> predicate's first truthy value, else the test fails."""
    return wait_for
