"""The dashboard's data: one JSON-ready dict per view, read from the index.

No Flask here: web.py routes requests to these functions and renders them as
HTML or as /api JSON, and tests call them directly. A view never lists a
state directory (the index answers, with LIMIT/OFFSET on its indexes). The
index holds neither rejected/ nor the heartbeats, so those two small
directories are listed (rejected/ shown a page at a time).
"""

from __future__ import annotations

import os
import re
import stat
import time

from . import lazylog
from .errors import InvalidJob, JobNotFound
from .fsio import read_nofollow
from .rowfields import parse_tags
from .job import DEFAULT_QUEUE, JobState, check_id, parse_time
from .metrics import is_paused, snapshot, throughput
from .registry import CLAIM_RECORD, read_workers
from .spool import Spool

log = lazylog.get("queuectl.views")

PER_PAGE = 50
LOG_TAIL = 64 * 1024
OUTPUT_TAIL = 8 * 1024   # bytes of a log read for the last lines of its last attempt
OUTPUT_LINES = 6
REASON_LIMIT = 4096
STATES = [s.value for s in JobState]
WAITING = ("pending", "failed", "held")
# Sortable columns of the job lists: name -> SQL (a fixed list: never the request's text)
SORTS = {"created": "created", "id": "id", "state": "state", "priority": "priority", "attempts": "attempts",
         "queue": "queue", "command": "command", "finished": "finished"}
_HEADER = re.compile(r"^=== attempt \d+/\d+ started .*===$", re.M)
_FOOTER = re.compile(r"^=== attempt \d+/\d+ finished .*===$", re.M)


def _age(iso: object, now: float) -> float | None:
    if not isinstance(iso, str) or not iso:
        return None
    try:
        return round(max(0.0, now - parse_time(iso)), 3)
    except InvalidJob:
        return None


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def _span(secs: float) -> str:
    s = max(0, int(round(secs)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def running_jobs(spool: Spool) -> dict[str, dict]:
    """job id -> {worker, node, pid, started}: what live workers run now, from their claim
    records ("ID CLAIMED_AT", written before the claim) and heartbeats."""
    out: dict[str, dict] = {}
    for w in read_workers(spool):
        if not (w.alive and w.role == "worker"):
            continue
        started = None
        job = w.job
        try:
            data, _ = read_nofollow(spool.path("workers", w.file[:-5] + ".claim"), CLAIM_RECORD + 1)
            words = data[:CLAIM_RECORD].decode("ascii", "replace").split()
            if len(words) == 2:
                job, started = words[0], float(words[1])
        except (OSError, ValueError):
            pass
        if job:
            if started is not None and not (0 < started < 253402300800):  # year 10000: not a time
                started = None
            # "worker-0@node:supervisor pid" in heartbeats; the job's history names it worker-0
            out[job.lower()] = {"worker": w.id.split("@")[0], "node": w.node, "pid": w.pid, "started": started}
    return out


def last_output(spool: Spool, job_id: str, lines: int = OUTPUT_LINES) -> str:
    """The last lines the job's last attempt wrote (stdout and stderr share the log), or ""."""
    fd = _open_log(spool, job_id)
    if fd is None:
        return ""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, OUTPUT_TAIL, max(0, size - OUTPUT_TAIL))
    except OSError:
        return ""
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="replace")
    headers = list(_HEADER.finditer(text))
    if headers:
        text = text[headers[-1].end():]
    footer = _FOOTER.search(text)
    if footer:
        text = text[:footer.start()]
    out = [line[:300] for line in text.splitlines() if line.strip() and not line.startswith("=== queuectl:")]
    return "\n".join(out[-lines:])


def annotate(spool: Spool, jobs: list[dict], now: float) -> list[dict]:
    """Add to each row what its state leaves open: `note` (when a waiting job runs, what it
    waits for, who runs it since when) and, for failed and dead jobs, `output`: the last
    lines of the last attempt."""
    states = {j["state"] for j in jobs}
    blockers = spool.index.blockers() if states & set(WAITING) else {}
    running = running_jobs(spool) if "processing" in states else {}
    for j in jobs:
        j["note"], j["output"], j["running"] = "", "", None
        st = j["state"]
        if st in WAITING:
            waits = blockers.get(j["id"]) or blockers.get(j["id"].lower()) or []
            parts = []
            if waits:
                parts.append("waiting for " + ", ".join(f"{d} ({s})" for d, s, _any in waits))
            if j["run_at"] > now:
                verb = "retry" if st == "failed" else "scheduled"
                parts.append(f"{verb} {_when(j['run_at'])} (in {_span(j['run_at'] - now)})")
            elif st == "failed":
                parts.append("retry due now")
            j["note"] = "; ".join(parts)
        elif st == "processing":
            r = running.get(j["id"].lower())
            if r is not None:
                j["running"] = {**r, "elapsed": None if r["started"] is None else round(max(0.0, now - r["started"]), 3)}
                since = "" if r["started"] is None else f"started {_when(r['started'])}, {_span(now - r['started'])} ago, "
                j["note"] = f"{since}by {r['worker']} on {r['node']}"
            else:
                j["note"] = "claimed; no live worker is known to run it"
        if st in ("failed", "dead"):
            j["output"] = last_output(spool, j["id"])
    return jobs


def _row(r, tags: str | None) -> dict:
    return {"id": r.id, "state": r.state.value, "command": r.command, "priority": r.priority,
            "created": r.created, "run_at": r.run_at, "attempts": r.attempts, "max_retries": r.max_retries,
            "last_error": r.last_error, **parse_tags(tags)}


def overview(spool: Spool, *, now: float | None = None) -> dict:
    """Counts, per-queue state, throughput over the last hour, the oldest due job, workers by node."""
    now = time.time() if now is None else now
    snap = snapshot(spool, now=now)
    due = [(w["oldest_due"], w["oldest_id"]) for w in snap.waiting.values() if w["oldest_due"] is not None]
    oldest = min(due) if due else None
    workers = [{"id": w.get("id"), "node": w.get("node"), "host": w.get("host"), "pid": w.get("pid"),
                "job": w.get("job"), "since": w.get("since"), "heartbeat_at": w.get("heartbeat_at"),
                "heartbeat_age": _age(w.get("heartbeat_at"), now)} for w in snap.workers]
    nodes = {node: {"live": live, "busy": busy} for node, (live, busy) in sorted(snap.nodes().items())}
    queues = []
    for name, counts in snap.queues.items():
        queues.append({"name": name, "counts": counts, "running": counts["processing"],
                       "waiting": counts["pending"] + counts["failed"], "limit": snap.limits.get(name),
                       "paused": is_paused(name, snap.paused),
                       "scheduled": int(snap.waiting.get(name, {}).get("scheduled", 0)),
                       "blocked": int(snap.waiting.get(name, {}).get("blocked", 0)),
                       "oldest_due_age": round(snap.oldest_due_age(name), 3)})
    tp = throughput(spool, now=now)
    return {
        "spool": spool.root,
        "now": now,
        "counts": snap.counts,
        "total": sum(snap.counts.values()),
        "oldest_pending": None if not oldest else {
            "id": oldest[1], "due": oldest[0], "age_seconds": round(max(0.0, now - oldest[0]), 3)},
        "throughput": {**tp, "last_hour": sum(tp["finished"]), "completed_last_hour": sum(tp["completed"]),
                       "dead_last_hour": sum(tp["dead"])},
        "queues": queues,
        "all_paused": "ALL" in snap.paused,
        "workers": workers,
        "nodes": nodes,
        "dead": snap.counts["dead"],
        "rejected": snap.rejected,
        "attempts": snap.attempts,
        "retries": snap.retries,
    }


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def job_list(spool: Spool, state: str, *, page: int = 1, q: str = "", queue: str = "", label: str = "",
             sort: str = "created", order: str = "desc", per_page: int = PER_PAGE, now: float | None = None) -> dict:
    """One page of the jobs in a state (or in every state: "all"), sorted by a column of
    SORTS (newest first by default). q matches the id, command, queue or a label (contains,
    any case); `queue` and `label` must match exactly."""
    now = time.time() if now is None else now
    st = None if state == "all" else JobState.parse(state)  # InvalidJob for an unknown state
    page = max(1, page)
    sort = sort if sort in SORTS else "created"
    order = "asc" if order == "asc" else "desc"
    idx = spool.index
    where, args = [], []
    if st is not None:
        where.append("state = ?")
        args.append(st.value)
    if q:
        where.append("(id LIKE ? ESCAPE '\\' OR command LIKE ? ESCAPE '\\' OR queue LIKE ? ESCAPE '\\' "
                     "OR tags LIKE ? ESCAPE '\\')")
        args += [_like(q)] * 4
    if queue == DEFAULT_QUEUE:
        where.append("queue = 'default'")
    elif queue:
        # A named queue is in `tags` too, which the jobs_age index covers: no row is read
        # for the jobs it rejects (the queue column took 0.36 s on 160,000 finished jobs).
        where.append("tags LIKE ? ESCAPE '\\'")
        args.append(_like(f"\nqueue={queue}\n"))
    if label:
        where.append("tags LIKE ? ESCAPE '\\'")
        args.append(_like(f"\nlabel={label}\n"))
    # A search reads every row's command: one pass over the table (80 ms on 200,000 jobs)
    # beats walking an index and seeking each row (0.4 s when little matches).
    sql = ("SELECT id, state, command, priority, created, run_at, attempts, max_retries, last_error, tags, queue "
           "FROM jobs" + (" NOT INDEXED" if q else "") + (" WHERE " + " AND ".join(where) if where else "")
           + f" ORDER BY {SORTS[sort]} {order}, id {order} LIMIT ? OFFSET ?")
    rows = idx.db.execute(sql, [*args, per_page + 1, (page - 1) * per_page]).fetchall()
    jobs = []
    for r in rows[:per_page]:
        tags = parse_tags(r[9])
        jobs.append({"id": r[0], "state": JobState(r[1]).value, "command": r[2], "priority": r[3], "created": r[4],
                     "run_at": r[5], "attempts": r[6], "max_retries": r[7], "last_error": r[8],
                     "queue": r[10], "labels": tags["labels"]})
    filtered = bool(q or queue or label)
    counts = idx.counts()
    total = None if filtered else (sum(counts.values()) if st is None else counts[st.value])
    return {"state": "all" if st is None else st.value, "page": page, "per_page": per_page, "q": q,
            "queue": queue, "label": label, "sort": sort, "order": order, "now": now,
            "total": total, "has_next": len(rows) > per_page, "has_tags": True,
            "jobs": annotate(spool, jobs, now)}


def valid_id(job_id: str) -> str:
    """check_id for ids from URLs: anything else (path traversal included) is JobNotFound."""
    try:
        return check_id(job_id)
    except InvalidJob:
        raise JobNotFound(f"no job {job_id!r}") from None


def _event_text(h: dict) -> str:
    """A history entry that is not an attempt, in words: cancelled (from pending): reason."""
    event = str(h.get("event", ""))
    if event == "priority":
        return f"priority {h.get('from')} \u2192 {h.get('to')}"
    text = event
    if h.get("from") is not None:
        text += f" (from {h.get('from')})"
    if h.get("reason"):
        text += f": {h.get('reason')}"
    return text


def history_rows(job, running: dict | None, now: float) -> list[dict]:
    """The job's history as table rows: attempts with their worker and times, other events
    (cancelled, held, released, priority, requeued) in their own column, and the attempt
    running now, if any."""
    rows = []
    for h in job.history:
        if not isinstance(h, dict):
            continue
        if "attempt" in h:
            rows.append({"attempt": h.get("attempt"), "event": "", "worker": h.get("worker") or "",
                         "node": h.get("node") or h.get("host") or "", "started": h.get("started_at") or "",
                         "finished": h.get("finished_at") or "",
                         "exit": "" if h.get("exit_code") is None else h.get("exit_code"),
                         "error": h.get("error") or ""})
        else:
            rows.append({"attempt": "", "event": _event_text(h), "worker": "", "node": "",
                         "started": h.get("at") or "", "finished": "", "exit": "", "error": ""})
    if job.state is JobState.PROCESSING:
        started = running.get("started") if running else None
        rows.append({"attempt": job.attempts + 1, "event": "", "worker": running["worker"] if running else "",
                     "node": running["node"] if running else "",
                     "started": _when(started) if started else "",
                     "finished": "running" + (f" ({_span(now - started)})" if started else ""),
                     "exit": "", "error": ""})
    return rows


def job_detail(spool: Spool, job_id: str, *, now: float | None = None) -> dict:
    """The whole record (read from its file, the truth), its directory and the tail of its log."""
    now = time.time() if now is None else now
    job, path = spool.show(valid_id(job_id))
    tail = log_tail(spool, job.id)
    row = {"id": job.id, "state": job.state.value, "run_at": job.run_ts}
    annotate(spool, [row], now)
    return {"id": job.id, "state": job.state.value, "dir": os.path.basename(os.path.dirname(path)),
            "path": path, "queue": job.queue or DEFAULT_QUEUE, "priority": job.priority,
            "note": row["note"], "running": row["running"], "output": row["output"],
            "job": job.to_dict(), "history": job.history, "history_rows": history_rows(job, row["running"], now),
            "log": tail}


def _open_log(spool: Spool, job_id: str) -> int | None:
    try:
        return os.open(spool.path("logs", job_id + ".log"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None


def log_tail(spool: Spool, job_id: str, offset: int | None = None) -> dict:
    """Log bytes from offset (default: the last 64 KiB) to the end, as text.

    `offset` in the answer is where the next poll starts; a log shorter than
    the offset asked for was replaced, so it is read again from the tail.
    """
    job_id = valid_id(job_id)
    fd = _open_log(spool, job_id)
    if fd is None:
        return {"offset": 0, "start": 0, "size": 0, "text": "", "truncated": False}
    try:
        size = os.fstat(fd).st_size
        if offset is None or offset > size or offset < 0:
            offset = max(0, size - LOG_TAIL)
        # At most LOG_TAIL per answer: a poller catches up over several polls.
        end = min(size, offset + LOG_TAIL)
        data = os.pread(fd, end - offset, offset)
    finally:
        os.close(fd)
    return {"offset": offset + len(data), "start": offset, "size": size,
            "text": data.decode("utf-8", errors="replace"), "truncated": offset > 0}


def dead_letter(spool: Spool, *, page: int = 1, q: str = "", queue: str = "", label: str = "",
                sort: str = "created", order: str = "desc", per_page: int = PER_PAGE) -> dict:
    """Dead jobs, newest first, with their last error and the last lines of their output."""
    return job_list(spool, JobState.DEAD.value, page=page, q=q, queue=queue, label=label, sort=sort, order=order,
                    per_page=per_page)


def _read_reason(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.read(fd, REASON_LIMIT).decode("utf-8", errors="replace").strip()
    finally:
        os.close(fd)


def rejected(spool: Spool, *, page: int = 1, per_page: int = PER_PAGE) -> dict:
    """Files in rejected/, newest first, each with its reason (the files' contents are not shown)."""
    page = max(1, page)
    entries = []
    try:
        with os.scandir(spool.path("rejected")) as it:
            for e in it:
                if e.name.endswith(".reason"):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                entries.append((st.st_mtime, e.name, st.st_size))
    except FileNotFoundError:
        pass
    entries.sort(reverse=True)
    chosen = entries[(page - 1) * per_page:page * per_page]
    files = [{"name": name, "size": size, "mtime": mtime,
              "reason": _read_reason(spool.path("rejected", name + ".reason"))}
             for mtime, name, size in chosen]
    return {"page": page, "per_page": per_page, "total": len(entries),
            "has_next": page * per_page < len(entries), "files": files}

