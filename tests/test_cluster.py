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


@pytest.fixture(scope="module", params=["sshfs", "glusterfs"])
def cluster(request, tmp_path_factory):
    """Each test runs on three sshfs mounts (README's options) and on three GlusterFS mounts (defaults)."""
    if request.param == "glusterfs":
        yield request.getfixturevalue("gluster")
        return
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
        out = self.ok(0, "enqueue", "-q", "--file", "-", input="\n".join(lines) + "\n")
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

    def claimed_by_victim() -> set[str]:
        held = set()
        for f in claims.glob(f"{victim}.*.claim"):
            words = f.read_text().split()
            if words:
                held.add(words[0])
        return held

    def running_on_victim():
        # A claim is announced before its rename, so a claim file alone may name a job another host won:
        # a job is the victim's once its command left the victim's marker.
        held = {j for j in claimed_by_victim() if list(hosts.marks.glob(f"{j}.{victim}.*"))}
        return held if len(held) == 2 else None

    wait_for(running_on_victim, 30, f"{victim} running two jobs")
    killed_at = time.time()
    assert kill_node(victim)
    # What the victim held when it died: its claims (frozen now) whose job it started and had not finished.
    done = c.export / hosts.name / "done"
    held = {j for j in claimed_by_victim()
            if list(hosts.marks.glob(f"{j}.{victim}.*")) and not (done / f"{j}.json").exists()}
    assert held, "both of the victim's jobs finished before the kill landed"
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
    assert re.fullmatch(rf"Error: the spool \S+ is on a network filesystem \(fuse\.{c.kind}\): .*--shared.*\n",
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
    and when the node comes back its worker drops its own outcome instead of recreating the file.
    (On GlusterFS the frozen node's flock still holds the job: test_a_frozen_node_keeps_its_locked_job.)"""
    c = hosts.c
    if c.kind == "glusterfs":
        pytest.skip("GlusterFS honours the frozen node's flock: see test_a_frozen_node_keeps_its_locked_job")
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


def test_a_frozen_node_keeps_its_locked_job(hosts):
    """Where locks cross hosts (GlusterFS) a node's flock outlives its lease while its mount is
    alive: a frozen node's job is not recovered behind its back, and runs once, when it resumes.
    (A dead node's locks are freed by the server: test_a_killed_node_s_jobs_are_recovered_within_a_lease.)"""
    c = hosts.c
    if c.kind != "glusterfs":
        pytest.skip("flock does not cross sshfs mounts: see test_a_node_cut_off_longer_than_the_lease_drops_its_result")
    hosts.configure()
    hosts.start(1, "--count", "1")
    hosts.enqueue([("p", "sleep 2")])
    claims = c.export / hosts.name / "workers"
    # The claim record is written before the claim's rename: wait for the job in processing/ too.
    wait_for(lambda: any(f.read_text().split()[:1] == ["p"] for f in claims.glob("hostB.*.claim"))
             and (c.export / hosts.name / "processing" / "p.json").exists(), 60, "hostB running p")
    frozen = processes_of_node("hostB")
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        hosts.start(2, "--count", "1")
        time.sleep(LEASE + SKEW + 4)  # past the lease and a recovery scan: hostC must leave p alone
        assert "p" not in done_ids(c, hosts.name)
        assert (c.export / hosts.name / "processing" / "p.json").exists()
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    wait_for(lambda: "p" in done_ids(c, hosts.name), 30, "p done once hostB resumed")
    job = json.loads((c.export / hosts.name / "done" / "p.json").read_text())
    assert [h.get("error") for h in job["history"]] == [None]
    assert hosts.runs_by()["p"] == ["hostB"]
    assert hosts.bad_lines() == []


def _at_once(c: Cluster, name: str, calls: list[tuple[int, list[str], str | None]]) -> list[subprocess.CompletedProcess]:
    """Start every (host, args, node) CLI call at the same instant; their results, in order."""
    import sys
    procs = [subprocess.Popen([sys.executable, "-m", "queuectl", "--spool", str(c.spool(i, name)), *args],
                              env=c.env(i, node), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i, args, node in calls]
    out = []
    for p, (_i, args, _n) in zip(procs, calls):
        stdout, stderr = p.communicate(timeout=60)
        out.append(subprocess.CompletedProcess(args, p.returncode, stdout, stderr))
    return out


def test_ids_are_unique_across_hosts_case_variants_included(hosts):
    """An accepted job is never rejected later: of Job1 on one host and job1 on another, one is refused."""
    c = hosts.c
    hosts.ok(1, "status")  # hostB's index is built now, before hostA's job exists
    hosts.ok(0, "enqueue", "--id", "Job1", "true")
    r = hosts.cli(1, "enqueue", "--id", "job1", "true")
    assert r.returncode == 1 and r.stderr == "Error: job Job1 already exists (in pending/)\n", (r.stdout, r.stderr)
    rounds = 6
    for k in range(rounds):  # at the same instant, from two hosts
        rs = _at_once(c, hosts.name, [(0, ["enqueue", "--id", f"Race{k}", "true"], None),
                                      (1, ["enqueue", "--id", f"race{k}", "true"], None)])
        assert sorted(r.returncode for r in rs) == [0, 1], [(r.stdout, r.stderr) for r in rs]
    hosts.configure()
    p = hosts.start(2, "--count", "2", "--burst")
    assert p.wait(120) == 0
    spool = c.export / hosts.name
    assert sorted(os.listdir(spool / "rejected")) == []
    assert len(done_ids(c, hosts.name)) == 1 + rounds
    assert hosts.bad_lines() == []


# Loaded by every Python of a test that puts its directory on PYTHONPATH: a supervisor that passed
# its start-up check for clones waits there until its twin has passed it too, before either
# writes a heartbeat. Both are then in the window that check cannot close.
TWIN_BARRIER = """
import os, time
_dir = os.environ.get("TWIN_BARRIER")
if _dir:
    from queuectl import supervisor as _s
    _check = _s.Supervisor.check_hosts

    def check_hosts(self):
        _check(self)
        node = os.environ["QUEUECTL_NODE"]
        open(os.path.join(_dir, f"{node}.{os.getpid()}"), "w").close()
        deadline = time.monotonic() + 30
        while sum(n.startswith(node + ".") for n in os.listdir(_dir)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)

    _s.Supervisor.check_hosts = check_hosts
"""


def test_two_supervisors_with_one_node_name_started_at_once_leave_one_running(hosts, tmp_path, monkeypatch):
    """Each checks for a clone before its own first heartbeat: started together, both passed it and
    both kept running. Here both are held between that check and their first heartbeat until both
    have passed it (so neither can see the other there): the later one must stop on its own."""
    c = hosts.c
    hosts.configure()
    hook, barrier = tmp_path / "hook", tmp_path / "barrier"
    hook.mkdir(), barrier.mkdir()
    (hook / "sitecustomize.py").write_text(TWIN_BARRIER)
    monkeypatch.setenv("PYTHONPATH", str(hook))
    monkeypatch.setenv("TWIN_BARRIER", str(barrier))
    for k in range(2):
        ps = [hosts.start(i, "--count", "1", node=f"twin{k}") for i in (0, 1)]
        wait_for(lambda: len([n for n in os.listdir(barrier) if n.startswith(f"twin{k}.")]) == 2, 30,
                 "both twins past their start-up check")
        wait_for(lambda: any(p.poll() is not None for p in ps), 30, "one of the twins to stop")
        time.sleep(LEASE + SKEW)  # and the other goes on
        codes = [p.poll() for p in ps]
        assert sorted(codes, key=str) == [1, None], (k, codes)
        stopped = hosts.logs[-2 + codes.index(1)].read_text()
        assert f"node name twin{k} is also in use by another machine" in stopped and "started first" in stopped, \
            stopped
        hosts.stop()


def test_a_dead_node_s_job_is_recovered_while_every_survivor_is_busy(hosts):
    """Workers look for orphans only between jobs: the supervisor must not wait for one to finish."""
    c = hosts.c
    hosts.configure()
    hosts.start(1, "--count", "1")
    hosts.enqueue([("v", "sleep 60")])
    claims = c.export / hosts.name / "workers"
    wait_for(lambda: any(f.read_text().split()[:1] == ["v"] for f in claims.glob("hostB.*.claim")), 30,
             "hostB running v")
    hosts.enqueue([("busy0", "sleep 15"), ("busy1", "sleep 15")])
    hosts.start(0, "--count", "1")
    hosts.start(2, "--count", "1")
    wait_for(lambda: {w for f in claims.glob("host[AC].*.claim") for w in f.read_text().split()[:1]}
             == {"busy0", "busy1"}, 30, "hostA and hostC busy")
    killed_at = time.time()
    assert kill_node("hostB")
    spool = c.export / hosts.name

    def recovered():
        for d in ("failed", "pending", "dead"):
            f = spool / d / "v.json"
            if f.exists():
                try:
                    return json.loads(f.read_text())
                except ValueError:
                    return None
        return None

    job = wait_for(recovered, LEASE + SKEW + 8, "v recovered while hostA and hostC run 15 s jobs")
    from queuectl.job import parse_time
    died = [h for h in job["history"] if h.get("error") == "worker died"]
    took = parse_time(died[0]["finished_at"]) - killed_at
    assert took <= LEASE + SKEW + 5, f"v recovered {took:.1f}s after the kill"
    assert hosts.bad_lines() == []
    kill_node("hostA"), kill_node("hostC")  # not a graceful stop that waits for their 15 s jobs


def test_queue_limits_hold_across_hosts_where_locks_do_and_say_so_where_they_do_not(hosts):
    c = hosts.c
    hosts.configure()
    hosts.ok(0, "config", "set", "queue.one.concurrency", "1")
    spans = hosts.tmp / "spans"
    spans.mkdir()
    n = 6
    lines = "\n".join(json.dumps({"id": f"q{i}", "queue": "one",
                                  "command": f"echo $(date +%s.%N) > {spans}/q{i}.a; sleep 0.4; "
                                             f"echo $(date +%s.%N) > {spans}/q{i}.b"}) for i in range(n))
    hosts.ok(0, "enqueue", "-q", "--file", "-", input=lines + "\n")
    ps = [hosts.start(i, "--count", "2", "--burst") for i in range(3)]
    for p in ps:
        assert p.wait(120) == 0
    assert len(done_ids(c, hosts.name)) == n
    said = [line for log in hosts.logs for line in log.read_text().splitlines() if "hold per host" in line]
    # `check` says it too, on a line of its own and in --json, and exits 0 for it (nothing to repair)
    r = hosts.cli(1, "check")
    warned = [line for line in r.stdout.splitlines() if line.startswith("warning: ")]
    report = json.loads(hosts.cli(1, "check", "--json").stdout)
    if c.kind == "sshfs":
        assert said and "queue concurrency limits hold per host on fuse.sshfs" in said[0], said
        assert warned == ["warning: queue concurrency limits hold per host on fuse.sshfs: its locks do not reach "
                          "other hosts, so N hosts may run up to N x the limit"], r.stdout
        assert r.returncode == 0 and r.stdout.endswith("ok: no problems in " + str(c.spool(1, hosts.name)) + "\n")
        assert report["warnings"] == [w[len("warning: "):] for w in warned] and report["ok"] is True
        return
    assert said == [] and warned == [] and report["warnings"] == [], (r.stdout, report)
    iv = sorted((float((spans / f"q{i}.a").read_text()), float((spans / f"q{i}.b").read_text())) for i in range(n))
    overlaps = [(a, b) for a, b in zip(iv, iv[1:]) if b[0] < a[1]]
    assert overlaps == [], overlaps


def test_a_host_whose_clock_is_off_says_so(hosts, tmp_path):
    """The issue's case: a host 6 s behind with lease 3 and clock_skew 1 ran jobs twice without a word."""
    c = hosts.c
    hosts.configure()
    shift = tmp_path / "shift"
    shift.mkdir()
    (shift / "sitecustomize.py").write_text("import time\n_t = time.time\ntime.time = lambda: _t() - 6.0\n")
    log = hosts.tmp / "skewed.log"
    env = c.env(1)
    env["PYTHONPATH"] = str(shift)
    import sys
    with open(log, "ab") as out:
        p = subprocess.Popen([sys.executable, "-m", "queuectl", "--spool", str(c.spool(1, hosts.name)), "worker",
                              "start", "--shared", "--burst"], env=env, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT)
    assert p.wait(60) == 0
    text = log.read_text()
    # 6 s, less up to 1 s where the server keeps whole-second times (sshfs)
    assert re.search(r"this host's clock is [567]\.\d+s behind the file server's, over clock_skew \(1s\)", text), text
    r = hosts.cli(0, "worker", "start", "--shared", "--burst")
    assert r.returncode == 0 and "this host's clock" not in r.stdout + r.stderr, (r.stdout, r.stderr)
    # `check` on the skewed host says so in one line, and in --json; on the others not a word
    skewed = {}
    for fmt in ((), ("--json",)):
        out = subprocess.run([sys.executable, "-m", "queuectl", "--spool", str(c.spool(1, hosts.name)), "check", *fmt],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stderr == "", (out.stdout, out.stderr)
        skewed[fmt] = out.stdout
    said = [line for line in skewed[()].splitlines() if line.startswith("warning: ")]
    assert len(said) == 1 and re.fullmatch(r"warning: this host's clock is [567]\.\ds behind the file server's, "
                                           r"over clock_skew \(1s\): .*; fix the clock \(NTP\)", said[0]), skewed
    warned = json.loads(skewed[("--json",)])["warnings"]
    assert len(warned) == 1 and re.match(r"this host's clock is [567]\.\ds behind", warned[0]), warned
    r = hosts.cli(0, "check", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["warnings"] == [], r.stdout


def test_retries_claimed_by_another_host_are_never_lost_to_rejected(hosts):
    """A retry's file was rewritten through the mount of the host that ran the failed attempt; the host
    that claims it may read it short or stale for a moment: that is no invalid job."""
    c = hosts.c
    hosts.configure()
    flags = hosts.tmp / "flags"
    flags.mkdir()
    n = 30
    # Two failed attempts, then success: a retry's file is rewritten under the same name in failed/, where
    # sshfs (inodes numbered by path) keeps the first version's cached size for the second.
    hosts.enqueue([(f"r{i:02d}", f"k=$(cat {flags}/r{i:02d} 2>/dev/null || echo 0); echo $((k + 1)) > "
                                 f"{flags}/r{i:02d}; [ $k -ge 2 ]") for i in range(n)])
    ps = [hosts.start(i, "--count", "2", "--burst") for i in range(3)]
    for p in ps:
        p.wait(180)
    spool = c.export / hosts.name
    assert sorted(os.listdir(spool / "rejected")) == []
    assert len(done_ids(c, hosts.name)) == n
    moved = 0
    for i in range(n):
        job = json.loads((spool / "done" / f"r{i:02d}.json").read_text())
        nodes = [h.get("node") for h in job["history"] if "attempt" in h]
        moved += len(set(nodes)) > 1
    assert moved, "no retry ran on another host: the test did not test anything"
    assert hosts.bad_lines() == []
