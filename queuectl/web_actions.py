"""The dashboard's actions: POST only, with --allow-actions and this server run's CSRF token.

Each calls the same core function as its command (controls, queues, the
spool's dead letter queue), so the web never moves a file its own way. A form
post is answered with a redirect back to the page it came from and the
result shown there; a request with the X-CSRF-Token header gets JSON.
Bulk actions on the dead letter queue ask for a confirmation first.
"""

from __future__ import annotations

import hmac
import signal
from typing import Callable

from flask import Flask, Response, abort, flash, jsonify, redirect, render_template, request, url_for

from . import controls, lazylog, queues, views
from .errors import InvalidJob, JobNotFound, QueueError, WrongState
from .job import JobState, check_queue
from .spool import Spool

log = lazylog.get("queuectl.web")

DONE = {"cancel": "cancelled", "hold": "held", "release": "released"}
JOB_ACTIONS = ("cancel", "hold", "release", "kill", "requeue", "retry", "delete", "priority")


def safe_next(default: str) -> str:
    """The page to go back to: a path of this site only (never //host or a scheme)."""
    nxt = request.form.get("next", "")
    # Browsers drop tabs and newlines from a URL and read \ as /: "/\t/evil" would be //evil.
    if (nxt.startswith("/") and not nxt.startswith("//") and "\\" not in nxt
            and all(32 < ord(c) < 127 for c in nxt)):
        return nxt
    return default


def _status(e: Exception) -> int:
    if isinstance(e, WrongState):
        return 409
    if isinstance(e, JobNotFound):
        return 404
    if isinstance(e, InvalidJob):  # a bad priority, a broken job file
        return 400
    return 503


def register(app: Flask, spool: Callable[[], Spool], error: Callable[[int, str], Response]) -> None:
    """Add the action routes to the dashboard's app."""

    def allowed() -> bool:
        """Checks the CSRF token; True for a form post (answered by a redirect), False for JSON."""
        if not app.config["QUEUECTL_ACTIONS"]:
            abort(error(403, "actions are disabled (start queuectl web with --allow-actions)"))
        header = request.headers.get("X-CSRF-Token")
        sent = header or request.form.get("csrf_token", "")
        if not hmac.compare_digest(sent.encode(), app.config["QUEUECTL_CSRF"].encode()):
            abort(error(403, "missing or wrong CSRF token"))
        return header is None

    def answer(form: bool, ok: bool, message: str, back: str, code: int = 200, **extra) -> Response:
        log.info("web: %s", message)
        if form:
            flash(message, "ok" if ok else "error")
            return redirect(back, code=303)
        resp = jsonify({"ok": ok, "message": message, **extra} if ok else {"error": message})
        resp.status_code = code
        return resp

    @app.post("/api/job/<job_id>/<action>")
    def job_action(job_id: str, action: str):
        form = allowed()
        if action not in JOB_ACTIONS:
            abort(404)
        job_id = views.valid_id(job_id)
        back = safe_next(url_for("job", job_id=job_id))
        sp = spool()
        try:
            message, state, back = _job_action(sp, job_id, action, back)
        except QueueError as e:
            return answer(form, False, str(e), back, _status(e))
        return answer(form, True, message, back, id=job_id, state=state)

    @app.post("/api/dlq/<action>")
    def dlq_action(action: str):
        form = allowed()
        if action not in ("retry-all", "purge-all"):
            abort(404)
        sp = spool()
        sp.sync()
        ids = sorted(sp.index.ids_in(JobState.DEAD))
        confirmed = request.form.get("confirm") == "yes" or (request.is_json and (request.get_json(silent=True)
                                                                                  or {}).get("confirm") is True)
        if not confirmed:
            if not form:
                return answer(False, False, 'send {"confirm": true} to ' + action.replace("-", " ") + " dead jobs",
                              "", 400)
            return Response(render_template("confirm.html", view="confirm", api="", action=action, ids=ids,
                                            next=safe_next(url_for("dlq"))))
        done = 0
        for job_id in ids:
            try:
                if action == "retry-all":
                    done += sp.requeue(job_id, missing_ok=True) is not None
                else:
                    done += sp.purge(job_id, JobState.DEAD, missing_ok=True)
            except QueueError as e:  # one locked or broken job does not stop the rest
                log.warning("web: %s %s: %s", action, job_id, e)
        what = "requeued" if action == "retry-all" else "removed"
        return answer(form, True, f"{what} {done} dead job{'' if done == 1 else 's'}",
                      safe_next(url_for("dlq")), count=done)

    @app.post("/api/queue/<name>/<action>")
    def queue_action(name: str, action: str):
        form = allowed()
        if action not in ("pause", "resume"):
            abort(404)
        back = safe_next(url_for("overview"))
        try:
            name = check_queue(name)
        except InvalidJob as e:
            return answer(form, False, str(e), back, 404)
        sp = spool()
        if action == "pause":
            message = f"paused queue {name}" if queues.pause(sp, name) else f"queue {name} was already paused"
        else:
            message = f"resumed queue {name}" if queues.resume(sp, name) else f"queue {name} was not paused"
            if queues.PAUSE_ALL in queues.paused(sp):
                message += " (every queue is still paused: `queuectl resume` lifts that)"
        return answer(form, True, message, back, queue=name, paused=queues.is_paused(name, queues.paused(sp)))


def _job_action(sp: Spool, job_id: str, action: str, back: str) -> tuple[str, str, str]:
    """(message, the job's state after, where to go back to) for one action on one job."""
    if action in ("cancel", "hold", "release"):
        job = controls.move(sp, job_id, action)
        return f"{DONE[action]} job {job.id}", job.state.value, back
    if action == "priority":
        raw = request.form.get("priority")
        if raw is None and request.is_json:
            raw = (request.get_json(silent=True) or {}).get("priority")
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise InvalidJob(f"priority must be an integer, not {str(raw)[:40]!r}") from None
        job = controls.set_priority(sp, job_id, value)
        return f"job {job.id} now has priority {job.priority}", job.state.value, back
    if action == "kill":
        killed, groups = controls.kill(sp, job_id, signal.SIGTERM)
        return f"sent SIGTERM to job {killed} ({len(groups)} process group{'' if len(groups) == 1 else 's'})", \
            "processing", back
    if action == "retry":  # the dead letter queue's retry: dead jobs only
        job = sp.requeue(job_id)
        if job is None:  # only with missing_ok
            raise JobNotFound(f"no job {job_id} in dead/")
        return f"requeued job {job.id}", job.state.value, back
    if action == "requeue":
        job = controls.requeue(sp, [job_id])[0]
        return f"requeued job {job.id}", job.state.value, back
    # delete: the job's page is gone; back to the list it was in, unless told otherwise
    state, _ = controls.find(sp, job_id)
    removed = controls.remove(sp, [job_id])[0]
    if back == url_for("job", job_id=job_id):
        back = url_for("dlq") if state is JobState.DEAD else url_for("jobs", state=state.value)
    return f"removed job {removed}", "removed", back
