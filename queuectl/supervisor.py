"""N workers under one supervisor: start, restart, stop on a signal, stop from outside, detach.

Signals only set flags. First SIGINT/SIGTERM/SIGHUP, to the supervisor, to a
worker or to the whole process group: every worker stops claiming and finishes
its job, then the supervisor exits 0. Second SIGINT/SIGTERM (or
--stop-timeout): running jobs are killed and go back to pending/ without using
up an attempt. SIGHUP never escalates: a closed terminal may send it twice.

A worker told to stop is never replaced: it means the whole tree stops (a
signal reaches one worker only when someone chose that pid; the safe reading
is "stop", and a half-stopped tree is what nobody asked for). A worker that
crashes (non-zero exit) is restarted after a delay that doubles with each
crash in a row, so a worker that cannot start does not burn a core.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import time

from . import lazylog
from .errors import WorkerError
from .fsio import dir_ident, moved, open_append, read_nofollow, unlink_quietly
from .hosts import shared_mode_warnings
from .recovery import fmt_secs, prune_dead_workers, recover_others, recover_waiting
from .queues import known_queues, say_slot_problems
from .registry import (MAX_WORKERS, SCALE_SUFFIX, Heartbeat, WorkerInfo, check_node, clones, node_name, pid_alive,
                       read_workers, signal_process)
from .sdnotify import notify
from .spool import Spool
from .worker import EXIT_JOB_DIED, Worker

log = lazylog.get("queuectl.supervisor")
WAKE = 0.5  # the supervisor's loop period: heartbeat and signal checks
RECOVER_EVERY = 2.0  # on a shared spool, how often the supervisor looks for other hosts' orphans
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
# Blocked from just before a fork until the new worker has its own handlers:
# in between the child still has the supervisor's handler, and a stop (or
# kill) sent to it then would be swallowed there. Blocked, it waits.
FORK_BLOCKED = STOP_SIGNALS | {signal.SIGUSR1}
RESTART_FIRST = 0.1   # a crashed worker is restarted after this long,
RESTART_MAX = 10.0    # doubling with each crash in a row up to this;
RESTART_RESET = 30.0  # a worker that lived this long starts the count again
WORKER_STOPPED = 3    # a worker's exit code after a stop signal (0 is a burst with nothing left)
WORKER_SPOOL_GONE = 5  # a worker's exit code when its spool directory was moved, removed or replaced
READY_POLL = 0.05     # the loop's period until every first worker watches (systemd's READY=1)
DETACH_READY = 10.0   # seconds `worker start --detach` waits for the supervisor's heartbeat


def check_spool_permissions(spool: Spool) -> None:
    """Anyone who can write the spool can run commands as the worker's user."""
    spool.check_private()


def hold_stop_signals() -> None:
    """Keep stop signals pending until Supervisor.run has its handlers in place.

    Called first thing by `worker start`: a stop during start-up then reaches
    the supervisor's handler instead of the default action, which would end
    the supervisor before its workers know.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def check_writable(spool: Spool) -> None:
    """WorkerError for a read-only spool (not writable, or marked so by a .readonly file)."""
    if spool.readonly:
        why = " (marked so by its .readonly file)" if os.path.lexists(spool.path(".readonly")) else ""
        raise WorkerError(f"the spool {spool.root} is read-only{why}: workers need one they can change; "
                          f"run them on a copy (cp -r {spool.root} /tmp/x && rm -f /tmp/x/.readonly)")


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this worker when the supervisor dies (Linux)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _worker_main(root: str, name: str, burst: bool, poll: bool, parent: int, wake_fds: tuple[int, ...],
                 queues: tuple[str, ...] | None = None, lane: tuple[int, int] = (0, 1),
                 root_ident: tuple[int, int] | None = None) -> None:
    # FORK_BLOCKED is blocked here (start_worker): whatever arrived since the
    # fork is still pending, and is delivered to the worker's own handlers.
    signal.set_wakeup_fd(-1)  # the supervisor's wake-up pipe is not this process's
    for fd in wake_fds:
        os.close(fd)
    w = Worker(root, name, burst=burst, poll=poll, queues=queues, lane=lane)
    w.root_ident = root_ident
    w.install_signals()
    _die_with_parent()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORK_BLOCKED)
    if os.getppid() != parent:
        os._exit(0)  # the supervisor died before PDEATHSIG was armed: no one to work for
    code = 0
    root = os.path.abspath(root)  # now, in the supervisor's directory: a job's cwd is not the spool's
    try:
        if moved(root, root_ident):
            os._exit(WORKER_SPOOL_GONE)  # opening the spool would make a new, empty one at its old path
        code = w.run()
    except KeyboardInterrupt:
        code = 1
    except Exception:
        if not moved(root, root_ident):
            raise
        code = WORKER_SPOOL_GONE  # what failed is the spool's absence: the supervisor says so, once
    if code == 0 and w.stopping:
        code = WORKER_STOPPED  # tells the supervisor this was a stop, not a finished burst
    sys.stdout.flush()
    os._exit(code)


class Supervisor:
    def __init__(self, root: str, count: int, *, burst: bool = False, poll: bool = False,
                 stop_timeout: float | None = None, allow_shared: bool = False, node: str | None = None,
                 shared: bool = False, index: str | None = None, queues: tuple[str, ...] | None = None):
        self.root = root
        self.queues = queues
        self.ready = False  # told systemd READY=1 (once every first worker watches the spool)
        # The workers inherit these through the environment, as they do the spool.
        if node:
            os.environ["QUEUECTL_NODE"] = check_node(node)
        if shared:
            os.environ["QUEUECTL_SHARED"] = "1"
        if index:
            os.environ["QUEUECTL_INDEX"] = os.path.abspath(index)
        self.count = count
        self.burst = burst
        self.poll = poll
        self.stop_timeout = stop_timeout
        self.allow_shared = allow_shared
        self.stop_asked = False  # by a signal here or to a worker: stop the tree
        self.signals = 0  # SIGINT/SIGTERM received: the second kills running jobs
        self.died = False  # a burst worker reported a job that ended in dead/
        self.procs: dict[int, multiprocessing.process.BaseProcess] = {}
        self.born: dict[int, float] = {}   # worker slot -> when its process started
        self.due: dict[int, float] = {}    # worker slot -> when to (re)start it
        self.delay: dict[int, float] = {}  # worker slot -> its next restart delay
        self.retiring: set[int] = set()    # slots `worker scale` took away: their workers finish, then go
        self.wake_fds: tuple[int, ...] = ()
        self.recovered_at = time.monotonic()  # on a shared spool: other hosts' orphans, every RECOVER_EVERY
        self.slots_at = 0.0  # when the queues' slot files were last looked at
        self.slots_said: set[str] = set()  # unusable slot files already said (said again once fixed and broken again)
        if allow_shared:
            os.environ["QUEUECTL_ALLOW_SHARED_SPOOL"] = "1"  # the workers' Spools inherit it
        self.spool = Spool(root, shared=allow_shared)
        self.root_ident = dir_ident(self.spool.root)  # the spool directory these workers work in
        self.gone = False  # it was moved, removed or replaced: stop, never make a new one there
        if not allow_shared:
            check_spool_permissions(self.spool)
        self.ctx = multiprocessing.get_context("fork")

    def _on_signal(self, signum, frame) -> None:  # noqa: ANN001
        self.stop_asked = True
        if signum != signal.SIGHUP:
            self.signals += 1

    def _install_signals(self) -> None:
        # The handler only sets flags; the wake-up pipe ends the loop's wait at once.
        self.wake_fds = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        signal.set_wakeup_fd(self.wake_fds[1], warn_on_full_buffer=False)
        # Held since `worker start` began (hold_stop_signals): delivered now, to the handler.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def _remove_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for fd in self.wake_fds:
            os.close(fd)
        self.wake_fds = ()

    def start_worker(self, i: int):
        self.spool.close()  # never share a SQLite connection across fork
        p = self.ctx.Process(target=_worker_main, name=f"worker-{i}", daemon=False,
                             args=(self.root, f"worker-{i}", self.burst, self.poll, os.getpid(), self.wake_fds,
                                   self.queues, (i, self.count), self.root_ident))
        old = signal.pthread_sigmask(signal.SIG_BLOCK, FORK_BLOCKED)
        try:
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self.procs[i] = p
        self.born[i] = time.monotonic()
        return p

    def check_hosts(self) -> None:
        """WorkerError unless this node may run workers on this spool.

        On a network filesystem other hosts may share the spool, and their
        workers are judged by heartbeat times, so sharing must be meant
        (--shared). A live heartbeat with this node's name that is no process
        of this machine is a clone: both would recover each other's jobs.
        """
        spool = self.spool
        check_writable(spool)
        if spool.network and not spool.shared_mode:
            raise WorkerError(
                f"the spool {spool.root} is on a network filesystem ({spool.fstype}): flock and inotify do not "
                "reach other hosts there, so workers must run in shared mode (heartbeat leases, a local index); "
                "pass --shared or run `queuectl config set shared true`")
        for w in clones(spool):
            raise WorkerError(
                f"node name {node_name()} is already in use by another machine (live heartbeat "
                f"workers/{w.file}, pid {w.pid}, {w.age:.1f}s old): give each host its own --node or QUEUECTL_NODE")

    def run(self) -> int:
        self.check_hosts()  # a refusal is one error line, before anything starts
        self._install_signals()  # first: a stop during start-up is kept for the loop
        spool = self.spool
        hb = Heartbeat(spool, "supervisor", f"supervisor@{node_name()}:{os.getpid()}", workers=self.count,
                       burst=self.burst, queues=self.queues)
        try:
            prune_dead_workers(spool)
            hb.beat(force=True)
            plural = "" if self.count == 1 else "s"
            log.info("started PID=%d with %d worker%s on %s", os.getpid(), self.count, plural, spool.root)
            if spool.multihost:
                cfg = spool.config
                log.info("shared mode on %s as node %s: other nodes' workers are alive while their heartbeat_at "
                         "is under lease %gs + clock_skew %gs old; claims are recorded in workers/; index %s; "
                         "polling", spool.fstype or "a local disk", node_name(), cfg.lease, cfg.clock_skew,
                         spool.indexes.path)
                for line in shared_mode_warnings(spool):
                    log.warning("%s", line)
            recover_waiting(spool, lambda: self.stop_asked)
            if self.queues is not None and not set(self.queues) & known_queues(spool):
                # Allowed (a queue exists once a job names it), but a typo looks just like this.
                log.warning("no job names queue %s yet", ", ".join(self.queues))
            self._check_inotify()
            spool.close()
            now = time.monotonic()
            self.due = {i: now for i in range(self.count)}
            self._loop(hb)
        finally:
            hb.remove()
            for p in self.procs.values():
                _signal(p.pid, signal.SIGUSR1)
                p.join()
            self._remove_signals()
        if self.burst and not self.gone:
            self._say_scheduled()
        log.info("stopped")
        return 1 if self.died or self.gone else 0

    def _check_inotify(self) -> None:
        """Used-up inotify limits make the workers poll: said once here, not by each worker."""
        from .watcher import POLL_INTERVAL, inotify_problem
        why = None if self.poll or self.spool.multihost else inotify_problem([self.spool.path("pending")])
        if why is not None:
            log.warning("%s: workers poll the spool every %gs instead", why, POLL_INTERVAL)
            self.poll = True

    def _check_slots(self) -> None:
        """Slot files no worker can lock, said here once (queues.say_slot_problems): the workers skip them."""
        if time.monotonic() - self.slots_at >= RECOVER_EVERY:
            self.slots_at = time.monotonic()
            self.slots_said = say_slot_problems(self.spool, self.slots_said)

    def _spool_gone(self) -> None:
        """The spool directory was moved, removed or replaced under the workers: one line, then stop."""
        if not self.gone:
            self.gone = self.stop_asked = True
            log.error("the spool directory %s was moved, removed or replaced while the workers ran: stopping "
                      "(a new empty spool is not made in its place; start the workers again where it is now)",
                      self.spool.root)

    def _say_scheduled(self) -> None:
        """A burst run leaves jobs due later (or blocked, or held) alone: say how many."""
        spool = self.spool
        # No sync: the workers kept the index current up to their last look, and
        # a full listing of done/ (20,000 files after a big burst) is what made
        # the burst's last 20 ms.
        left = spool.index.scheduled()
        held = spool.index.counts().get("held", 0)
        spool.close()
        if left or held:
            log.info("%d %s scheduled for later%s", left, "job remains" if left == 1 else "jobs remain",
                     f", {held} held" if held else "")

    def _loop(self, hb: Heartbeat) -> None:
        stop_sent_at = None
        killed = False
        while True:
            if self.stop_asked and stop_sent_at is None:
                log.info("stopping: running jobs finish, no new claims (Ctrl-C again to kill them)")
                stop_sent_at = time.monotonic()
                notify("STOPPING=1", "STATUS=stopping: running jobs finish")
                self.due.clear()  # once stopping, no worker is started again
                for p in self.procs.values():
                    _signal(p.pid, signal.SIGTERM)
            if stop_sent_at is not None and not killed and (
                    self.signals >= 2 or (self.stop_timeout is not None
                                          and time.monotonic() - stop_sent_at >= self.stop_timeout)):
                log.info("killing running jobs")
                killed = True
                for p in self.procs.values():
                    _signal(p.pid, signal.SIGUSR1)
            self._start_due()
            if not self.procs and not self.due:
                return
            timeout = WAKE if self.ready else READY_POLL
            if self.due:
                timeout = max(0.0, min(timeout, min(self.due.values()) - time.monotonic()))
            multiprocessing.connection.wait([p.sentinel for p in self.procs.values()] + [self.wake_fds[0]],
                                            timeout=timeout)
            _drain(self.wake_fds[0])
            if not self.gone and moved(self.spool.root, self.root_ident):
                self._spool_gone()
            if stop_sent_at is None and not self.gone:
                self._check_scale(hb)
            if not self.gone:
                hb.beat()  # never into another spool made at this path
                self._check_slots()
            if stop_sent_at is None and self.spool.multihost and not self.gone \
                    and time.monotonic() - self.recovered_at >= RECOVER_EVERY:
                self.recovered_at = time.monotonic()
                if recover_others(self.spool, hb.info["since"]):
                    self.stop_asked = self.died = True  # a clone of this node started first
            if not self.ready and stop_sent_at is None:
                self._check_ready()
            self._reap(stopping=stop_sent_at is not None)

    def _check_scale(self, hb: Heartbeat) -> None:
        """`worker scale N`: a request file beside this supervisor's heartbeat, read each pass
        (at least every WAKE seconds). Growing starts workers at once; shrinking asks the
        highest slots to stop as on SIGTERM: their running jobs finish first."""
        path = hb.path[:-len('.json')] + SCALE_SUFFIX
        try:
            data, _ = read_nofollow(path, 64)
        except FileNotFoundError:
            return
        except OSError as e:
            data = str(e).encode()
        unlink_quietly(path)
        try:
            n = int(data.strip()[:8])
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_WORKERS:
            log.warning("ignored a scale request that is not a count from 1 to %d: %r", MAX_WORKERS, data[:40])
            return
        old, self.count = self.count, n
        now = time.monotonic()
        for i in range(n, old):  # shrink: the highest slots go
            self.due.pop(i, None)
            if i in self.procs:
                self.retiring.add(i)
                _signal(self.procs[i].pid, signal.SIGTERM)
        for i in range(old, n):  # grow (a slot still finishing its job restarts once it is done)
            self.retiring.discard(i)
            if i not in self.procs:
                self.due[i] = now
        hb.info["workers"] = n
        hb.beat(force=True)
        if n != old:
            log.info("scaled from %d to %d worker%s%s", old, n, "" if n == 1 else "s",
                     "; the stopped ones finish their running jobs first" if n < old else "")

    def _check_ready(self) -> None:
        """READY=1 for systemd once every worker started so far watches the spool."""
        mine = {w.pid for w in live_workers(self.spool)
                if w.role == "worker" and w.get("supervisor_pid") == os.getpid() and w.get("watching")}
        if self.procs and all(p.pid in mine for p in self.procs.values()):
            self.ready = True
            plural = "" if self.count == 1 else "s"
            notify("READY=1", f"STATUS={self.count} worker{plural} on {self.root}", f"MAINPID={os.getpid()}")
            self.spool.close()

    def _start_due(self) -> None:
        now = time.monotonic()
        for i, at in sorted(self.due.items()):
            if self.stop_asked:
                return  # a signal since the loop's check: the next pass stops instead
            if at > now or i in self.procs:
                continue
            del self.due[i]
            if i in self.born:
                prune_dead_workers(self.spool)  # what the crashed worker left running is killed first
            self.start_worker(i)

    def _reap(self, stopping: bool) -> None:
        """Join exited workers; a stopped one stops the tree, a crashed one is restarted later."""
        now = time.monotonic()
        for i, p in list(self.procs.items()):
            if p.exitcode is None:
                continue
            del self.procs[i]
            p.join()
            code = p.exitcode
            if self.burst and code == EXIT_JOB_DIED:
                self.died = True
            if i in self.retiring:  # `worker scale` took its slot away: gone, as asked
                self.retiring.discard(i)
                if i < self.count and not stopping:
                    self.due[i] = now  # and given back before it was done: start it again
                continue
            if stopping or (code in (0, EXIT_JOB_DIED) and self.burst):
                continue
            if code == WORKER_SPOOL_GONE:
                self._spool_gone()
                continue
            if code in (0, WORKER_STOPPED):
                # Someone signalled this worker, or the whole group (the worker may
                # hear it before this process does): either way, a stop of the tree.
                log.info("worker-%d (PID %d) stopped on a signal; stopping every worker", i, p.pid)
                self.stop_asked = True
                continue
            if now - self.born[i] >= RESTART_RESET:
                self.delay[i] = RESTART_FIRST
            delay = self.delay.get(i, RESTART_FIRST)
            self.delay[i] = min(delay * 2, RESTART_MAX)
            # The first restart's line is the plain one: a single crash is not yet a loop.
            after = "" if delay <= RESTART_FIRST else f" in {fmt_secs(delay)}"
            log.info("worker-%d (PID %d) exited with code %s; restarting%s", i, p.pid, code, after)
            self.due[i] = now + delay


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# -- worker stop / detach ----------------------------------------------------------------


def live_workers(spool: Spool) -> list[WorkerInfo]:
    return [w for w in read_workers(spool) if w.alive]


def supervisors_here(spool: Spool) -> list[WorkerInfo]:
    """Live supervisors of this node (seen through this mount): the ones this host can signal."""
    return [w for w in read_workers(spool) if w.role == "supervisor" and w.local and w.alive]


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


def supervisor_log(spool: Spool) -> str:
    """The one log file of the detached supervisors of a spool. Its name starts
    with `_`, which no job id can, so it never collides with logs/<id>.log."""
    return spool.path("logs", "_supervisor.log")


def detach(spool: Spool, argv: list[str]) -> tuple[int, str]:
    """Start `queuectl ... worker start` (argv, without --detach) in the background.

    Returns once its heartbeat is written, so that a `worker stop` right after
    finds it: until then it is a process nobody could stop by name.
    """
    log_path = supervisor_log(spool)
    fd = open_append(log_path, "the supervisor log")
    # The child inherits the blocked mask through exec: a stop during its
    # start-up waits for its handler (see hold_stop_signals).
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        # QUEUECTL_LOG_FILE: every process of the tree reopens the file once
        # logrotate has moved it (cli.lines.WorkerLines), so no signal is needed.
        proc = subprocess.Popen([sys.executable, "-m", "queuectl", *argv], stdin=subprocess.DEVNULL,
                                stdout=fd, stderr=fd, start_new_session=True, close_fds=True,
                                env={**os.environ, "QUEUECTL_LOG_FILE": log_path})
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        os.close(fd)
    deadline = time.monotonic() + DETACH_READY
    while not any(s.pid == proc.pid for s in supervisors_here(spool)):
        code = proc.poll()
        if code is not None:
            raise WorkerError(f"the supervisor exited with code {code} while starting; see {log_path}")
        if time.monotonic() >= deadline:
            # An error must not leave behind a supervisor the user was told did not start.
            proc.terminate()
            raise WorkerError(f"the supervisor did not start within {DETACH_READY:g}s; see {log_path}")
        time.sleep(0.01)
    return proc.pid, log_path
