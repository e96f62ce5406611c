"""Start-up cost: what `enqueue` and `--version` import, checked in a fresh interpreter.

Each of these modules once cost a command milliseconds of start-up (issue 14);
a new top-level import of one on these paths fails here, not in a benchmark.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from support import cli

# logging: only once something logs; dataclasses: Job is a plain class and
# registry is only for a network spool; filelock: only for cold paths.
NOT_FOR_ENQUEUE = ("logging", "dataclasses", "filelock", "queuectl.registry", "flask", "prometheus_client")
NOT_FOR_VERSION = NOT_FOR_ENQUEUE + ("sqlite3", "queuectl.spool", "queuectl.job", "queuectl.config")


def _imported(*argv: str) -> list[str]:
    code = ("import sys; from queuectl.cli import main\n"
            f"try: main({list(argv)!r})\n"
            "except SystemExit: pass\n"
            "print(sorted(sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return eval(p.stdout.splitlines()[-1])


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh spool", "existing spool"])
def test_enqueue_imports_nothing_it_does_not_need(spool_dir, fresh):
    if not fresh:
        cli(spool_dir, "enqueue", "true")
    loaded = _imported("--spool", str(spool_dir), "enqueue", "true")
    assert "queuectl.spool" in loaded  # the check itself works: the job was enqueued
    assert [m for m in NOT_FOR_ENQUEUE if m in loaded] == []


def test_version_imports_no_core():
    loaded = _imported("--version")
    assert [m for m in NOT_FOR_VERSION if m in loaded] == []
