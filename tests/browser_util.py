"""Helpers for the dashboard in a real browser (tests/test_browser.py, bench/observe.py --screenshots).

Chromium is Debian's (`apt-get install chromium`), driven by Playwright for
Python; Playwright's own browser download is never used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from support import cli

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium")


def missing() -> str | None:
    """Why a browser test cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        return f"playwright cannot be imported ({e})"
    if chromium_path() is None:
        return "no chromium (apt-get install chromium)"
    return None


def queuectl(spool: Path, *args: str, timeout: float = 60, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    """support.cli, with the exit statuses that count as success."""
    p = cli(spool, *args, timeout=timeout, check=False)
    if p.returncode not in ok:
        raise AssertionError(f"queuectl {' '.join(map(str, args))}: {p.returncode} {p.stderr}")
    return p


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(ts))


def place_job(spool: Path, state_dir: str, job_id: str, command: str, **fields) -> None:
    """A canonical job file put straight into a state directory (as a hand move would)."""
    now = iso(time.time())
    rec = {"id": job_id, "command": command, "state": fields.pop("state"), "attempts": 0, "max_retries": 3,
           "priority": 0, "timeout": None, "created_at": now, "updated_at": now, "next_run_at": None,
           "last_error": None, "exit_code": None, "history": [], **fields}
    path = spool / state_dir / f"{job_id}.json"
    path.write_text(json.dumps(rec) + "\n")
    os.chmod(path, 0o600)


def demo_spool(spool: Path) -> tuple[Path, str]:
    """A spool with jobs in every state, a rejected drop-in, and a job with a log; returns (spool, job id)."""
    queuectl(spool, "config", "set", "backoff_max", "0.05")
    queuectl(spool, "enqueue", "--id", "report-2026-11", "echo building the report; sleep 0.3; echo done")
    for i in range(1, 4):
        queuectl(spool, "enqueue", "--id", f"thumb-{i}", f"echo thumbnail {i}")
    queuectl(spool, "enqueue", "--id", "sync-mirror", "--max-retries", "1",
             "echo 'rsync: connection refused' >&2; exit 12")
    queuectl(spool, "worker", "start", "--count", "2", "--burst", timeout=120, ok=(1,))  # 1: sync-mirror died
    for i in range(1, 3):
        queuectl(spool, "enqueue", "--id", f"nightly-{i}", f"echo nightly {i}")
    later = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() + 3600))
    place_job(spool, "failed", "fetch-feed", "curl -fsS https://example.invalid/feed", state="failed",
           attempts=1, next_run_at=later, last_error="exit 6", exit_code=6)
    place_job(spool, "processing", "backup-db", "pg_dump shop > /backup/shop.sql", state="pending")
    bad = spool / "pending" / "bad.json"
    bad.write_text('{"command": "echo hi", "max_retries": "3"}')
    queuectl(spool, "status")  # accepts the drop-ins: bad.json goes to rejected/
    return spool, "report-2026-11"


@contextlib.contextmanager
def serve(spool: Path, *args: str, timeout: float = 20) -> Iterator[str]:
    """`queuectl web --port 0` in a subprocess; yields its URL once it listens."""
    # stderr to a file: a pipe nobody reads could fill up and stall the server.
    errors = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-m", "queuectl", "--spool", str(spool), "web", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=errors, text=True)
    try:
        line = _first_line(proc, timeout, errors)
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        yield url
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        errors.close()


def _first_line(proc: subprocess.Popen, timeout: float, errors) -> str:
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=0.1):
            line = proc.stdout.readline()
            if line.startswith("serving "):
                return line.strip()
            if not line and proc.poll() is not None:
                break
    errors.seek(0)
    raise AssertionError(f"queuectl web did not start: {errors.read()}")


class Browser:
    """Headless Debian chromium through Playwright: `with Browser() as b: page = b.page()`."""

    def __enter__(self) -> "Browser":
        from playwright.sync_api import sync_playwright
        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        except Exception:
            self._pw.stop()
            raise
        self.context = self.browser.new_context(viewport={"width": 1280, "height": 800})
        return self

    def __exit__(self, *exc) -> None:
        self.context.close()
        self.browser.close()
        self._pw.stop()

    def page(self):
        return self.context.new_page()

    def shot(self, url: str, path: Path, *, wait: str) -> None:
        page = self.page()
        page.goto(url)
        page.wait_for_selector(wait, state="attached", timeout=10_000)
        # One refresh from the API has happened: the page shows what a user sees.
        page.wait_for_selector("body[data-refreshed]", state="attached", timeout=10_000)
        page.screenshot(path=str(path), full_page=True)
        page.close()
