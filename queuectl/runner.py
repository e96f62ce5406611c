"""Run one command: spawn it in its own session, wait, time out, kill the group, frame its log.

Knows nothing of workers: the caller passes `tick` (called while the command
runs) and `should_kill` (polled, to end it early on a stop).
"""

from __future__ import annotations

import os
import select
import signal
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from .errors import SpoolError
from .fsio import atomic_write, open_nofollow, unlink_quietly

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


class CommandLog:
    """Where one worker's commands write: the job's log, made only if the command writes.

    Creating a file is the dearest thing a job does on some disks (ext4 took up
    to a millisecond an inode here, longer than running `true`), and most jobs
    print nothing. So a command whose job has no log yet writes into the
    worker's scratch file, which starts with the attempt's header. A successful
    attempt that wrote nothing is truncated away (the job's history keeps its
    times and exit status); one that wrote or failed is linked into place as the
    job's log, and the next job gets a new scratch file. A command still running at its first tick
    is linked at once, so a long job's log can be followed as it grows. If the
    worker dies mid-job, recovery moves the scratch file to the job's log
    (`salvage_output`). An attempt whose job already has a log appends to it.
    """

    def __init__(self, scratch: str | None):
        self.scratch = scratch  # None: every attempt opens its log directly
        self.fd = -1            # the scratch file, kept open between jobs
        self.log_path = ""
        self.using = False      # this attempt writes into the scratch file
        self.linked = False     # ... which is already the job's log too
        self.header = 0
        self.kept = True

    def open(self, log_path: str) -> int:
        """The descriptor the attempt's header and command write to."""
        self.log_path, self.using, self.linked, self.header, self.kept = log_path, False, False, 0, True
        if self.scratch is None:
            return open_log(log_path)
        try:
            return os.open(log_path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            pass
        except OSError:
            return open_log(log_path)
        if self.fd < 0:
            try:
                self.fd = os.open(self.scratch, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, 0o600)
            except OSError:
                return open_log(log_path)
        self.using = True
        return self.fd

    def started(self) -> None:
        """The header is written: an attempt that leaves the scratch file this size wrote nothing."""
        if self.using:
            self.header = os.fstat(self.fd).st_size

    def publish(self) -> None:
        """Make the running attempt's output visible as the job's log now."""
        if self.using and not self.linked:
            self.linked = self._link()

    def keeps(self, fd: int, failed: bool) -> bool:
        """Does this attempt leave a log (and so a footer)? Always if it failed or wrote something."""
        self.kept = failed or not self.using or self.linked or os.fstat(fd).st_size > self.header
        return self.kept

    def close(self, fd: int) -> None:
        """The attempt is over (keeps() said what to keep): ready the scratch file for the next."""
        if not self.using:
            os.close(fd)
            return
        if not self.kept:
            os.ftruncate(fd, 0)
            return
        if not self.linked and not self._link():
            # The log appeared meanwhile (a hook, a person): append instead.
            salvage_output(self.scratch, self.log_path)
            os.ftruncate(fd, 0)
            return
        # The scratch file is the job's log now; the next job gets a new one.
        unlink_quietly(self.scratch)
        os.close(fd)
        self.fd = -1

    def _link(self) -> bool:
        try:
            os.link(self.scratch, self.log_path)
            return True
        except OSError:
            return False

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.scratch is not None:
            unlink_quietly(self.scratch)


def salvage_output(scratch: str, log_path: str) -> None:
    """Keep what a scratch file holds as (the end of) a job's log: linked if there is no log yet."""
    try:
        os.link(scratch, log_path)
        return
    except FileExistsError:
        pass
    except OSError:
        return
    try:
        if os.path.samefile(scratch, log_path):
            return  # linked already (the worker died after publishing it)
        src = open_nofollow(scratch)
    except OSError:
        return
    try:
        dst = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        os.close(src)
        return
    try:
        while chunk := os.read(src, 1 << 20):
            os.write(dst, chunk)
    except OSError:
        pass  # a full disk loses log lines, never the job
    finally:
        os.close(src)
        os.close(dst)


# -- running -------------------------------------------------------------------------------


class Child:
    """A started command: its pid, reaped once. (What the runner needs of a Popen, without its cost.)"""
    __slots__ = ("pid", "returncode")

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit status (negative: killed by that signal) if it has ended, else None."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


# Dispositions a command must not inherit, since an ignored signal survives exec:
# Python ignores SIGPIPE and SIGXFSZ (as subprocess's restore_signals knows), and
# a worker ignores SIGINT (Ctrl-C is for its supervisor). `queuectl kill
# --signal INT` must reach the command.
RESTORED_SIGNALS = (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ)
_home = -1  # this process's own working directory, to come back to after a job's chdir


def spawn(command: str, *, log_fd: int, stdin_fd: int, cwd: str | None,
          env: Mapping[str, str] | None, inherit: tuple[int, ...] = ()) -> Child:
    """Start `/bin/sh -c COMMAND` in its own session (so its whole group can be killed).

    posix_spawn (a vfork in glibc) and not subprocess.Popen: Popen's Python side
    (an error pipe, the environment encoded one entry at a time) cost twice the
    parent's CPU a job. It closes no descriptors, so a worker keeps every one of
    its own close-on-exec (`close_inherited_fds`, and Python's default).

    Python 3.11's posix_spawn cannot chdir, so the caller's process changes
    directory around the spawn, and comes back by descriptor. That is safe
    only where no other thread uses relative paths: a worker has no other
    thread (watcher.py reads inotify in its own), and its polling watcher's
    threads use absolute paths.

    `inherit`: descriptors the command keeps open under their own numbers (a
    queue slot's lock, so the lock lives as long as the command does). They are
    inheritable only for the moment of the spawn: nothing else the worker
    starts (hooks) gets them.
    """
    global _home
    if cwd and not os.path.isdir(cwd):
        msg = f"cwd does not exist: {cwd}"
        log(log_fd, msg + "\n")
        raise NotStarted(msg)
    moved = False
    for fd in inherit:
        os.set_inheritable(fd, True)
    try:
        if cwd:
            if _home < 0:
                _home = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            os.chdir(cwd)
            moved = True
        pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", command], os.environ if env is None else env,
                             setsid=True, setsigmask=(), setsigdef=RESTORED_SIGNALS,
                             file_actions=[(os.POSIX_SPAWN_DUP2, stdin_fd, 0), (os.POSIX_SPAWN_DUP2, log_fd, 1),
                                           (os.POSIX_SPAWN_DUP2, log_fd, 2)])
    except (OSError, ValueError) as e:
        msg = f"cannot start command: {e}"
        log(log_fd, msg + "\n")
        raise NotStarted(msg) from None
    finally:
        for fd in inherit:
            os.set_inheritable(fd, False)
        if moved:
            os.fchdir(_home)
    return Child(pid)


def close_inherited_fds() -> None:
    """Make every descriptor above stderr close-on-exec: commands inherit none of them.

    Python opens its own that way; this catches what the process was started
    with (a launcher's leaked pipe, a socket systemd passed). Called once when
    a worker starts, since spawn() does not close descriptors itself.
    """
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = range(3, 1024)
    for fd in fds:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # closed meanwhile (the listing's own descriptor)


def killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait(proc: Child, deadline: float | None, *, tick: Callable[[], None] | None = None,
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
                # No pidfd (an old kernel): look every 10 ms.
                end = time.monotonic() + step
                while proc.poll() is None and time.monotonic() < end:
                    time.sleep(0.01)
                if proc.returncode is not None:
                    return proc.returncode
            if tick is not None:
                tick()
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def supervise(proc: Child, *, timeout: float | None, grace: float, log_fd: int,
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
