#!/usr/bin/env python3
"""Benchmark of `queuectl metrics` and the dashboard on a big spool.

    python bench/observe.py                      # 200,000 jobs, 5 rounds
    python bench/observe.py --jobs 2000 --rounds 3 --markdown
    python bench/observe.py --screenshots docs/img   # the dashboard's screenshots (needs chromium)

The spool is built cheaply: canonical job files are written straight into
done/, dead/, failed/, pending/ and processing/ (with histories, so the
timing columns and histograms have data), then one `queuectl reindex` reads
them. Then each command and page is timed: `queuectl metrics` as a process
(what a cron job or node_exporter pays), pages through Flask's test client
(the server's own time, without a network). Figures are medians.
Targets: metrics < 0.5 s, every page < 200 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

# state directory -> share of the jobs
MIX = {"done": 0.80, "dead": 0.05, "failed": 0.025, "pending": 0.12, "processing": 0.005}
STATE_OF = {"done": "completed", "dead": "dead", "failed": "failed", "pending": "pending",
            "processing": "processing"}
PAGES = ["/", "/jobs/pending", "/jobs/completed", "/jobs/completed?page=1000", "/jobs/completed?q=00042",
         "/jobs/completed?q=nomatch", "/jobs/completed?queue=etl",
         "/job/{job}", "/dlq", "/rejected", "/metrics", "/api/overview", "/api/jobs/dead?page=20",
         "/api/job/{job}", "/api/job/{job}/log"]


def log(msg: str) -> None:
    print(f"[observe {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def queuectl(spool: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "queuectl", "--spool", str(spool), *args],
                          capture_output=True, text=True, check=check, cwd=REPO)


def build(spool: Path, n: int, seed: int = 1) -> str:
    """Write n canonical job files; return the id of a completed job (for the job pages)."""
    rng = random.Random(seed)
    if spool.exists():
        shutil.rmtree(spool)
    queuectl(spool, "status")  # creates the layout
    now = time.time()
    some_done = ""
    dirs = list(MIX)
    weights = [MIX[d] for d in dirs]
    for i in range(n):
        d = rng.choices(dirs, weights)[0]
        created = now - rng.uniform(60, 86400)
        job_id = f"job{i:07d}"
        rec = {"id": job_id, "command": f"process-item {i}", "state": STATE_OF[d], "attempts": 0,
               "max_retries": 2, "priority": 0, "timeout": None, "created_at": iso(created),
               "updated_at": iso(created), "next_run_at": None, "last_error": None,
               "exit_code": None, "history": []}
        if d != "pending":
            tries = {"done": 1, "dead": 3, "failed": 1, "processing": 0}[d]
            t = created + rng.expovariate(1 / 30)
            for a in range(1, tries + 1):
                run = rng.lognormvariate(-1, 1.2)
                ok = d == "done"
                rec["history"].append({"attempt": a, "worker": "worker-0", "host": "bench", "pid": 1,
                                       "started_at": iso(t), "finished_at": iso(min(t + run, now)),
                                       "exit_code": 0 if ok else 1, "error": None if ok else "exit 1"})
                t += run + 2 ** a
            rec["attempts"] = tries
            if d != "done" and tries:
                rec["last_error"], rec["exit_code"] = "exit 1", 1
            if d == "failed":
                rec["next_run_at"] = iso(now + 600)
        if d == "done" and not some_done:
            some_done = job_id
        with open(spool / d / f"{job_id}.json", "w") as f:
            f.write(json.dumps(rec) + "\n")
    (spool / "logs" / f"{some_done}.log").write_text("=== attempt 1/3 ===\n" + "line of output\n" * 5000)
    for k in range(30):
        (spool / "rejected" / f"bad{k}.json").write_text("{not json")
        (spool / "rejected" / f"bad{k}.json.reason").write_text("invalid JSON: Expecting property name\n")
    return some_done


def timed(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(spool: Path, job: str, rounds: int) -> list[tuple[str, float, float]]:
    """(what, median seconds, target seconds) rows."""
    rows = []
    rows.append(("`queuectl --version` (start-up floor)", timed(lambda: queuectl(spool, "--version"), rounds), 0))
    rows.append(("`queuectl status`", timed(lambda: queuectl(spool, "status"), rounds), 0))
    rows.append(("`queuectl metrics`", timed(lambda: queuectl(spool, "metrics"), rounds), 0.5))
    textdir = spool.parent / "textfile"
    textdir.mkdir(exist_ok=True)
    rows.append(("`queuectl metrics --textfile DIR`",
                 timed(lambda: queuectl(spool, "metrics", "--textfile", str(textdir)), rounds), 0.5))
    from queuectl.web import create_app
    client = create_app(str(spool)).test_client()
    for page in PAGES:
        url = page.format(job=job)

        def get(url=url):
            r = client.get(url)
            if r.status_code != 200:
                raise SystemExit(f"GET {url}: {r.status_code}")
        get()  # first hit compiles the template
        rows.append((f"GET `{url}`", timed(get, rounds), 0.2))
    return rows


def screenshots(out: Path) -> None:
    """Every page of the dashboard on a small live spool, and one action's result, as PNGs for the docs."""
    sys.path.insert(0, str(REPO / "tests"))
    from browser_util import Browser, demo_spool, iso, place_job, serve  # noqa: E402  (tests' helpers)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"queuectl-shots-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    supervisor = None
    try:
        spool, job = demo_spool(work / "spool")
        # An hour of history for the throughput chart: jobs that finished at
        # a rate that rises and falls, a few of them dead.
        rng = random.Random(7)
        now = time.time()
        for i in range(900):
            end = now - 3600 * (1 - (rng.random() ** 0.7))
            start = end - rng.uniform(0.05, 4)
            dead = rng.random() < 0.04
            place_job(spool, "dead" if dead else "done", f"import-{i:04d}", f"import-batch {i}",
                      state="dead" if dead else "completed", attempts=1, exit_code=1 if dead else 0,
                      last_error="exit 1" if dead else None, max_retries=0,
                      created_at=iso(start - rng.uniform(0, 20)), history=[
                          {"attempt": 1, "worker": "worker-0", "node": "demo", "host": "demo", "pid": 1,
                           "started_at": iso(start), "finished_at": iso(end), "exit_code": 1 if dead else 0,
                           "error": "exit 1" if dead else None}])
        queuectl(spool, "config", "set", "queue.gpu.concurrency", "1")
        queuectl(spool, "enqueue", "--id", "render-video", "echo rendering; sleep 600")
        queuectl(spool, "enqueue", "--id", "train-model", "--queue", "gpu", "echo epoch 1; sleep 600")
        queuectl(spool, "enqueue", "--id", "train-model-2", "--queue", "gpu", "--label", "nightly", "sleep 600")
        queuectl(spool, "enqueue", "--id", "publish-report", "--after", "render-video", "echo publish")
        queuectl(spool, "pause", "--queue", "mail")
        queuectl(spool, "enqueue", "--id", "newsletter", "--queue", "mail", "send-newsletter")
        supervisor = subprocess.Popen([sys.executable, "-m", "queuectl", "--spool", str(spool), "worker", "start",
                                       "--count", "2", "--stop-timeout", "1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:  # heartbeats name a job after their first beat
            beats = [json.loads(p.read_text()) for p in (spool / "workers").glob("*.json")]
            if sum(1 for b in beats if b.get("job")) >= 2:
                break
            time.sleep(0.2)
        later = work / "later.jsonl"  # scheduled for later: they wait in pending/
        later.write_text("".join(json.dumps({"id": f"digest-{k}", "command": f"send-digest {k}",
                                             "run_at": now + 3600 * k}) + "\n" for k in (1, 2, 3)))
        queuectl(spool, "enqueue", "--file", str(later))
        queuectl(spool, "enqueue", "--id", "resize-photos", "--hold", "--label", "images", "resize *.jpg")
        queuectl(spool, "enqueue", "--id", "old-export", "--delay", "2h", "export --all")
        queuectl(spool, "cancel", "old-export")
        pages = [("overview", "", "#workers"), ("all", "jobs/all", "#jobs"), ("pending", "jobs/pending", "#jobs"),
                 ("processing", "jobs/processing", "#jobs"), ("completed", "jobs/completed", "#jobs"),
                 ("failed", "jobs/failed", "#jobs"), ("held", "jobs/held", "#jobs"),
                 ("cancelled", "jobs/cancelled", "#jobs"), ("dlq", "dlq", "#jobs"), ("rejected", "rejected", "#rejected"),
                 ("job", f"job/{job}", "#log"), ("job-dead", "job/sync-mirror", "#log"),
                 ("job-running", "job/render-video", "#log"), ("search", "jobs/all?q=train", "#jobs")]
        with serve(spool, "--allow-actions") as url, Browser() as browser:
            browser.context.close()
            browser.context = browser.browser.new_context(viewport={"width": 1400, "height": 900})
            out.mkdir(parents=True, exist_ok=True)
            for name, path, wait in pages:
                browser.shot(url + path, out / f"{name}.png", wait=wait)
            # One action and its result: the dead letter queue's retry of a job.
            page = browser.page()
            page.goto(url + "dlq")
            with page.expect_navigation():
                page.click('tr[data-id="sync-mirror"] button[data-action="requeue"]')
            page.wait_for_selector("#result", timeout=10_000)
            page.screenshot(path=str(out / "action.png"), full_page=False)
            page.close()
        log(f"wrote {len(pages) + 1} screenshots in {out}")
    finally:
        if supervisor is not None:
            supervisor.terminate()
            supervisor.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workdir", default=str(HERE / "_work" / "observe"))
    ap.add_argument("--markdown", action="store_true", help="Print a table for bench/results.md.")
    ap.add_argument("--screenshots", metavar="DIR", help="Only make the dashboard's screenshots in DIR.")
    args = ap.parse_args()
    if args.screenshots:
        screenshots(Path(args.screenshots))
        return 0
    work = Path(args.workdir)
    spool = work / "spool"
    t0 = time.perf_counter()
    job = build(spool, args.jobs)
    log(f"wrote {args.jobs} job files in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    queuectl(spool, "reindex")
    reindex = time.perf_counter() - t0
    log(f"reindex: {reindex:.1f} s")
    rows = bench(spool, job, args.rounds)
    print(f"{args.jobs} jobs, median of {args.rounds} rounds; reindex took {reindex:.1f} s\n")
    print("| what | median | target |")
    print("|---|---|---|")
    missed = 0
    for what, secs, target in rows:
        verdict = ""
        if target:
            ok = secs < target
            missed += not ok
            verdict = f"< {target * 1000:.0f} ms ({'met' if ok else 'MISSED'})"
        print(f"| {what} | {secs * 1000:.1f} ms | {verdict} |")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if missed and not args.markdown else 0


if __name__ == "__main__":
    sys.exit(main())
