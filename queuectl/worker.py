"""Workers: claim a job by rename, run it, record the outcome; and the supervisor.

A supervisor process starts N worker processes and restarts any that die.
Signals only set flags. First SIGINT/SIGTERM to the supervisor: workers stop
claiming and finish their jobs. Second signal (or --stop-timeout): running
jobs are killed and go back to pending/ without using up an attempt.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

from .errors import JobNotFound, SpoolError, WorkerError
from .job import Job, JobState, now_iso
from .spool import Claim, Spool, _pid_alive, hostname, read_workers

RESCAN_INTERVAL = 1.0      # a missed watch event delays a job by at most this
RECOVER_INTERVAL = 2.0     # how often idle workers look for orphaned jobs
HEARTBEAT_INTERVAL = 2.0
BUSY_RETRY = 0.005         # rescan delay while another process accepts drop-ins
INDEX_FLUSH_INTERVAL = 0.1  # busy workers batch index writes for at most this long
EXIT_KILLED_BY_STOP = "interrupted by worker stop (not counted as an attempt)"

Say = Callable[[str], None]


def say_stdout(line: str) -> None:
    # One write per line: lines from several worker processes never interleave.
    os.write(1, (line + "\n").encode("utf-8", "replace"))


def backoff_delay(attempts: int, base: float, cap: float, jitter: float) -> float:
    """Seconds before retry number `attempts`: base ** attempts (+ jitter), never above cap."""
    try:
        delay = float(base) ** attempts
    except OverflowError:
        delay = float("inf")
    if jitter:
        delay *= 1 + random.random() * jitter
    return min(delay, cap)


# -- heartbeats and the worker registry -----------------------------------------


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of a process: with the pid it names one process, ever."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


def prune_dead_workers(spool: Spool) -> None:
    """Forget workers of this host that died; first kill the job a dead worker left running.

    A job runs in its own session, so it outlives a kill -9 of its worker;
    left alone it would run on beside the retry that recovery starts.
    """
    for w in read_workers(spool):
        if not w["alive"] and w.get("host") == hostname():
            pid, start = w.get("job_pid"), w.get("job_start")
            if isinstance(pid, int) and pid > 1 and start and _proc_start(pid) == start:
                _killpg(pid, signal.SIGKILL)
            try:
                os.unlink(spool.path("workers", w["file"]))
            except OSError:
                pass


class Heartbeat:
    def __init__(self, spool: Spool, role: str, name: str, **extra):
        self.spool = spool
        self.path = spool.path("workers", f"{hostname()}.{os.getpid()}.json")
        self.info = {"id": name, "role": role, "host": hostname(), "pid": os.getpid(),
                     "since": now_iso(), "heartbeat_at": None, "job": None, **extra}
        self.last = 0.0

    def set_job(self, job: str | None) -> None:
        """Note the current job; written with the next beat (short jobs never are)."""
        self.info["job"] = job

    def beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < HEARTBEAT_INTERVAL:
            return
        self.last = now
        self.info["heartbeat_at"] = now_iso()
        try:
            self.spool.write_file(self.path, json.dumps(self.info).encode(), durable=False)
        except (OSError, SpoolError):
            pass  # a full disk must not stop the worker; liveness also uses the pid

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


# -- running one job ----------------------------------------------------------------


@dataclass
class Outcome:
    exit_code: int | None
    error: str | None
    interrupted: bool = False


class Worker:
    """One worker loop. Lives in its own process; owns its Spool (and SQLite connection)."""

    def __init__(self, root: str, name: str, *, burst: bool = False, poll: bool = False,
                 say: Say = say_stdout):
        self.root = root
        self.name = name
        self.burst = burst
        self.poll = poll
        self.say = say
        self.stopping = False     # no new claims
        self.kill_jobs = False    # kill the running job now
        self.spool: Spool | None = None
        self.watcher = None
        self.parent = os.getppid()
        self.candidates: list[tuple[str, JobState]] = []
        self.running: Job | None = None
        self.devnull = -1
        self.job_pid = 0
        self.retry_due = float("inf")  # earliest retry this worker scheduled
        self.flushed = 0.0

    # signal handlers only set flags (and wake the loop)
    def _on_stop(self, signum, frame) -> None:  # noqa: ANN001
        self.stopping = True
        if self.watcher is not None:
            self.watcher.event.set()

    def _on_kill(self, signum, frame) -> None:  # noqa: ANN001
        self.stopping = True
        self.kill_jobs = True
        if self.watcher is not None:
            self.watcher.event.set()

    def install_signals(self) -> None:
        # Ctrl-C reaches the whole foreground process group; the supervisor decides.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_kill)
        _die_with_parent()

    def run(self) -> int:
        from .watcher import Watcher
        self.spool = spool = Spool(self.root, notify=lambda m: self.say(f"[{self.name}] {m}"))
        spool.defer_index = True
        spool.wait_for_dropins = False
        self.hb = Heartbeat(spool, "worker", self.name, supervisor_pid=self.parent)
        self.hb.beat(force=True)
        self.say(f"[{self.name}] started PID={os.getpid()}")
        self.watcher = Watcher([spool.path("pending"), spool.path("failed")], poll=self.poll)
        self.watcher.start()
        try:
            self.loop()
        finally:
            self.watcher.stop()
            self.hb.remove()
            spool.close()
        return 0

    def loop(self) -> None:
        """_loop(); an index that breaks under the worker is rebuilt, never fatal."""
        while True:
            try:
                return self._loop()
            except sqlite3.DatabaseError as e:
                if "locked" in str(e) or "busy" in str(e):
                    raise
                self.spool.discard_index(e)
                self.candidates = []

    def _loop(self) -> None:
        spool = self.spool
        last_scan = last_recover = 0.0
        while not self.stopping:
            now = time.monotonic()
            waiting = 0
            busy = False
            if now - last_scan >= RESCAN_INTERVAL or self.watcher.event.is_set():
                self.watcher.event.clear()
                report = spool.sync()
                waiting, busy = report.waiting, report.busy
                self.candidates = []  # new arrivals may outrank what was fetched
                last_scan = now
            if now - last_recover >= RECOVER_INTERVAL:
                self.recover()
                last_recover = now
            if self.stopping:
                break
            if self.claim_and_run():
                continue
            spool.flush_index()
            if os.getppid() != self.parent:
                break  # the supervisor is gone: finish quietly, a new one takes over
            self.hb.beat()
            if self.burst and waiting == 0 and self.idle_for_good():
                break
            due = spool.index.next_due()
            timeout = RESCAN_INTERVAL
            if due is not None:
                timeout = max(0.0, min(timeout, due - time.time()))
            if busy:
                # An enqueue or another worker holds the drop-in lock for a moment;
                # its files are ours to claim as soon as it lets go.
                timeout = min(timeout, BUSY_RETRY)
                last_scan = 0.0
            if timeout > 0:
                # wait() clears the event it woke on, so use its answer: an
                # arrival must trigger a scan (a drop-in, or a job whose enqueuer
                # has linked it into pending/ but not yet written its index row).
                if self.watcher.wait(timeout):
                    last_scan = 0.0

    def idle_for_good(self) -> bool:
        """Burst mode: nothing left to run now or later, here or in another worker."""
        spool = self.spool

        def empty() -> bool:
            counts = spool.index.counts()
            return counts["pending"] == 0 and counts["failed"] == 0 and counts["processing"] == 0

        # The cheap look first; only a queue that looks empty is confirmed by a full listing.
        if spool.sync().waiting or not empty():
            return False
        return spool.sync(force=True).waiting == 0 and empty()

    def claim_and_run(self) -> bool:
        """Claim and run one job; False if there was nothing to claim.

        The outcome is recorded before the next claim. Starting the next command
        first would hide the bookkeeping behind a running child, but a kill -9
        in between would then re-run two jobs instead of one.
        """
        claim = self._next_claim()
        if claim is None:
            return False
        self.execute(claim)
        return True

    def _next_claim(self) -> Claim | None:
        """Candidates come from the index; the rename decides."""
        spool = self.spool
        for _ in range(2):
            if self.retry_due <= time.time():
                # A retry this worker scheduled is due: it may outrank the cached
                # candidates (priority first), so ask the index again.
                self.candidates = []
                self.retry_due = float("inf")
            if not self.candidates:
                spool.flush_index()  # or the query returns jobs this worker already ran
                self.candidates = spool.index.candidates(16)
                self.candidates.reverse()
            while self.candidates:
                if self.stopping:
                    return None
                job_id, state = self.candidates.pop()
                claim = spool.claim(job_id, state)
                if claim is not None:
                    return claim
        return None

    def long_job(self) -> None:
        """Called once a job has run for a moment: make it visible to status and worker list.

        Short jobs skip these two writes; the index then briefly shows them as
        pending, which the next sync corrects.
        """
        if self.running is not None:
            self.spool._index_upsert_state(self.running, JobState.PROCESSING)
        if self.job_pid:
            self.hb.info.update(job_pid=self.job_pid, job_start=_proc_start(self.job_pid))
        self.hb.beat(force=True)

    def recover(self) -> None:
        prune_dead_workers(self.spool)
        for job_id, claim in self.spool.orphans():
            recover_orphan(self.spool, claim, self.name, self.say)

    def execute(self, claim: Claim) -> None:
        """Run one claimed job to its recorded outcome."""
        run = self._start(claim)
        self._conclude(run, self._finish(run))
        self.hb.set_job(None)
        self.running = None

    def _start(self, claim: Claim) -> "_Run":
        """Log the attempt's header and start its command."""
        job = claim.job
        run = _Run(claim, job.attempts + 1, job.max_retries + 1, now_iso(), time.monotonic(),
                   _open_log(self.spool, job.id))
        self.running = job
        self.hb.set_job(job.id)
        self.say(f"[{self.name}] executing job {job.id}: {job.command}")
        _log(run.log_fd, f"=== attempt {run.attempt}/{run.total} started {run.started} by {self.name} "
                         f"({hostname()} pid {os.getpid()}) ===\n")
        try:
            run.proc = self.spawn(job, run.log_fd)
        except _NotStarted as e:
            run.failed = Outcome(None, str(e))
        return run

    def _finish(self, run: "_Run") -> Outcome:
        """Wait for the command (timeout, stop) and log the attempt's footer."""
        try:
            outcome = run.failed if run.proc is None else self._supervise(run.proc, run.claim.job, run.log_fd)
            _log(run.log_fd, _line_break(run.log_fd) + f"=== attempt {run.attempt}/{run.total} finished "
                             f"{now_iso()} exit {_fmt_exit(outcome)} "
                             f"after {time.monotonic() - run.t0:.3f}s ===\n")
        finally:
            os.close(run.log_fd)
        return outcome

    def _conclude(self, run: "_Run", outcome: Outcome) -> None:
        """Record the outcome in the job file (and so in its directory) and say it."""
        spool = self.spool
        claim, job, attempt, total = run.claim, run.claim.job, run.attempt, run.total
        entry = {"attempt": attempt, "worker": self.name, "host": hostname(), "pid": os.getpid(),
                 "started_at": run.started, "finished_at": now_iso(),
                 "exit_code": outcome.exit_code, "error": outcome.error}
        if outcome.interrupted:
            entry["counted"] = False
            job.history.append(entry)
            job.state, job.next_run_at = JobState.PENDING, None
            self._record(claim, job)
            self.say(f"[{self.name}] interrupted {job.id}: back to pending")
            return
        delay = apply_outcome(job, entry, spool)
        self._record(claim, job)
        if job.state is JobState.FAILED:
            self.retry_due = min(self.retry_due, job.run_ts)
        if job.state is JobState.COMPLETED:
            self.say(f"[{self.name}] completed {job.id}")
        elif job.state is JobState.FAILED:
            self.say(f"[{self.name}] failed {job.id} (attempt {attempt}/{total}, {outcome.error}), "
                     f"retry in {_secs(delay)}")
        else:
            self.say(f"[{self.name}] failed {job.id} (attempt {attempt}/{total}, {outcome.error})")
            self.say(f"[{self.name}] {job.id} moved to dead letter queue")
        if time.monotonic() - self.flushed >= INDEX_FLUSH_INTERVAL:
            spool.flush_index()
            self.flushed = time.monotonic()

    def _record(self, claim: Claim, job: Job) -> None:
        """Record the outcome; on a full disk keep the claim and retry until it fits.

        Giving up would leave the job in processing/ with a live lock; the
        retry loop keeps it owned, and if this process dies instead, recovery
        counts the attempt. Nothing is lost either way.
        """
        warned = False
        while True:
            try:
                self.spool.record(claim, job)
                return
            except SpoolError as e:
                if not warned:
                    self.say(f"[{self.name}] cannot record {job.id}: {e}; retrying")
                    warned = True
                if self.kill_jobs:
                    raise
                time.sleep(0.5)

    def spawn(self, job: Job, log_fd: int) -> subprocess.Popen:
        """Start `/bin/sh -c COMMAND` in its own session; _NotStarted says why it could not."""
        if job.cwd and not os.path.isdir(job.cwd):
            msg = f"cwd does not exist: {job.cwd}"
            _log(log_fd, msg + "\n")
            raise _NotStarted(msg)
        env = None
        if job.env:
            env = {**os.environ, **job.env}
        if self.devnull < 0:
            self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", job.command], stdin=self.devnull,
                                    stdout=log_fd, stderr=log_fd, cwd=job.cwd or None, env=env,
                                    start_new_session=True, close_fds=True)
        except (OSError, ValueError) as e:
            msg = f"cannot start command: {e}"
            _log(log_fd, msg + "\n")
            raise _NotStarted(msg) from None
        self.job_pid = proc.pid
        return proc

    def run_command(self, job: Job, log_fd: int) -> Outcome:
        """Start and wait for one command (no claim or record)."""
        try:
            proc = self.spawn(job, log_fd)
        except _NotStarted as e:
            return Outcome(None, str(e))
        return self._supervise(proc, job, log_fd)

    def _supervise(self, proc: subprocess.Popen, job: Job, log_fd: int) -> Outcome:
        try:
            return self._wait_outcome(proc, job, log_fd)
        finally:
            self.job_pid = 0
            self.hb.info.update(job_pid=None, job_start=None)

    def _wait_outcome(self, proc: subprocess.Popen, job: Job, log_fd: int) -> Outcome:
        spool = self.spool
        timeout = job.timeout if job.timeout is not None else spool.config.job_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        grace = spool.config.kill_grace
        status = _wait(proc, deadline, self)
        if status is not None:
            return _exit_outcome(status)
        # timed out, or told to kill jobs: TERM the whole group, KILL after the grace
        timed_out = not self.kill_jobs
        _killpg(proc.pid, signal.SIGTERM)
        status = _wait(proc, time.monotonic() + grace, None)
        _killpg(proc.pid, signal.SIGKILL)  # stray children too
        if status is None:
            status = proc.wait()
        if timed_out:
            msg = f"timed out after {timeout:g}s"
            _log(log_fd, f"\n{msg}\n")
            return Outcome(status, msg)
        return Outcome(status, EXIT_KILLED_BY_STOP, interrupted=True)


class _NotStarted(Exception):
    """The command could not be started (bad cwd, exec failure): an ordinary failed attempt."""


@dataclass
class _Run:
    """One attempt in flight."""
    claim: Claim
    attempt: int
    total: int
    started: str
    t0: float
    log_fd: int
    proc: subprocess.Popen | None = None
    failed: Outcome | None = None


def apply_outcome(job: Job, entry: dict, spool: Spool) -> float:
    """Count the attempt and pick the next state: done, failed (retry later) or dead."""
    job.attempts += 1
    job.history.append(entry)
    job.exit_code = entry.get("exit_code")
    if entry.get("exit_code") == 0 and not entry.get("error"):
        job.state, job.last_error, job.next_run_at = JobState.COMPLETED, None, None
        return 0.0
    job.last_error = entry.get("error")
    cfg = spool.config
    if job.attempts <= job.max_retries:
        delay = backoff_delay(job.attempts, cfg.backoff_base, cfg.backoff_max, cfg.backoff_jitter)
        job.state, job.next_run_at = JobState.FAILED, now_iso(time.time() + delay)
        return delay
    job.state, job.next_run_at = JobState.DEAD, None
    return 0.0


def recover_orphan(spool: Spool, claim: Claim, by: str, say: Say) -> None:
    """A processing/ job whose owner died: finish its move, or count a failed attempt."""
    job = claim.job
    # Only a final state proves the owner recorded an outcome and died before the
    # last rename: claims are taken from pending/ and failed/ only. A `failed`
    # file may be a retry claimed unchanged, so it counts an attempt; otherwise
    # a job that kills its worker would retry forever. (A crash between the two
    # renames of a failed outcome then counts one attempt too many: rare, and safe.)
    if job.state in (JobState.COMPLETED, JobState.DEAD):
        spool.record(claim, job)
        return
    attempt = job.attempts + 1
    entry = {"attempt": attempt, "worker": by, "host": hostname(), "pid": os.getpid(),
             "started_at": None, "finished_at": now_iso(), "exit_code": None, "error": "worker died"}
    delay = apply_outcome(job, entry, spool)
    spool.record(claim, job)
    where = f"retry in {_secs(delay)}" if job.state is JobState.FAILED else "moved to dead letter queue"
    say(f"[{by}] recovered {job.id} (worker died, attempt {attempt}/{job.max_retries + 1}): {where}")


def _secs(delay: float) -> str:
    return f"{delay:.1f}s" if delay >= 0.1 else f"{delay:.3f}s"


def _fmt_exit(outcome: Outcome) -> str:
    if outcome.exit_code is None:
        return f"none ({outcome.error})"
    return str(outcome.exit_code)


def _exit_outcome(status: int) -> Outcome:
    if status == 0:
        return Outcome(0, None)
    if status < 0:
        name = signal.Signals(-status).name if -status in signal.Signals._value2member_map_ else str(-status)
        return Outcome(status, f"killed by signal {name}")
    return Outcome(status, f"exit {status}")


def _open_log(spool: Spool, job_id: str) -> int:
    try:
        # Readable too: _line_break() peeks at the last byte the command wrote.
        return os.open(spool.path("logs", job_id + ".log"),
                       os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


def _line_break(fd: int) -> str:
    """"\n" if the command's output did not end a line: the footer must start its own line."""
    try:
        size = os.fstat(fd).st_size
        return "\n" if size and os.pread(fd, 1, size - 1) != b"\n" else ""
    except OSError:
        return ""


def _log(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode("utf-8", "replace"))
    except OSError:
        pass  # a full disk loses log lines, never the job


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait(proc: subprocess.Popen, deadline: float | None, worker: Worker | None) -> int | None:
    """Wait for the process to exit: its status, or None at the deadline or on kill_jobs."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = -1
    try:
        rounds = 0
        while True:
            if worker is not None and worker.kill_jobs:
                return None
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            step = HEARTBEAT_INTERVAL if deadline is None else min(HEARTBEAT_INTERVAL, deadline - now)
            if worker is not None:
                step = min(step, 0.25)  # notice kill_jobs promptly
            if pidfd >= 0:
                ready, _, _ = select.select([pidfd], [], [], step)
                if ready:
                    return proc.wait()
            else:
                try:
                    return proc.wait(timeout=step)
                except subprocess.TimeoutExpired:
                    pass
            if worker is not None:
                rounds += 1
                if rounds == 1:
                    worker.long_job()
                else:
                    worker.hb.beat()
    finally:
        if pidfd >= 0:
            os.close(pidfd)


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
    code = 0
    try:
        code = w.run()
    except KeyboardInterrupt:
        code = 1
    sys.stdout.flush()
    os._exit(code)


# -- the supervisor ------------------------------------------------------------------


def check_spool_permissions(spool: Spool) -> None:
    """Anyone who can write the spool can run commands as the worker's user."""
    st = os.stat(spool.root)
    if st.st_mode & 0o022:
        raise WorkerError(
            f"spool {spool.root} is writable by group or others (mode {st.st_mode & 0o777:o}): "
            f"anyone who can write there can run commands as you. Fix with `chmod 700 {spool.root}`, "
            "or pass --allow-shared-spool for a deliberately group-shared spool")


class Supervisor:
    def __init__(self, root: str, count: int, *, burst: bool = False, poll: bool = False,
                 stop_timeout: float | None = None, allow_shared: bool = False, say: Say = say_stdout):
        self.root = root
        self.count = count
        self.burst = burst
        self.poll = poll
        self.stop_timeout = stop_timeout
        self.allow_shared = allow_shared
        self.say = say
        self.signals = 0
        self.spool = Spool(root, notify=lambda m: say(f"[supervisor] {m}"))
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
        self.say(f"[supervisor] started PID={os.getpid()} with {self.count} worker{plural} on {spool.root}")
        # Jobs left in processing/ by a crash: recover before anyone claims.
        spool.sync()
        for _job_id, claim in spool.orphans():
            recover_orphan(spool, claim, "supervisor", self.say)
        spool.close()
        procs = {i: self.start_worker(i) for i in range(self.count)}
        stop_sent_at = None
        killed = False
        try:
            while procs:
                if self.signals and stop_sent_at is None:
                    self.say("[supervisor] stopping: running jobs finish, no new claims "
                             "(Ctrl-C again to kill them)")
                    stop_sent_at = time.monotonic()
                    for p in procs.values():
                        _signal(p.pid, signal.SIGTERM)
                if stop_sent_at is not None and not killed and (
                        self.signals >= 2 or (self.stop_timeout is not None
                                              and time.monotonic() - stop_sent_at >= self.stop_timeout)):
                    self.say("[supervisor] killing running jobs")
                    killed = True
                    for p in procs.values():
                        _signal(p.pid, signal.SIGUSR1)
                multiprocessing.connection.wait([p.sentinel for p in procs.values()], timeout=0.5)
                hb.beat()
                for i, p in list(procs.items()):
                    if p.exitcode is None:
                        continue
                    del procs[i]
                    p.join()
                    if stop_sent_at is not None:
                        continue
                    if p.exitcode == 0 and self.burst:
                        continue
                    self.say(f"[supervisor] worker-{i} (PID {p.pid}) exited with code {p.exitcode}; restarting")
                    prune_dead_workers(self.spool)
                    procs[i] = self.start_worker(i)
        finally:
            hb.remove()
            for p in procs.values():
                _signal(p.pid, signal.SIGUSR1)
                p.join()
        self.say("[supervisor] stopped")
        return 0


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# -- worker stop / detach ----------------------------------------------------------------


def supervisors_here(spool: Spool) -> list[dict]:
    host = hostname()
    return [w for w in read_workers(spool)
            if w.get("role") == "supervisor" and w.get("host") == host and w["alive"]]


def stop_supervisors(spool: Spool, timeout: float) -> list[int]:
    """SIGTERM every supervisor of this spool on this host and wait for them to exit.

    After `timeout` seconds a second SIGTERM kills the running jobs (they go
    back to pending/); raises WorkerError if any supervisor still lives then.
    """
    sups = supervisors_here(spool)
    pids = [int(s["pid"]) for s in sups]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    forced = False
    while True:
        alive = [p for p in pids if _pid_alive(p) and not _is_zombie(p)]
        if not alive:
            return pids
        now = time.monotonic()
        if now >= deadline:
            if forced:
                raise WorkerError(f"supervisor PID {', '.join(map(str, alive))} did not stop")
            for pid in alive:
                _signal(pid, signal.SIGTERM)
            forced = True
            deadline = now + spool.config.kill_grace + 5
        time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def detach(spool: Spool, argv: list[str]) -> tuple[int, str]:
    """Start `queuectl ... worker start` (argv, without --detach) in the background."""
    log = spool.path("logs", f"worker-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "queuectl", *argv], stdin=subprocess.DEVNULL,
                                stdout=fd, stderr=fd, start_new_session=True, close_fds=True)
    finally:
        os.close(fd)
    return proc.pid, log


# -- dead letter queue and logs ----------------------------------------------------------------


def job_log_path(spool: Spool, job_id: str) -> str:
    spool.find(job_id)
    return spool.path("logs", job_id + ".log")


def dead_jobs(spool: Spool) -> list[dict]:
    spool.sync()
    return list(spool.index.records(JobState.DEAD))


def ensure_dead(spool: Spool, job_ids: list[str]) -> None:
    for job_id in job_ids:
        state, _ = spool.find(job_id)
        if state is not JobState.DEAD:
            raise JobNotFound(f"job {job_id} is not in the dead letter queue (it is {state.value})")
