"""The dashboard an operator acts from (issue 21), clicked through in headless Debian
chromium (Playwright) against `queuectl web --allow-actions` running as a process:
the actions and their results, the error where it is needed, the queues, the
chart, and sorting and search across states. Each action is checked on disk."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from browser_util import Browser, missing, place_job, queuectl, serve

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=str(missing()))]

@pytest.fixture
def browser():
    with Browser() as b:
        b.context.close()
        b.context = b.browser.new_context(viewport={"width": 1400, "height": 900})
        yield b


def where(spool: Path, job_id: str) -> list[str]:
    return [d for d in ("pending", "processing", "done", "failed", "dead", "held", "cancelled")
            if (spool / d / f"{job_id}.json").exists()]


def record(spool: Path, job_id: str) -> dict:
    (d,) = where(spool, job_id)
    return json.loads((spool / d / f"{job_id}.json").read_text())


def wait_until(what: str, fn, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def text(page, selector: str) -> str:
    return page.text_content(selector).strip()


def click_action(page, job_id: str, action: str) -> None:
    """Click a job row's button (on a list page) and wait for the page it goes back to."""
    with page.expect_navigation():
        page.click(f'tr[data-id="{job_id}"] button[data-action="{action}"]')


def result(page) -> str:
    return text(page, "#result")


def burst(spool: Path, ok=(0, 1)) -> None:
    queuectl(spool, "worker", "start", "--burst", timeout=120, ok=ok)


def test_every_action_clicked_in_chromium_moves_the_jobs_file(tmp_path, browser, start_proc):
    spool = tmp_path / "spool"
    queuectl(spool, "config", "set", "backoff_max", "0.05")
    for i in (1, 2, 3):
        queuectl(spool, "enqueue", "--id", f"done-{i}", "true")
    queuectl(spool, "enqueue", "--id", "dies", "--max-retries", "0", "echo 'disk quota exceeded' >&2; exit 4")
    queuectl(spool, "enqueue", "--id", "dies-too", "--max-retries", "0", "false")
    burst(spool)
    for job_id in ("wait-a", "wait-b", "wait-c"):
        queuectl(spool, "enqueue", "--id", job_id, "--delay", "1h", "true")
    with serve(spool, "--allow-actions") as url:
        page = browser.page()
        page.on("dialog", lambda d: d.accept())  # delete and kill ask first
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        page.goto(url + "jobs/pending")
        click_action(page, "wait-a", "hold")
        assert result(page) == "held job wait-a" and where(spool, "wait-a") == ["held"]
        assert page.url == url + "jobs/pending"  # back where the click was
        click_action(page, "wait-b", "cancel")
        assert result(page) == "cancelled job wait-b" and where(spool, "wait-b") == ["cancelled"]

        page.goto(url + "job/wait-a")
        with page.expect_navigation():
            page.click('#job-actions button[data-action="release"]')
        assert result(page) == "released job wait-a" and where(spool, "wait-a") == ["pending"]
        assert text(page, "#job-state") == "pending"
        page.fill('#job-actions input[name="priority"]', "7")
        with page.expect_navigation():
            page.click('#job-actions button[data-action="priority"]')
        assert result(page) == "job wait-a now has priority 7" and record(spool, "wait-a")["priority"] == 7
        page.screenshot(path=str(tmp_path / "action.png"), full_page=True)

        page.goto(url + "jobs/completed")
        click_action(page, "done-1", "requeue")
        assert result(page) == "requeued job done-1" and where(spool, "done-1") == ["pending"]
        assert record(spool, "done-1")["attempts"] == 0
        click_action(page, "done-2", "delete")
        assert result(page) == "removed job done-2" and where(spool, "done-2") == []
        assert not (spool / "logs" / "done-2.log").exists()

        page.goto(url + "job/wait-b")
        with page.expect_navigation():
            page.click('#job-actions button[data-action="requeue"]')
        assert result(page) == "requeued job wait-b" and where(spool, "wait-b") == ["pending"]
        with page.expect_navigation():
            page.click('#job-actions button[data-action="hold"]')
        assert where(spool, "wait-b") == ["held"]
        # An action that is refused says why, on the page, and changes nothing.
        page.fill('#job-actions input[name="priority"]', "99999999999")
        with page.expect_navigation():
            page.click('#job-actions button[data-action="priority"]')
        assert result(page) == "priority must be an integer, not 99999999999"
        assert page.locator("#result.result-error").count() == 1
        assert record(spool, "wait-b")["priority"] == 0 and where(spool, "wait-b") == ["held"]
        queuectl(spool, "cancel", "wait-b")

        # The dead letter queue: retry all and purge all, each confirmed on its own page.
        page.goto(url + "dlq")
        assert "disk quota exceeded" in text(page, 'tr[data-id="dies"] pre.tail')
        with page.expect_navigation():
            page.click('button[data-action="retry-all"]')
        assert text(page, "#confirm-count") == "2" and where(spool, "dies") == ["dead"]  # nothing yet
        with page.expect_navigation():
            page.click("#confirm")
        assert result(page) == "requeued 2 dead jobs" and page.url == url + "dlq"
        assert where(spool, "dies") == ["pending"] and where(spool, "dies-too") == ["pending"]
        queuectl(spool, "hold", "wait-a", "wait-c", "done-1")  # only the two doomed jobs run again
        burst(spool)
        page.goto(url + "dlq")
        with page.expect_navigation():
            page.click('button[data-action="purge-all"]')
        with page.expect_navigation():
            page.click("#confirm")
        assert result(page) == "removed 2 dead jobs" and where(spool, "dies") == where(spool, "dies-too") == []

        # Pause and resume a queue from the overview.
        page.goto(url)
        with page.expect_navigation():
            page.click('#queues tr[data-queue="default"] button[data-action="pause"]')
        assert result(page) == "paused queue default" and (spool / "paused" / "default").exists()
        assert text(page, '#queues tr[data-queue="default"] .badge') == "paused"
        with page.expect_navigation():
            page.click('#queues tr[data-queue="default"] button[data-action="resume"]')
        assert result(page) == "resumed queue default" and not (spool / "paused" / "default").exists()

        # Kill a running job from its page.
        queuectl(spool, "enqueue", "--id", "long", "--max-retries", "0", "sleep 60")
        queuectl(spool, "release", "done-1")
        queuectl(spool, "cancel", "done-1")
        start_proc("worker", "start", spool=spool)
        wait_until("the long job to run", lambda: where(spool, "long") == ["processing"])
        page.goto(url + "job/long")
        with page.expect_navigation():
            page.click('#job-actions button[data-action="kill"]')
        assert result(page).startswith("sent SIGTERM to job long")
        wait_until("the killed job to be recorded", lambda: where(spool, "long") == ["dead"])
        assert record(spool, "long")["history"][-1]["error"] == "killed by user (SIGTERM)"
        assert errors == []
    shot = tmp_path / "action.png"
    assert shot.stat().st_size > 10_000


def test_the_error_and_the_wait_are_shown_where_they_are_needed(tmp_path, browser, start_proc):
    spool = tmp_path / "spool"
    queuectl(spool, "config", "set", "backoff_max", "0.05")
    queuectl(spool, "enqueue", "--id", "sync-mirror", "--max-retries", "1",
             "echo starting; echo 'rsync: connection refused' >&2; echo 'rsync error: code 12' >&2; exit 12")
    queuectl(spool, "enqueue", "--id", "silent", "true")
    burst(spool)
    queuectl(spool, "enqueue", "--id", "first", "--hold", "true")
    queuectl(spool, "enqueue", "--id", "after-first", "--after", "first", "true")
    queuectl(spool, "enqueue", "--id", "tomorrow", "--delay", "1d", "true")
    queuectl(spool, "enqueue", "--id", "held-one", "--delay", "1d", "true")
    queuectl(spool, "hold", "held-one")
    queuectl(spool, "release", "held-one")
    queuectl(spool, "cancel", "held-one")
    later = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() + 600))
    place_job(spool, "failed", "fetch-feed", "curl -fsS https://example.invalid/feed", state="failed",
              attempts=1, next_run_at=later, last_error="exit 6", exit_code=6)
    queuectl(spool, "status")
    with serve(spool) as url:
        page = browser.page()
        page.goto(url + "dlq")
        # the last lines of the last attempt, not only `exit 12`
        tail = text(page, 'tr[data-id="sync-mirror"] pre.tail')
        assert tail.splitlines() == ["starting", "rsync: connection refused", "rsync error: code 12"]
        assert text(page, 'tr[data-id="sync-mirror"] .error') == "exit 12"

        page.goto(url + "jobs/failed")
        assert text(page, 'tr[data-id="fetch-feed"] .note').startswith("retry " + later[:10])
        assert "(in 9m" in text(page, 'tr[data-id="fetch-feed"] .note') or \
            "(in 10m" in text(page, 'tr[data-id="fetch-feed"] .note')

        page.goto(url + "jobs/pending")
        assert text(page, 'tr[data-id="after-first"] .note') == "waiting for first (held)"
        assert text(page, 'tr[data-id="tomorrow"] .note').startswith("scheduled ")
        assert "(in 23h 59m)" in text(page, 'tr[data-id="tomorrow"] .note') or \
            "(in 1d 0h)" in text(page, 'tr[data-id="tomorrow"] .note')

        page.goto(url + "job/silent")
        assert page.is_visible("#log-empty") and text(page, "#log-empty") == "no output"
        assert not page.is_visible("#log")

        page.goto(url + "job/held-one")
        events = [text(page, f"#history tbody tr:nth-child({i}) td:nth-child(2)") for i in (1, 2, 3)]
        assert events == ["held (from pending)", "released (from held)", "cancelled (from pending)"]
        assert text(page, "#history tbody tr:nth-child(1) td:nth-child(1)") == ""  # not an attempt

        # A running job: its row and page say who runs it, since when; its history says running.
        queuectl(spool, "enqueue", "--id", "long", "sleep 30")
        start_proc("worker", "start", spool=spool)
        wait_until("the long job to run", lambda: where(spool, "long") == ["processing"])
        page.goto(url + "jobs/processing")
        note = 'tr[data-id="long"] .note'
        page.wait_for_selector(note, timeout=15_000)  # the live refresh brings the row
        assert re.fullmatch(r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ, \d+s ago, by worker-0 on \S+",
                            text(page, note)), text(page, note)
        page.goto(url + "job/long")
        row = page.locator("#history tbody tr").last
        assert row.locator("td").nth(0).text_content() == "1"
        assert row.locator("td").nth(2).text_content() == "worker-0"
        assert row.locator("td").nth(5).text_content().startswith("running")
        assert "not run yet" not in text(page, "#history")


def test_queues_on_the_overview(tmp_path, browser):
    spool = tmp_path / "spool"
    queuectl(spool, "config", "set", "queue.gpu.concurrency", "2")
    for i in range(3):
        queuectl(spool, "enqueue", "--queue", "gpu", "--id", f"train-{i}", "true")
    queuectl(spool, "enqueue", "--id", "mail-1", "true")
    queuectl(spool, "enqueue", "--queue", "batch", "--id", "nightly", "--delay", "1h", "true")
    queuectl(spool, "pause", "--queue", "gpu")
    place_job(spool, "processing", "train-9", "sleep 1", state="pending", queue="gpu")
    queuectl(spool, "status")
    with serve(spool, "--allow-actions") as url:
        page = browser.page()
        page.goto(url)

        def row(queue: str) -> list[str]:
            return [c.strip() for c in page.locator(f'#queues tr[data-queue="{queue}"] td').all_text_contents()]
        gpu = row("gpu")
        assert gpu[:4] == ["gpu", "3", "1", "2"]  # pending, running, limit
        assert gpu[11] == "paused" and gpu[12] == "resume"
        assert row("default")[:4] == ["default", "1", "0", "—"] and row("default")[11:] == ["active", "pause"]
        assert row("batch")[6] == "1"  # scheduled
        # The live refresh draws the same rows.
        page.wait_for_selector("body[data-refreshed]", state="attached", timeout=15_000)
        again = row("gpu")
        assert again[:10] + again[11:] == gpu[:10] + gpu[11:]  # [10]: the oldest due job's age grew
        with page.expect_navigation():
            page.click('#queues tr[data-queue="gpu"] button[data-action="resume"]')
        assert not (spool / "paused" / "gpu").exists() and row("gpu")[11] == "active"


def _minute_on(label: str) -> str:
    """An axis label a minute later: "09:59" -> "10:00"; a count stays as it is."""
    if ":" not in label:
        return label
    h, m = map(int, label.split(":"))
    return f"{(h + (m + 1) // 60) % 24:02d}:{(m + 1) % 60:02d}"


def test_the_chart_shows_completed_and_dead_over_time_at_full_width(tmp_path, browser):
    spool = tmp_path / "spool"
    long_id = "report-2026-11-monthly-finance-rollup-eu-west"
    queuectl(spool, "enqueue", "--id", long_id, "true")
    queuectl(spool, "enqueue", "--id", "ok-2", "true")
    queuectl(spool, "enqueue", "--id", "bad", "--max-retries", "0", "false")
    burst(spool)
    with serve(spool) as url:
        page = browser.page()
        page.goto(url)
        # the minute the burst ran: the last bar, or the one before if the page loaded a minute later
        bars = page.locator("#chart g.bar")
        last = bars.last if "0 completed, 0 dead" not in (bars.last.locator("title").text_content() or "") \
            else bars.nth(bars.count() - 2)
        assert float(last.locator("rect.completed").get_attribute("height")) > 0
        assert float(last.locator("rect.dead").get_attribute("height")) > 0
        assert float(last.locator("rect.completed").get_attribute("height")) == pytest.approx(
            2 * float(last.locator("rect.dead").get_attribute("height")), abs=0.2)
        assert last.locator("title").text_content().endswith(": 2 completed, 1 dead")
        labels = page.locator("#chart .axis text").all_text_contents()
        assert len(labels) == 7 and labels[-1] in {time.strftime("%H:%M", time.gmtime(time.time() + d))
                                                   for d in (0, 60)}
        assert text(page, "#tp-completed") == "2" and text(page, "#tp-dead") == "1"
        page.wait_for_selector("body[data-refreshed]", state="attached", timeout=15_000)
        again = page.locator("#chart .axis text").all_text_contents()
        # redrawn the same, or (a refresh across a minute's turn) with every time a minute on
        assert again == labels or again == [_minute_on(x) for x in labels], (labels, again)
        # The page uses the window's width, and ids do not wrap at 1400 px.
        assert page.locator("main").bounding_box()["width"] > 1350
        page.goto(url + "jobs/all")
        cell = page.locator(f'tr[data-id="{long_id}"] td.id').bounding_box()
        one_line = page.locator('tr[data-id="bad"] td.id').bounding_box()
        assert cell["height"] == one_line["height"]


def test_sorting_and_search_across_states(tmp_path, browser):
    spool = tmp_path / "spool"
    queuectl(spool, "enqueue", "--id", "b-thumb", "--label", "images", "convert a.png b.jpg")
    queuectl(spool, "enqueue", "--id", "c-report", "--queue", "reports", "make report")
    queuectl(spool, "enqueue", "--id", "a-backup", "--max-retries", "0",
             "echo tar czf backup.tgz /srv >/dev/null; exit 1")
    burst(spool)
    queuectl(spool, "enqueue", "--id", "d-thumb", "--label", "images", "--priority", "5", "convert c.png d.jpg")
    with serve(spool) as url:
        page = browser.page()

        def ids() -> list[str]:
            return [i.strip() for i in page.locator("#jobs tbody td.id").all_text_contents()]
        page.goto(url)
        page.fill("header input[name=q]", "thumb")  # the search box on every page
        with page.expect_navigation():
            page.press("header input[name=q]", "Enter")
        assert page.url.startswith(url + "jobs/all?q=thumb")
        assert sorted(ids()) == ["b-thumb", "d-thumb"]  # one completed, one pending
        for q, expected in (("images", ["b-thumb", "d-thumb"]), ("tar czf", ["a-backup"]),
                            ("reports", ["c-report"]), ("REPORT", ["c-report"])):
            page.goto(url + "jobs/all?q=" + q.replace(" ", "+"))
            assert sorted(ids()) == expected, q
        page.goto(url + "jobs/all")
        with page.expect_navigation():
            page.click("#jobs th[data-sort=id] a")
        assert ids() == ["a-backup", "b-thumb", "c-report", "d-thumb"]
        with page.expect_navigation():
            page.click("#jobs th[data-sort=id] a")  # again: the other way
        assert ids() == ["d-thumb", "c-report", "b-thumb", "a-backup"]
        with page.expect_navigation():
            page.click("#jobs th[data-sort=priority] a")
        assert ids()[0] == "d-thumb"
        with page.expect_navigation():
            page.click("#jobs th[data-sort=state] a")
        states = [s.strip() for s in page.locator("#jobs tbody td:nth-child(2)").all_text_contents()]
        assert states == sorted(states)
        # The live refresh keeps the order and the filter.
        page.goto(url + "jobs/all?q=thumb&sort=id&order=asc")
        page.wait_for_selector("body[data-refreshed]", state="attached", timeout=15_000)
        assert ids() == ["b-thumb", "d-thumb"]
