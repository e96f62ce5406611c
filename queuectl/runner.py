"""Run one command: spawn it in its own session, wait, time out, kill the group, frame its log.

Knows nothing of workers: the caller passes `tick` (called while the command
runs) and `should_kill` (polled, to end it early on a stop).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from .errors import SpoolError
from .fsio import atomic_write, open_nofollow

TICK = 0.25  # how often a running command's caller is ticked (and should_kill polled)
EXIT_KILLED_BY_STOP = "interrupted by worker stop (not counted as an attempt)"


@dataclass
class Outcome:
    exit_code: int | None
    error: str | None
    interrupted: bool = False

    def describe(self) -> str:
        """The exit as the log's footer line says it."""
        if self.exit_code is None:
            return f"none ({self.error})"
        return str(self.exit_code)


class NotStarted(Exception):
    """The command could not be started (bad cwd, exec failure): an ordinary failed attempt."""


# -- the log of a job ------------------------------------------------------------------


def open_log(path: str) -> int:
    """The job's log, for appending; /dev/null if it cannot be opened (a full disk loses lines, not jobs)."""
    try:
        # Readable too: line_break() peeks at the last byte the command wrote.
        return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


def line_break(fd: int) -> str:
    """"\n" if the command's output did not end a line: the footer must start its own line."""
    try:
        size = os.fstat(fd).st_size
        return "\n" if size and os.pread(fd, 1, size - 1) != b"\n" else ""
    except OSError:
        return ""


def log(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode("utf-8", "replace"))
    except OSError:
        pass  # a full disk loses log lines, never the job


# -- running -------------------------------------------------------------------------------


def spawn(command: str, *, log_fd: int, stdin_fd: int, cwd: str | None,
          env: Mapping[str, str] | None) -> subprocess.Popen:
    """Start `/bin/sh -c COMMAND` in its own session (so its whole group can be killed)."""
    if cwd and not os.path.isdir(cwd):
        msg = f"cwd does not exist: {cwd}"
        log(log_fd, msg + "\n")
        raise NotStarted(msg)
    try:
        return subprocess.Popen(["/bin/sh", "-c", command], stdin=stdin_fd, stdout=log_fd, stderr=log_fd,
                                cwd=cwd or None, env=env, start_new_session=True, close_fds=True)
    except (OSError, ValueError) as e:
        msg = f"cannot start command: {e}"
        log(log_fd, msg + "\n")
        raise NotStarted(msg) from None


def killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait(proc: subprocess.Popen, deadline: float | None, *, tick: Callable[[], None] | None = None,
         should_kill: Callable[[], bool] | None = None) -> int | None:
    """Wait for the process to exit: its status, or None at the deadline or once should_kill()."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = -1
    try:
        while True:
            if should_kill is not None and should_kill():
                return None
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            step = TICK if deadline is None else min(TICK, deadline - now)
            if pidfd >= 0:
                ready, _, _ = select.select([pidfd], [], [], step)
                if ready:
                    return proc.wait()
            else:
                try:
                    return proc.wait(timeout=step)
                except subprocess.TimeoutExpired:
                    pass
            if tick is not None:
                tick()
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def supervise(proc: subprocess.Popen, *, timeout: float | None, grace: float, log_fd: int,
              tick: Callable[[], None] | None = None,
              should_kill: Callable[[], bool] | None = None) -> Outcome:
    """Wait for a started command; on timeout or should_kill TERM its group, KILL after grace."""
    deadline = None if timeout is None else time.monotonic() + timeout
    status = wait(proc, deadline, tick=tick, should_kill=should_kill)
    if status is not None:
        return exit_outcome(status)
    timed_out = not (should_kill is not None and should_kill())
    killpg(proc.pid, signal.SIGTERM)
    status = wait(proc, time.monotonic() + grace)
    killpg(proc.pid, signal.SIGKILL)  # stray children too
    if status is None:
        status = proc.wait()
    if timed_out:
        msg = f"timed out after {timeout:g}s"
        log(log_fd, f"\n{msg}\n")
        return Outcome(status, msg)
    return Outcome(status, EXIT_KILLED_BY_STOP, interrupted=True)


def exit_outcome(status: int) -> Outcome:
    if status == 0:
        return Outcome(0, None)
    if status < 0:
        name = signal.Signals(-status).name if -status in signal.Signals._value2member_map_ else str(-status)
        return Outcome(status, f"killed by signal {name}")
    return Outcome(status, f"exit {status}")


def cap_log(path: str, limit: int) -> int:
    """Keep a log within `limit` bytes: its head and its tail, with a marker line where
    bytes were dropped. The bytes dropped (0 if it was within the limit).

    Head and tail, not the tail only: the first attempt's header and the
    latest output are what a reader looks for. Rewritten aside and renamed
    over, so a reader sees the whole old log or the whole capped one.
    """
    try:
        fd = open_nofollow(path)
    except OSError:
        return 0
    try:
        size = os.fstat(fd).st_size
        if limit <= 0 or size <= limit:
            return 0
        half = max(0, (limit - 120) // 2)  # 120: room for the marker line
        dropped = size - 2 * half
        data = (os.pread(fd, half, 0)
                + f"\n=== queuectl: {dropped} bytes dropped here (max_log_size {limit}) ===\n".encode()
                + os.pread(fd, half, size - half))
        atomic_write(os.path.dirname(path), path, data, durable=False)
    except (OSError, SpoolError):
        return 0  # a full disk keeps the whole log for now; the next attempt tries again
    finally:
        os.close(fd)
    return dropped
