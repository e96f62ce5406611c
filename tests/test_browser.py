"""The dashboard in a real browser: headless Debian chromium driven by Playwright,
against `queuectl web` running as a process."""

from __future__ import annotations

import re

import pytest

from browser_util import Browser, demo_spool, missing, queuectl, serve

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=str(missing()))]


@pytest.fixture
def browser():
    with Browser() as b:
        yield b


def _text(page, selector: str) -> str:
    return page.text_content(selector).strip()


def test_overview_shows_the_spool_and_follows_it_live(tmp_path, browser):
    spool, job = demo_spool(tmp_path / "spool")
    with serve(spool) as url:
        page = browser.page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        counts = {s: _text(page, f"#count-{s}") for s in ("pending", "processing", "completed", "failed", "dead")}
        assert counts == {"pending": "2", "processing": "1", "completed": "4", "failed": "1", "dead": "1"}
        assert _text(page, "#count-rejected") == "1"
        assert _text(page, "#oldest").startswith("nightly-1")
        assert page.locator("#chart rect.completed").count() == 60 and page.locator("#chart rect.dead").count() == 60
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

        # A job enqueued from the CLI shows up without a reload: the page
        # fetches /api/overview every few seconds.
        # (The CSP forbids the string eval of wait_for_function: selectors poll instead.)
        page.evaluate("window.queuectlMarker = 1")
        queuectl(spool, "enqueue", "--id", "late-arrival", "true")
        page.wait_for_selector("#count-pending:text-is('3')", timeout=15_000)
        assert page.evaluate("window.queuectlMarker") == 1  # the same document: not reloaded

        page.goto(url + "jobs/pending")
        assert page.locator("#jobs tbody tr").first.text_content().startswith("late-arrival")
        queuectl(spool, "enqueue", "--id", "later-still", "true")
        page.wait_for_selector("#jobs tbody tr:first-child >> text=later-still", timeout=15_000)

        page.goto(url + f"job/{job}")
        assert _text(page, "#job-state") == "completed"
        assert "building the report" in _text(page, "#log")
        assert page.locator("#history tbody tr").count() == 1
        page.screenshot(path=str(tmp_path / "job.png"), full_page=True)
        assert errors == []
    assert (tmp_path / "overview.png").stat().st_size > 10_000
    assert (tmp_path / "job.png").stat().st_size > 10_000


def test_job_page_follows_a_running_log(tmp_path, browser, start_proc):
    spool = tmp_path / "spool"
    queuectl(spool, "enqueue", "--id", "ticker",
             "for i in 1 2 3 4 5 6; do echo tick-$i; sleep 0.5; done; echo '<b>bold</b>'")
    with serve(spool) as url:
        page = browser.page()
        page.goto(url + "job/ticker")
        assert _text(page, "#job-state") == "pending"
        start_proc("worker", "start", "--burst", spool=spool)
        # The log grows while the page is open, and so does the page (no reload).
        page.wait_for_selector("#log >> text=tick-2", timeout=20_000)
        page.wait_for_selector("#job-state:text-is('completed')", timeout=30_000)
        page.wait_for_selector("#log >> text=<b>bold</b>", timeout=10_000)
        assert page.locator("#log b").count() == 0  # shown as text, never as markup
        log = _text(page, "#log")
        assert [int(n) for n in re.findall(r"tick-(\d)", log)] == [1, 2, 3, 4, 5, 6]  # each line once


def test_token_protected_dashboard_in_the_browser(tmp_path, browser):
    spool = tmp_path / "spool"
    queuectl(spool, "enqueue", "--id", "secret-job", "true")
    with serve(spool, "--token", "t0ken") as url:
        page = browser.page()
        assert page.goto(url).status == 401
        page.goto(url + "?token=t0ken")
        assert page.url == url  # the token left the address bar, the cookie carries it
        assert _text(page, "#count-pending") == "1"
        # the live refresh goes through with the cookie too
        page.wait_for_selector("body[data-refreshed]", state="attached", timeout=15_000)
        assert _text(page, "#live") == "live"
