"""The click CLI: parse, call the core, print. Domain errors become click errors.

The worker, logs and dead-letter commands live in cli/workers.py and are
loaded only when one of them runs.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from .. import __version__
from ..errors import InvalidJob
from .base import (MAX_COUNT, PRIORITY, STATE_NAMES, Context, Lines, QueueGroup, Seconds, complete_job_ids, dump,
                   json_option, one_line, pass_ctx)




@click.group(cls=QueueGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--spool", "spool_dir", type=click.Path(file_okay=False), envvar="QUEUECTL_SPOOL",
              help="Spool directory [env QUEUECTL_SPOOL; default $XDG_DATA_HOME/queuectl/spool].")
@click.option("--index", "index", type=click.Path(dir_okay=False), envvar="QUEUECTL_INDEX",
              help="This node's index.db [env QUEUECTL_INDEX; default SPOOL/index.db, or a local cache "
                   "directory when the spool is on a network filesystem].")
@click.version_option(__version__, prog_name="queuectl")
@click.pass_context
def main(ctx: click.Context, spool_dir: str | None, index: str | None) -> None:
    """queuectl: a job queue for shell commands whose whole state is a directory tree.

    \b
    Example:
      queuectl enqueue 'echo Hello from QueueCTL'
      queuectl worker start --count 2 --burst
      queuectl status
    """
    ctx.obj = Context(spool_dir, os.path.abspath(index) if index else None)
    Lines.install(workers=False)
    # Close the index when the command ends, not whenever the garbage collector
    # gets to it: a connection left open (in-process callers, tests) keeps
    # WAL locks that make the next open of a damaged index.db wait.
    ctx.call_on_close(ctx.obj.close)


main.lazy = {"worker": (".workers", "worker"), "logs": (".workers", "logs"),
             "dlq": (".workers", "dlq"), "pause": (".service", "pause"),
             "resume": (".service", "resume"), "clean": (".service", "clean"),
             "metrics": (".observe", "metrics"), "web": (".observe", "web"),
             "systemd-unit": (".service", "systemd_unit"),
             **{name: (".jobs", name) for name in ("wait", "cancel", "kill", "hold", "release", "priority", "requeue", "rm")}}


# -- enqueue -------------------------------------------------------------------


# Options end at the command: `enqueue sh -c 'echo hi'` passes -c to sh (as tsp,
# nq and pueue do); `--` ends them too.
@main.command(context_settings={"allow_interspersed_args": False})
@click.argument("command", nargs=-1, metavar="[CMD [ARG...]]")
@click.option("--file", "file", type=click.File("rb"),
              help="Read job specs from FILE ('-' for stdin): a JSON object, array, or JSON Lines.")
@click.option("--id", "job_id", help="Job id (default: a time-sortable id).")
@click.option("--max-retries", type=click.IntRange(0, 1000), help="Retries after the first attempt.")
@click.option("--timeout", type=Seconds(0, min_open=True), help="Seconds before the job is killed.")
@click.option("--priority", type=PRIORITY, help="Higher runs first (default 0).")
@click.option("-Q", "--queue", help="The job's queue (default: default).")
@click.option("--on-finish", help="Shell command run once the job is completed or dead.")
@click.option("--lines", "lines", type=click.File("rb"),
              help="Read one shell command per line from FILE ('-' for stdin); the options apply to each.")
@click.option("--delay", help="Run no sooner than this from now: 90s, 10m, 2h, 1d (or 1h30m).")
@click.option("--at", "at", help="Run no sooner than TIME: ISO 8601 (2026-12-01T10:00, +02:00 or Z); "
                                 "without an offset it is LOCAL time; or 'tomorrow 10:00', 'today 18:30', "
                                 "optionally with a zone: UTC, +03:00, UTC+3 (ahead of UTC), Europe/Berlin, PST.")
@click.option("--hold", is_flag=True, help="Put the job in held/: it runs only after `queuectl release`.")
@click.option("--after", "after", multiple=True, metavar="ID[,ID...]",
              help="Run only after all these jobs completed (cancelled if one ends dead or cancelled).")
@click.option("--after-any", "after_any", multiple=True, metavar="ID[,ID...]",
              help="Run once these jobs are final (completed, dead or cancelled), whatever the outcome.")
@click.option("--label", "labels", multiple=True, metavar="NAME", help="A label (repeatable), for --label filters.")
@click.option("--env", "env", multiple=True, metavar="K=V", help="An environment variable for the job (repeatable).")
@click.option("--cwd", type=click.Path(file_okay=False), help="Directory to run in (default: this one).")
@click.option("--skip-invalid", is_flag=True, help="Enqueue the valid jobs of a file, report the rest.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the number of jobs enqueued.")
@click.option("--print-id", is_flag=True, help="Print only the ids, one a line: id=$(queuectl enqueue --print-id CMD).")
@json_option("Print the enqueued jobs as JSON.")
@pass_ctx
def enqueue(obj: Context, command, file, job_id, max_retries, timeout, priority, queue, on_finish, lines, delay, at,
            hold, after, after_any, labels, env, cwd, skip_invalid, quiet, print_id, as_json):
    """Add jobs to the queue, durably (fsynced before this returns).

    One argument is a shell command, run by /bin/sh -c as written. Several
    are a command and its arguments, quoted for the shell (shlex.join): options
    end at the command's first word, so `enqueue sh -c 'echo $HOME'` passes -c
    to sh. `--` also ends the options.

    \b
    Examples:
      queuectl enqueue echo hi
      queuectl enqueue 'echo hi; sleep 1 && echo done'
      queuectl enqueue --id fetch -- curl -fsS -o page.html https://example.org/
      queuectl enqueue --id backup --max-retries 5 'rsync -a src/ dst/'
      queuectl enqueue --queue gpu --on-finish 'notify-send done' './train.sh'
      queuectl enqueue --file job.json
      seq 3 | jq -c '{command: "echo \\(.)"}' | queuectl enqueue --file -
      queuectl enqueue --delay 10m --label nightly 'make report'
      queuectl enqueue --at 'tomorrow 10:00' --env LANG=C 'sort big.txt > sorted.txt'
      id=$(queuectl enqueue --print-id 'make build'); queuectl enqueue --after "$id" 'make test'
      queuectl enqueue --lines commands.txt --label batch1
    """
    if len(command) > 1:
        import shlex
        command = shlex.join(command)
    else:
        command = command[0] if command else None
    given = sum(x is not None for x in (command, file, lines))
    if given != 1:
        raise click.UsageError("give one of CMD [ARG...], --file or --lines" + (", not both" if given else ""))
    if delay is not None and at is not None:
        raise click.UsageError("give --delay or --at, not both")
    overrides = {k: v for k, v in (("max_retries", max_retries), ("timeout", timeout),
                                   ("priority", priority), ("queue", queue), ("on_finish", on_finish))
                 if v is not None}
    overrides.update(_job_options(delay, at, after, after_any, labels, env, cwd))
    if command is not None:
        specs: list[tuple[str, Any]] = [("command", {"command": command})]
    elif lines is not None:
        specs = _command_lines(lines)
    else:
        # getattr: a stdin replaced by a test runner or a wrapper may have no name.
        name = getattr(file, "name", "<stdin>")
        from ..job import parse_specs
        specs = parse_specs(file.read(), "stdin" if name == "<stdin>" else name)
    if job_id is not None:
        if len(specs) != 1:
            raise click.UsageError("--id needs exactly one job")
        if isinstance(specs[0][1], dict):  # anything else is reported as invalid below
            specs[0][1]["id"] = job_id
    # Synced: the duplicate check looks ids up in the index ignoring case, so
    # the index must reflect hand moves and drop-ins made since the last command.
    spool = obj.synced()
    if spool.readonly:
        raise click.ClickException(f"the spool {spool.root} is read-only: copy it to add jobs "
                                   f"(cp -r {spool.root} /tmp/x && rm -f /tmp/x/.readonly)")
    cwd = os.path.abspath(cwd) if cwd else os.getcwd()
    jobs, bad, where_of = [], [], {}
    for where, spec in specs:
        try:
            if isinstance(spec, InvalidJob):
                raise spec
            if isinstance(spec, dict):
                given = spec.get("env")
                spec = {**spec, **overrides}
                if "env" in overrides and isinstance(given, dict):
                    spec["env"] = {**given, **overrides["env"]}  # --env adds to (and wins over) the spec's
                spec.setdefault("cwd", cwd)
            job = spool.new_job(spec)
            if hold:
                from ..job import JobState
                job.state = JobState.HELD
            jobs.append(job)
            where_of[id(job)] = where
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

    def skipped(job, e: InvalidJob) -> None:  # an id taken, or an `after` naming no job: this record only
        click.echo(f"skipped {where_of[id(job)]}: {e}", err=True)

    jobs = spool.enqueue_many(jobs, skip=skipped if skip_invalid and len(specs) > 1 else None)
    # A hint for a person at a terminal: cron mail and scripts' logs are spared it.
    if jobs and not quiet and not hold and sys.stderr.isatty():
        from ..queues import idle_reason
        why = idle_reason(spool, {j.queue for j in jobs})
        if why:
            click.echo(f"queuectl: {why}", err=True)
    if print_id:
        if jobs:
            click.echo("\n".join(j.id for j in jobs))
    elif as_json:
        dump([j.to_dict() for j in jobs])
    elif quiet:
        click.echo(f"enqueued {len(jobs)} job{'' if len(jobs) == 1 else 's'}")
    elif jobs:  # an empty array enqueues nothing: print nothing, not a blank line
        click.echo("\n".join(f"enqueued job {j.id}" for j in jobs))


def _job_options(delay, at, after, after_any, labels, env, cwd) -> dict[str, Any]:
    """The spec fields the enqueue options set (their values are validated by the core)."""
    out: dict[str, Any] = {}
    if delay is not None or at is not None:
        import time
        from ..when import parse_at, parse_delay
        out["run_at"] = time.time() + parse_delay(delay) if delay is not None else parse_at(at)
    if after:
        out["after"] = [i.strip() for a in after for i in a.split(",")]
    if after_any:
        out["after_any"] = [i.strip() for a in after_any for i in a.split(",")]
    if labels:
        out["labels"] = list(labels)
    if env:
        pairs = {}
        for item in env:
            name, eq, value = item.partition("=")
            if not eq:
                raise click.UsageError(f"--env {item!r}: expected NAME=VALUE")
            pairs[name] = value
        out["env"] = pairs
    if cwd is not None:
        out["cwd"] = os.path.abspath(cwd)
    return out


def _command_lines(f) -> list[tuple[str, Any]]:
    """`--lines`: one shell command per non-blank line."""
    data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise click.ClickException(f"--lines: not UTF-8 text (byte {e.start})") from None
    specs = [(f"line {n}", {"command": line}) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not specs:
        raise click.ClickException("--lines: no commands in the input")
    return specs


# -- inspect -------------------------------------------------------------------


def _state(value: str | None):
    from ..job import JobState
    return None if value is None else JobState.parse(value)


@main.command("list")
@click.option("-s", "--state", type=click.Choice(STATE_NAMES, case_sensitive=False),
              help="Only jobs in this state ('done' means completed).")
@click.option("-n", "--limit", type=click.IntRange(1, MAX_COUNT), help="At most N jobs.")
@click.option("-Q", "--queue", help="Only jobs of this queue.")
@click.option("-l", "--label", help="Only jobs with this label.")
@json_option("Print full job records as a JSON array.")
@click.option("--json-lines", "as_json_lines", is_flag=True,
              help="Print one full job record a line (JSON Lines), streamed.")
@pass_ctx
def list_(obj: Context, state, limit, queue, label, as_json, as_json_lines):
    """List jobs, oldest first, one a line: ID - STATE - COMMAND.

    A job scheduled for later says when it runs; a job waiting for others
    (--after) names them with their states.

    \b
    Examples:
      queuectl list --state pending --limit 10
      queuectl list --queue gpu
      queuectl list --label nightly
      queuectl list --json-lines | jq -r 'select(.attempts > 1) | .id'
    """
    import time
    from ..controls import list_fields, list_note
    if as_json and as_json_lines:
        raise click.UsageError("give --json or --json-lines, not both")
    if queue is not None:
        from ..job import check_queue
        queue = check_queue(queue)
    idx = obj.synced().index
    keep = None if label is None else idx.ids_labelled(label)
    blockers, now = idx.blockers(), time.time()
    if as_json_lines:
        # One record at a time from the cursor: memory stays flat on a big spool.
        try:
            n = 0
            for rec in idx.records(_state(state), None if keep is not None else limit, queue):
                if keep is not None and rec["id"] not in keep:
                    continue
                if limit is not None and n >= limit:
                    break
                n += 1
                click.echo(json.dumps({**rec, **list_fields(rec, blockers.get(rec["id"]))}, ensure_ascii=False))
        except BrokenPipeError:
            # `| head` stopped reading: that is the reader's choice, not an error.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    records = [r for r in idx.records(_state(state), None if keep is not None else limit, queue)
               if keep is None or r["id"] in keep][:limit]
    if as_json:
        dump([{**r, **list_fields(r, blockers.get(r["id"]))} for r in records])
        return
    lines = [f"{r['id']} - {list_note(r, blockers.get(r['id']), now)} - {one_line(r['command'])}" for r in records]
    if lines:
        click.echo("\n".join(lines))


@main.command()
@click.option("-Q", "--queue", help="Only the jobs of this queue.")
@json_option("Print the counts, live workers and spool path (and queues, once in use) as a JSON object.")
@pass_ctx
def status(obj: Context, queue, as_json):
    """Count the jobs in each state (every state, even when zero), the live workers, and the spool.

    Once queues are in use (a job names a queue other than `default`, or a
    queue is paused or limited), also the pauses and one line per queue:
    `queue NAME: pending N, ... [paused] [limit N]`.

    \b
    Examples:
      queuectl status --json
      queuectl status --queue gpu
    """
    from ..queues import PAUSE_ALL, paused
    spool = obj.synced()
    pauses = paused(spool)
    if queue is not None:
        from ..job import check_queue
        queue = check_queue(queue)
        mine = spool.index.queue_counts().get(queue, {})
        counts = {s: mine.get(s, 0) for s in spool.index.counts()}
        is_paused = PAUSE_ALL in pauses or queue in pauses
        if as_json:
            dump({**counts, "queue": queue, "paused": is_paused, "limit": spool.config.limit(queue)})
            return
        width = max(map(len, counts))
        for name, n in counts.items():
            click.echo(f"{name + ':':<{width + 1}} {n}")
        click.echo(f"{'paused:':<{width + 1}} {'yes' if is_paused else 'no'}")
        return
    counts = spool.index.counts()
    from ..registry import count_live_workers
    workers = count_live_workers(spool)
    by_queue = spool.index.queue_counts()
    names = sorted(set(by_queue) | (pauses - {PAUSE_ALL}) | {q for q, _ in spool.config.concurrency})
    # Grouped only once queues are in use: a spool without them prints what it always did.
    grouped = names not in ([], ["default"]) or bool(pauses)
    if as_json:
        out = {**counts, "workers": workers, "spool": spool.root}
        if grouped:
            out["paused"] = sorted(pauses)
            out["queues"] = {q: {**{s: by_queue.get(q, {}).get(s, 0) for s in counts},
                                 "paused": PAUSE_ALL in pauses or q in pauses, "limit": spool.config.limit(q)}
                             for q in names}
        dump(out)
        return
    width = max(map(len, counts))
    for name, n in counts.items():
        click.echo(f"{name + ':':<{width + 1}} {n}")
    click.echo(f"{'workers:':<{width + 1}} {workers}" + ("" if workers else " (no workers running)"))
    click.echo(f"{'spool:':<{width + 1}} {spool.root}")
    if pauses:
        click.echo(f"{'paused:':<{width + 1}} {'all queues' if PAUSE_ALL in pauses else ', '.join(sorted(pauses))}")
    if grouped:
        for q in names:
            c = by_queue.get(q, {})
            marks = " [paused]" if PAUSE_ALL in pauses or q in pauses else ""
            limit = spool.config.limit(q)
            marks += f" [limit {limit}]" if limit else ""
            click.echo(f"queue {q}: " + ", ".join(f"{s} {c.get(s, 0)}" for s in counts) + marks)


@main.command()
@click.argument("job_id", metavar="ID", shell_complete=complete_job_ids)
@json_option("Print {state, dir, path, job} as one JSON object.")
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
        dump({"state": job.state.value, "dir": os.path.dirname(rel), "path": path, "job": job.to_dict()})
        return
    click.echo(f"{job.id} is in {os.path.dirname(rel)}/ ({path})")
    click.echo(json.dumps(job.to_dict(), indent=2, ensure_ascii=False))


@main.command()
@json_option("Print the counts as a JSON object.")
@pass_ctx
def reindex(obj: Context, as_json):
    """Rebuild the index from the spool directories and print the counts.

    \b
    Example:
      queuectl reindex
    """
    counts = obj.spool.reindex()
    if as_json:
        dump(counts)
    else:
        click.echo("reindexed: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@main.command()
@click.option("--repair", is_flag=True, help="Fix what is safe to fix (never deletes a job).")
@click.option("--allow-shared-spool", is_flag=True, help="Do not report a group-writable spool.")
@json_option("Print {spool, ok, problems, warnings} as JSON.")
@pass_ctx
def check(obj: Context, repair, allow_shared_spool, as_json):
    """Verify the spool, one line per problem; exit 1 if any (with --repair: if any is left).

    Checks: ids in two directories, state fields that disagree with their
    directory, stale tmp/ files, index rows vs files, processing/ jobs with no
    live worker, unexpected files, permissions. On a spool other hosts share,
    a `warning:` line (exit status unchanged) says what this host's setup
    breaks: a clock off the file server's by more than clock_skew, queue
    limits that hold per host where locks do not reach other hosts (sshfs).

    \b
    Examples:
      queuectl check
      queuectl check --repair
    """
    from ..check import check as check_, readonly_note
    from ..hosts import shared_mode_warnings
    problems = check_(obj.spool, repair=repair, allow_shared=allow_shared_spool)
    left = [p for p in problems if not p.repaired]
    # Not problems of the spool (nothing to repair there), but what start-up warns of too.
    warnings = shared_mode_warnings(obj.spool) if obj.spool.multihost else []
    note = readonly_note(obj.spool)
    if note and not as_json:
        click.echo(f"note: this spool is read-only (.readonly): {note}")
    if as_json:
        dump({"spool": obj.spool.root, "ok": not left, "problems": [p.to_dict() for p in problems],
              "warnings": warnings})
    else:
        for line in warnings:
            click.echo(one_line(f"warning: {line}"))
        if not problems:
            click.echo(f"ok: no problems in {obj.spool.root}")
        for p in problems:
            click.echo(one_line(p.line()))
        if problems and repair:
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
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


@config.command("list")
@json_option("Print all settings as a JSON object.")
@pass_ctx
def config_list(obj: Context, as_json):
    """Print every setting with its value.

    \b
    Example:
      queuectl config list
    """
    cfg = obj.spool.config.as_json()
    if as_json:
        dump(cfg)
    else:
        for key, value in cfg.items():
            click.echo(f"{key} = {_fmt(value)}")


@config.command("get")
@click.argument("key")
@json_option("Print the value as JSON.")
@pass_ctx
def config_get(obj: Context, key, as_json):
    """Print one setting.

    \b
    Example:
      queuectl config get backoff_base
    """
    value = obj.spool.config.get(key)
    value = str(value) if isinstance(value, tuple) else value  # a retention limit, as written
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


def run() -> None:
    """The `queuectl` program: main(), then exit without tearing the interpreter down.

    By the time main() returns, every command has closed what it opened (the
    index connection, on click's context close; job files are written, and
    fsynced where promised, before a command reports). What remains is Python
    freeing a hundred modules one object at a time, which took as long as an
    enqueue's own work: 8-9 ms of 55.
    """
    try:
        main(prog_name="queuectl")
        code = 0
    except SystemExit as e:
        if isinstance(e.code, str):
            sys.stderr.write(e.code + "\n")
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # the reader went away (`queuectl list | head`): as Python itself exits then
        code = code or 120
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
