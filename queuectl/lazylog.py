"""Loggers that import logging only once something is logged: most commands never log.

`logging` (with traceback, textwrap and string) took 2.5 ms of every command's
start, more than any of queuectl's own modules. A module says
`log = lazylog.get("queuectl.x")` and logs as usual; the first call imports
logging, installs the handler the CLI asked for (`configure`), and hands over
to the real logger.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

_pending: list[Callable[[], None]] = []  # the handler set-up to run before the first record


def configure(setup: Callable[[], None]) -> None:
    """Run setup (install handlers) before anything is logged: now if logging is loaded, else
    at the first use of a lazy logger. A later call replaces a set-up still pending."""
    _pending.clear()
    if "logging" in sys.modules:
        setup()
    else:
        _pending.append(setup)


def ready() -> None:
    """Load logging now and run the pending set-up (a module that logs through logging directly)."""
    import logging  # noqa: F401 - loaded for what follows
    while _pending:
        _pending.pop()()


class LazyLogger:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        ready()
        import logging
        return getattr(logging.getLogger(self.name), attr)


def get(name: str) -> LazyLogger:
    return LazyLogger(name)
