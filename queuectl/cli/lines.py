"""The handlers that turn the core's log records into the lines a person sees (cli.base.Lines)."""

from __future__ import annotations

import logging
import os
import stat
import time

import click


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
            # Never through a link, never into a FIFO (it would block every log line).
            fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, 0o600)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                return
            os.set_blocking(fd, True)
        except OSError:
            return  # keep writing where we were: a lost rotation beats lost lines
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
