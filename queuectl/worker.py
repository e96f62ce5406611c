"""The worker loop: scan, claim by rename, run, record. One worker per process.

Signals only set flags. SIGTERM (or SIGHUP): no new claims, finish the running
job. SIGUSR1: kill the running job too; it goes back to pending/ uncounted.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import lazylog
from .candidates import Candidate, candidates, queue_slot, without_queue
from .controls import resolve_dependencies
from .dropins import SyncReport, is_ignored
from .errors import SpoolError
from .fsio import check_here, disk_full, unreachable
from .hooks import run_hooks
from .indexstore import is_busy
from .job import Job, JobState, now_iso
from .queues import PAUSE_ALL, paused, release_slot, stalled
from .recovery import apply_kill, apply_outcome, fmt_secs, kill_request, recover_all
from .registry import Heartbeat, hostname, node_name, owner_marker, proc_start
from .retention import apply_settings
from .runner import (CommandLog, NotStarted, Outcome, cap_log, close_inherited_fds, killpg, log, line_break,
                     spawn, supervise)
from .spool import Claim, Spool

RESCAN_INTERVAL = 1.0      # a missed watch event delays a job by at most this (idle worker)
# The same for a worker that keeps finding jobs in the index: its timed scan is a safety net for a
# lost event, and relisting big directories once a second cost a 20,000-job queue a share that grew
# with it. Other hosts' moves are seen by scans only (SHARED_BUSY_RESCAN, Worker.taken).
BUSY_RESCAN_INTERVAL = 5.0
# What a worker's scans list: where jobs to run arrive, and what is running. Final
# states reach the index with each worker's record; a listing of done/ (20,000
# files after a big burst) only finds hand moves, which a full scan with the
# retention pass (once a minute) and every command's own sync pick up. On a shared
# spool other hosts' outcomes reach this node's index only by listings: all of them.
WORK_DIRS = (JobState.PENDING.dirname, JobState.FAILED.dirname, JobState.PROCESSING.dirname)
# How often idle workers look for orphaned jobs. On a shared spool a busy one leaves that to its
# supervisor (every supervisor.RECOVER_EVERY, whatever its workers do): each look reads every host's
# heartbeat and claim record and tries the lock of every running job, through the mount.
RECOVER_INTERVAL = 2.0
# On a shared spool an idle worker's own scans are its polling (no per-file stat snapshots), and the
# final-state directories, which only grow, are listed every SHARED_FULL_SCAN seconds (with held/).
SHARED_FULL_SCAN = 5.0
# A busy worker of a shared spool lists the directories again when its claims failed because
# other hosts took the jobs its index still lists, and at the latest every this many seconds
# (for a job of higher priority that arrived meanwhile).
SHARED_BUSY_RESCAN = 3.0
BUSY_RETRY = 0.005         # rescan delay while another process accepts drop-ins
# A worker whose claims all failed (other hosts took the jobs its index still lists) lists the spool
# again at once, not after poll_interval while there are jobs to claim; at the soonest this long after.
TAKEN_RESCAN = 0.05
INDEX_FLUSH_INTERVAL = 0.1  # busy workers batch index writes for at most this long
RECORD_RETRY = 0.5         # seconds between attempts to record on a full disk
UNREACHABLE_RETRY = 1.0    # seconds between looks at a spool out of reach (ESTALE, a server not answering)
SLOT_RETRY = 0.05          # a worker whose next jobs wait for a queue's free slot looks again this often
RETENTION_INTERVAL = 60.0  # how often a worker applies keep_done / keep_dead (one batch)
SAY_WAITING = 5.0          # seconds: a burst waiting longer than this for a retry says what it waits for
EXIT_JOB_DIED = 4          # a burst worker's exit status when a job it ran ended in dead/ (3: stopped)

log_ = lazylog.get("queuectl.worker")


@dataclass
class _Run:
    """One attempt in flight."""
    claim: Claim
    attempt: int
    total: int
    started: str
    t0: float
    log_fd: int
    proc: object | None = None
    failed: Outcome | None = None
    slot: int | None = None  # the queue's concurrency slot lock, held until the outcome is recorded


_said_waiting: list[tuple[str, float]] = []  # the retry this process (one worker) last said it waits for


def say_waiting(spool: Spool, parent: int) -> bool:
    """A burst that waits for a far retry of its own says so, once a retry, rather than
    minutes of silence. Returns False: the burst is not over (for idle_for_good)."""
    retries = spool.index.retries_of(hostname(), (os.getpid(), parent))
    if retries and retries[0] not in _said_waiting and retries[0][1] - time.time() >= SAY_WAITING:
        _said_waiting[:] = retries[:1]
        job_id, due = retries[0]
        log_.info("waiting for the retry of %s at %s (in %s); Ctrl-C stops, the job stays in failed/",
                  job_id, time.strftime("%H:%M:%S", time.localtime(due)), fmt_secs(due - time.time()))
    return False


class Worker:
    """One worker loop. Lives in its own process; owns its Spool (and SQLite connection)."""

    def __init__(self, root: str, name: str, *, burst: bool = False, poll: bool = False,
                 queues: tuple[str, ...] | None = None, lane: tuple[int, int] = (0, 1)):
        self.root = root
        self.name = name
        # Copied once: os.environ decodes every entry on each read, which cost
        # ~0.1 ms a job when each command's environment was built from it.
        self.base_env = dict(os.environ)
        self.hook_env = {**self.base_env, "QUEUECTL_SPOOL": os.path.abspath(root)}
        self.burst = burst
        self.poll = poll
        self.queues = queues      # None: every queue
        self.lane, self.lanes = lane  # this worker's index among its supervisor's, and their number
        self.pauses: set[str] = set()
        self.last_retention = 0.0
        self.stopping = False     # no new claims
        self.kill_jobs = False    # kill the running job now
        self.spool: Spool | None = None
        self.watcher = None
        self.parent = os.getppid()
        self.candidates: list[Candidate] = []
        self.taken: set[str] = set()  # ids whose claim failed since the last scan (another worker's now)
        self.last_scan = self.last_full = 0.0
        self.scan_owed = False
        self.running: Job | None = None
        self.devnull = -1
        self.output = CommandLog(None)
        self.job_pid = 0
        self.ticks = 0
        self.retry_due = float("inf")  # earliest retry this worker scheduled
        self.slot: int | None = None
        self.slot_wait = False
        self.died = False  # a job this worker ran ended in dead/
        self.holding: Claim | None = None  # the claim being run, until its outcome is recorded
        self.flushed = 0.0
        self.scan_dirs = WORK_DIRS
        self.root_ident: tuple[int, int] | None = None  # the spool directory's, as its supervisor opened it

    # signal handlers only set flags (and wake the loop)
    def _on_stop(self, signum, frame) -> None:  # noqa: ANN001
        self.stopping = True
        if self.watcher is not None:
            self.watcher.wake()

    def _on_kill(self, signum, frame) -> None:  # noqa: ANN001
        self.stopping = True
        self.kill_jobs = True
        if self.watcher is not None:
            self.watcher.wake()

    def install_signals(self) -> None:
        # Ctrl-C reaches the whole foreground process group; the supervisor decides.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_kill)

    def run(self) -> int:
        close_inherited_fds()  # before any job: spawn() closes nothing itself
        self.spool = spool = Spool(self.root, worker=True)
        self.scan_dirs = tuple(s.dirname for s in JobState) if spool.multihost else WORK_DIRS
        # The heartbeat's id names host and supervisor: two supervisors on one
        # spool both have a worker-0, and `worker list` must tell them apart.
        self.hb = Heartbeat(spool, "worker", f"{self.name}@{node_name()}:{self.parent}",
                            supervisor_pid=self.parent)
        self.marker = owner_marker(os.getpid(), self.hb.info["pid_start"])
        # Another host's recovery could not salvage a scratch file: there each log is made at once.
        self.output = CommandLog(None if spool.multihost else self.hb.path[:-5] + ".out")
        self.hb.beat(force=True)
        log_.info("started PID=%d", os.getpid())
        finished = []
        if self.burst:
            # A burst ends when the last job does: an idle worker must hear of the
            # other workers' outcomes at once, not at its next timed rescan.
            finished = [spool.path(JobState.COMPLETED.dirname), spool.path(JobState.DEAD.dirname)]
        self.watcher = watch(spool, self.poll, finished)
        self.hb.info["watching"] = True  # the supervisor's READY waits for this
        self.hb.beat(force=True)
        self.pauses = paused(spool)
        try:
            self.loop()
            last_sync(spool, self.root_ident)
        finally:
            self.watcher.stop()
            self.output.discard()
            self.hb.remove()
            spool.close()
        return EXIT_JOB_DIED if self.burst and self.died else 0

    def loop(self) -> None:
        """_loop(); an index that breaks under the worker is rebuilt, a full disk or an unreachable spool waited out."""
        warned = out_of_reach = False
        while True:
            try:
                try:
                    return self._loop()
                except sqlite3.DatabaseError as e:
                    if is_busy(e):
                        raise
                    self.spool.indexes.discard(e)
            except (OSError, SpoolError) as e:
                if unreachable(e) and self.holding is None:  # mid-job: exit; recovery counts the attempt
                    out_of_reach = _wait_out(self, e, out_of_reach)
                    continue
                if isinstance(e, OSError):
                    raise
                # index.db cannot grow: the files are the truth, nothing is lost. Wait for room.
                if self.kill_jobs or not disk_full(self.spool.root):
                    raise
                if not warned:
                    log_.warning("%s; retrying", e)
                    warned = True
                self.watcher.wait(RECORD_RETRY)
                self.last_retention = 0.0  # then a full scan: rows lost with the failed write come back
            self.candidates = []

    def _loop(self) -> None:
        spool = self.spool
        last_recover = last_refresh = self.last_scan = self.last_full = 0.0
        ran = False  # did the last turn run a job?
        busy_rescan = SHARED_BUSY_RESCAN if spool.multihost else BUSY_RESCAN_INTERVAL
        while not self.stopping:
            check_here(self.spool.root, self.root_ident)  # one stat: before any look that could make files there
            now = time.monotonic()
            waiting = 0
            busy = False
            scan = self.watcher.arrived() or now - self.last_scan >= (busy_rescan if ran else idle_rescan(spool))
            if scan and ran and spool.multihost and self.candidates:
                self.scan_owed, scan = True, False  # done while the next command runs (scan_while_running)
            if scan or now - last_refresh >= RESCAN_INTERVAL:
                self.refresh()  # `pause`, `config set`: before the next arrival, and within a second
                last_refresh = now
            if scan:
                report = scan_spool(self, now)
                waiting, busy = report.waiting, report.busy
            if now - last_recover >= RECOVER_INTERVAL and not (ran and spool.multihost):  # (RECOVER_INTERVAL)
                self.recover()
                last_recover = now
            if now - self.last_retention >= RETENTION_INTERVAL:
                # Between jobs too, not only when idle: a spool that is never
                # idle must stay bounded as well. One batch keeps the pause short.
                self.last_retention = now
                spool.sync()  # every directory, hand moves into done/ and dead/ included
                apply_settings(spool)
            if self.stopping:
                break
            ran = self.claim_and_run()
            if ran:
                continue
            spool.flush_index()
            if self.taken and now - self.last_scan >= TAKEN_RESCAN:
                self.last_scan = 0.0
                continue
            if os.getppid() != self.parent:
                break  # the supervisor is gone: finish quietly, a new one takes over
            self.hb.beat()
            if self.burst and waiting == 0 and self.idle_for_good():
                break
            timeout = idle_timeout(self)
            if busy:
                # An enqueue or another worker holds the drop-in lock for a moment;
                # its files are ours to claim as soon as it lets go.
                timeout = min(timeout, BUSY_RETRY)
                self.last_scan = 0.0
            if timeout > 0:
                # An arrival (a drop-in, or a job whose enqueuer has linked it into
                # pending/ but not yet written its index row) raises arrived(): the
                # scan at the top of the loop. A finished job (burst) only wakes us
                # for the idle check.
                self.watcher.wait(timeout)

    def refresh(self) -> None:
        """Once per scan: settings changed by `config set`, and queues paused or resumed."""
        if self.spool.configfile.refresh():
            log_.info("settings changed: reloaded config.json")
            self.candidates = []
        pauses = paused(self.spool)
        if pauses != self.pauses:
            self.pauses = pauses
            self.candidates = []

    def idle_for_good(self) -> bool:
        """Burst mode: nothing due now, nothing running, and no retry of this worker's own run pending.

        Jobs scheduled for later (a delay, a retry of an earlier run) or blocked
        behind them are left for later: `worker start --burst` says how many.
        """
        spool = self.spool

        def empty() -> bool:
            idx = spool.index
            if idx.counts()["processing"]:
                return False
            # Jobs of other queues, of paused ones, or of one whose every slot file is broken, are not
            # this burst's to wait for.
            skip = self.pauses | stalled(spool)
            if PAUSE_ALL not in self.pauses and idx.claimable(1, queues=self.queues, paused=skip):
                return False
            # A retry this worker (or its supervisor, recovering at start) scheduled is part of its run.
            return not idx.retries_of(hostname(), (os.getpid(), self.parent))

        # The cheap look first; only a queue that looks empty is confirmed by a full listing.
        if spool.sync(dirs=self.scan_dirs).waiting or not empty():
            return say_waiting(spool, self.parent)
        # The confirming look lists every directory, once a burst: a row a scan dropped
        # while another worker's record was batched comes back before the burst reports.
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
        self.holding = claim
        self.execute(claim)
        self.holding = None
        return True

    def _next_claim(self) -> Claim | None:
        """Candidates come from the index; the rename decides."""
        spool = self.spool
        full: set[str] = set()  # queues whose every slot is held: skipped, and left out of the next query
        for _ in range(3):
            if self.retry_due <= time.time():
                # A retry this worker scheduled is due: it may outrank the cached
                # candidates (priority first), so ask the index again.
                self.candidates = []
                self.retry_due = float("inf")
            if not self.candidates:
                if PAUSE_ALL in self.pauses:
                    return None
                self.candidates = candidates(spool, self.queues, self.pauses | full, self.lane, self.lanes, self.taken)
            while self.candidates:
                if self.stopping:
                    return None
                job_id, state, queue, _priority = self.candidates.pop()
                slot = queue_slot(spool, queue)
                if slot is False:
                    full.add(queue)
                    self.candidates = without_queue(self.candidates, queue)
                    continue
                # announce: the claim record, written before the rename, so the owner
                # is known from the first instant the job is in processing/
                announced = []
                claim = spool.claim(job_id, state, announce=lambda: announced.append(self.hb.claiming(job_id)))
                if claim is not None:
                    self.slot = slot
                    return claim
                release_slot(slot)
                if spool.multihost:  # other hosts' claims reach the index by scans: not tried again before one
                    self.taken.add(job_id)
                if announced:
                    self.hb.claiming(None)  # the rename failed after all: claim nothing
        if full:
            self.slot_wait = True  # due jobs wait for a slot: look again soon, not at once
        return None

    def _tick(self) -> None:
        """Called while a command runs: first make a long job visible, then keep beating."""
        self.ticks += 1
        if self.ticks > 1:
            self.hb.beat()
            return
        self.spool.spare.drop()  # a long job gains nothing from it, and `check` would call it a leftover
        # Short jobs skip these writes; the index then briefly shows them as
        # pending, which the next sync corrects.
        self.output.publish()
        if self.running is not None:
            self.spool.mark_running(self.running)
        if self.job_pid:
            self.hb.info.update(job_pid=self.job_pid, job_start=proc_start(self.job_pid))
        self.hb.beat(force=True)

    def recover(self) -> None:
        for line in recover_all(self.spool, self.name):
            log_.info("%s", line)

    def execute(self, claim: Claim) -> None:
        """Run one claimed job to its recorded outcome."""
        run, self.slot = self._start(claim, self.slot), None
        outcome = self._finish(run)
        try:
            self._conclude(run, outcome)
        finally:
            release_slot(run.slot)  # recorded: the next job of the queue may start anywhere
        self.hb.beat()  # a stream of short jobs never idles, and other hosts judge it by its beats
        self.hb.claiming(None)
        self.hb.set_job(None)
        self.running = None
        if not outcome.interrupted:
            run_hooks(claim.job, outcome.exit_code != 0, self.spool.config, log_path=self.spool.log_path(claim.job.id),
                      env=self.hook_env, should_kill=lambda: self.kill_jobs,
                      tick=self.hb.beat)
        cap_log(self.spool.log_path(claim.job.id), self.spool.config.max_log_size)

    def _start(self, claim: Claim, slot: int | None) -> _Run:
        """Log the attempt's header and start its command (holding the queue's slot, if any)."""
        job = claim.job
        run = _Run(claim, job.attempts + 1, job.max_retries + 1, now_iso(), time.monotonic(),
                   self.output.open(self.spool.log_path(job.id)), slot=slot)
        self.running = job
        self.hb.set_job(job.id)
        log_.info("executing job %s: %s", job.id, job.command)
        log(run.log_fd, f"=== attempt {run.attempt}/{run.total} started {run.started} by {self.name} "
                        f"({node_name()} pid {os.getpid()}) ===\n")
        self.output.started()
        if self.devnull < 0:
            self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        env = {**self.base_env, **(job.env or {}), "QUEUECTL_JOB_ID": job.id,
               "QUEUECTL_ATTEMPT": str(run.attempt), "QUEUECTL_SPOOL": self.spool.root,
               "QUEUECTL_OWNER": self.marker}
        # The command inherits the claim's lock (and a slot's): a killed worker's command holds the job on.
        try:
            run.proc = spawn(job.command, log_fd=self.output.command_fd(run.log_fd), stdin_fd=self.devnull,
                             cwd=job.cwd, env=env, inherit=(claim.fd,) if slot is None else (claim.fd, slot))
            self.job_pid = run.proc.pid
            if (request := kill_request(self.spool, job.id, run.attempt, take=False)) is not None:
                killpg(run.proc.pid, signal.Signals[request.get("signal", "SIGTERM")])  # asked before it started
            self.spool.spare.make()  # the record's file, made now: otherwise the worker only waits
            scan_while_running(self)  # after the kill check: a shared spool's scan can take a second
        except NotStarted as e:
            run.failed = Outcome(None, str(e))
        return run

    def _finish(self, run: _Run) -> Outcome:
        """Wait for the command (timeout, stop) and log the attempt's footer."""
        try:
            outcome = run.failed if run.proc is None else self._supervise(run)
            if self.output.keeps(run.log_fd, failed=outcome.exit_code != 0 or outcome.error is not None):
                log(run.log_fd, line_break(run.log_fd) + f"=== attempt {run.attempt}/{run.total} finished "
                                f"{now_iso()} exit {outcome.describe()} "
                                f"after {time.monotonic() - run.t0:.3f}s ===\n")
        finally:
            try:
                self.output.close(run.log_fd)
            except OSError:
                self.output.discard()  # never let one attempt's bytes reach the next job's log
        return outcome

    def _supervise(self, run: _Run) -> Outcome:
        job = run.claim.job
        cfg = self.spool.config
        self.ticks = 0
        try:
            return supervise(run.proc, timeout=job.timeout if job.timeout is not None else cfg.job_timeout,
                             grace=cfg.kill_grace, log_fd=run.log_fd, tick=self._tick,
                             should_kill=lambda: self.kill_jobs)
        finally:
            self.job_pid = 0
            self.hb.info.update(job_pid=None, job_start=None)

    def _conclude(self, run: _Run, outcome: Outcome) -> None:
        """Record the outcome in the job file (and so in its directory) and say it."""
        spool = self.spool
        claim, job, attempt, total = run.claim, run.claim.job, run.attempt, run.total
        # `queuectl kill` leaves kill/<id> before it signals: a failure was the user's doing.
        request = kill_request(spool, job.id, attempt)  # consumed even by a success: it missed
        if request is not None and (outcome.exit_code != 0 or outcome.error):
            outcome = Outcome(outcome.exit_code, f"killed by user ({request.get('signal', 'SIGTERM')})")
        else:
            request = None
        entry = {"attempt": attempt, "worker": self.name, "node": node_name(), "host": hostname(),
                 "pid": os.getpid(),
                 "started_at": run.started, "finished_at": now_iso(),
                 "exit_code": outcome.exit_code, "error": outcome.error}
        if outcome.interrupted and request is None:
            entry["counted"] = False
            job.history.append(entry)
            job.state, job.next_run_at = JobState.PENDING, None
            if record_until_it_fits(spool, claim, job, lambda: self.kill_jobs):
                log_.info("interrupted %s: back to pending", job.id)
            return
        delay = apply_outcome(job, entry, spool.config)
        if apply_kill(job, request):  # killed: no retry unless --retry
            delay = 0.0
        if not record_until_it_fits(spool, claim, job, lambda: self.kill_jobs):
            return  # another host recovered it meanwhile: record() said so, and this outcome is not the job's
        if job.state is JobState.FAILED:
            self.retry_due = min(self.retry_due, job.run_ts)
        elif job.state is JobState.DEAD:
            self.died = True
        if job.state is JobState.COMPLETED:
            log_.info("completed %s", job.id)
        elif job.state is JobState.FAILED:
            log_.info("failed %s (attempt %d/%d, %s), retry in %s", job.id, attempt, total, outcome.error,
                      fmt_secs(delay))
        else:
            log_.info("failed %s (attempt %d/%d, %s)", job.id, attempt, total, outcome.error)
            log_.info("%s moved to dead letter queue", job.id)
            resolve_dependencies(spool)  # its dependents are cancelled now, not a scan later
        if time.monotonic() - self.flushed >= INDEX_FLUSH_INTERVAL:
            spool.flush_index()
            self.flushed = time.monotonic()


def scan_spool(w: Worker, now: float) -> SyncReport:
    """One scan into the index: the work directories, and every directory each SHARED_FULL_SCAN
    seconds on a shared spool. Dependents of a job that ended dead or cancelled are cancelled
    here, at most one scan after it ended (whichever worker ran it)."""
    full = now - w.last_full >= SHARED_FULL_SCAN
    if full:
        w.last_full = now
    report = w.spool.sync(dirs=w.scan_dirs if full else WORK_DIRS)
    resolve_dependencies(w.spool)
    w.candidates, w.taken = [], set()  # new arrivals may outrank what was fetched
    w.last_scan, w.scan_owed = now, False
    return report


def scan_while_running(w: Worker) -> None:
    """The timed scan a busy worker of a shared spool owes, done once its command runs, not between
    two jobs, where it was a worker's longest wait (it reads every job other hosts moved since the
    last one). A failure is left to the next scan between jobs: never an error while a claim is held."""
    if not w.scan_owed:
        return
    try:
        scan_spool(w, time.monotonic())
    except (OSError, SpoolError, sqlite3.Error):
        w.last_scan, w.scan_owed = 0.0, False


def last_sync(spool: Spool, root_ident: tuple[int, int] | None) -> None:
    """A stopping worker's full sync (scans skip done/), unless the spool moved away: nothing is made there."""
    try:
        check_here(spool.root, root_ident)
        spool.sync()
    except (SpoolError, sqlite3.Error, OSError):
        pass  # a cache: the next command's own sync repairs it


def watch(spool: Spool, poll: bool, wake_dirs: list[str]):
    """The worker's watcher, started. A fallback to polling (inotify's limits used up) is said once."""
    from .watcher import Watcher
    # inotify sees nothing another host writes: on a shared spool the worker's own scans poll
    # (a snapshot of pending/ with a stat a file, in every worker, cost the server most of its time).
    if spool.multihost:
        w = Watcher([], poll=True)
        w.start()
        return w
    w = Watcher([spool.path("pending"), spool.path("failed")], poll=poll, wake_dirs=wake_dirs, ignore=is_ignored)
    w.start()
    if w.degraded:
        log_.warning("%s: polling the spool every %gs instead", w.degraded, w.poll_interval)
    return w

def idle_rescan(spool: Spool) -> float:
    """An idle worker's scan interval; on a shared spool its polling (config poll_interval)."""
    return spool.config.poll_interval if spool.multihost else RESCAN_INTERVAL


def idle_timeout(w: Worker) -> float:
    """How long an idle worker may wait before its next look."""
    if PAUSE_ALL in w.pauses:
        return RESCAN_INTERVAL
    if w.slot_wait:
        w.slot_wait = False
        w.candidates = []
        return SLOT_RETRY
    due = w.spool.index.next_due(w.queues, w.pauses)
    timeout = idle_rescan(w.spool)
    if due is not None:
        timeout = max(0.0, min(timeout, due - time.time()))
    return timeout


def _wait_out(w: Worker, e: BaseException, said: bool) -> bool:
    """A spool out of reach for a moment (ESTALE, a server not answering): say so once, wait, look again."""
    if not said:
        log_.warning("the spool %s is out of reach for now (%s); looking again every 1s", w.spool.root, e)
    w.candidates = []
    w.watcher.wait(UNREACHABLE_RETRY)
    return True


def record_until_it_fits(spool: Spool, claim: Claim, job: Job, give_up: Callable[[], bool]) -> bool:
    """Record the outcome; on a full disk (or a spool out of reach) keep the claim and retry until it fits.

    Giving up would leave the job in processing/ with a live lock; the
    retry loop keeps it owned, and if this process dies instead, recovery
    counts the attempt. Nothing is lost either way. False: the claim was
    taken over meanwhile and the outcome dropped (record said so).
    """
    warned = False
    while True:
        try:
            return spool.record(claim, job)
        except SpoolError as e:
            if not warned:
                log_.warning("cannot record %s: %s; retrying", job.id, e)
                warned = True
            if give_up():
                raise
            time.sleep(RECORD_RETRY)
