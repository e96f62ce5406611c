"""Ctrl-C outside a command: while Python imports click and the command, and while it tears down.

Python's own KeyboardInterrupt there prints a traceback and dies of SIGINT; click's turns
into "Aborted!" and exit 1, which reads like a failed job to `wait`'s caller. Outside a
command there is nothing to clean up: exit 130, as any Unix tool does. Inside one, commands
get the usual KeyboardInterrupt (base.QueueGroup.invoke), so their `finally` blocks run.
"""

from __future__ import annotations

try:
    import _signal as signal  # CPython's C module under signal.py, whose enums cost 0.8 ms of every start
except ImportError:  # pragma: no cover (another Python)
    import signal  # type: ignore[no-redef]


def _exit_130(_signum: int, _frame: object) -> None:
    raise SystemExit(130)


def install() -> None:
    """At start-up. An inherited SIG_IGN (a shell's background job, nohup) is kept."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _exit_130)


def for_the_command() -> bool:
    """Give the command KeyboardInterrupt; True if this changed the handler (restore it after)."""
    if signal.getsignal(signal.SIGINT) is _exit_130:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return True
    return False


def after_the_command() -> None:
    signal.signal(signal.SIGINT, _exit_130)
