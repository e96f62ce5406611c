"""Many hosts on one spool: three sshfs mounts of one export stand for three machines (tests/cluster.py).

Each simulated host runs its processes with its own node name (hostA, hostB,
hostC), its own XDG_CACHE_HOME (where its index lives) and its own mount, on
which flock and inotify do not see the other mounts. Every job leaves one
marker file per run (on local disk, named after the job, the node and the
shell's pid), so double runs are counted, not guessed.
"""

from __future__ import annotations

import collections
import os
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cluster import Cluster, Unavailable, kill_node, processes_of_node

pytestmark = pytest.mark.slow

LEASE, SKEW = 3, 1  # seconds: short, so recovery is quick to see (the defaults are 30 and 5)
BAD_LOG = re.compile(r"Traceback|index\.db is corrupt|was corrupt|database disk image|not a database|"
                     r"disk I/O error|IndexCorrupt|was missing|was empty")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    c = Cluster(base, 3)
    try:
        c.up()
    except Unavailable as e:
        pytest.skip(f"no sshfs cluster here: {e}")
    try:
        yield c
    finally:
        c.down()


class Hosts:
    """One spool in the cluster, its background processes, and its marker files."""

    def __init__(self, cluster: Cluster, name: str, tmp: Path):
        self.c = cluster
        self.name = name
        self.tmp = tmp
        self.marks = tmp / "marks"
        self.marks.mkdir()
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def cli(self, i: int, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.c.cli(i, self.name, *args, **kw)

    def ok(self, i: int, *args: str, **kw) -> str:
        r = self.cli(i, *args, **kw)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    def configure(self) -> None:
        self.ok(0, "config", "set", "lease", str(LEASE))
        self.ok(0, "config", "set", "clock_skew", str(SKEW))
        self.ok(0, "config", "set", "backoff_base", "1")

    def enqueue(self, jobs: list[tuple[str, str]]) -> None:
        """(id, shell snippet run before the marker is left)."""
        lines = []
        for job_id, before in jobs:
            mark = f"touch {self.marks}/{job_id}.$QUEUECTL_NODE.$$"
            lines.append(json.dumps({"id": job_id, "command": f"{mark}; {before}" if before else mark}))
        out = self.ok(0, "enqueue", "-q", "-f", "-", input="\n".join(lines) + "\n")
        assert out.strip() in (f"enqueued {len(jobs)} jobs", "enqueued 1 job")

    def start(self, i: int, *args: str, node: str | None = None) -> subprocess.Popen:
        log = self.tmp / f"{self.c.nodes[i]}-{len(self.logs)}.log"
        self.logs.append(log)
        p = self.c.start(i, self.name, "worker", "start", "--shared", *args, log=log, node=node)
        self.procs.append(p)
        return p

    def runs(self) -> collections.Counter:
        return collections.Counter(p.name.split(".")[0] for p in self.marks.iterdir())

    def runs_by(self) -> dict[str, list[str]]:
        by = collections.defaultdict(list)
        for p in self.marks.iterdir():
            by[p.name.split(".")[0]].append(p.name.split(".")[1])
        return by

    def counts(self, i: int) -> dict:
        return json.loads(self.ok(i, "status", "--json"))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def bad_lines(self) -> list[str]:
        return [line for log in self.logs for line in log.read_text(errors="replace").splitlines()
                if BAD_LOG.search(line)]


def wait_for(pred, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def done_ids(c: Cluster, name: str) -> set[str]:
    return {p.name[:-5] for p in (c.export / name / "done").iterdir() if p.name.endswith(".json")}


@pytest.fixture
def hosts(cluster, tmp_path, request):
    h = Hosts(cluster, re.sub(r"\W", "_", request.node.name)[:40], tmp_path)
    yield h
    h.stop()


def test_300_short_jobs_over_three_nodes_run_exactly_once(hosts):
    c = hosts.c
    hosts.configure()
    n = 300
    hosts.enqueue([(f"j{i:03d}", "") for i in range(n)])
    t0 = time.monotonic()
    ps = [hosts.start(i, "--count", "2", "--burst") for i in range(3)]
    for p in ps:
        assert p.wait(150) == 0
    elapsed = time.monotonic() - t0
    runs = hosts.runs()
    assert len(runs) == n and set(runs.values()) == {1}, {k: v for k, v in runs.items() if v != 1}
    assert len(done_ids(c, hosts.name)) == n
    by_node = collections.Counter(nodes[0] for nodes in hosts.runs_by().values())
    assert set(by_node) == set(c.nodes), by_node  # every node took part
    for i in range(3):
        r = hosts.cli(i, "check")
        assert r.returncode == 0 and r.stdout.startswith("ok:"), (i, r.stdout, r.stderr)
    for i in range(3):
        wait_for(lambda: hosts.counts(i)["completed"] == n and hosts.counts(i)["pending"] == 0
                 and hosts.counts(i)["processing"] == 0, 10, f"{c.nodes[i]}'s status to show {n} completed")
    assert hosts.bad_lines() == []
    print(f"300 jobs on 3 nodes x 2 workers: {elapsed:.1f}s, spread {dict(by_node)}")


def test_a_queue_older_than_the_lease_has_no_double_runs(hosts):
    """The issue's case was lease 5, a 6 s old queue, 30 jobs of `sleep 8`; scaled down to keep CI short:
    lease 3, a 4 s old queue, 10 jobs of `sleep 4` (each still outlives the lease)."""
    c = hosts.c
    hosts.configure()
    hosts.enqueue([(f"s{i:02d}", "sleep 4") for i in range(10)])
    time.sleep(LEASE + 1)
    for i in range(3):
        hosts.start(i, "--count", "2")
    wait_for(lambda: len(done_ids(c, hosts.name)) == 10, 60, "10 jobs done")
    runs = hosts.runs()
    assert sorted(runs.values()) == [1] * 10, runs
    assert hosts.bad_lines() == []
    for i in range(3):  # with the workers still running: each node's index lags only until its next scan
        r = hosts.cli(i, "check")
        assert r.returncode == 0 and r.stdout.startswith("ok:"), (i, r.stdout, r.stderr)


def test_a_killed_node_s_jobs_are_recovered_within_a_lease(hosts):
    c = hosts.c
    hosts.configure()
    n = 24
    hosts.enqueue([(f"k{i:02d}", "sleep 2") for i in range(n)])
    for i in range(3):
        hosts.start(i, "--count", "2")
    victim = c.nodes[1]
    claims = c.export / hosts.name / "workers"

    def running_on_victim():
        held = set()
        for f in claims.glob(f"{victim}.*.claim"):
            words = f.read_text().split()
            if words:
                held.add(words[0])
        return held if len(held) == 2 else None

    held = wait_for(running_on_victim, 30, f"{victim} running two jobs")
    killed_at = time.time()
    assert kill_node(victim)
    wait_for(lambda: len(done_ids(c, hosts.name)) == n, 90, f"all {n} jobs done")
    for job_id in held:
        job = json.loads((c.export / hosts.name / "done" / f"{job_id}.json").read_text())
        died = [h for h in job["history"] if h.get("error") == "worker died"]
        assert died, job["history"]
        from queuectl.job import parse_time
        took = parse_time(died[0]["finished_at"]) - killed_at
        assert took <= LEASE + 5, f"{job_id} recovered {took:.1f}s after the kill"
        print(f"{job_id} recovered {took:.1f}s after the kill (lease {LEASE}s, clock_skew {SKEW}s)")
    runs = hosts.runs()
    assert set(runs) == {f"k{i:02d}" for i in range(n)}  # nothing lost
    doubles = {k for k, v in runs.items() if v > 1}
    assert doubles <= held, (doubles, held)


def test_a_second_machine_with_the_same_node_name_refuses_to_start(hosts):
    c = hosts.c
    r = hosts.cli(1, "worker", "start", "--burst")
    assert r.returncode == 1
    assert re.fullmatch(r"Error: the spool \S+ is on a network filesystem \(fuse\.sshfs\): .*--shared.*\n",
                        r.stderr), r.stderr
    hosts.start(0, "--count", "1")
    wait_for(lambda: list((c.export / hosts.name / "workers").glob("hostA.*.json")), 20, "hostA's heartbeat")
    r = hosts.cli(1, "worker", "start", "--shared", "--count", "1", node="hostA", timeout=30)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert re.fullmatch(r"Error: node name hostA is already in use by another machine \(live heartbeat "
                        r"workers/hostA\.\d+\.json, .*\n", r.stderr), r.stderr
    # Its own name is fine, and `worker list` shows every node's workers.
    hosts.start(1, "--count", "1")
    ws = wait_for(lambda: [w for w in json.loads(hosts.ok(2, "worker", "list", "--json"))
                           if w["role"] == "worker"] if len(json.loads(hosts.ok(2, "worker", "list", "--json"))) >= 4
                  else None, 20, "two nodes' workers in worker list")
    assert {w["node"] for w in ws} == {"hostA", "hostB"}
    assert all(w["alive"] and w["age"] is not None and w["age"] < LEASE + SKEW + 30 for w in ws)


def test_a_node_cut_off_longer_than_the_lease_drops_its_result(hosts):
    """SIGSTOP stands in for a network partition: the node's job is recovered and run elsewhere,
    and when the node comes back its worker drops its own outcome instead of recreating the file."""
    c = hosts.c
    hosts.configure()
    hosts.start(1, "--count", "1")
    hosts.enqueue([("p", "sleep 3")])
    claims = c.export / hosts.name / "workers"
    wait_for(lambda: any(f.read_text().split()[:1] == ["p"] for f in claims.glob("hostB.*.claim")), 60,
             "hostB running p")
    frozen = processes_of_node("hostB")
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        hosts.start(2, "--count", "1")
        wait_for(lambda: "p" in done_ids(c, hosts.name), 30, "p recovered and run on hostC")
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    log_b = hosts.logs[0]
    wait_for(lambda: "dropping this worker's result" in log_b.read_text(), 20, "hostB to drop its result")
    spool = c.export / hosts.name
    assert [p.name for d in ("pending", "processing", "failed", "dead") for p in (spool / d).glob("*.json")] == []
    job = json.loads((spool / "done" / "p.json").read_text())
    assert [h.get("error") for h in job["history"]] == ["worker died", None]
    assert sorted(hosts.runs_by()["p"]) == ["hostB", "hostC"]  # the one double run: a node cut off mid-job
    for i in range(3):
        r = hosts.cli(i, "check")
        assert r.returncode == 0 and r.stdout.startswith("ok:"), (i, r.stdout, r.stderr)
