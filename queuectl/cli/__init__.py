"""The command line: click commands that parse, call the core, and print.

One module per group of commands: app.py (the `queuectl` group, enqueue and
the inspecting commands, `run`), jobs.py, workers.py, service.py and
observe.py (loaded only when one of their commands runs), base.py (what
every command shares) and lines.py (how log records look to a person). The
core (queuectl's other modules) never imports this package.
"""

from . import ctrlc

ctrlc.install()  # before the imports: a Ctrl-C now exits 130, quietly

from .app import main, run  # noqa: E402

__all__ = ["main", "run"]
