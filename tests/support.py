"""Every helper the test suite shares: spool fixtures, the CLI runners, one
background-process manager, /proc helpers, and polls with deadlines.

State directory names come from the package, so the tests cannot drift from it.
`run` invokes the click app in-process (fast; stdout and stderr kept apart);
`cli` runs `python -m queuectl` to completion as a real process; `bg` / `procs`
start background processes, each in its own session, killed with their whole
process group at teardown.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from queuectl.cli import main
from queuectl.job import JobState
from queuectl.spool import STATE_DIRS

STATE_OF_DIR = {s.dirname: s.value for s in JobState}
STARTED_RE = re.compile(r"^\[(worker-\d+)\] started PID=(\d+)$")
# A supervisor's lines start with an ISO 8601 time when stdout is not a terminal.
STAMP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", re.M)


def unstamped(text: str) -> str:
    """Supervisor output without the line timestamps (tests that are not about them compare the rest)."""
    return STAMP_RE.sub("", text)


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


@pytest.fixture
def run_proc(spool_dir: Path) -> Callable:
    """run_proc(*args, input=None, cwd=None, env=None, spool=None, timeout=60) -> CompletedProcess (text)."""

    def _run(*args, input=None, cwd=None, env=None, spool=None, timeout=60):
        return subprocess.run(cli_argv(spool or spool_dir, *args), input=input, cwd=cwd,
                              env=env, capture_output=True, text=True, timeout=timeout)

    return _run


@pytest.fixture
def start_proc(spool_dir: Path):
    """start_proc(*args, stdin=None, ...) -> Popen with text pipes; killed at teardown if still running."""
    procs: list[subprocess.Popen] = []

    def _start(*args, cwd=None, env=None, spool=None, stdin=subprocess.DEVNULL):
        p = subprocess.Popen(cli_argv(spool or spool_dir, *args), cwd=cwd, env=env, stdin=stdin,
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


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.02,
             what: str | None = None):
    """Poll predicate until it returns something truthy; fail the test after timeout.

    The one polling helper of the suite. A passing poll returns as soon as it
    can, so the generous default only lengthens failures.
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


# -- real processes ------------------------------------------------------------


def cli_argv(spool: Path | str, *args) -> list[str]:
    return [sys.executable, "-m", "queuectl", "--spool", str(spool), *map(str, args)]


def cli(spool: Path | str, *args, timeout: float = 120, check: bool = True, input: str | None = None,
        **kw):
    """Run `python -m queuectl --spool SPOOL ARGS...` to completion (text output).

    With check (the default) a non-zero exit fails the test, showing the output.
    """
    r = subprocess.run(cli_argv(spool, *args), capture_output=True, text=True, timeout=timeout,
                       input=input, stdin=None if input is not None else subprocess.DEVNULL, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"queuectl {' '.join(map(str, args))} exited {r.returncode}:\n"
                             f"{r.stdout}\n{r.stderr}")
    return r


def proc_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, Z...), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def pid_gone(pid: int) -> bool:
    """True if no process has this pid any more (a zombie counts as gone)."""
    return proc_state(pid) in (None, "Z")


def alive(pid: int) -> bool:
    return pid > 0 and not pid_gone(pid)


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
        return unstamped(self.out.read_text(errors="replace")).splitlines()

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


def mount_tmpfs(where: Path, size: str) -> Path:
    """A fresh tmpfs of `size` at where (root only): a disk a test may fill. OSError if it cannot."""
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise OSError(f"cannot mount a tmpfs here: {(r.stderr or r.stdout).strip()}")
    return where


def unmount(where: Path) -> None:
    """Unmount, waiting up to 5 s for its last users to let go (then lazily)."""
    for _ in range(50):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(where)])


def fill_disk(directory: Path, name: str = "ballast") -> Path:
    """Write a ballast file until the filesystem is full, to the last byte; its path."""
    ballast = directory / name
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block = b"\0" * 65536
        while True:
            try:
                os.write(fd, block)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]
    finally:
        os.close(fd)
    return ballast


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


def qc(spool: Path, *args, **kw) -> subprocess.CompletedProcess:
    """cli() without the exit-status check: the caller looks at returncode itself."""
    return cli(spool, *args, check=False, **kw)


class Procs:
    """Background processes, each in its own session; all killed (whole group) at teardown."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: list[subprocess.Popen] = []

    def start(self, spool: Path, *args, name: str = "proc") -> subprocess.Popen:
        log = open(self.logdir / f"{name}-{len(self.procs)}.log", "wb")
        p = subprocess.Popen(cli_argv(spool, *args), stdin=subprocess.DEVNULL, stdout=log,
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
        if info.get("role") == role and alive(int(info.get("pid", 0))):
            out.append(int(info["pid"]))
    return out


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


# -- the core's log lines, as `worker start` prints them -----------------------------


class LineCollector(logging.Handler):
    """Collects the queuectl loggers' lines as `[NAME] message` strings."""

    def __init__(self, name: str):
        super().__init__(logging.INFO)
        self.name_ = name
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"[{self.name_}] {record.getMessage()}")


@pytest.fixture
def collect_lines():
    """collect_lines("worker-0") -> a list that fills with the queuectl log lines, prefixed."""
    handlers: list[LineCollector] = []
    logger = logging.getLogger("queuectl")
    old = logger.level

    def _collect(name: str) -> list[str]:
        h = LineCollector(name)
        handlers.append(h)
        logger.addHandler(h)
        logger.setLevel(logging.INFO)
        return h.lines

    yield _collect
    for h in handlers:
        logger.removeHandler(h)
    logger.setLevel(old)
