"""The benchmark harness in its smoke mode, so it cannot rot between full runs.

Figures are not checked (these machines are noisy, and 300 jobs mostly measure
start-up); the harness must run every workload to the end and print its table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def test_bench_smoke_runs_every_workload():
    # The tmpfs runs (drain, drop-ins) too where there is one: the full run makes them by default.
    tmpfs = ["--tmpfs", "/dev/shm"] if os.path.isdir("/dev/shm") else []
    r = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke", *tmpfs], cwd=REPO,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    for workload in ("1. drain", "2. end to end", "3. bulk enqueue", "4. pickup latency",
                     "5. status, big spool", "6. CLI start-up", "7. memory"):
        assert any(row.startswith(f"| {workload}") for row in rows), (workload, r.stdout[-3000:])
    assert "0 harness error(s)" in r.stdout + r.stderr
    # every target has its verdict in the summary at the end
    assert re.search(r"^Targets: \d+ of \d+ met$", r.stdout, re.M), r.stdout[-3000:]
    for target in ("drain 300 jobs, disk", "drop-ins accepted, disk", "status at 2000 jobs", "worker peak RSS"):
        assert any(row.startswith(f"| {target}") and row.endswith(("| met |", "| MISSED |")) for row in rows), target
    if tmpfs and "tmpfs" in r.stdout:
        assert any(row.startswith("| drain 300 jobs, tmpfs") for row in rows)
