"""Commands that run and stop workers, read logs, and work the dead letter queue."""

from __future__ import annotations

import os
import sys

import click

from .base import (Context, Lines, Seconds, complete_dead_ids, complete_job_ids, dump, json_option, one_line,
                   pass_ctx)

# -- workers -------------------------------------------------------------------


@click.group()
def worker():
    """Run, stop and list workers.

    \b
    Example:
      queuectl worker start --count 4
    """


@worker.command("start")
@click.option("-c", "--count", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Worker processes.")
@click.option("--burst", is_flag=True,
              help="Exit when nothing is due (jobs scheduled for later are left, and counted): "
                   "status 0 if every job run completed, 1 if one ended in dead/.")
@click.option("--detach", is_flag=True, help="Run in the background, logging to SPOOL/logs/_supervisor.log (appended).")
@click.option("--poll", is_flag=True, help="Poll the spool instead of inotify (network filesystems).")
@click.option("--stop-timeout", type=Seconds(), default=None,
              help="On stop, kill jobs still running after this many seconds.")
@click.option("--allow-shared-spool", is_flag=True,
              help="Run even if the spool is writable by group or others.")
@click.option("--node", metavar="NAME", envvar="QUEUECTL_NODE",
              help="This machine's node name [env QUEUECTL_NODE; default hostname-<machine-id prefix>].")
@click.option("--shared", is_flag=True,
              help="The spool is shared by several hosts (required on a network filesystem).")
@click.option("-Q", "--queue", "queues", multiple=True, metavar="NAME",
              help="Only claim jobs of this queue (repeatable; default: every queue).")
@pass_ctx
def worker_start(obj: Context, count, burst, detach, poll, stop_timeout, allow_shared_spool, node, shared, queues):
    """Start a supervisor with COUNT worker processes in the foreground.

    Ctrl-C or SIGTERM stops gracefully: no new claims, running jobs finish.
    A second Ctrl-C (or --stop-timeout) kills them; they go back to pending.

    \b
    Examples:
      queuectl worker start --count 2
      queuectl worker start --count 1 --burst     # run what is due, then exit (1: a job died)
      queuectl worker start --count 4 --detach
      queuectl worker start --queue gpu --queue default
    """
    from ..job import check_queue
    queues = tuple(dict.fromkeys(check_queue(q) for q in queues)) or None
    from ..supervisor import Supervisor, check_spool_permissions, hold_stop_signals
    from ..supervisor import detach as detach_
    if not detach:
        hold_stop_signals()  # a stop from here on waits for the supervisor's handler
    spool = obj.spool
    if detach:
        from ..supervisor import check_writable
        check_writable(spool)  # here, not in the background where only the log would say so
        if not allow_shared_spool:
            check_spool_permissions(spool)
        argv = ["--spool", spool.root, *(["--index", obj.index] if obj.index else []),
                "worker", "start", "--count", str(count)]
        argv += ["--burst"] * burst + ["--poll"] * poll + ["--allow-shared-spool"] * allow_shared_spool
        argv += ["--node", node] * bool(node) + ["--shared"] * shared
        if stop_timeout is not None:
            argv += ["--stop-timeout", str(stop_timeout)]
        for q in queues or ():
            argv += ["--queue", q]
        pid, log = detach_(spool, argv)
        click.echo(f"started supervisor PID={pid}, log {log}")
        return
    sup = Supervisor(spool.root, count, burst=burst, poll=poll, stop_timeout=stop_timeout,
                     allow_shared=allow_shared_spool, node=node, shared=shared, index=obj.index, queues=queues)
    Lines.install(workers=True)
    raise SystemExit(sup.run())


@worker.command("stop")
@click.option("--timeout", type=Seconds(), default=60, show_default=True,
              help="Seconds to let running jobs finish before they are killed.")
@pass_ctx
def worker_stop(obj: Context, timeout):
    """Stop every supervisor of this spool on this host, gracefully, and wait.

    \b
    Example:
      queuectl worker stop --timeout 30
    """
    from ..supervisor import stop_supervisors
    pids = stop_supervisors(obj.spool, timeout)
    if not pids:
        click.echo("no running supervisor")
    for pid in pids:
        click.echo(f"stopped supervisor PID={pid}")


@worker.command("scale")
@click.argument("count", type=click.IntRange(1, 256), metavar="N")
@pass_ctx
def worker_scale(obj: Context, count):
    """Grow or shrink the running supervisors of this spool on this node to N workers each.

    Takes effect within a second, without a restart. Workers taken away stop
    as on `worker stop`: they claim nothing more and finish their running job.

    \b
    Examples:
      queuectl worker scale 8
      queuectl worker scale 1
    """
    from ..scaling import scale_supervisors
    for pid, before in scale_supervisors(obj.spool, count):
        click.echo(f"supervisor PID={pid}: {before} -> {count} worker{'' if count == 1 else 's'}")


@worker.command("list")
@json_option("Print workers as a JSON array.")
@pass_ctx
def worker_list(obj: Context, as_json):
    """Show every node's workers: id, host, pid, since, current job, last heartbeat,
    node and the heartbeat's age; a worker judged dead is marked STALE.

    \b
    Example:
      queuectl worker list
    """
    from ..registry import read_workers
    # Other nodes' lapsed workers are shown (marked STALE) until pruned; a dead
    # process of this node is simply gone (its pid may since be another's).
    workers = [w for w in read_workers(obj.spool) if w.alive or not w.local]
    if as_json:
        dump([{**{k: w.get(k) for k in ("id", "role", "host", "pid", "since", "job", "heartbeat_at")},
               "node": w.node, "age": None if w.age is None else round(w.age, 3), "alive": w.alive}
              for w in workers])
        return
    if not workers:
        click.echo("(none: no worker is running; start one with `queuectl worker start --detach`)", err=True)
    for w in workers:
        age = "-" if w.age is None else f"{w.age:.1f}s"
        click.echo(f"{w.get('id')} host={w.get('host')} pid={w.get('pid')} since={w.get('since')} "
                   f"job={w.get('job') or '-'} heartbeat={w.get('heartbeat_at')} node={w.node} age={age}"
                   + ("" if w.alive else " STALE"))


# -- logs ------------------------------------------------------------------------


@click.command()
@click.argument("job_id", metavar="ID", shell_complete=complete_job_ids)
@click.option("-f", "--follow", is_flag=True, help="Keep printing output until the job is done or dead.")
@pass_ctx
def logs(obj: Context, job_id, follow):
    """Print a job's output: every attempt, each with a header line.

    \b
    Example:
      queuectl logs job1 --follow
    """
    import time as _time
    from ..job import FINAL
    spool = obj.spool
    path = spool.log_of(job_id)
    out = sys.stdout.buffer  # bytes: logs hold whatever the command wrote
    offset = 0
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                while chunk := f.read(1 << 16):
                    out.write(chunk)
                    offset += len(chunk)
                out.flush()
        except FileNotFoundError:
            pass
        if not follow:
            break
        state, _ = spool.find(job_id)
        if state in FINAL and (not os.path.exists(path) or os.path.getsize(path) <= offset):
            break
        _time.sleep(0.2)
    if offset == 0:
        # A silent success leaves no log at all: say so, on stderr, where a pipe reading the log does not see it.
        click.echo("(no output)", err=True)


# -- the dead letter queue ---------------------------------------------------------


@click.group()
def dlq():
    """The dead letter queue: jobs that used up their retries.

    \b
    Example:
      queuectl dlq list
      queuectl dlq retry job1
    """


@dlq.command("list")
@json_option("Print full job records as a JSON array.")
@pass_ctx
def dlq_list(obj: Context, as_json):
    """List dead jobs with their attempts and last error.

    \b
    Example:
      queuectl dlq list --json
    """
    jobs = obj.spool.dead_jobs()
    if as_json:
        dump(jobs)
        return
    if not jobs:
        click.echo("(none)", err=True)
    for j in jobs:
        click.echo(f"{j['id']} - attempts {j['attempts']} - {one_line(j.get('last_error') or '')} "
                   f"- {one_line(j['command'])}")


def _dlq_targets(obj: Context, job_ids, all_) -> list[str]:
    if bool(job_ids) == bool(all_):
        raise click.UsageError("give job IDs or --all")
    if all_:
        return [j["id"] for j in obj.spool.dead_jobs()]
    obj.spool.ensure_dead(list(job_ids))
    return list(job_ids)


@dlq.command("retry")
@click.argument("job_ids", nargs=-1, metavar="ID...", shell_complete=complete_dead_ids)
@click.option("--all", "all_", is_flag=True, help="Retry every dead job.")
@pass_ctx
def dlq_retry(obj: Context, job_ids, all_):
    """Move dead jobs back to pending with attempts reset (history kept).

    \b
    Examples:
      queuectl dlq retry job1 job2
      queuectl dlq retry --all
    """
    for job_id in _dlq_targets(obj, job_ids, all_):
        # With --all, a job another `dlq retry` or `purge` took meanwhile is skipped, not an error.
        job = obj.spool.requeue(job_id, missing_ok=all_)
        if job is None:
            click.echo(f"skipped job {job_id}: no longer in the dead letter queue", err=True)
            continue
        click.echo(f"requeued job {job.id}")


@dlq.command("purge")
@click.argument("job_ids", nargs=-1, metavar="ID...", shell_complete=complete_dead_ids)
@click.option("--all", "all_", is_flag=True, help="Delete every dead job.")
@click.option("--yes", is_flag=True, help="Confirm --all.")
@pass_ctx
def dlq_purge(obj: Context, job_ids, all_, yes):
    """Delete dead jobs and their logs for good.

    \b
    Examples:
      queuectl dlq purge job1
      queuectl dlq purge --all --yes
    """
    if all_ and not yes:
        raise click.UsageError("--all deletes every dead job: add --yes to confirm")
    for job_id in _dlq_targets(obj, job_ids, all_):
        if not obj.spool.purge(job_id, missing_ok=all_):
            click.echo(f"skipped job {job_id}: no longer in the dead letter queue", err=True)
            continue
        click.echo(f"purged job {job_id}")

