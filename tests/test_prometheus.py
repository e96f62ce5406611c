"""queuectl's metrics as Prometheus sees them: Debian's prometheus server scrapes
`queuectl web`'s /metrics and the textfile (through node_exporter's textfile
collector) on loopback, and its HTTP API is asked about them; the shipped alert
rules pass promtool, and the Grafana dashboard names only metrics that exist."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from browser_util import queuectl, serve

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "contrib" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "contrib" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "queuectl.json"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
METRIC = re.compile(r"\bqueuectl_[a-z_]+")

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="no promtool (apt-get install prometheus)")


def exported_names(spool: Path) -> set[str]:
    """Every sample name `queuectl metrics` prints for a spool with a limited, paused queue."""
    queuectl(spool, "config", "set", "queue.gpu.concurrency", "2")
    queuectl(spool, "enqueue", "--queue", "gpu", "true")
    text = queuectl(spool, "metrics").stdout
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


@needs_promtool
def test_alert_rules_pass_promtool_and_their_unit_tests():
    p = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "SUCCESS: 3 rules found" in p.stdout, p.stdout + p.stderr
    # Each alert fires (and the paused queue does not) on made-up series.
    p = subprocess.run([PROMTOOL, "test", "rules", ALERT_TESTS.name], capture_output=True, text=True,
                       timeout=60, cwd=ALERT_TESTS.parent)
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr


def test_dashboard_and_alerts_name_only_real_metrics(tmp_path):
    names = exported_names(tmp_path / "spool")
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] == "queuectl" and dash["panels"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    used = {m for e in exprs for m in METRIC.findall(e)}
    used_in_alerts = set(METRIC.findall(ALERTS.read_text()))
    assert used - names == set(), f"the dashboard names metrics queuectl does not export: {used - names}"
    assert used_in_alerts - names == set(), f"alerts.yml names unknown metrics: {used_in_alerts - names}"
    # The dashboard covers the metrics an operator acts on.
    for name in ("queuectl_jobs", "queuectl_jobs_finished_total", "queuectl_oldest_pending_age_seconds",
                 "queuectl_workers", "queuectl_jobs_scheduled", "queuectl_jobs_blocked"):
        assert name in used, name


# -- a real scrape ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # loopback only
        return json.loads(r.read())


def poll(what: str, fn, timeout: float = 60, every: float = 0.25):
    """fn() until it returns something true, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except OSError as e:  # not listening yet
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@contextlib.contextmanager
def daemon(argv: list[str], log: Path):
    with open(log, "wb") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield p
    finally:
        p.terminate()
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Prom:
    def __init__(self, base: str):
        self.base = base

    def query(self, q: str) -> list[dict]:
        data = get_json(self.base + "/api/v1/query?" + urllib.parse.urlencode({"query": q}))
        assert data["status"] == "success", data
        return data["data"]["result"]

    def values(self, q: str) -> dict[str, float]:
        """job label (queuectl or node) -> value of each series the query returns."""
        return {r["metric"].get("job", ""): float(r["value"][1]) for r in self.query(q)}


def burst(spool: Path, ok=(0, 1)) -> None:
    queuectl(spool, "worker", "start", "--burst", timeout=120, ok=ok)


@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus (apt-get install prometheus)")
def test_a_real_prometheus_scrape_across_a_clean(tmp_path):
    spool = tmp_path / "spool"
    queuectl(spool, "config", "set", "backoff_max", "0.05")
    queuectl(spool, "enqueue", "--id", "a", "true")
    queuectl(spool, "enqueue", "--id", "b", "true")
    queuectl(spool, "enqueue", "--id", "c", "--max-retries", "0", "false")
    queuectl(spool, "enqueue", "--id", "tomorrow", "--delay", "1d", "true")
    burst(spool)
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    queuectl(spool, "metrics", "--textfile", str(textdir))

    prom_port = free_port()
    with serve(spool) as web_url:
        web = urllib.parse.urlsplit(web_url).netloc
        targets = [("queuectl", web, "/metrics")]
        exporter = contextlib.nullcontext()
        if NODE_EXPORTER:
            node_port = free_port()
            exporter = daemon([NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{node_port}",
                               "--collector.disable-defaults", "--collector.textfile",
                               f"--collector.textfile.directory={textdir}"], tmp_path / "node_exporter.log")
            targets.append(("node", f"127.0.0.1:{node_port}", "/metrics"))
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(ALERTS)],
                  "scrape_configs": [{"job_name": job, "metrics_path": path, "static_configs": [{"targets": [t]}]}
                                     for job, t, path in targets]}
        (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        with exporter, daemon([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{prom_port}",
                               "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                              tmp_path / "prometheus.log") as prom_proc:
            prom = Prom(f"http://127.0.0.1:{prom_port}")
            jobs = {j for j, _t, _p in targets}
            try:
                poll("prometheus to be ready", lambda: get_json(prom.base + "/api/v1/status/buildinfo"))
                # Both targets up and scraped, every series labelled by queue.
                poll("both targets scraped", lambda: set(prom.values(
                    'queuectl_jobs{queue="default", state="completed"}')) == jobs)
                assert prom.values('queuectl_jobs{queue="default", state="completed"}') == dict.fromkeys(jobs, 2)
                assert prom.values('queuectl_jobs{queue="default", state="dead"}') == dict.fromkeys(jobs, 1)
                assert prom.values('queuectl_jobs_scheduled{queue="default"}') == dict.fromkeys(jobs, 1)
                # The delayed job is not "stuck": no age, no alert.
                assert prom.values('queuectl_oldest_pending_age_seconds{queue="default"}') == dict.fromkeys(jobs, 0)
                assert prom.query('count({__name__="queuectl_dead_letter_jobs"})') == []
                fin = 'queuectl_jobs_finished_total{queue="default", outcome="completed"}'
                poll("a few scrapes before the clean", lambda: prom.values(f"count_over_time({fin}[1m])")
                     and min(prom.values(f"count_over_time({fin}[1m])").values()) >= 3)

                # clean every finished job, then one more job completes
                queuectl(spool, "clean", "--all")
                queuectl(spool, "metrics", "--textfile", str(textdir))
                poll("the clean to be scraped", lambda: prom.values(
                    'queuectl_jobs{queue="default", state="completed"}') == dict.fromkeys(jobs, 0))
                queuectl(spool, "enqueue", "--id", "d", "true")
                burst(spool, ok=(0,))
                queuectl(spool, "metrics", "--textfile", str(textdir))
                poll("the new finish to be scraped", lambda: prom.values(fin) == dict.fromkeys(jobs, 3))

                # rate() across the clean: no reset, the one new finish only.
                assert prom.values(f"resets({fin}[5m])") == dict.fromkeys(jobs, 0)
                assert prom.values('resets(queuectl_attempts_total{queue="default"}[5m])') == dict.fromkeys(jobs, 0)
                rates = prom.values(f"rate({fin}[5m])")
                assert set(rates) == jobs and all(0 < r < 0.1 for r in rates.values()), rates
                inc = prom.values(f"increase({fin}[5m])")
                assert all(0.9 <= v < 2 for v in inc.values()), inc  # 1 (extrapolated), not 3 after a reset to 0
                # The shipped rules load and evaluate against real series.
                rules = get_json(prom.base + "/api/v1/rules")["data"]["groups"]
                assert [r["name"] for g in rules for r in g["rules"]] == [
                    "QueuectlQueueStuck", "QueuectlDeadLettersGrowing", "QueuectlNoWorkers"]
                assert all(r["health"] != "err" for g in rules for r in g["rules"]), rules
            except BaseException:
                print((tmp_path / "prometheus.log").read_text(errors="replace")[-3000:])
                raise
            assert prom_proc.poll() is None  # it ran all along
