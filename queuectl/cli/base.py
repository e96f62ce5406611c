"""What every click command shares: error mapping, the lazy spool context, output helpers.

Domain errors become one `Error: ...` line and exit 1; the core's log records
become the lines a person sees.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from typing import Any

import click

from .. import lazylog
from ..errors import QueueError
from . import ctrlc

STATE_NAMES = ["pending", "processing", "completed", "failed", "dead", "held", "cancelled", "done"]


MAX_SECONDS = 10 * 365 * 86400  # every time option's bound: 10 years (a job's own timeout is bounded so too)
MAX_COUNT = 100_000_000         # a count of jobs (list -n, clean --keep)
PRIORITY = click.IntRange(-2**31, 2**31)  # as job.check_priority allows


class Seconds(click.FloatRange):
    """A finite number of seconds within bounds. nan compares false with every bound,
    so a FloatRange alone let `wait --timeout nan` wait forever; inf and 1e20 are
    bounded too, as time arithmetic on them overflows or never ends."""

    name = "seconds"

    def __init__(self, min: float = 0, max: float = MAX_SECONDS, *, min_open: bool = False):
        super().__init__(min, max, min_open=min_open)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return super().convert(number, param, ctx)


class QueueGroup(click.Group):
    """Turns domain and OS errors into one `Error: ...` line and exit 1, Ctrl-C into exit 130.

    Subcommands named in `lazy` are imported from their module on first use,
    so a command never pays for another's imports.
    """

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.lazy: dict[str, tuple[str, str]] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str):
        if name in self.lazy and name not in self.commands:
            import importlib
            module, attr = self.lazy[name]
            self.add_command(getattr(importlib.import_module(module, "queuectl.cli"), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        switched = ctrlc.for_the_command()
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # Ctrl-C is 128 + SIGINT for every command, as for any Unix tool: click's
            # own "Aborted!" exits 1, which reads like a failed job to `wait`'s caller.
            if sys.stderr.isatty():
                click.echo(err=True)  # the prompt starts its own line after "^C"
            raise click.exceptions.Exit(130) from None
        except QueueError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise click.ClickException(f"no space left on device ({e.filename or 'spool'})") from None
            raise click.ClickException(f"{e.strerror or e}: {e.filename}" if e.filename else str(e)) from None
        finally:
            if switched:
                ctrlc.after_the_command()


class Lines:
    """How the core's log records look to a person: one line each, one write each.

    Commands print notices as `queuectl: ...` on stderr. `worker start` prints
    `[supervisor] ...` / `[worker-N] ...` on stdout with one write(2) per
    line, so lines from concurrent worker processes never interleave. The
    handlers (cli/lines.py) are installed when something is first logged:
    most commands never log, and never load logging (lazylog.py).
    """

    handler = None

    @classmethod
    def install(cls, *, workers: bool) -> None:
        lazylog.configure(lambda: cls._install(workers))
        if workers:
            lazylog.ready()  # a supervisor logs at once, and its handler reads the environment before forking

    @classmethod
    def _install(cls, workers: bool) -> None:
        import logging

        from .lines import NoticeLines, WorkerLines
        root = logging.getLogger("queuectl")
        if cls.handler is not None:
            root.removeHandler(cls.handler)
        cls.handler = WorkerLines() if workers else NoticeLines()
        root.addHandler(cls.handler)
        root.setLevel(logging.INFO)


class Context:
    """Opens the spool on first use, so `--help` and `--version` touch no disk."""

    def __init__(self, spool_dir: str | None, index: str | None = None):
        self.spool_dir = spool_dir
        self.index = index
        self._spool = None

    @property
    def spool(self):
        if self._spool is None:
            from ..spool import Spool, default_spool
            self._spool = Spool(self.spool_dir or default_spool(), index_path=self.index)
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


def dump(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def json_option(help: str):
    """The --json flag every command that prints data has."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def complete_job_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Job ids from the index for the shell; never raises, never creates a spool."""
    try:
        return _job_ids(ctx, incomplete, None)
    except Exception:  # a broken completion must not break the user's shell
        return []


def complete_dead_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    try:
        from ..job import JobState
        return _job_ids(ctx, incomplete, JobState.DEAD)
    except Exception:
        return []


def _job_ids(ctx: click.Context, incomplete: str, state) -> list[str]:
    from ..index import Index
    from ..spool import default_spool
    root = ctx.find_root().params.get("spool_dir") or default_spool()
    path = os.path.join(root, "index.db")
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return []
    idx = Index(path)
    try:
        return idx.ids_with_prefix(incomplete, state)
    finally:
        idx.close()
