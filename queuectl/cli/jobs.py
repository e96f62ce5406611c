"""Commands that control jobs: wait, cancel, kill, hold, release, priority, requeue, rm.

Loaded only when one of them runs. The moves and rules live in controls.py.
"""

from __future__ import annotations

import signal
import sys

import click

from .base import PRIORITY, Context, Seconds, complete_job_ids, dump, pass_ctx

EXIT_FAILED = 1    # wait: a job ended dead or cancelled
EXIT_TIMEOUT = 2   # wait: --timeout passed first
DONE = {"cancel": "cancelled", "hold": "held", "release": "released"}


def _targets(obj: Context, job_ids, label, action: str) -> list[str]:
    """The ids to act on; all checked before any changes (bad input changes nothing)."""
    from ..controls import SOURCES, check_targets
    if not job_ids and label is None:
        raise click.UsageError("give job IDs or --label")
    spool = obj.synced()
    ids = check_targets(spool, list(job_ids), action)
    if label is not None:
        sources = SOURCES[action]
        with_label = spool.index.ids_labelled(label)
        labelled = [r.id for r in spool.index.rows() if r.id in with_label]
        if not labelled:
            raise click.ClickException(f"no job has label {label}")
        ids += [r for r in labelled if r not in ids and spool.index.lookup(r).state in sources]
    return ids


def _apply(obj: Context, ids: list[str], action: str) -> None:
    """Move each job; a job a worker took meanwhile is reported, and the exit status is 1."""
    from ..controls import move
    from ..errors import QueueError
    lost = 0
    for job_id in ids:
        try:
            move(obj.spool, job_id, action)
        except QueueError as e:
            click.echo(f"Error: {e}", err=True)
            lost += 1
            continue
        click.echo(f"{DONE[action]} job {job_id}")
    if action == "cancel":
        from ..controls import resolve_dependencies
        for line in resolve_dependencies(obj.spool):
            click.echo(line)
    if lost:
        raise SystemExit(1)


@click.command()
@click.argument("job_ids", nargs=-1, metavar="ID...")
@click.option("-l", "--label", help="Every waiting job with this label.")
@pass_ctx
def cancel(obj: Context, job_ids, label):
    """Cancel pending, failed (waiting for a retry) or held jobs: they never run.

    A cancelled job moves to cancelled/ and is final. Jobs waiting for it with
    --after are cancelled too. A running job is stopped with `queuectl kill`.

    \b
    Examples:
      queuectl cancel job1 job2
      queuectl cancel --label nightly
    """
    _apply(obj, _targets(obj, job_ids, label, "cancel"), "cancel")


def _mover(verb: str, help: str) -> click.Command:
    """hold and release: the same command but for the move it asks for."""
    @click.command(verb, help=help)
    @click.argument("job_ids", nargs=-1, required=True, metavar="ID...")
    @pass_ctx
    def command(obj: Context, job_ids):
        _apply(obj, _targets(obj, job_ids, None, verb), verb)
    return command


hold = _mover("hold", """Put pending or failed jobs on hold (held/): no worker claims them until released.

    \b
    Example:
      queuectl hold job1 && queuectl release job1
    """)
release = _mover("release", """Move held jobs back to pending/, where workers claim them.

    \b
    Example:
      queuectl release job1
    """)


@click.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...", shell_complete=complete_job_ids)
@pass_ctx
def requeue(obj: Context, job_ids):
    """Run finished jobs (completed, dead or cancelled) again: back to pending/, attempts 0.

    Their history is kept, with a line saying they were requeued. Every id is
    checked first: one that is waiting or running changes nothing.

    \b
    Examples:
      queuectl requeue build
      queuectl requeue $(queuectl list --state dead --json | jq -r '.[].id')
    """
    from ..controls import requeue as requeue_
    for job in requeue_(obj.synced(), list(job_ids)):
        click.echo(f"requeued job {job.id}")


@click.command("rm")
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...", shell_complete=complete_job_ids)
@pass_ctx
def rm(obj: Context, job_ids):
    """Delete finished jobs (completed, dead or cancelled) and their logs; their ids are free again.

    Every id is checked first: one that is waiting or running changes nothing
    (cancel or kill it first).

    \b
    Examples:
      queuectl rm build
      queuectl rm job1 job2
    """
    from ..controls import remove
    for job_id in remove(obj.synced(), list(job_ids)):
        click.echo(f"removed job {job_id}")


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("job_id", metavar="ID")
@click.argument("priority", type=PRIORITY, metavar="N")
@pass_ctx
def priority(obj: Context, job_id, priority):
    """Give a waiting job a new priority (higher runs first); the next claim sees it.

    \b
    Examples:
      queuectl priority job1 10
      queuectl priority job2 -5
    """
    from ..controls import set_priority
    job = set_priority(obj.synced(), job_id, priority)
    click.echo(f"job {job.id} priority {job.priority}")


@click.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...")
@click.option("--signal", "sig", default="TERM", show_default=True,
              help="Signal to send to the job's process group (TERM, INT, KILL, HUP, ... or a number).")
@click.option("--retry", is_flag=True, help="Count the attempt as an ordinary failure: retried if retries remain.")
@pass_ctx
def kill(obj: Context, job_ids, sig, retry):
    """Signal running jobs (their whole process group) on this host.

    The attempt ends as "killed by user" and the job goes to dead/ (`dlq
    retry` runs it again), or with --retry follows the normal retry rule.

    \b
    Examples:
      queuectl kill job1
      queuectl kill --signal KILL --retry job1
    """
    from ..controls import check_targets, kill as kill_
    signum = _signal(sig)
    spool = obj.synced()
    check_targets(spool, list(job_ids), "kill")  # all checked first: a typo kills nothing
    for job_id in job_ids:
        real, groups = kill_(spool, job_id, signum, retry=retry)
        click.echo(f"sent {signal.Signals(signum).name} to job {real} (process group "
                   f"{', '.join(map(str, sorted(groups)))})")


def _signal(name: str) -> int:
    text = name.strip().upper()
    if text.isdigit():
        num = int(text)
    else:
        try:
            num = signal.Signals[text if text.startswith("SIG") else "SIG" + text].value
        except KeyError:
            raise click.BadParameter(f"unknown signal {name!r}", param_hint="--signal") from None
    if num not in signal.Signals._value2member_map_:
        raise click.BadParameter(f"unknown signal {name!r}", param_hint="--signal")
    return num


@click.command()
@click.argument("job_ids", nargs=-1, metavar="[ID...]")
@click.option("-l", "--label", help="Every job with this label.")
@click.option("--all", "all_", is_flag=True, help="Every job not final yet.")
@click.option("-t", "--timeout", type=Seconds(), help="Give up after SECONDS (exit 2).")
@click.option("--poll", is_flag=True, help="Poll instead of inotify (network filesystems).")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs' final records as a JSON array.")
@pass_ctx
def wait(obj: Context, job_ids, label, all_, timeout, poll, as_json):
    """Wait until jobs are final (completed, dead or cancelled).

    Exit status: 0 when all completed, 1 when one ended dead or cancelled, 2
    on --timeout, 130 on Ctrl-C. On a terminal a progress bar shows done/total, failures,
    elapsed time and ETA; otherwise one summary line is printed at the end.
    Needs no running worker: it only watches the spool (on a full disk too:
    it says so once and reads the job files until there is room).

    \b
    Examples:
      queuectl wait job1 job2
      queuectl wait --label batch1 --timeout 600
      queuectl worker start --detach; queuectl wait --all
    """
    from ..controls import wait_for, wait_records, wait_targets
    if not job_ids and label is None and not all_:
        raise click.UsageError("give job IDs, --label or --all")
    spool = obj.spool
    seen = wait_targets(spool, list(job_ids), label, all_)
    ids = list(seen)
    bar = None
    if ids and sys.stderr.isatty() and not as_json:
        bar = click.progressbar(length=len(ids), label="waiting", file=sys.stderr, show_eta=True,
                                show_pos=True, item_show_func=lambda text: text)
        bar.__enter__()
    shown = [0]

    def progress(r) -> None:
        if bar is not None:
            bar.update(r.final - shown[0], f"failed {r.failed}, elapsed {r.elapsed:.0f}s")
            shown[0] = r.final

    try:
        result = wait_for(spool, ids, timeout=timeout, progress=progress, poll=poll, seen=seen) if ids else None
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    if result is None:
        click.echo("nothing to wait for")
        return
    if as_json:
        dump(wait_records(spool, result))
    else:
        click.echo(_summary(result, ids))
    if result.timed_out:
        raise SystemExit(EXIT_TIMEOUT)
    if result.failed:
        raise SystemExit(EXIT_FAILED)


def _summary(r, ids: list[str]) -> str:
    counts = ", ".join(f"{r.count(s)} {s}" for s in ("completed", "dead", "cancelled"))
    n = len(ids)
    if r.timed_out:
        left = [i for i in ids if r.states[i] not in ("completed", "dead", "cancelled", "missing")]
        more = f" ({', '.join(left[:5])}{', ...' if len(left) > 5 else ''})"
        return (f"timed out after {r.elapsed:.1f}s: {r.final} of {n} jobs final ({counts}); "
                f"{len(left)} not final{more}")
    missing = f", {r.count('missing')} missing" if r.count("missing") else ""
    return f"{n} job{'' if n == 1 else 's'} final after {r.elapsed:.1f}s: {counts}{missing}"
