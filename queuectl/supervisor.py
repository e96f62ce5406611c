"""N workers under one supervisor: start, restart, stop on a signal, stop from outside, detach.

Signals only set flags. First SIGINT/SIGTERM/SIGHUP: workers stop claiming
and finish their jobs. Second signal (or --stop-timeout): running jobs are
killed and go back to pending/ without using up an attempt.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import time

from .errors import WorkerError
from .recovery import prune_dead_workers, recover_all
from .registry import Heartbeat, WorkerInfo, hostname, pid_alive, read_workers, signal_process
from .spool import Spool
from .worker import EXIT_JOB_DIED, Worker

log = logging.getLogger("queuectl.supervisor")
WAKE = 0.5  # the supervisor's loop period: heartbeat and signal checks


def check_spool_permissions(spool: Spool) -> None:
    """Anyone who can write the spool can run commands as the worker's user."""
    spool.check_private()


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this worker when the supervisor dies (Linux)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _worker_main(root: str, name: str, burst: bool, poll: bool) -> None:
    w = Worker(root, name, burst=burst, poll=poll)
    w.install_signals()
    _die_with_parent()
    code = 0
    try:
        code = w.run()
    except KeyboardInterrupt:
        code = 1
    sys.stdout.flush()
    os._exit(code)


class Supervisor:
    def __init__(self, root: str, count: int, *, burst: bool = False, poll: bool = False,
                 stop_timeout: float | None = None, allow_shared: bool = False):
        self.root = root
        self.count = count
        self.burst = burst
        self.poll = poll
        self.stop_timeout = stop_timeout
        self.allow_shared = allow_shared
        self.signals = 0
        self.died = False  # a burst worker reported a job that ended in dead/
        if allow_shared:
            os.environ["QUEUECTL_ALLOW_SHARED_SPOOL"] = "1"  # the workers' Spools inherit it
        self.spool = Spool(root, shared=allow_shared)
        if not allow_shared:
            check_spool_permissions(self.spool)
        self.ctx = multiprocessing.get_context("fork")

    def _on_signal(self, signum, frame) -> None:  # noqa: ANN001
        self.signals += 1

    def start_worker(self, i: int):
        self.spool.close()  # never share a SQLite connection across fork
        p = self.ctx.Process(target=_worker_main, args=(self.root, f"worker-{i}", self.burst, self.poll),
                             name=f"worker-{i}", daemon=False)
        p.start()
        return p

    def run(self) -> int:
        spool = self.spool
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        hb = Heartbeat(spool, "supervisor", "supervisor", workers=self.count, burst=self.burst)
        prune_dead_workers(spool)
        hb.beat(force=True)
        plural = "" if self.count == 1 else "s"
        log.info("started PID=%d with %d worker%s on %s", os.getpid(), self.count, plural, spool.root)
        # Jobs left in processing/ by a crash: recover before anyone claims.
        spool.sync()
        for line in recover_all(spool, "supervisor"):
            log.info("%s", line)
        spool.close()
        procs = {i: self.start_worker(i) for i in range(self.count)}
        stop_sent_at = None
        killed = False
        try:
            while procs:
                if self.signals and stop_sent_at is None:
                    log.info("stopping: running jobs finish, no new claims (Ctrl-C again to kill them)")
                    stop_sent_at = time.monotonic()
                    for p in procs.values():
                        _signal(p.pid, signal.SIGTERM)
                if stop_sent_at is not None and not killed and (
                        self.signals >= 2 or (self.stop_timeout is not None
                                              and time.monotonic() - stop_sent_at >= self.stop_timeout)):
                    log.info("killing running jobs")
                    killed = True
                    for p in procs.values():
                        _signal(p.pid, signal.SIGUSR1)
                multiprocessing.connection.wait([p.sentinel for p in procs.values()], timeout=WAKE)
                hb.beat()
                for i, p in list(procs.items()):
                    if p.exitcode is None:
                        continue
                    del procs[i]
                    p.join()
                    if self.burst and p.exitcode == EXIT_JOB_DIED:
                        self.died = True
                    if stop_sent_at is not None:
                        continue
                    if p.exitcode in (0, EXIT_JOB_DIED) and self.burst:
                        continue
                    log.info("worker-%d (PID %d) exited with code %s; restarting", i, p.pid, p.exitcode)
                    prune_dead_workers(self.spool)
                    procs[i] = self.start_worker(i)
        finally:
            hb.remove()
            for p in procs.values():
                _signal(p.pid, signal.SIGUSR1)
                p.join()
        if self.burst:
            self._say_scheduled()
        log.info("stopped")
        return 1 if self.died else 0

    def _say_scheduled(self) -> None:
        """A burst run leaves jobs due later (or blocked, or held) alone: say how many."""
        spool = self.spool
        spool.sync()
        left = spool.index.scheduled()
        held = spool.index.counts().get("held", 0)
        spool.close()
        if left or held:
            log.info("%d %s scheduled for later%s", left, "job remains" if left == 1 else "jobs remain",
                     f", {held} held" if held else "")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# -- worker stop / detach ----------------------------------------------------------------


def supervisors_here(spool: Spool) -> list[WorkerInfo]:
    host = hostname()
    return [w for w in read_workers(spool) if w.role == "supervisor" and w.host == host and w.alive]


def stop_supervisors(spool: Spool, timeout: float, kill_grace: float | None = None) -> list[int]:
    """SIGTERM every supervisor of this spool on this host and wait for them to exit.

    After `timeout` seconds a second SIGTERM kills the running jobs (they go
    back to pending/); raises WorkerError if any supervisor still lives then.
    """
    sups = supervisors_here(spool)
    for s in sups:
        signal_process(s.pid, s.pid_start, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    forced = False
    while True:
        alive = [s for s in sups if pid_alive(s.pid, s.pid_start)]
        if not alive:
            return [s.pid for s in sups]
        now = time.monotonic()
        if now >= deadline:
            if forced:
                raise WorkerError(f"supervisor PID {', '.join(str(s.pid) for s in alive)} did not stop")
            for s in alive:
                signal_process(s.pid, s.pid_start, signal.SIGTERM)
            forced = True
            deadline = now + spool.config.kill_grace + 5
        time.sleep(0.05)


def detach(spool: Spool, argv: list[str]) -> tuple[int, str]:
    """Start `queuectl ... worker start` (argv, without --detach) in the background."""
    log_path = spool.path("logs", f"worker-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log")
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "queuectl", *argv], stdin=subprocess.DEVNULL,
                                stdout=fd, stderr=fd, start_new_session=True, close_fds=True)
    finally:
        os.close(fd)
    return proc.pid, log_path
