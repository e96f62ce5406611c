"""Helpers shared by test_check.py, test_torture.py and test_chaos.py.

Everything runs real `python -m queuectl` processes in their own sessions, so
teardown can kill a supervisor with all its workers and their jobs at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_for as _wait_for

STATE_DIRS = ["pending", "processing", "done", "failed", "dead"]
STATE_OF_DIR = {"pending": "pending", "processing": "processing", "done": "completed",
                "failed": "failed", "dead": "dead"}


def argv(spool: Path, *args) -> list[str]:
    return [sys.executable, "-m", "queuectl", "--spool", str(spool), *map(str, args)]


def qc(spool: Path, *args, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run queuectl to completion (text output)."""
    return subprocess.run(argv(spool, *args), capture_output=True, text=True, timeout=timeout, **kw)


class Procs:
    """Background processes, each in its own session; all killed (whole group) at teardown."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: list[subprocess.Popen] = []

    def start(self, spool: Path, *args, name: str = "proc") -> subprocess.Popen:
        log = open(self.logdir / f"{name}-{len(self.procs)}.log", "wb")
        p = subprocess.Popen(argv(spool, *args), stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        p.logfile = self.logdir / f"{name}-{len(self.procs)}.log"  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def output(self, p: subprocess.Popen) -> str:
        return Path(p.logfile).read_text(errors="replace")  # type: ignore[attr-defined]

    def kill_all(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def procs(tmp_path: Path):
    p = Procs(tmp_path)
    yield p
    p.kill_all()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.02, what: str = ""):
    """conftest.wait_for with the longer default these multi-process tests need."""
    return _wait_for(predicate, timeout, interval, what)


def wait_exit(p: subprocess.Popen, timeout: float, procs: Procs | None = None) -> int:
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        out = procs.output(p)[-3000:] if procs else ""
        pytest.fail(f"process {p.args} still running after {timeout}s\n{out}")


def names(spool: Path, sub: str) -> list[str]:
    d = spool / sub
    return sorted(os.listdir(d)) if d.exists() else []


def dir_counts(spool: Path) -> dict[str, int]:
    """Jobs per state, counted on disk (the truth), in status --json form."""
    return {STATE_OF_DIR[d]: sum(1 for n in names(spool, d) if n.endswith(".json") and not n.startswith("."))
            for d in STATE_DIRS}


def status_json(spool: Path) -> dict[str, int]:
    r = qc(spool, "status", "--json")
    assert r.returncode == 0, r.stderr
    return {k: v for k, v in json.loads(r.stdout).items() if k in STATE_OF_DIR.values()}


def assert_check_clean(spool: Path) -> None:
    r = qc(spool, "check")
    assert r.returncode == 0 and r.stdout.startswith("ok: no problems"), r.stdout + r.stderr


def all_ids_once(spool: Path, expected: set[str]) -> None:
    """Every expected job in done/ exactly once and in no other state directory."""
    seen: dict[str, list[str]] = {}
    for d in STATE_DIRS:
        for n in names(spool, d):
            if n.endswith(".json"):
                seen.setdefault(n[:-5], []).append(d)
    missing = expected - seen.keys()
    assert not missing, f"{len(missing)} jobs lost, e.g. {sorted(missing)[:5]}"
    twice = {k: v for k, v in seen.items() if len(v) > 1}
    assert not twice, f"jobs in two directories: {list(twice.items())[:5]}"
    not_done = {k: v for k, v in seen.items() if v != ["done"]}
    assert not not_done, f"jobs not done: {list(not_done.items())[:5]}"


def configure(spool: Path, **settings) -> None:
    for k, v in settings.items():
        r = qc(spool, "config", "set", k, v)
        assert r.returncode == 0, r.stderr


def enqueue_lines(spool: Path, specs: list[dict]) -> None:
    r = qc(spool, "enqueue", "--quiet", "--file", "-", input="\n".join(json.dumps(s) for s in specs))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"enqueued {len(specs)} jobs"


def worker_pids(spool: Path, role: str = "worker") -> list[int]:
    out = []
    for n in names(spool, "workers"):
        if not n.endswith(".json") or n.startswith("."):
            continue
        try:
            info = json.loads((spool / "workers" / n).read_bytes())
        except (OSError, ValueError):
            continue
        if info.get("role") == role and _alive(int(info.get("pid", 0))):
            out.append(int(info["pid"]))
    return out


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False
