"""Helpers shared by the worker test modules (test_worker, test_worker_cli, test_faults).

Every background process is started in its own session and killed, with its
whole process group, at teardown, so no test leaks a supervisor or a worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_for  # noqa: F401 - re-exported for the worker tests

STATE_DIRS = ["pending", "processing", "done", "failed", "dead"]
STARTED_RE = re.compile(r"^\[(worker-\d+)\] started PID=(\d+)$")


def cli_argv(spool: Path | str, *args) -> list[str]:
    return [sys.executable, "-m", "queuectl", "--spool", str(spool), *map(str, args)]


def cli(spool: Path | str, *args, timeout: float = 60, check: bool = True, input: str | None = None):
    """Run `python -m queuectl --spool SPOOL ARGS...` to completion."""
    r = subprocess.run(cli_argv(spool, *args), capture_output=True, text=True, timeout=timeout,
                       input=input, stdin=None if input is not None else subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError(f"queuectl {' '.join(map(str, args))} exited {r.returncode}:\n"
                             f"{r.stdout}\n{r.stderr}")
    return r


def pid_gone(pid: int) -> bool:
    """True if no process has this pid any more (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Bg:
    """A background `queuectl` in its own session; stdout and stderr go to files."""

    def __init__(self, spool: Path, args, out_dir: Path, n: int):
        self.out = out_dir / f"bg{n}.out"
        self.err = out_dir / f"bg{n}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cli_argv(spool, *args), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, start_new_session=True)
        self.pid = self.proc.pid

    def lines(self) -> list[str]:
        return self.out.read_text(errors="replace").splitlines()

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def started(self) -> dict[str, int]:
        """worker name -> pid of its latest `started PID=` line."""
        found = {}
        for line in self.lines():
            m = STARTED_RE.match(line)
            if m:
                found[m.group(1)] = int(m.group(2))
        return found

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"queuectl did not exit within {timeout}s; output:\n"
                        + "\n".join(self.lines()) + self.stderr())

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


@pytest.fixture
def bg(spool_dir: Path, tmp_path: Path):
    """bg(*args) -> Bg running `queuectl --spool SPOOL ARGS`; its process group is killed at teardown.

    `bg.extra_pids` takes pids of processes outside that group (detached
    supervisors, jobs in their own sessions) to kill at teardown as well.
    """
    started: list[Bg] = []
    extra: list[int] = []

    def _start(*args) -> Bg:
        b = Bg(spool_dir, args, tmp_path, len(started))
        started.append(b)
        return b

    _start.extra_pids = extra
    yield _start
    for b in started:
        kill_group(b.pid)
        try:
            b.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    for pid in extra:
        kill_group(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def heartbeats(spool: Path, role: str | None = None) -> list[dict]:
    out = []
    d = spool / "workers"
    for p in sorted(d.glob("*.json")) if d.exists() else []:
        try:
            info = json.loads(p.read_bytes())
        except (OSError, ValueError):
            continue  # replaced while read
        if role is None or info.get("role") == role:
            out.append(info)
    return out


def where(spool: Path) -> dict[str, list[str]]:
    """job id -> every state directory holding a file for it (should be exactly one)."""
    found: dict[str, list[str]] = {}
    for d in STATE_DIRS:
        p = spool / d
        for name in os.listdir(p) if p.exists() else []:
            if name.endswith(".json") and not name.startswith("."):
                found.setdefault(name[:-5], []).append(d)
    return found


def job_file(spool: Path, state_dir: str, job_id: str) -> dict:
    return json.loads((spool / state_dir / f"{job_id}.json").read_bytes())


def read_pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []
