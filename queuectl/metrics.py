"""What the queue looks like, as numbers: a snapshot of the spool and its Prometheus form.

Everything comes from the index (kept in step with the directories by
Spool.sync()), the heartbeats in workers/ and one listing of rejected/, so a
snapshot of a 200,000-job spool takes milliseconds. prometheus_client is
imported only when the Prometheus text is made: `status` and the dashboard's
JSON views use snapshot() without it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from . import lazylog
from .errors import SpoolError
from .fsio import atomic_write, not_regular
from .index import BLOCKED
from .job import DEFAULT_QUEUE, JobState
from .queues import PAUSE_ALL, is_paused
from .registry import node_name, read_workers
from .spool import Spool

log = lazylog.get("queuectl.metrics")

# Upper bounds in seconds: from `true` (a few ms) to hour-long batch jobs.
RUN_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600]
# From a worker that was idle (ms) to a backlog of a day.
WAIT_BUCKETS = [0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400]
TEXTFILE_NAME = "queuectl.prom"


@dataclass
class Histogram:
    bounds: list[float]
    counts: list[int]  # per bucket, not cumulative; one more than bounds (the overflow)
    count: int
    sum: float

    def cumulative(self) -> list[tuple[str, int]]:
        out, acc = [], 0
        for bound, c in zip([*self.bounds, float("inf")], self.counts):
            acc += c
            out.append(("+Inf" if bound == float("inf") else _num(bound), acc))
        return out


@dataclass
class Snapshot:
    spool: str
    at: float
    counts: dict[str, int]
    attempts: int   # never lower than an earlier snapshot's (counters.py)
    retries: int
    run: Histogram
    wait: Histogram
    queues: dict[str, dict[str, int]] = field(default_factory=dict)   # queue -> state -> jobs
    totals: dict[str, dict[str, int]] = field(default_factory=dict)   # queue -> counters.SERIES
    waiting: dict[str, dict] = field(default_factory=dict)  # queue -> oldest_due, oldest_id, scheduled, blocked
    paused: set[str] = field(default_factory=set)
    limits: dict[str, int] = field(default_factory=dict)
    workers: list = field(default_factory=list)  # live heartbeats (WorkerInfo) of role "worker"
    rejected: int = 0

    def oldest_due_age(self, queue: str) -> float:
        """Seconds the longest-waiting due, unblocked job of the queue has been claimable (0: none)."""
        due = self.waiting.get(queue, {}).get("oldest_due")
        return 0.0 if due is None else max(0.0, self.at - due)

    def nodes(self) -> dict[str, tuple[int, int]]:
        """node -> (live workers, busy workers)."""
        out: dict[str, tuple[int, int]] = {}
        for w in self.workers:
            node = str(w.get("node") or w.get("host"))
            live, busy = out.get(node, (0, 0))
            out[node] = (live + 1, busy + (1 if w.get("job") else 0))
        return out


def _num(value: float) -> str:
    return repr(float(value))


def live_workers(spool: Spool) -> list:
    """Live workers (not supervisors), from their heartbeats."""
    return [w for w in read_workers(spool) if w.alive and w.role == "worker"]


def count_rejected(spool: Spool) -> int:
    """Files quarantined in rejected/ (each has a NAME.reason beside it, not counted)."""
    try:
        with os.scandir(spool.path("rejected")) as it:
            return sum(1 for e in it if not e.name.endswith(".reason"))
    except FileNotFoundError:
        return 0


def waiting(spool: Spool, now: float) -> dict[str, dict]:
    """queue -> {oldest_due, oldest_id, scheduled, blocked} of waiting jobs.

    oldest_due: the earliest moment a job of the queue became claimable
    (pending or failed, due, no unmet dependency), max(created, run_at), so a
    job delayed by a day does not look stuck the moment it is due, and one not
    due yet not at all. scheduled: pending jobs due later (and not blocked);
    blocked: pending or failed jobs with an unmet dependency.
    """
    out: dict[str, dict] = {}
    # `id` is a bare column beside min(): SQLite takes it from the row that has the minimum.
    for queue, oldest, job_id, scheduled, blocked in spool.index.db.execute(
            f"SELECT queue, min(CASE WHEN run_at <= :now AND NOT b THEN max(created, run_at) END), id, "
            f"sum(state = 'pending' AND run_at > :now AND NOT b), sum(b) FROM "
            f"(SELECT id, queue, created, run_at, state, {BLOCKED} AS b FROM jobs "
            f"WHERE state IN ('pending', 'failed')) GROUP BY queue", {"now": now}):
        out[queue] = {"oldest_due": oldest, "oldest_id": job_id if oldest is not None else None,
                      "scheduled": scheduled or 0, "blocked": blocked or 0}
    return out


def snapshot(spool: Spool, *, now: float | None = None) -> Snapshot:
    """The numbers of the queue now. The caller syncs the spool first if it must be current."""
    from . import counters
    from .queues import paused
    idx = spool.index
    now = time.time() if now is None else now
    totals = counters.totals(spool)
    finished = (JobState.COMPLETED, JobState.DEAD)
    run = Histogram(RUN_BUCKETS, *idx.histogram("run_seconds", RUN_BUCKETS, finished))
    wait = Histogram(WAIT_BUCKETS, *idx.histogram("waited", WAIT_BUCKETS))
    states = [s.value for s in JobState]
    pauses = paused(spool)
    limits = dict(spool.config.concurrency)
    names = set(idx.queue_counts()) | set(totals) | set(limits) | (pauses - {PAUSE_ALL}) | {DEFAULT_QUEUE}
    per_queue = idx.queue_counts()
    queues = {q: {s: per_queue.get(q, {}).get(s, 0) for s in states} for q in sorted(names)}
    return Snapshot(spool=spool.root, at=now, counts=idx.counts(),
                    attempts=sum(t["attempts"] for t in totals.values()),
                    retries=sum(t["retries"] for t in totals.values()),
                    run=run, wait=wait, queues=queues, totals=totals, waiting=waiting(spool, now),
                    paused=pauses, limits=limits, workers=live_workers(spool), rejected=count_rejected(spool))


def throughput(spool: Spool, *, minutes: int = 60, now: float | None = None) -> dict:
    """Jobs completed and dead in each of the last `minutes` minutes, oldest minute first
    (`finished` is their sum)."""
    now = time.time() if now is None else now
    end = (int(now) // 60 + 1) * 60  # the current minute is the last bucket
    since = end - 60 * minutes
    per = spool.index.finished_per_minute(since, minutes)
    completed, dead = per["completed"], per["dead"]
    return {"since": since, "minute": 60, "completed": completed, "dead": dead,
            "finished": [a + b for a, b in zip(completed, dead)]}


class SpoolCollector:
    """A prometheus_client collector: one snapshot of the spool per scrape."""

    def __init__(self, spool: Spool):
        self.spool = spool

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        s = snapshot(self.spool)
        jobs = GaugeMetricFamily("queuectl_jobs", "Jobs in each state directory, per queue.",
                                 labels=["queue", "state"])
        for queue, per_state in s.queues.items():
            for state, n in per_state.items():
                jobs.add_metric([queue, state], n)
        yield jobs
        done = CounterMetricFamily("queuectl_jobs_finished", "Jobs that finished, by queue and outcome; "
                                   "kept across clean, retention, rm and requeue (never goes down).",
                                   labels=["queue", "outcome"])
        attempts = CounterMetricFamily("queuectl_attempts", "Attempts run, per queue (never goes down).",
                                       labels=["queue"])
        retries = CounterMetricFamily("queuectl_retries", "Attempts after a job's first one, per queue.",
                                      labels=["queue"])
        for queue in s.queues:
            t = s.totals.get(queue, {})
            done.add_metric([queue, "completed"], t.get("completed", 0))
            done.add_metric([queue, "dead"], t.get("dead", 0))
            attempts.add_metric([queue], t.get("attempts", 0))
            retries.add_metric([queue], t.get("retries", 0))
        yield done
        yield attempts
        yield retries
        yield HistogramMetricFamily("queuectl_job_run_seconds",
                                    "Run time of the last attempt of each finished job (done/, dead/).",
                                    buckets=s.run.cumulative(), sum_value=s.run.sum)
        yield HistogramMetricFamily("queuectl_job_queue_wait_seconds",
                                    "Time from enqueue to the first start, of each job that has started.",
                                    buckets=s.wait.cumulative(), sum_value=s.wait.sum)
        oldest = GaugeMetricFamily("queuectl_oldest_pending_age_seconds",
                                   "Seconds the longest-waiting job that could run now (due, no unmet "
                                   "dependency) has waited since it became due; 0 when there is none.",
                                   labels=["queue"])
        scheduled = GaugeMetricFamily("queuectl_jobs_scheduled", "Pending jobs not due yet (--delay, --at).",
                                      labels=["queue"])
        blocked = GaugeMetricFamily("queuectl_jobs_blocked", "Waiting jobs with an unmet dependency.",
                                    labels=["queue"])
        paused_ = GaugeMetricFamily("queuectl_queue_paused", "1 when the queue's claims are paused.",
                                    labels=["queue"])
        for queue in s.queues:
            w = s.waiting.get(queue, {})
            oldest.add_metric([queue], s.oldest_due_age(queue))
            scheduled.add_metric([queue], w.get("scheduled", 0))
            blocked.add_metric([queue], w.get("blocked", 0))
            paused_.add_metric([queue], 1 if is_paused(queue, s.paused) else 0)
        yield oldest
        yield scheduled
        yield blocked
        yield paused_
        if s.limits:
            limit = GaugeMetricFamily("queuectl_queue_limit", "Running jobs a queue may have at once "
                                      "(queues with a limit only).", labels=["queue"])
            for queue, n in sorted(s.limits.items()):
                limit.add_metric([queue], n)
            yield limit
        live = GaugeMetricFamily("queuectl_workers", "Live workers, per node.", labels=["node"])
        busy = GaugeMetricFamily("queuectl_workers_busy", "Live workers running a job, per node.",
                                 labels=["node"])
        nodes = s.nodes()
        # This node always has a sample, so "no workers" is a 0 an alert can
        # match rather than a series that vanished.
        nodes.setdefault(node_name(), (0, 0))
        for node, (n_live, n_busy) in sorted(nodes.items()):
            live.add_metric([node], n_live)
            busy.add_metric([node], n_busy)
        yield live
        yield busy
        yield GaugeMetricFamily("queuectl_rejected_files", "Drop-ins quarantined in rejected/.",
                                value=s.rejected)


def render(spool: Spool) -> bytes:
    """The Prometheus text exposition of the spool (a private registry: no process metrics)."""
    from prometheus_client import CollectorRegistry, generate_latest
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SpoolCollector(spool))
    return generate_latest(registry)


def write_textfile(spool: Spool, directory: str) -> str:
    """Write DIRECTORY/queuectl.prom for node_exporter's textfile collector.

    Written aside and renamed in: the collector reads whenever it is scraped
    and must never see half a file. The temporary name does not end in .prom,
    so the collector ignores it.
    """
    data = render(spool)
    dest = os.path.join(directory, TEXTFILE_NAME)
    # The scratch name (.*.tmp) does not end in .prom, so the collector ignores it;
    # 0644 because node_exporter usually runs as another user.
    kind = not_regular(dest, follow=False)
    if kind is not None:
        raise SpoolError(f"{dest} is {kind}, not a regular file: refusing to replace it")
    atomic_write(directory, dest, data, durable=True, mode=0o644, what=f"writing {dest}")
    log.debug("wrote %s", dest)
    return dest
