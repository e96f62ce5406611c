"""The dashboard through Flask's test client: every route, escaping, the token
and bind rules, ids from URLs, and actions (off by default, CSRF-checked)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from queuectl.errors import QueueError
from queuectl.web import check_bind, create_app

SCRIPT = "<script>alert(1)</script>"
MARKUP_NAME = "<img src=x onerror=alert(1)>.json"  # file names cannot hold the "/" of </script>
PAGES = ["/", "/jobs/pending", "/jobs/processing", "/jobs/completed", "/jobs/done", "/jobs/failed",
         "/jobs/dead", "/job/evil", "/dlq", "/rejected", "/metrics"]
APIS = ["/api/overview", "/api/jobs/pending", "/api/jobs/dead", "/api/job/evil", "/api/job/evil/log",
        "/api/dlq", "/api/rejected"]


@pytest.fixture
def spool(run, run_proc, spool_dir):
    """A completed job whose command and log hold a <script>, a dead job, a rejected drop-in."""
    assert run("config", "set", "backoff_max", "0.05").exit_code == 0
    assert run("enqueue", "--id", "evil", f"echo '{SCRIPT}'").exit_code == 0
    assert run("enqueue", "--id", "doomed", "--max-retries", "0", f"echo '{SCRIPT}' >&2; exit 3").exit_code == 0
    assert run_proc("worker", "start", "--burst", timeout=120).returncode == 1  # 1: "doomed" ended in dead/
    assert run("enqueue", "--id", "waiting", "true").exit_code == 0
    (spool_dir / "pending" / MARKUP_NAME).write_text("{}")
    run("status")
    return spool_dir


@pytest.fixture
def client(spool):
    return create_app(str(spool)).test_client()


@pytest.mark.parametrize("path", PAGES + APIS)
def test_every_route_answers(client, path):
    r = client.get(path)
    assert r.status_code == 200, (path, r.data[:300])
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    if path.startswith("/api/"):
        assert r.is_json
    elif path != "/metrics":
        assert r.content_type.startswith("text/html")
        assert b"<script src=\"/static/app.js\" defer></script>" in r.data
        assert b"http://" not in r.data and b"https://" not in r.data  # nothing from outside


def test_static_files_ship(client):
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


def test_markup_in_jobs_logs_and_file_names_is_escaped(client):
    for path in ("/job/evil", "/job/doomed", "/jobs/completed", "/dlq", "/rejected", "/"):
        html = client.get(path).get_data(as_text=True)
        assert SCRIPT not in html and "<img src=x" not in html, path
    job = client.get("/job/evil").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in job  # in the command, the log and the record
    assert job.count("&lt;script&gt;") >= 3
    assert "&lt;img src=x onerror=alert(1)&gt;.json" in client.get("/rejected").get_data(as_text=True)
    # JSON carries the text as it is; the page's script puts it in with textContent
    assert SCRIPT in client.get("/api/job/evil").get_json()["log"]["text"]


def test_overview_numbers(client):
    d = client.get("/api/overview").get_json()
    assert d["counts"] == {"pending": 1, "processing": 0, "completed": 1, "failed": 0, "dead": 1, "held": 0, "cancelled": 0}
    assert (d["dead"], d["rejected"], d["attempts"], d["retries"]) == (1, 1, 2, 0)
    assert d["oldest_pending"]["id"] == "waiting"
    assert len(d["throughput"]["finished"]) == 60 and d["throughput"]["last_hour"] == 2
    assert sum(d["throughput"]["finished"][-2:]) == 2  # in this minute, or the one before
    html = client.get("/").get_data(as_text=True)
    assert 'id="count-completed" data-field="counts.completed">1<' in html


def test_job_page_and_log_follow(client, spool):
    d = client.get("/api/job/doomed").get_json()
    assert d["state"] == "dead" and d["dir"] == "dead" and d["job"]["last_error"] == "exit 3"
    assert [h["attempt"] for h in d["history"]] == [1]
    log = d["log"]
    assert log["start"] == 0 and "exit 3" in log["text"]
    more = client.get(f"/api/job/doomed/log?offset={log['offset']}").get_json()
    assert (more["text"], more["offset"], more["state"]) == ("", log["offset"], "dead")
    with open(spool / "logs" / "doomed.log", "a") as f:
        f.write("appended\n")
    more = client.get(f"/api/job/doomed/log?offset={log['offset']}").get_json()
    assert more["text"] == "appended\n"
    assert client.get("/api/job/waiting/log").get_json()["text"] == ""  # never ran: no log yet


@pytest.mark.parametrize("path", ["/job/nope", "/api/job/nope", "/api/job/nope/log", "/job/..%2F..%2Fetc%2Fpasswd",
                                  "/api/job/..%2F..%2Fetc%2Fpasswd", "/api/job/%2e%2e", "/job/..",
                                  "/api/job/a%00b", "/jobs/nosuchstate", "/api/job/..%2Findex.db/log"])
def test_unknown_and_bad_ids_are_404(client, path):
    assert client.get(path).status_code == 404


def test_lists_page_newest_first_and_filter(run, spool_dir):
    lines = "\n".join(json.dumps({"id": f"batch-{i:03d}", "command": "true"}) for i in range(120))
    assert run("enqueue", "--file", "-", "--quiet", input=lines).exit_code == 0
    c = create_app(str(spool_dir)).test_client()
    p1 = c.get("/api/jobs/pending").get_json()
    assert (p1["total"], p1["page"], p1["has_next"], len(p1["jobs"])) == (120, 1, True, 50)
    ids = [j["id"] for j in p1["jobs"]]
    assert ids == sorted(ids, reverse=True) and ids[0] == "batch-119"
    p3 = c.get("/api/jobs/pending?page=3").get_json()
    assert (len(p3["jobs"]), p3["has_next"], p3["jobs"][-1]["id"]) == (20, False, "batch-000")
    f = c.get("/api/jobs/pending?q=-01").get_json()
    assert [j["id"] for j in f["jobs"]] == [f"batch-{i:03d}" for i in range(19, 9, -1)]
    assert f["total"] is None  # a filtered list is not counted
    assert c.get("/api/jobs/pending?q=%25").get_json()["jobs"] == []  # LIKE wildcards are literal
    assert c.get("/api/jobs/pending?page=abc").get_json()["page"] == 1
    assert c.get("/api/jobs/pending?page=" + "9" * 30).get_json()["jobs"] == []
    assert c.get("/api/job/batch-000/log?offset=" + "9" * 30).get_json()["text"] == ""
    assert 'rel="next" href="?page=2"' in c.get("/jobs/pending").get_data(as_text=True)


def test_metrics_route_is_the_metrics_command(run, client):
    web = client.get("/metrics")
    assert web.content_type.startswith("text/plain")
    def steady(text):  # the oldest pending job's age moves between the two reads
        return [line for line in text.splitlines() if not line.startswith("queuectl_oldest_pending_age")]
    assert steady(web.get_data(as_text=True)) == steady(run("metrics").stdout)


# -- security -----------------------------------------------------------------------------


def test_binding_beyond_loopback_needs_a_token(run):
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("localhost", None)
    with pytest.raises(QueueError, match="needs --token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(QueueError, match="empty"):
        check_bind("0.0.0.0", " ")
    check_bind("0.0.0.0", "s3cret")
    r = run("web", "--bind", "0.0.0.0", env={"QUEUECTL_WEB_TOKEN": None})
    assert r.exit_code == 1
    assert r.stderr.splitlines() == ["Error: binding 0.0.0.0 (not a loopback address) needs --token or "
                                     "QUEUECTL_WEB_TOKEN"]
    assert r.stdout == ""


def test_with_a_token_every_request_carries_it(spool):
    c = create_app(str(spool), token="s3cret").test_client()
    for path in ("/", "/api/overview", "/metrics", "/static/app.js", "/job/evil"):
        assert c.get(path).status_code == 401, path
    assert c.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/api/overview", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/?token=wrong").status_code == 401
    r = c.get("/jobs/pending?token=s3cret&page=1")
    assert r.status_code == 302 and r.headers["Location"] == "/jobs/pending?page=1"  # token off the URL
    assert "HttpOnly" in r.headers["Set-Cookie"] and "SameSite=Strict" in r.headers["Set-Cookie"]
    assert c.get("/api/overview").status_code == 200  # the cookie now
    assert create_app(str(spool), token="s3cret").test_client().get("/").status_code == 401


def test_without_a_token_only_loopback_host_names_are_served(client):
    assert client.get("/", headers={"Host": "127.0.0.1:8040"}).status_code == 200
    assert client.get("/", headers={"Host": "[::1]:8040"}).status_code == 200
    assert client.get("/", headers={"Host": "attacker.example"}).status_code == 403  # DNS rebinding


def _csrf(client) -> str:
    html = client.get("/job/doomed").get_data(as_text=True)
    return html.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]


def test_actions_are_off_by_default(client, spool):
    assert _csrf(client) == ""
    assert "retry" not in client.get("/job/doomed").get_data(as_text=True).split("<h2>history")[0]
    r = client.post("/api/job/doomed/retry")
    assert r.status_code == 403 and "--allow-actions" in r.get_json()["error"]
    assert client.get("/api/job/doomed").get_json()["state"] == "dead"


def test_retry_needs_the_csrf_token(spool):
    c = create_app(str(spool), allow_actions=True).test_client()
    token = _csrf(c)
    assert len(token) > 20
    assert c.post("/api/job/doomed/retry").status_code == 403
    assert c.post("/api/job/doomed/retry", headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert c.get("/api/job/doomed/retry").status_code == 405
    assert c.get("/api/job/doomed").get_json()["state"] == "dead"
    r = c.post("/api/job/doomed/retry", headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.get_json() == {"ok": True, "message": "requeued job doomed", "id": "doomed",
                                                     "state": "pending"}
    assert (spool / "pending" / "doomed.json").exists()
    # the page's form: a plain POST with the token as a field, redirected back to the job
    assert c.post("/api/job/evil/retry", headers={"X-CSRF-Token": token}).status_code == 404  # not dead
    # a form post that fails goes back to the page, which shows why
    r = c.post("/api/job/evil/retry", data={"csrf_token": token}, follow_redirects=True)
    assert r.status_code == 200 and '<p class="result result-error" id="result" role="status">no job evil in dead/' \
        in r.get_data(as_text=True)
    assert c.post("/api/job/..%2Fx/retry", headers={"X-CSRF-Token": token}).status_code == 404


def test_web_command_serves_until_stopped(spool, start_proc):
    p = start_proc("web", "--port", "0")
    line = p.stdout.readline()
    assert line.startswith(f"serving {spool} on http://127.0.0.1:") and "(read-only)" in line
    url = line.split(" on ", 1)[1].split()[0]
    with urllib.request.urlopen(url + "api/overview", timeout=10) as resp:
        assert json.load(resp)["counts"]["completed"] == 1
    p.terminate()
    assert p.wait(timeout=10) is not None


def test_dlq_page_retry_buttons_post_a_form(run, spool):
    from browser_util import place_job
    place_job(spool, "dead", "doomed2", "false", state="dead", attempts=1, last_error="exit 1")
    run("status")  # a hand move reaches the index with the next sync (the server's thread does that)
    c = create_app(str(spool), allow_actions=True).test_client()
    html = c.get("/dlq").get_data(as_text=True)
    assert 'action="/api/job/doomed2/requeue"' in html and f'value="{_csrf(c)}"' in html
    assert 'action="/api/job/doomed2/delete" data-confirm="delete job doomed2?"' in html
    r = c.post("/api/job/doomed2/requeue", data={"csrf_token": _csrf(c), "next": "/dlq"})
    assert r.status_code == 303 and r.headers["Location"] == "/dlq"
    assert c.get("/api/job/doomed2").get_json()["state"] == "pending"
    for evil in ("//evil.example/x", "https://evil.example/", "\\evil", "/\t/evil.example", "/\\evil.example"):
        r = c.post("/api/job/doomed2/hold", data={"csrf_token": _csrf(c), "next": evil})
        assert r.headers["Location"] == "/job/doomed2"
        c.post("/api/job/doomed2/release", data={"csrf_token": _csrf(c)})
    assert "/api/job/" not in create_app(str(spool)).test_client().get("/dlq").get_data(as_text=True)


def test_a_port_in_use_is_one_error_line(run):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = run("web", "--port", port)
    assert r.exit_code == 1
    assert r.stderr.splitlines() == [f"Error: cannot listen on 127.0.0.1 port {port}: Address already in use"]


def test_a_vanished_spool_is_an_error_page_not_a_traceback(tmp_path, run):
    spool = tmp_path / "gone"
    run("status", spool=spool)
    c = create_app(str(spool)).test_client()
    import shutil
    shutil.rmtree(spool)
    r = c.get("/api/overview")
    assert r.status_code == 503 and r.get_json() == {"error": f"no spool at {spool}"}
    assert c.get("/").status_code == 503


def test_queue_and_label_filters_when_specs_carry_them(run, spool_dir):
    c = create_app(str(spool_dir)).test_client()
    assert run("enqueue", "--id", "plain", "true").exit_code == 0
    page = c.get("/jobs/pending").get_data(as_text=True)
    # every job has a queue (default), so the queue column and filter are always there
    assert 'name="queue"' in page and '<td>default</td>' in page
    specs = [{"id": "etl-1", "command": "true", "queue": "etl", "labels": ["nightly", "db"]},
             {"id": "etl-2", "command": "true", "queue": "etl", "label": "hourly"},
             {"id": "mail-1", "command": "true", "queue": "mail", "labels": ["nightly"]},
             # kept, not filterable (`labels` is validated since issue 11, `queue` since issue 12;
             # `label` is not queuectl's)
             {"id": "odd", "command": "true", "label": "a\nb"}]
    assert run("enqueue", "--file", "-", input="\n".join(map(json.dumps, specs))).exit_code == 0

    def ids(query):
        return [j["id"] for j in c.get("/api/jobs/pending" + query).get_json()["jobs"]]
    assert ids("?queue=etl") == ["etl-2", "etl-1"]
    assert ids("?label=nightly") == ["mail-1", "etl-1"]
    assert ids("?queue=etl&label=nightly") == ["etl-1"]
    assert ids("?queue=et") == []  # whole values, not substrings
    assert ids("?queue=etl&q=2") == ["etl-2"]
    d = c.get("/api/jobs/pending?queue=etl").get_json()
    assert (d["total"], d["has_tags"], d["jobs"][1]["labels"]) == (None, True, ["nightly", "db"])
    assert [(j["queue"], j["labels"]) for j in c.get("/api/jobs/pending").get_json()["jobs"]
            if j["id"] in ("odd", "plain")] == [("default", []), ("default", [])]
    page = c.get("/jobs/pending?queue=etl").get_data(as_text=True)
    assert 'name="queue" value="etl"' in page
    assert '<td>etl<span class="labels"> <span class="label">nightly</span> <span class="label">db</span></span></td>' in page
    assert 'data-api="/api/jobs/pending?page=1&amp;queue=etl"' in page
