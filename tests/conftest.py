"""Fixtures for every test module come from support.py (the one home of shared helpers)."""

from support import (age, bg, collect_lines, ls, poll, procs, read_job, run, run_proc,  # noqa: F401
                     spool_dir, start_proc)
