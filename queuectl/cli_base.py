"""What every click command shares: error mapping, the lazy spool context, output helpers.

Domain errors become one `Error: ...` line and exit 1; the core's log records
become the lines a person sees.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from typing import Any

import click

from .errors import QueueError

STATE_NAMES = ["pending", "processing", "completed", "failed", "dead", "held", "cancelled", "done"]


class QueueGroup(click.Group):
    """Turns domain and OS errors into one `Error: ...` line and exit 1.

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
            self.add_command(getattr(importlib.import_module(module, "queuectl"), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except QueueError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise click.ClickException(f"no space left on device ({e.filename or 'spool'})") from None
            raise click.ClickException(f"{e.strerror or e}: {e.filename}" if e.filename else str(e)) from None


class Lines:
    """How the core's log records look to a person: one line each, one write each.

    Commands print notices as `queuectl: ...` on stderr. `worker start` prints
    `[supervisor] ...` / `[worker-N] ...` on stdout with one write(2) per
    line, so lines from concurrent worker processes never interleave.
    """

    handler = None

    @classmethod
    def install(cls, *, workers: bool) -> None:
        root = logging.getLogger("queuectl")
        if cls.handler is not None:
            root.removeHandler(cls.handler)
        cls.handler = WorkerLines() if workers else NoticeLines()
        root.addHandler(cls.handler)
        root.setLevel(logging.INFO)


class NoticeLines(logging.Handler):
    def emit(self, record) -> None:  # noqa: ANN001 - logging.LogRecord
        if record.levelno >= 30:  # WARNING: notices; INFO lines are a worker's
            click.echo(f"queuectl: {record.getMessage()}", err=True)


def under_journald(fd: int = 1) -> bool:
    """Is fd the stream systemd's journal reads? ($JOURNAL_STREAM is `device:inode` of it.)"""
    value = os.environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return True  # set but unreadable: journald is the likelier reader
    return (st.st_dev, st.st_ino) == (dev, ino)


class WorkerLines(logging.Handler):
    """`[worker-N] ...` lines; each starts with an ISO 8601 UTC time when stdout is
    not a terminal (a log file), except under journald, which stamps lines itself.

    With $QUEUECTL_LOG_FILE (a detached supervisor's log), each process reopens
    that file onto its stdout and stderr once it has been moved away or removed
    (logrotate): checked at most once a second, before a line is written.
    """

    REOPEN_CHECK = 1.0

    def __init__(self):
        super().__init__()
        self.stamp = not os.isatty(1) and not under_journald(1)
        # Taken out of the environment: the jobs and hooks that inherit it must
        # not reopen the supervisor's log onto their own stdout.
        self.log_file = os.environ.pop("QUEUECTL_LOG_FILE", None) or None
        self.checked = 0.0

    def emit(self, record) -> None:  # noqa: ANN001 - logging.LogRecord
        who = "supervisor" if record.processName == "MainProcess" else record.processName
        line = f"[{who}] {record.getMessage()}\n"
        if self.stamp:
            from datetime import datetime, timezone
            line = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds") \
                .replace("+00:00", "Z") + " " + line
        if self.log_file is not None:
            self._reopen_if_rotated()
        os.write(1, line.encode("utf-8", "replace"))

    def _reopen_if_rotated(self) -> None:
        now = time.monotonic()
        if now - self.checked < self.REOPEN_CHECK:
            return
        self.checked = now
        try:
            st = os.fstat(1)
            try:
                cur = os.stat(self.log_file)
                if (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino):
                    return
            except FileNotFoundError:
                pass
            fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return  # keep writing where we were: a lost rotation beats lost lines
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)


class Context:
    """Opens the spool on first use, so `--help` and `--version` touch no disk."""

    def __init__(self, spool_dir: str | None, index: str | None = None):
        self.spool_dir = spool_dir
        self.index = index
        self._spool = None

    @property
    def spool(self):
        if self._spool is None:
            from .spool import Spool, default_spool
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
