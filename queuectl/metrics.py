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
from .fsio import atomic_write
from .job import JobState
# Heartbeats: the only import of the worker registry in the observe code
# (it moves to queuectl.registry in the core refactor).
from .registry import hostname, read_workers
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
    attempts: int
    retries: int
    run: Histogram
    wait: Histogram
    oldest_pending: float | None  # epoch of the oldest pending job's creation
    workers: list[dict] = field(default_factory=list)  # live heartbeats of role "worker"
    rejected: int = 0

    @property
    def oldest_pending_age(self) -> float:
        return 0.0 if self.oldest_pending is None else max(0.0, self.at - self.oldest_pending)

    def nodes(self) -> dict[str, tuple[int, int]]:
        """host -> (live workers, busy workers)."""
        out: dict[str, tuple[int, int]] = {}
        for w in self.workers:
            live, busy = out.get(str(w.get("host")), (0, 0))
            out[str(w.get("host"))] = (live + 1, busy + (1 if w.get("job") else 0))
        return out


def _num(value: float) -> str:
    return repr(float(value))


def live_workers(spool: Spool) -> list[dict]:
    """Live workers (not supervisors), from their heartbeats."""
    return [w for w in read_workers(spool) if w.alive and w.role == "worker"]


def count_rejected(spool: Spool) -> int:
    """Files quarantined in rejected/ (each has a NAME.reason beside it, not counted)."""
    try:
        with os.scandir(spool.path("rejected")) as it:
            return sum(1 for e in it if not e.name.endswith(".reason"))
    except FileNotFoundError:
        return 0


def snapshot(spool: Spool, *, now: float | None = None) -> Snapshot:
    """The numbers of the queue now. The caller syncs the spool first if it must be current."""
    idx = spool.index
    now = time.time() if now is None else now
    attempts, retries = idx.attempt_totals()
    finished = (JobState.COMPLETED, JobState.DEAD)
    run = Histogram(RUN_BUCKETS, *idx.histogram("run_seconds", RUN_BUCKETS, finished))
    wait = Histogram(WAIT_BUCKETS, *idx.histogram("waited", WAIT_BUCKETS))
    return Snapshot(spool=spool.root, at=now, counts=idx.counts(), attempts=attempts, retries=retries,
                    run=run, wait=wait, oldest_pending=idx.oldest_created(JobState.PENDING),
                    workers=live_workers(spool), rejected=count_rejected(spool))


def throughput(spool: Spool, *, minutes: int = 60, now: float | None = None) -> dict:
    """Jobs finished (done or dead) in each of the last `minutes` minutes, oldest minute first."""
    now = time.time() if now is None else now
    end = (int(now) // 60 + 1) * 60  # the current minute is the last bucket
    since = end - 60 * minutes
    return {"since": since, "minute": 60, "finished": spool.index.finished_per_minute(since, minutes)}


class SpoolCollector:
    """A prometheus_client collector: one snapshot of the spool per scrape."""

    def __init__(self, spool: Spool):
        self.spool = spool

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        s = snapshot(self.spool)
        jobs = GaugeMetricFamily("queuectl_jobs", "Jobs in each state directory.", labels=["state"])
        for state, n in s.counts.items():
            jobs.add_metric([state], n)
        yield jobs
        done = CounterMetricFamily("queuectl_jobs_finished", "Jobs that finished, by outcome "
                                   "(jobs now in done/ and dead/; purge and dlq retry lower it).",
                                   labels=["outcome"])
        done.add_metric(["completed"], s.counts["completed"])
        done.add_metric(["dead"], s.counts["dead"])
        yield done
        yield CounterMetricFamily("queuectl_attempts", "Attempts run, from the job histories.",
                                  value=s.attempts)
        yield CounterMetricFamily("queuectl_retries", "Attempts after a job's first one.", value=s.retries)
        yield HistogramMetricFamily("queuectl_job_run_seconds",
                                    "Run time of the last attempt of each finished job (done/, dead/).",
                                    buckets=s.run.cumulative(), sum_value=s.run.sum)
        yield HistogramMetricFamily("queuectl_job_queue_wait_seconds",
                                    "Time from enqueue to the first start, of each job that has started.",
                                    buckets=s.wait.cumulative(), sum_value=s.wait.sum)
        yield GaugeMetricFamily("queuectl_oldest_pending_age_seconds",
                                "Age of the oldest job in pending/ (0 when there is none).",
                                value=s.oldest_pending_age)
        live = GaugeMetricFamily("queuectl_workers", "Live workers, per node.", labels=["host"])
        busy = GaugeMetricFamily("queuectl_workers_busy", "Live workers running a job, per node.",
                                 labels=["host"])
        nodes = s.nodes()
        # This node always has a sample, so "no workers" is a 0 an alert can
        # match rather than a series that vanished.
        nodes.setdefault(hostname(), (0, 0))
        for host, (n_live, n_busy) in sorted(nodes.items()):
            live.add_metric([host], n_live)
            busy.add_metric([host], n_busy)
        yield live
        yield busy
        yield GaugeMetricFamily("queuectl_dead_letter_jobs", "Jobs in the dead letter queue (dead/).",
                                value=s.counts["dead"])
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
    atomic_write(directory, dest, data, durable=True, mode=0o644)
    log.debug("wrote %s", dest)
    return dest
