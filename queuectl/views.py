"""The dashboard's data: one JSON-ready dict per view, read from the index.

No Flask here: web.py routes requests to these functions and renders them as
HTML or as /api JSON, and tests call them directly. A view never lists a
state directory (the index answers, with LIMIT/OFFSET on its indexes). The
index holds neither rejected/ nor the heartbeats, so those two small
directories are listed (rejected/ shown a page at a time).
"""

from __future__ import annotations

import os
import stat
import time

from . import lazylog
from .errors import InvalidJob, JobNotFound
from .index import parse_tags
from .job import JobState, check_id, parse_time
from .metrics import snapshot, throughput
from .spool import Spool

log = lazylog.get("queuectl.views")

PER_PAGE = 50
LOG_TAIL = 64 * 1024
REASON_LIMIT = 4096
STATES = [s.value for s in JobState]


def _age(iso: object, now: float) -> float | None:
    if not isinstance(iso, str) or not iso:
        return None
    try:
        return round(max(0.0, now - parse_time(iso)), 3)
    except InvalidJob:
        return None


def _row(r, tags: str | None) -> dict:
    return {"id": r.id, "state": r.state.value, "command": r.command, "priority": r.priority,
            "created": r.created, "attempts": r.attempts, "max_retries": r.max_retries,
            "last_error": r.last_error, **parse_tags(tags)}


def overview(spool: Spool, *, now: float | None = None) -> dict:
    """Counts, throughput over the last hour, the oldest pending job, workers by node."""
    now = time.time() if now is None else now
    snap = snapshot(spool, now=now)
    oldest = spool.index.rows(JobState.PENDING, 1)
    workers = [{"id": w.get("id"), "host": w.get("host"), "pid": w.get("pid"), "job": w.get("job"),
                "since": w.get("since"), "heartbeat_at": w.get("heartbeat_at"),
                "heartbeat_age": _age(w.get("heartbeat_at"), now)} for w in snap.workers]
    nodes = {host: {"live": live, "busy": busy} for host, (live, busy) in sorted(snap.nodes().items())}
    tp = throughput(spool, now=now)
    return {
        "spool": spool.root,
        "now": now,
        "counts": snap.counts,
        "total": sum(snap.counts.values()),
        "oldest_pending": None if not oldest else {
            "id": oldest[0].id, "created": oldest[0].created,
            "age_seconds": round(max(0.0, now - oldest[0].created), 3)},
        "throughput": {**tp, "last_hour": sum(tp["finished"])},
        "workers": workers,
        "nodes": nodes,
        "dead": snap.counts["dead"],
        "rejected": snap.rejected,
        "attempts": snap.attempts,
        "retries": snap.retries,
    }


def job_list(spool: Spool, state: str, *, page: int = 1, q: str = "", queue: str = "", label: str = "",
             per_page: int = PER_PAGE) -> dict:
    """One page of the jobs in a state, newest first; optionally only ids containing q,
    and only jobs whose spec has this `queue` or `label` (fields queuectl keeps, if given)."""
    st = JobState.parse(state)  # InvalidJob for an unknown state
    page = max(1, page)
    idx = spool.index
    rows = idx.page(st, offset=(page - 1) * per_page, limit=per_page + 1, id_contains=q or None,
                    queue=queue or None, label=label or None)
    filtered = bool(q or queue or label)
    return {"state": st.value, "page": page, "per_page": per_page, "q": q, "queue": queue, "label": label,
            "total": None if filtered else idx.counts()[st.value], "has_next": len(rows) > per_page,
            "has_tags": idx.has_tags(), "jobs": [_row(r, tags) for r, tags in rows[:per_page]]}


def valid_id(job_id: str) -> str:
    """check_id for ids from URLs: anything else (path traversal included) is JobNotFound."""
    try:
        return check_id(job_id)
    except InvalidJob:
        raise JobNotFound(f"no job {job_id!r}") from None


def job_detail(spool: Spool, job_id: str) -> dict:
    """The whole record (read from its file, the truth), its directory and the tail of its log."""
    job, path = spool.show(valid_id(job_id))
    tail = log_tail(spool, job.id)
    return {"id": job.id, "state": job.state.value, "dir": os.path.basename(os.path.dirname(path)),
            "path": path, "job": job.to_dict(), "history": job.history, "log": tail}


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
                per_page: int = PER_PAGE) -> dict:
    """Dead jobs, newest first, with their last error."""
    return job_list(spool, JobState.DEAD.value, page=page, q=q, queue=queue, label=label, per_page=per_page)


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

