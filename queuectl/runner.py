"""Run one command: spawn it in its own session, wait, time out, kill the group, frame its log.

Knows nothing of workers: the caller passes `tick` (called while the command
runs) and `should_kill` (polled, to end it early on a stop).
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import stat
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
#
# Every descriptor a command (or a hook) writes a log through holds a shared flock
# on it, and a command's children inherit that descriptor and so the lock: cap_log
# replaces a log only under an exclusive lock, so never while anything still
# writes to it, and the scratch file is reused only when no process holds it.

LOG_OPEN = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC  # readable too: line_break() peeks
HOLD_TRIES = 200    # a cap holds its exclusive lock for a moment only: wait up to ~1 s for it
HOLD_RETRY = 0.005
OPEN_TRIES = 8      # opens of a log that a cap replaced as it was opened


def hold(fd: int, path: str | None = None) -> bool:
    """Take the shared lock of a writer on a log; False if `path` no longer names the
    file (a cap replaced it while this writer opened it: open it again)."""
    for _ in range(HOLD_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(HOLD_RETRY)
        except OSError:
            return True  # no flock on this filesystem: write unlocked
    return path is None or path_names_fd(fd, path)


def path_names_fd(fd: int, path: str) -> bool:
    """Does `path` still name the file fd is open on?"""
    try:
        st, now = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (st.st_ino, st.st_dev) == (now.st_ino, now.st_dev)


def open_log(path: str, *, create: bool = True) -> int:
    """The job's log, for appending, held (hold()); /dev/null if it cannot be opened (a full
    disk loses lines, not jobs). create=False: FileNotFoundError if there is none."""
    for tries in range(OPEN_TRIES):
        try:
            fd = os.open(path, LOG_OPEN | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            if not create:
                raise
            break
        except OSError:
            break
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)  # a FIFO there would block the command once full (or feed its reader)
            break
        # A name that keeps naming another file (a network filesystem's stale cache)
        # costs a few reopens, never the output: the last one is kept as it is.
        if hold(fd, path) or tries == OPEN_TRIES - 1:
            return fd
        os.close(fd)  # replaced by a cap meanwhile: the new file is the log
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

    A command may leave a process running that still holds its output (`cmd &`)
    and writes later. The command gets its own descriptor of the scratch file,
    with a shared lock its children inherit; a silent success whose descriptor
    someone still holds (the worker's exclusive lock says so) keeps its file as
    its log, so late output lands there, and the next job gets a new file. The
    scratch file is reused only when nothing else can write to it: a log never
    holds another job's bytes.
    """

    def __init__(self, scratch: str | None):
        self.scratch = scratch  # None: every attempt opens its log directly
        self.fd = -1            # the worker's own descriptor of the scratch file, kept between jobs
        self.child = -1         # the attempt's command's descriptor of it (holds the shared lock)
        self.log_path = ""
        self.using = False      # this attempt writes into the scratch file
        self.linked = False     # ... which is already the job's log too
        self.header = 0
        self.kept = True

    def open(self, log_path: str) -> int:
        """The descriptor the attempt's header and footer are written to (command_fd: its command's)."""
        self.log_path, self.using, self.linked, self.header, self.kept = log_path, False, False, 0, True
        if self.scratch is None:
            return open_log(log_path)
        try:
            return open_log(log_path, create=False)
        except FileNotFoundError:
            pass
        try:
            if self.fd < 0:
                self.fd = os.open(self.scratch, LOG_OPEN | os.O_CREAT | os.O_TRUNC, 0o600)
                hold(self.fd)
            self.child = os.open(self.scratch, LOG_OPEN)
        except OSError:
            self.discard()
            return open_log(log_path)
        hold(self.child)
        self.using = True
        return self.fd

    def command_fd(self, fd: int) -> int:
        """The descriptor the command writes to: its own while it writes into the scratch file."""
        return self.child if self.using else fd

    def started(self) -> None:
        """The header is written: an attempt that leaves the scratch file this size wrote nothing."""
        if self.using:
            self.header = os.fstat(self.fd).st_size

    def publish(self) -> None:
        """Make the running attempt's output visible as the job's log now."""
        if self.using and not self.linked:
            self.linked = self._link()

    def keeps(self, fd: int, failed: bool) -> bool:
        """Does this attempt leave a log (and so a footer)? Always if it failed or wrote something,
        and if a process it left running can still write to it."""
        self._close_child()
        self.kept = (failed or not self.using or self.linked or os.fstat(fd).st_size > self.header
                     or self._held())
        return self.kept

    def _held(self) -> bool:
        """Does any process still hold the command's descriptor of the scratch file?"""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            hold(self.fd)  # the failed upgrade dropped the worker's shared lock (Linux)
            return True
        except OSError:
            return True  # no flock here: cannot tell, so never reuse the file
        hold(self.fd)
        return False

    def close(self, fd: int) -> None:
        """The attempt is over (keeps() said what to keep): ready the scratch file for the next."""
        self._close_child()
        if not self.using:
            os.close(fd)
            return
        if not self.kept:
            # Emptied through a description closed at once: ext4 and XFS flush a file
            # truncated to 0 when a writer next closes it, and the command's descriptor
            # is closed after each job; so the flush finds nothing, not the next job's bytes.
            os.close(os.open(self.scratch, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC))
            return
        if not self.linked and not self._link():
            # The log appeared meanwhile (a hook, a person): append instead.
            salvage_output(self.scratch, self.log_path)
        # The scratch file is the job's log (or copied into it); the next job gets a new one.
        unlink_quietly(self.scratch)
        os.close(fd)
        self.fd = -1

    def _close_child(self) -> None:
        if self.child >= 0:
            os.close(self.child)
            self.child = -1

    def _link(self) -> bool:
        try:
            os.link(self.scratch, self.log_path)
            return True
        except OSError:
            return False

    def discard(self) -> None:
        self._close_child()
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
        dst = open_log(log_path, create=False)
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
    bytes were dropped. The bytes dropped (0 if it was within the limit, or is written to).

    Head and tail, not the tail only: the first attempt's header and the
    latest output are what a reader looks for. Rewritten aside and renamed
    over, so a reader sees the whole old log or the whole capped one; and only
    under an exclusive lock, so never while a writer holds the log (hold()): an
    attempt running on another worker, a hook, a process a command left
    running would go on writing to the replaced file, and its lines would be
    lost. Such a log is capped after the next attempt that ends once nothing
    writes to it.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        size = os.fstat(fd).st_size
        if limit <= 0 or size <= limit:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # written to: kept whole for now
        except OSError:
            pass  # no flock on this filesystem: capped unlocked, as it always was there
        if not path_names_fd(fd, path):
            return 0  # capped by another worker meanwhile
        size = os.fstat(fd).st_size
        half = max(0, (limit - 120) // 2)  # 120: room for the marker line
        dropped = size - 2 * half
        data = (os.pread(fd, half, 0)
                + f"\n=== queuectl: {dropped} bytes dropped here (max_log_size {limit}) ===\n".encode()
                + os.pread(fd, half, size - half))
        atomic_write(os.path.dirname(path), path, data, durable=False)
    except (OSError, SpoolError):
        return 0  # written to now (or a full disk): kept whole for now, the next attempt tries again
    finally:
        os.close(fd)  # the lock goes with it, after the rename: a writer then finds the new file
    return dropped
