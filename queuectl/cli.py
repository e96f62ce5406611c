"""The click CLI: parse, call the core, print. Domain errors become click errors."""

from __future__ import annotations

import errno
import json
import os
import sys
from typing import Any

import click

from . import __version__
from .cli_observe import complete_dead_ids, complete_job_ids, metrics, web
from .errors import InvalidJob, QueueError

STATE_NAMES = ["pending", "processing", "completed", "failed", "dead", "done"]


class QueueGroup(click.Group):
    """Turns domain and OS errors into one `Error: ...` line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except QueueError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise click.ClickException(f"no space left on device ({e.filename or 'spool'})") from None
            raise click.ClickException(f"{e.strerror or e}: {e.filename}" if e.filename else str(e)) from None


def _notify(msg: str) -> None:
    click.echo(f"queuectl: {msg}", err=True)


class Context:
    """Opens the spool on first use, so `--help` and `--version` touch no disk."""

    def __init__(self, spool_dir: str | None):
        self.spool_dir = spool_dir
        self._spool = None

    @property
    def spool(self):
        if self._spool is None:
            from .spool import Spool, default_spool
            self._spool = Spool(self.spool_dir or default_spool(), notify=_notify)
        return self._spool

    def synced(self):
        """The spool with its index brought up to date with the directories."""
        spool = self.spool
        spool.sync()
        return spool

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


pass_ctx = click.make_pass_decorator(Context)


def _dump(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


@click.group(cls=QueueGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--spool", "spool_dir", type=click.Path(file_okay=False), envvar="QUEUECTL_SPOOL",
              help="Spool directory [env QUEUECTL_SPOOL; default $XDG_DATA_HOME/queuectl/spool].")
@click.version_option(__version__, prog_name="queuectl")
@click.pass_context
def main(ctx: click.Context, spool_dir: str | None) -> None:
    """queuectl: a job queue for shell commands whose whole state is a directory tree.

    \b
    Example:
      queuectl enqueue 'echo Hello from QueueCTL'
      queuectl worker start --count 2 --burst
      queuectl status
    """
    ctx.obj = Context(spool_dir)
    # Close the index when the command ends, not whenever the garbage collector
    # gets to it: a connection left open (in-process callers, tests) keeps
    # WAL locks that make the next open of a damaged index.db wait.
    ctx.call_on_close(ctx.obj.close)


# -- enqueue -------------------------------------------------------------------


def _parse_specs(data: bytes, source: str) -> list[tuple[str, Any]]:
    """(position, spec) pairs from a JSON object, a JSON array, or JSON Lines.

    A record that does not parse becomes (position, InvalidJob) so every bad
    record can be reported, not only the first.
    """
    from .job import loads
    # Parse bytes, not decoded text: loads() then reports bad UTF-8 as such,
    # with its byte offset, for the whole file and for each line alike.
    stripped = data.lstrip()
    if not stripped:
        raise InvalidJob(f"{source} is empty")
    try:
        whole = loads(data)
    except InvalidJob as e:
        whole, whole_error = None, e
    else:
        whole_error = None
    if isinstance(whole, list):
        return [(f"item {i}", spec) for i, spec in enumerate(whole, 1)]
    if whole_error is None:
        return [(source, whole)]
    if stripped.startswith(b"["):
        raise InvalidJob(f"{source}: {whole_error}")
    records = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((f"line {n}", loads(line)))
        except InvalidJob as e:
            records.append((f"line {n}", e))
    if len(records) == 1:
        raise InvalidJob(f"{source}: {whole_error}")
    return records


@main.command()
@click.argument("command", required=False)
@click.option("-f", "--file", "file", type=click.File("rb"),
              help="Read job specs from FILE ('-' for stdin): a JSON object, array, or JSON Lines.")
@click.option("--id", "job_id", help="Job id (default: a time-sortable id).")
@click.option("--max-retries", type=click.IntRange(0, 1000), help="Retries after the first attempt.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), help="Seconds before the job is killed.")
@click.option("--priority", type=int, help="Higher runs first (default 0).")
@click.option("--skip-invalid", is_flag=True, help="Enqueue the valid jobs of a file, report the rest.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the number of jobs enqueued.")
@click.option("--json", "as_json", is_flag=True, help="Print the enqueued jobs as JSON.")
@pass_ctx
def enqueue(obj: Context, command, file, job_id, max_retries, timeout, priority, skip_invalid, quiet, as_json):
    """Add jobs to the queue, durably (fsynced before this returns).

    \b
    Examples:
      queuectl enqueue 'echo hi'
      queuectl enqueue --id backup --max-retries 5 'rsync -a src/ dst/'
      queuectl enqueue --file job.json
      seq 3 | jq -c '{command: "echo \\(.)"}' | queuectl enqueue --file -
    """
    if (command is None) == (file is None):
        raise click.UsageError("give a COMMAND or --file, not both" if command else "give a COMMAND or --file")
    overrides = {k: v for k, v in (("max_retries", max_retries), ("timeout", timeout),
                                   ("priority", priority)) if v is not None}
    if command is not None:
        specs: list[tuple[str, Any]] = [("command", {"command": command})]
    else:
        # getattr: a stdin replaced by a test runner or a wrapper may have no name.
        name = getattr(file, "name", "<stdin>")
        specs = _parse_specs(file.read(), "stdin" if name == "<stdin>" else name)
    if job_id is not None:
        if len(specs) != 1:
            raise click.UsageError("--id needs exactly one job")
        if isinstance(specs[0][1], dict):  # anything else is reported as invalid below
            specs[0][1]["id"] = job_id
    # Synced: the duplicate check looks ids up in the index ignoring case, so
    # the index must reflect hand moves and drop-ins made since the last command.
    spool = obj.synced()
    cwd = os.getcwd()
    jobs, bad = [], []
    for where, spec in specs:
        try:
            if isinstance(spec, InvalidJob):
                raise spec
            if isinstance(spec, dict):
                spec = {**spec, **overrides}
                spec.setdefault("cwd", cwd)
            jobs.append(spool.new_job(spec))
        except InvalidJob as e:
            bad.append(f"{where}: {e}" if len(specs) > 1 or command is None else str(e))
    if bad and (not skip_invalid or len(specs) == 1):
        if len(bad) == 1 and len(specs) == 1:
            raise click.ClickException(bad[0])
        for line in bad:
            click.echo(f"Error: {line}", err=True)
        raise click.ClickException(f"{len(bad)} of {len(specs)} jobs are invalid; nothing enqueued "
                                   "(--skip-invalid enqueues the valid ones)")
    for line in bad:
        click.echo(f"skipped {line}", err=True)
    spool.enqueue_many(jobs)
    if as_json:
        _dump([j.to_dict() for j in jobs])
    elif quiet:
        click.echo(f"enqueued {len(jobs)} job{'' if len(jobs) == 1 else 's'}")
    elif jobs:  # an empty array enqueues nothing: print nothing, not a blank line
        click.echo("\n".join(f"enqueued job {j.id}" for j in jobs))


# -- inspect -------------------------------------------------------------------


def _state(value: str | None):
    from .job import JobState
    return None if value is None else JobState.parse(value)


@main.command("list")
@click.option("-s", "--state", type=click.Choice(STATE_NAMES, case_sensitive=False),
              help="Only jobs in this state ('done' means completed).")
@click.option("-n", "--limit", type=click.IntRange(min=1), help="At most N jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print full job records as a JSON array.")
@click.option("--json-lines", "as_json_lines", is_flag=True,
              help="Print one full job record a line (JSON Lines), streamed.")
@pass_ctx
def list_(obj: Context, state, limit, as_json, as_json_lines):
    """List jobs, oldest first, one a line: ID - STATE - COMMAND.

    \b
    Examples:
      queuectl list --state pending --limit 10
      queuectl list --json-lines | jq -r 'select(.attempts > 1) | .id'
    """
    if as_json and as_json_lines:
        raise click.UsageError("give --json or --json-lines, not both")
    idx = obj.synced().index
    if as_json_lines:
        # One record at a time from the cursor: memory stays flat on a big spool.
        try:
            for rec in idx.records(_state(state), limit):
                click.echo(json.dumps(rec, ensure_ascii=False))
        except BrokenPipeError:
            # `| head` stopped reading: that is the reader's choice, not an error.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    if as_json:
        _dump(list(idx.records(_state(state), limit)))
        return
    lines = [f"{r.id} - {r.state.value} - {_one_line(r.command)}" for r in idx.rows(_state(state), limit)]
    if lines:
        click.echo("\n".join(lines))


@main.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print the counts, live workers and spool path as a JSON object.")
@pass_ctx
def status(obj: Context, as_json):
    """Count the jobs in each state (all five, even when zero), the live workers, and the spool.

    \b
    Example:
      queuectl status --json
    """
    spool = obj.synced()
    counts = spool.index.counts()
    from .spool import count_live_workers
    workers = count_live_workers(spool)
    if as_json:
        _dump({**counts, "workers": workers, "spool": spool.root})
        return
    width = max(map(len, counts))
    for name, n in counts.items():
        click.echo(f"{name + ':':<{width + 1}} {n}")
    click.echo(f"{'workers:':<{width + 1}} {workers}")
    click.echo(f"{'spool:':<{width + 1}} {spool.root}")


@main.command()
@click.argument("job_id", metavar="ID", shell_complete=complete_job_ids)
@click.option("--json", "as_json", is_flag=True, help="Print {state, dir, path, job} as one JSON object.")
@pass_ctx
def show(obj: Context, job_id, as_json):
    """Show one job: a line `ID is in DIR/ (PATH)`, then its whole record as JSON.

    The record is read from the job's file, and its state is the directory
    that holds it.

    \b
    Examples:
      queuectl show job1
      queuectl show --json job1 | jq .job.history
    """
    # Synced, so a file just dropped into pending/ is shown in its accepted form.
    job, path = obj.synced().show(job_id)
    rel = os.path.relpath(path, obj.spool.root)
    if as_json:
        _dump({"state": job.state.value, "dir": os.path.dirname(rel), "path": path, "job": job.to_dict()})
        return
    click.echo(f"{job.id} is in {os.path.dirname(rel)}/ ({path})")
    click.echo(json.dumps(job.to_dict(), indent=2, ensure_ascii=False))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the counts as a JSON object.")
@pass_ctx
def reindex(obj: Context, as_json):
    """Rebuild the index from the spool directories and print the counts.

    \b
    Example:
      queuectl reindex
    """
    counts = obj.spool.reindex()
    if as_json:
        _dump(counts)
    else:
        click.echo("reindexed: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@main.command()
@click.option("--repair", is_flag=True, help="Fix what is safe to fix (never deletes a job).")
@click.option("--allow-shared-spool", is_flag=True, help="Do not report a group-writable spool.")
@click.option("--json", "as_json", is_flag=True, help="Print {spool, ok, problems} as JSON.")
@pass_ctx
def check(obj: Context, repair, allow_shared_spool, as_json):
    """Verify the spool, one line per problem; exit 1 if any (with --repair: if any is left).

    Checks: ids in two directories, state fields that disagree with their
    directory, stale tmp/ files, index rows vs files, processing/ jobs with no
    live worker, unexpected files, permissions.

    \b
    Examples:
      queuectl check
      queuectl check --repair
    """
    from .check import check as check_
    problems = check_(obj.spool, repair=repair, allow_shared=allow_shared_spool)
    left = [p for p in problems if not p.repaired]
    if as_json:
        _dump({"spool": obj.spool.root, "ok": not left, "problems": [p.to_dict() for p in problems]})
    elif not problems:
        click.echo(f"ok: no problems in {obj.spool.root}")
    else:
        for p in problems:
            click.echo(_one_line(p.line()))
        if repair:
            click.echo(f"{len(problems) - len(left)} of {len(problems)} problems repaired")
    if left:
        raise SystemExit(1)


# -- config --------------------------------------------------------------------


@main.group()
def config():
    """Read and change spool settings (SPOOL/config.json).

    \b
    Example:
      queuectl config set max-retries 5
    """


def _fmt(value: Any) -> str:
    return "none" if value is None else str(value)


@config.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print all settings as a JSON object.")
@pass_ctx
def config_list(obj: Context, as_json):
    """Print every setting with its value.

    \b
    Example:
      queuectl config list
    """
    cfg = obj.spool.config
    if as_json:
        _dump(dict(cfg))
    else:
        for key, value in cfg.items():
            click.echo(f"{key} = {_fmt(value)}")


@config.command("get")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print the value as JSON.")
@pass_ctx
def config_get(obj: Context, key, as_json):
    """Print one setting.

    \b
    Example:
      queuectl config get backoff_base
    """
    from .config import normalize_key
    value = obj.spool.config[normalize_key(key)]
    click.echo(json.dumps(value) if as_json else _fmt(value))


@config.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@pass_ctx
def config_set(obj: Context, key, value):
    """Change one setting (validated; 'none' unsets job_timeout).

    \b
    Examples:
      queuectl config set max-retries 5
      queuectl config set backoff_max 0.05
    """
    name, parsed = obj.spool.set_config(key, value)
    click.echo(f"{name} = {_fmt(parsed)}")


# -- workers -------------------------------------------------------------------


@main.group()
def worker():
    """Run, stop and list workers.

    \b
    Example:
      queuectl worker start --count 4
    """


@worker.command("start")
@click.option("-c", "--count", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Worker processes.")
@click.option("--burst", is_flag=True, help="Exit 0 when nothing is left to do.")
@click.option("--detach", is_flag=True, help="Run in the background, logging to SPOOL/logs/worker-*.log.")
@click.option("--poll", is_flag=True, help="Poll the spool instead of inotify (network filesystems).")
@click.option("--stop-timeout", type=click.FloatRange(0), default=None,
              help="On stop, kill jobs still running after this many seconds.")
@click.option("--allow-shared-spool", is_flag=True,
              help="Run even if the spool is writable by group or others.")
@pass_ctx
def worker_start(obj: Context, count, burst, detach, poll, stop_timeout, allow_shared_spool):
    """Start a supervisor with COUNT worker processes in the foreground.

    Ctrl-C or SIGTERM stops gracefully: no new claims, running jobs finish.
    A second Ctrl-C (or --stop-timeout) kills them; they go back to pending.

    \b
    Examples:
      queuectl worker start --count 2
      queuectl worker start --count 1 --burst     # drain the queue, then exit
      queuectl worker start --count 4 --detach
    """
    from .worker import Supervisor, check_spool_permissions, detach as detach_
    spool = obj.spool
    if detach:
        if not allow_shared_spool:
            check_spool_permissions(spool)
        argv = ["--spool", spool.root, "worker", "start", "--count", str(count)]
        argv += ["--burst"] * burst + ["--poll"] * poll + ["--allow-shared-spool"] * allow_shared_spool
        if stop_timeout is not None:
            argv += ["--stop-timeout", str(stop_timeout)]
        pid, log = detach_(spool, argv)
        click.echo(f"started supervisor PID={pid}, log {log}")
        return
    sup = Supervisor(spool.root, count, burst=burst, poll=poll, stop_timeout=stop_timeout,
                     allow_shared=allow_shared_spool)
    raise SystemExit(sup.run())


@worker.command("stop")
@click.option("--timeout", type=click.FloatRange(0), default=60, show_default=True,
              help="Seconds to let running jobs finish before they are killed.")
@pass_ctx
def worker_stop(obj: Context, timeout):
    """Stop every supervisor of this spool on this host, gracefully, and wait.

    \b
    Example:
      queuectl worker stop --timeout 30
    """
    from .worker import stop_supervisors
    pids = stop_supervisors(obj.spool, timeout)
    if not pids:
        click.echo("no running supervisor")
    for pid in pids:
        click.echo(f"stopped supervisor PID={pid}")


@worker.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print workers as a JSON array.")
@pass_ctx
def worker_list(obj: Context, as_json):
    """Show each live worker: id, host, pid, since, current job, last heartbeat.

    \b
    Example:
      queuectl worker list
    """
    from .spool import read_workers
    workers = [w for w in read_workers(obj.spool) if w["alive"]]
    if as_json:
        _dump([{k: w.get(k) for k in ("id", "role", "host", "pid", "since", "job", "heartbeat_at")}
               for w in workers])
        return
    for w in workers:
        click.echo(f"{w.get('id')} host={w.get('host')} pid={w.get('pid')} since={w.get('since')} "
                   f"job={w.get('job') or '-'} heartbeat={w.get('heartbeat_at')}")


# -- logs ------------------------------------------------------------------------


@main.command()
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
    from .job import JobState
    from .worker import job_log_path
    spool = obj.spool
    path = job_log_path(spool, job_id)
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
            return
        state, _ = spool.find(job_id)
        if state in (JobState.COMPLETED, JobState.DEAD) and os.path.getsize(path) <= offset:
            return
        _time.sleep(0.2)


# -- the dead letter queue ---------------------------------------------------------


@main.group()
def dlq():
    """The dead letter queue: jobs that used up their retries.

    \b
    Example:
      queuectl dlq list
      queuectl dlq retry job1
    """


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print full job records as a JSON array.")
@pass_ctx
def dlq_list(obj: Context, as_json):
    """List dead jobs with their attempts and last error.

    \b
    Example:
      queuectl dlq list --json
    """
    from .worker import dead_jobs
    jobs = dead_jobs(obj.spool)
    if as_json:
        _dump(jobs)
        return
    for j in jobs:
        click.echo(f"{j['id']} - attempts {j['attempts']} - {_one_line(j.get('last_error') or '')} "
                   f"- {_one_line(j['command'])}")


def _dlq_targets(obj: Context, job_ids, all_) -> list[str]:
    if bool(job_ids) == bool(all_):
        raise click.UsageError("give job IDs or --all")
    if all_:
        from .worker import dead_jobs
        return [j["id"] for j in dead_jobs(obj.spool)]
    from .worker import ensure_dead
    ensure_dead(obj.spool, list(job_ids))
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
        job = obj.spool.requeue(job_id)
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
        obj.spool.purge(job_id)
        click.echo(f"purged job {job_id}")


main.add_command(metrics)
main.add_command(web)


if __name__ == "__main__":  # pragma: no cover
    main()
