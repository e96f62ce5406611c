"""Commands for running queuectl as a service: pause, resume, clean, systemd-unit.

Loaded only when one of them runs (cli.main.lazy).
"""

from __future__ import annotations

import click

from .base import MAX_COUNT, Context, Seconds, pass_ctx


@click.command()
@click.option("-Q", "--queue", help="Pause only this queue (default: every queue).")
@pass_ctx
def pause(obj: Context, queue):
    """Stop workers claiming jobs (of one queue); running jobs finish.

    The pause is a file, SPOOL/paused/NAME (or SPOOL/paused/ALL): it holds
    for every worker on the spool and survives restarts.

    \b
    Examples:
      queuectl pause --queue gpu
      queuectl pause
    """
    from ..queues import pause as pause_
    what = f"queue {queue}" if queue else "all queues"
    if pause_(obj.spool, queue):
        click.echo(f"paused {what}")
    else:
        click.echo(f"{what} already paused")


@click.command()
@click.option("-Q", "--queue", help="Resume only this queue (default: remove every pause).")
@pass_ctx
def resume(obj: Context, queue):
    """Let workers claim jobs again (of one queue, or of all).

    \b
    Examples:
      queuectl resume --queue gpu
      queuectl resume
    """
    from ..queues import PAUSE_ALL, paused, resume as resume_
    names = resume_(obj.spool, queue)
    for name in names:
        click.echo("resumed all queues" if name == PAUSE_ALL else f"resumed queue {name}")
    if not names:
        click.echo(f"queue {queue} was not paused" if queue else "nothing was paused")
    if queue and PAUSE_ALL in paused(obj.spool):
        click.echo("queuectl: every queue is still paused (`queuectl resume` lifts that)", err=True)


@click.command()
@click.option("-s", "--state", "states", multiple=True, metavar="STATE",
              help="completed (or done), dead, cancelled; repeatable (default: every finished state).")
@click.option("--older-than", metavar="AGE", help="Only jobs finished longer ago than AGE (90s, 15m, 12h, 7d, 2w).")
@click.option("--keep", type=click.IntRange(0, MAX_COUNT), metavar="N", help="Keep the newest N jobs of each state.")
@click.option("--all", "all_", is_flag=True, help="No filter: delete every finished job of the states.")
@click.option("--dry-run", is_flag=True, help="Print what would be removed, remove nothing.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the number of jobs removed.")
@pass_ctx
def clean(obj: Context, states, older_than, keep, all_, dry_run, quiet):
    """Delete finished jobs and their logs, oldest first; one line per job.

    With --older-than and --keep both, a job goes if it breaks either. A
    completed job that another job's --after still needs (a dependent that
    waits, runs, or is dead and may be retried) is kept, with a line saying so.
    Workers do this in the background by the keep_done / keep_dead settings.

    \b
    Examples:
      queuectl clean --older-than 7d
      queuectl clean --state dead --keep 100 --dry-run
      queuectl clean --state completed --all
    """
    from ..config import Retention, parse_age
    from ..retention import FINAL_STATES, clean as clean_, final_state
    if older_than is None and keep is None and not all_:
        raise click.UsageError("give --older-than, --keep, or --all to delete every finished job")
    if all_ and (older_than is not None or keep is not None):
        raise click.UsageError("--all deletes everything: give it without --older-than and --keep")
    age = None if older_than is None else parse_age(older_than)
    rule = Retention(age, 0 if all_ else keep)
    chosen = list(dict.fromkeys(final_state(s) for s in states)) or FINAL_STATES
    spool = obj.synced()
    n = 0
    kept: list[tuple[str, str]] = []
    for job_id, state in clean_(spool, chosen, rule, dry_run=dry_run, kept=kept):
        n += 1
        if not quiet:
            click.echo(f"{'would remove' if dry_run else 'removed'} job {job_id} ({state.value})")
    for job_id, dependent in [] if quiet else kept:
        click.echo(f"{'would keep' if dry_run else 'kept'} job {job_id} (completed): job {dependent} depends on it")
    if quiet or n == 0:
        verb = "would remove" if dry_run else "removed"
        click.echo(f"{verb} {n} job{'' if n == 1 else 's'}")


@click.command("systemd-unit")
@click.option("--user/--system", "user", default=True, show_default=True,
              help="A unit for `systemctl --user`, or a system-wide one (runs as you).")
@click.option("-c", "--count", type=click.IntRange(1, 256), default=2, show_default=True, help="Worker processes.")
@click.option("--stop-timeout", type=Seconds(), default=60, show_default=True,
              help="Seconds running jobs get to finish on stop; TimeoutStopSec follows it.")
@pass_ctx
def systemd_unit(obj: Context, user, count, stop_timeout):
    """Print a systemd unit that runs this spool's workers.

    \b
    Examples:
      queuectl systemd-unit > ~/.config/systemd/user/queuectl-worker.service
      systemctl --user daemon-reload && systemctl --user enable --now queuectl-worker
    """
    import getpass
    import sys
    from ..sdunit import unit_text
    spool = obj.spool
    # A node's own index (many hosts) must be the service's too.
    argv = [sys.executable, "-m", "queuectl", *(["--index", obj.index] if obj.index else [])]
    click.echo(unit_text(argv, spool.root, count=count, stop_timeout=stop_timeout,
                         kill_grace=spool.config.kill_grace, user=user, run_as=None if user else getpass.getuser()),
               nl=False)
