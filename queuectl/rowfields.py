"""The index's columns derived from a job's record: timing from its history, tags from its spec.

Both read parts of a file anyone may edit, so both skip what they cannot use
rather than fail.
"""

from __future__ import annotations

from .errors import InvalidJob
from .job import JobState, parse_time

MAX_TAG = 200


def tags_of(extra: dict) -> str | None:
    """`queue` and `label`/`labels` of a spec's own fields as "\nqueue=q\nlabel=a\n", or None.

    queuectl does not interpret these fields; specs that carry them can be
    filtered on in the dashboard. Values that are not short one-line strings
    are left out rather than refused: the job was accepted with them.
    """
    out = []
    for key, name in (("queue", "queue"), ("label", "label"), ("labels", "label")):
        value = extra.get(key)
        for v in (value if isinstance(value, list) else [value]):
            if isinstance(v, str) and v and len(v) <= MAX_TAG and "\n" not in v:
                out.append(f"{name}={v}")
    return "\n" + "\n".join(out) + "\n" if out else None


def parse_tags(tags: str | None) -> dict:
    """{"queue": str or None, "labels": [str]} from a tags column."""
    queue, labels = None, []
    for item in (tags or "").split("\n"):
        name, _, value = item.partition("=")
        if name == "queue" and queue is None:
            queue = value
        elif name == "label":
            labels.append(value)
    return {"queue": queue, "labels": labels}


def _epoch(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_time(value)
    except (InvalidJob, ValueError, OverflowError):
        # A worker records outcomes through row_values(): a hand-edited
        # history must never stop it, only leave a timing column empty.
        return None


def timing(history: list, state: JobState) -> tuple[float | None, float | None, float | None, int]:
    """(first start, finish, last attempt's run time, counted attempts) from a job's history.

    History is part of a file anyone may edit: entries that are not attempts
    (a dlq requeue) or carry bad times are skipped, never an error.
    """
    started = finished = run_seconds = None
    runs = 0
    last = None
    for entry in history:
        if not isinstance(entry, dict) or "attempt" not in entry:
            continue
        if entry.get("counted", True) is not False:
            runs += 1
        t0 = _epoch(entry.get("started_at"))
        if started is None and t0 is not None:
            started = t0
        last = (t0, _epoch(entry.get("finished_at")))
    if last is not None:
        t0, t1 = last
        if t0 is not None and t1 is not None:
            run_seconds = max(0.0, t1 - t0)
        if state in (JobState.COMPLETED, JobState.DEAD):
            finished = t1
    return started, finished, run_seconds, runs
