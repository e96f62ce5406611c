"""`queuectl web`: the dashboard over the spool (Flask, Jinja, no CDN), read-only unless --allow-actions.

Pages are rendered on the server and then refresh themselves from the /api
JSON of the same view (static/app.js), so the HTML and the API never differ.
Every request opens the spool's index, answers from it and closes it; the
index is kept in step with the directories by one background thread (the
same sync() every command does), never by a request.

Security rules: loopback only unless a token is set; with a token every
request carries it; no writes unless --allow-actions, and then only POST
with the CSRF token of this server run (the actions are in web_actions.py).
"""

from __future__ import annotations

import hmac
import json
import ipaddress
import logging
import secrets
import socket
import threading
import time
from urllib.parse import urlencode

from flask import Flask, Response, abort, g, jsonify, redirect, render_template, request, url_for

from . import lazylog
from . import views, web_actions
from .errors import InvalidJob, JobNotFound, QueueError
from .metrics import render as render_metrics
from .spool import Spool

log = lazylog.get("queuectl.web")

TOKEN_COOKIE = "queuectl_token"
SYNC_INTERVAL = 2.0
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def is_loopback(bind: str) -> bool:
    if bind.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(bind: str, token: str | None) -> None:
    """Refuse to serve the queue beyond this machine without a token."""
    if token is not None and not token.strip():
        raise QueueError("the token is empty")
    if not is_loopback(bind) and not token:
        raise QueueError(f"binding {bind} (not a loopback address) needs --token or QUEUECTL_WEB_TOKEN")


def _host_name(host: str) -> str:
    """The Host header without its port: 127.0.0.1:8040 -> 127.0.0.1, [::1]:8040 -> [::1]."""
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0]


MAX_PAGE = 10**7  # 500 million jobs; SQLite's OFFSET must stay a 64-bit integer


def _page_arg() -> int:
    try:
        return min(MAX_PAGE, max(1, int(request.args.get("page", "1"))))
    except ValueError:
        return 1


FILTERS = ("q", "queue", "label", "sort", "order")
DEFAULTS = {"sort": "created", "order": "desc"}


def _filters() -> dict[str, str]:
    return {k: request.args.get(k, "") or DEFAULTS.get(k, "") for k in FILTERS}


def _filter_args(data: dict) -> dict[str, str]:
    """The filters in use, as query arguments for the page's API address."""
    return {k: data[k] for k in FILTERS if data[k] and data[k] != DEFAULTS.get(k)}


def create_app(root: str, *, token: str | None = None, allow_actions: bool = False) -> Flask:
    """The Flask app for the spool at root (which must exist)."""
    app = Flask(__name__)
    app.config.update(QUEUECTL_ROOT=root, QUEUECTL_TOKEN=token, QUEUECTL_ACTIONS=allow_actions,
                      QUEUECTL_CSRF=secrets.token_urlsafe(32))
    app.json.sort_keys = False
    # Only for the one-time result message of an action (flash); new each run.
    app.secret_key = secrets.token_bytes(32)
    app.config.update(SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_NAME="queuectl_session")
    app.jinja_env.filters.update(age=_fmt_age, when=_fmt_when, hm=_fmt_hm, pretty=_pretty)

    def spool() -> Spool:
        if "spool" not in g:
            g.spool = Spool(root, create=False)
        return g.spool

    @app.teardown_appcontext
    def _close(exc) -> None:  # noqa: ANN001
        sp = g.pop("spool", None)
        if sp is not None:
            sp.close()

    @app.before_request
    def _guard():
        if token is None:
            # DNS rebinding: a web page must not reach a token-less dashboard
            # through a name of its own that resolves to 127.0.0.1.
            if _host_name(request.host).lower() not in LOOPBACK_HOSTS:
                abort(403)
            return None
        given = request.args.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _unauthorized()
            # Set the cookie and drop the token from the address bar (and from Referer).
            args = {k: v for k, v in request.args.items() if k != "token"}
            resp = redirect(request.path + ("?" + urlencode(args) if args else ""))
            resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
            return resp
        auth = request.headers.get("Authorization", "")
        candidate = auth[7:] if auth.startswith("Bearer ") else request.cookies.get(TOKEN_COOKIE, "")
        if not candidate or not hmac.compare_digest(candidate.encode(), token.encode()):
            return _unauthorized()
        return None

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = _CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.errorhandler(JobNotFound)
    def _not_found(e):  # noqa: ANN001
        return _error(404, str(e))

    @app.errorhandler(InvalidJob)
    def _bad(e):  # noqa: ANN001
        return _error(404, str(e))

    @app.errorhandler(QueueError)
    def _failed(e):  # noqa: ANN001  (a spool gone or a full disk: say so, no traceback)
        log.warning("%s %s: %s", request.method, request.path, e)
        return _error(503, str(e))

    @app.context_processor
    def _globals() -> dict:
        return {"states": views.STATES, "actions": allow_actions, "actions_for": actions_for,
                "csrf_token": app.config["QUEUECTL_CSRF"], "spool_root": root,
                "here": request.full_path.rstrip("?") if request else "/"}

    # -- pages -------------------------------------------------------------------------

    @app.get("/")
    def overview():
        return render_template("overview.html", view="overview", api=url_for("api_overview"),
                               data=views.overview(spool()))

    @app.get("/jobs/<state>")
    def jobs(state: str):
        data = views.job_list(spool(), state, page=_page_arg(), **_filters())
        return render_template("list.html", view="list", data=data,
                               api=url_for("api_jobs", state=data["state"], page=data["page"], **_filter_args(data)))

    @app.get("/job/<job_id>")
    def job(job_id: str):
        data = views.job_detail(spool(), job_id)
        return render_template("job.html", view="job", data=data, api=url_for("api_job", job_id=data["id"]))

    @app.get("/dlq")
    def dlq():
        data = views.dead_letter(spool(), page=_page_arg(), **_filters())
        return render_template("dlq.html", view="dlq", data=data,
                               api=url_for("api_dlq", page=data["page"], **_filter_args(data)))

    @app.get("/rejected")
    def rejected():
        data = views.rejected(spool(), page=_page_arg())
        return render_template("rejected.html", view="rejected", data=data,
                               api=url_for("api_rejected", page=data["page"]))

    @app.get("/metrics")
    def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST
        return Response(render_metrics(spool()), content_type=CONTENT_TYPE_LATEST)

    # -- JSON ----------------------------------------------------------------------------

    @app.get("/api/overview")
    def api_overview():
        return jsonify(views.overview(spool()))

    @app.get("/api/jobs/<state>")
    def api_jobs(state: str):
        return jsonify(views.job_list(spool(), state, page=_page_arg(), **_filters()))

    @app.get("/api/job/<job_id>")
    def api_job(job_id: str):
        return jsonify(views.job_detail(spool(), job_id))

    @app.get("/api/job/<job_id>/log")
    def api_log(job_id: str):
        try:
            offset = int(request.args["offset"]) if "offset" in request.args else None
        except ValueError:
            offset = None
        data = views.log_tail(spool(), job_id, offset)
        state, _ = spool().find(views.valid_id(job_id))
        return jsonify({**data, "state": state.value})

    @app.get("/api/dlq")
    def api_dlq():
        return jsonify(views.dead_letter(spool(), page=_page_arg(), **_filters()))

    @app.get("/api/rejected")
    def api_rejected():
        return jsonify(views.rejected(spool(), page=_page_arg()))

    web_actions.register(app, spool, _error)

    return app


# The buttons a job's row and page show, by state (static/app.js has the same table).
ACTIONS_FOR = {"pending": ("hold", "cancel"), "failed": ("hold", "cancel"), "held": ("release", "cancel"),
               "processing": ("kill",), "completed": ("requeue", "delete"), "dead": ("requeue", "delete"),
               "cancelled": ("requeue", "delete")}


def actions_for(state: str) -> tuple[str, ...]:
    return ACTIONS_FOR.get(state, ())


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _fmt_when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch)) if epoch else ""


def _fmt_hm(epoch: float) -> str:
    """A time of the chart's axis, in UTC like every time on the dashboard."""
    return time.strftime("%H:%M", time.gmtime(epoch))


def _pretty(value: object) -> str:
    # Plain text for autoescaping; Flask's tojson would show < as \u003c.
    return json.dumps(value, indent=2, ensure_ascii=False)


def _error(code: int, message: str) -> Response:
    if request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json":
        resp = jsonify({"error": message})
    else:
        resp = Response(render_template("error.html", code=code, message=message),
                        content_type="text/html; charset=utf-8")
    resp.status_code = code
    return resp


def _unauthorized() -> Response:
    resp = Response("unauthorized: give the token (Authorization: Bearer T, or ?token=T)\n",
                    status=401, content_type="text/plain; charset=utf-8")
    resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


def _sync_forever(root: str, stop: threading.Event, interval: float) -> None:
    """Keep the index in step with the directories (drop-ins, hand moves) for the requests."""
    sp = Spool(root, create=False)
    try:
        while not stop.wait(interval):
            try:
                sp.sync()
            except Exception as e:  # a failed sync is retried; the dashboard must stay up
                log.warning("sync of %s failed: %s", root, e)
    finally:
        sp.close()


def _listen(bind: str, port: int) -> socket.socket:
    """A listening socket, or a QueueError: werkzeug would print its own lines and exit."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind.strip("[]"), port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise QueueError(f"cannot listen on {bind} port {port}: {e.strerror or e}") from None
    return sock


def serve(root: str, *, bind: str = "127.0.0.1", port: int = 8040, token: str | None = None,
          allow_actions: bool = False, ready=None) -> None:
    """Serve until interrupted. `ready(url)` is called once the socket listens."""
    from werkzeug.serving import make_server
    check_bind(bind, token)
    # Each open page polls every few seconds: a line per request would bury
    # the warnings and errors that matter.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(root, token=token, allow_actions=allow_actions)
    sock = _listen(bind, port)
    try:
        server = make_server(bind, sock.getsockname()[1], app, threaded=True, fd=sock.fileno())
    finally:
        sock.close()  # the server holds its own duplicate
    host = f"[{bind}]" if ":" in bind else bind
    url = f"http://{host}:{server.port}/"
    stop = threading.Event()
    syncer = threading.Thread(target=_sync_forever, args=(root, stop, SYNC_INTERVAL), daemon=True,
                              name="queuectl-web-sync")
    syncer.start()
    if ready is not None:
        ready(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.server_close()
        syncer.join(timeout=5)
