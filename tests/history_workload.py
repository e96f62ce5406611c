"""The seeded workload of the history checker: it drives queuectl the way users
do, injects faults, and records what happened (see tests/history.py).

Everything it records goes to a work directory outside the spool:
  job.sh       the command every job runs: it appends `S id attempt node pid start`
               when it starts and `E id attempt node pid start end exit` when it
               ends to `hist` (O_APPEND), and prints its markers to its own log
  hist         those lines, from every execution on every host
  events.jsonl one JSON object a line: the run's parameters, each job's spec,
               every client operation (op, args, start/end time, exit, output)
               and every fault injected (kind, time, pid)
  alive.json   for executions that never wrote their `E` line (killed): the last
               time their process was seen alive
Times are wall-clock seconds (`date +%s.%N`, time.time()): comparable on one machine.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from support import fill_disk

STATE_DIRS = ("pending", "processing", "done", "failed", "dead", "held", "cancelled")
LIMITED, OTHER = "lim", "bulk"  # the two named queues; LIMITED has concurrency 1

JOB_SH = r"""#!/bin/sh
# job.sh HIST TOKEN SLEEP FAIL_UPTO BACKGROUND SPEC: BACKGROUND 1 = a child prints after the command
# ended, 2 = the same from a command that prints nothing itself (its worker may reuse its scratch
# log); SPEC names the job's spec, whatever id `enqueue --lines` gave it
h=$1
s=$(date +%s.%N)
echo "S $QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT ${QUEUECTL_NODE:-local} $$ $s" >> "$h"
[ "$5" = 2 ] || echo "QCMARK $2 $QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT start"
if [ "$5" != 0 ]; then
  # output of a child that outlives the command: it must never reach another job's log
  (sleep 0.4; echo "QCMARK $2 $QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT late") &
fi
sleep "$3"
x=0
[ "$QUEUECTL_ATTEMPT" -le "$4" ] && x=1
[ "$5" = 2 ] || echo "QCMARK $2 $QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT end"
e=$(date +%s.%N)
echo "E $QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT ${QUEUECTL_NODE:-local} $$ $s $e $x" >> "$h"
exit $x
"""

FAULTS = ("kill9_worker", "kill9_supervisor", "kill9_tree", "sigstop", "full_disk")


class Params:
    """What one run does. `spools` holds one path per host: the same spool seen
    through each host's mount (one entry on a local disk); `nodes` the node name
    of each host (QUEUECTL_NODE), or None for a local spool."""

    def __init__(self, seed: int, jobs: int = 150, spools: list[str] | None = None,
                 nodes: list[str] | None = None, supervisors: int = 2, workers: int = 2,
                 duration: float = 20.0, faults: tuple[str, ...] = FAULTS, fault_every: float = 2.5,
                 fill_dir: str | None = None, shared: bool = False, drain_timeout: float = 90.0,
                 work: str = ""):
        self.seed, self.jobs = seed, jobs
        self.spools = spools or []
        self.nodes = nodes or [None] * len(self.spools)
        if len(self.nodes) != len(self.spools):
            raise ValueError("give one node name per spool path")
        self.supervisors, self.workers = supervisors, workers
        self.duration, self.faults, self.fault_every = duration, tuple(faults), fault_every
        self.fill_dir, self.shared, self.drain_timeout, self.work = fill_dir, shared, drain_timeout, work

    def as_dict(self) -> dict:
        return dict(vars(self), faults=list(self.faults))


class Recorder:
    """events.jsonl, written line by line (a crash of the harness keeps what it saw)."""

    def __init__(self, path: Path):
        self.f = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def add(self, kind: str, **fields) -> dict:
        rec = {"kind": kind, **fields}
        with self.lock:
            self.f.write(json.dumps(rec) + "\n")
        return rec

    def close(self) -> None:
        self.f.close()


def job_specs(rng: random.Random, n: int, token: str, work: Path) -> list[dict]:
    """The jobs, decided by the seed alone: queue, priority, duration, failures, parents, delay,
    how each is enqueued, and with which others (`batch`: one `enqueue --file` or `--lines`, or
    drop-ins in a row). Parents are earlier jobs enqueued one by one through the CLI."""
    specs: list[dict] = []
    cli_ids: list[str] = []
    batch, left, method = 0, 0, "cli"
    for i in range(n):
        jid = f"h{i:04d}"
        if left == 0:
            batch += 1
            method = rng.choices(["cli", "file", "lines", "dropin"], [18, 3, 1, 2])[0]
            # a file batch mixes queues and priorities: a backlog at once, for the workers to order
            left = 1 if method == "cli" else rng.choice([2, 4, 8, 16])
            line_queue, line_prio = rng.choice(["default", LIMITED, OTHER]), rng.choice([0, 0, 5, -5])
        left -= 1
        queue = rng.choices(["default", LIMITED, OTHER], [5, 3, 2])[0]
        # long enough on average (~0.3 s) that waves of enqueues queue up behind four workers
        sleep = round(rng.choice([0.0, 0.05, 0.1, 0.3, 0.8]) * rng.uniform(0.5, 1.5) + 0.01, 3)
        if rng.random() < 0.03:  # a long job keeps its worker busy while others drain the backlog
            sleep = round(rng.uniform(2, 4), 3)
        fail_upto = rng.choices([0, 1, 2, 99], [14, 3, 1, 1])[0]
        spec = {"id": jid, "queue": queue, "priority": rng.choice([0, 0, 0, 1, 5, 10, 50, -5]),
                "sleep": sleep, "fail_upto": fail_upto, "bg": rng.choices([0, 1, 2], [88, 5, 7])[0],
                "method": method, "batch": batch, "after": [], "delay": 0}
        if method == "lines":  # one --queue and --priority for the whole batch
            spec["queue"], spec["priority"] = line_queue, line_prio
        # not in a file: one record naming a parent `clean` removed fails the whole file
        # (the workload does not use --skip-invalid), and the batch's other jobs with it
        if method == "cli" and cli_ids and rng.random() < 0.5:
            spec["after"] = sorted(set(rng.sample(cli_ids[-12:], min(len(cli_ids[-12:]), rng.choice([1, 1, 2])))))
        if method in ("cli", "file") and rng.random() < 0.1:
            spec["delay"] = rng.choice([1, 2, 3])
        if method == "cli":
            cli_ids.append(jid)
        spec["command"] = " ".join(shlex.quote(str(a)) for a in (
            "sh", work / "job.sh", work / "hist", token, spec["sleep"], spec["fail_upto"], spec["bg"], jid))
        specs.append(spec)
    return specs


def group_batches(specs: list[dict]) -> list[list[dict]]:
    out: list[list[dict]] = []
    for s in specs:
        if out and out[-1][0]["batch"] == s["batch"]:
            out[-1].append(s)
        else:
            out.append([s])
    return out


def descendants(pid: int) -> list[int]:
    """Every process below pid (jobs in their own sessions included), deepest last."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def proc_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


class Poller(threading.Thread):
    """Follows `hist`: for every started execution not yet ended, notes when its
    process was last seen alive (an execution killed with its worker writes no
    `E` line; this bounds when it really ended)."""

    def __init__(self, hist: Path, token: str):
        super().__init__(daemon=True)
        self.hist, self.token = hist, token
        self.open: dict[tuple, float] = {}  # (id, attempt, node, pid, start) -> last seen alive
        self.last_seen: dict[tuple, float] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.pos = 0

    def read_new(self) -> None:
        try:
            with open(self.hist, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.pos += end
        for line in data[:end].decode(errors="replace").splitlines():
            p = line.split()
            if len(p) == 6 and p[0] == "S":
                key = (p[1], p[2], p[3], p[4], p[5])
                with self.lock:
                    self.open[key] = float(p[5])
            elif len(p) == 8 and p[0] == "E":
                with self.lock:
                    self.open.pop((p[1], p[2], p[3], p[4], p[5]), None)

    def look(self) -> None:
        self.read_new()
        now = time.time()
        with self.lock:
            for key in list(self.open):
                pid = int(key[3])
                if proc_alive(pid) and self.token in cmdline(pid):
                    self.open[key] = now
                    self.last_seen[key] = now
                else:
                    self.last_seen[key] = self.open.pop(key)

    def running(self) -> list[tuple]:
        with self.lock:
            return list(self.open)

    def run(self) -> None:
        while not self.stop.is_set():
            self.look()
            self.stop.wait(0.02)
        self.look()


class Host:
    """One mount of the spool, with its node name and its supervisors."""

    def __init__(self, n: int, spool: str, node: str | None, params: Params, work: Path):
        self.n, self.spool, self.node = n, spool, node
        self.env = dict(os.environ)
        if node:
            self.env["QUEUECTL_NODE"] = node
        self.params, self.work = params, work
        self.sups: list[subprocess.Popen | None] = [None] * params.supervisors
        self.started = 0
        # the keeper and the faulter both restart supervisors: one at a time, or one is orphaned
        self.lock = threading.RLock()

    def argv(self, *args) -> list[str]:
        return [sys.executable, "-m", "queuectl", "--spool", self.spool, *map(str, args)]

    def start_supervisor(self, k: int) -> subprocess.Popen:
        args = ["worker", "start", "--count", self.params.workers]
        if self.params.shared:
            args.append("--shared")
        self.started += 1
        with open(self.work / f"sup-{self.n}-{k}-{self.started}.log", "wb") as log:
            p = subprocess.Popen(self.argv(*args), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 env=self.env, start_new_session=True)
        self.sups[k] = p
        return p


class Workload:
    """Runs the seeded mix against the spool and records it; see the module's docstring."""

    def __init__(self, params: Params, work: Path):
        self.p = params
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(params.seed)
        self.token = f"t{params.seed}x{self.rng.randrange(16 ** 6):06x}"
        (work / "job.sh").write_text(JOB_SH)
        self.hist = work / "hist"
        self.hist.touch()
        self.rec = Recorder(work / "events.jsonl")
        self.hosts = [Host(i, s, n, params, work) for i, (s, n) in enumerate(zip(params.spools, params.nodes))]
        self.poller = Poller(self.hist, self.token)
        self.specs = job_specs(self.rng, params.jobs, self.token, work)
        self.enqueued: list[str] = []  # accepted ids, in order
        self.held: list[tuple[str, float]] = []
        self.stop = threading.Event()
        self.quiet = threading.Event()  # set while faults must not fire (quiescence)
        self.stopped: list[int] = []  # SIGSTOPped pids, to SIGCONT whatever happens
        self.ballast: Path | None = None
        self.lock = threading.Lock()

    # -- client operations -----------------------------------------------------------

    def op(self, op: str, *args, host: Host | None = None, input: str | None = None, timeout: float = 120,
           **extra) -> dict:
        host = host or self.rng_host()
        t0 = time.time()
        try:
            r = subprocess.run(host.argv(op, *args), input=input,
                               capture_output=True, text=True, timeout=timeout, env=host.env,
                               stdin=None if input is not None else subprocess.DEVNULL)
            rc, out, err = r.returncode, r.stdout, r.stderr
        except subprocess.TimeoutExpired as e:
            rc, out, err = None, str(e.stdout or ""), f"harness: timed out after {timeout}s"
        return self.rec.add("op", op=op, args=[str(a) for a in args], host=host.n, t0=t0, t1=time.time(),
                            rc=rc, out=out, err=err[-4000:], **extra)  # all of it: wait's JSON is checked

    def rng_host(self, rng: random.Random | None = None) -> Host:
        return (rng or self.rng).choice(self.hosts)

    def config(self, key: str, value, host: Host | None = None) -> dict:
        return self.op("config", "set", key, value, host=host or self.hosts[0])

    def enqueue_batch(self, batch: list[dict], rng: random.Random) -> None:
        method, host = batch[0]["method"], self.rng_host(rng)
        ids = [s["id"] for s in batch]
        if method == "cli":
            s = batch[0]
            args = ["--id", s["id"], "--queue", s["queue"], "--priority", s["priority"]]
            if s["after"]:
                args += ["--after", ",".join(s["after"])]
            if s["delay"]:
                args += ["--delay", f"{s['delay']}s"]
            r = self.op("enqueue", *args, s["command"], host=host, ids=ids)
        elif method == "file":
            lines = []
            for s in batch:
                rec = {"id": s["id"], "command": s["command"], "queue": s["queue"], "priority": s["priority"]}
                if s["after"]:
                    rec["after"] = s["after"]
                if s["delay"]:
                    rec["run_at"] = iso_time(time.time() + s["delay"])
                lines.append(json.dumps(rec))
            r = self.op("enqueue", "--file", "-", host=host, input="\n".join(lines) + "\n", ids=ids)
        elif method == "lines":
            r = self.op("enqueue", "--lines", "-", "--print-id", "--queue", batch[0]["queue"], "--priority",
                        batch[0]["priority"], host=host, input="\n".join(s["command"] for s in batch) + "\n",
                        ids=ids)
            # --lines gives ids of its own: the command line still names the spec
            if r["rc"] == 0:
                given = r["out"].split()
                self.rec.add("rename", pairs=list(zip(ids, given)))
                ids = given
        else:
            ids = self.drop_in(batch, host)
            r = {"rc": 0 if ids else 1}
        if r["rc"] == 0:
            with self.lock:
                self.enqueued.extend(ids)

    def drop_in(self, batch: list[dict], host: Host) -> list[str]:
        """Write each file in tmp/, fsync, rename into pending/ (the README's recipe)."""
        placed = []
        for s in batch:
            rec = {"id": s["id"], "command": s["command"], "queue": s["queue"], "priority": s["priority"]}
            tmp = Path(host.spool, "tmp", f".{s['id']}.tmp")
            t0 = time.time()
            try:
                with open(tmp, "w") as f:
                    json.dump(rec, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(tmp, Path(host.spool, "pending", f"{s['id']}.json"))
            except OSError as e:
                try:
                    tmp.unlink()
                except OSError:
                    pass
                self.rec.add("op", op="dropin", args=[s["id"]], host=host.n, t0=t0, t1=time.time(), rc=1,
                             out="", err=str(e), ids=[s["id"]])
                continue
            self.rec.add("op", op="dropin", args=[s["id"]], host=host.n, t0=t0, t1=time.time(), rc=0, out="",
                         err="", ids=[s["id"]])
            placed.append(s["id"])
        return placed

    def enqueuer(self) -> None:
        rng = random.Random(self.p.seed * 7 + 1)
        batches = group_batches(self.specs)
        # in waves: a wave's batches go in back to back, so jobs queue up behind
        # busy workers and priorities and limits decide who runs next
        waves = max(1, min(len(batches), int(self.p.duration / 4)))
        gap = self.p.duration * 0.8 / waves
        cuts = sorted(rng.sample(range(1, len(batches)), waves - 1)) if waves > 1 else []
        for i, batch in enumerate(batches):
            if self.stop.is_set():
                break
            self.enqueue_batch(batch, rng)
            if i + 1 in cuts:
                self.stop.wait(rng.uniform(0.5, 1.5) * gap)

    def some_ids(self, rng: random.Random, k: int, waiting: bool = False) -> list[str]:
        """k of the jobs enqueued last; with waiting, mostly of those still waiting in pending/ or failed/."""
        with self.lock:
            pool = self.enqueued[-40:]
        if waiting and rng.random() < 0.8:
            root = Path(self.hosts[0].spool)
            found = [n[:-5] for d in ("pending", "failed") for n in entries(root / d)
                     if n.endswith(".json") and not n.startswith(".")]
            pool = sorted(set(found)) or pool
        return rng.sample(pool, min(k, len(pool))) if pool else []

    def controller(self) -> None:
        """cancel, hold/release, priority, kill, dlq retry, clean, config set: one at a time."""
        rng = random.Random(self.p.seed * 7 + 2)
        while not self.stop.wait(rng.uniform(0.1, 0.6)):
            now = time.time()
            due = [h for h in self.held if h[1] <= now]
            if due:
                self.held = [h for h in self.held if h[1] > now]
                self.op("release", *[h[0] for h in due], host=self.rng_host(rng))
                continue
            what = rng.choices(["priority", "cancel", "hold", "kill", "dlq", "clean", "config"],
                               [6, 1, 2, 2, 2, 0.5, 2])[0]
            host = self.rng_host(rng)
            if what == "priority":
                for jid in self.some_ids(rng, 1, waiting=True):
                    self.op("priority", jid, rng.choice([-10, 0, 3, 20, 60, 100]), host=host)
            elif what == "cancel":
                ids = self.some_ids(rng, rng.choice([1, 2]), waiting=True)
                if ids:
                    self.op("cancel", *ids, host=host)
            elif what == "hold":
                ids = self.some_ids(rng, 1, waiting=True)
                if ids and self.op("hold", *ids, host=host)["rc"] == 0:
                    self.held.append((ids[0], now + rng.uniform(0.3, 3)))
            elif what == "kill":
                running = self.poller.running()
                if running:
                    jid = rng.choice(running)[0]
                    args = ["--retry"] if rng.random() < 0.5 else []
                    # signals reach jobs on the host that runs them only: ask every mount's node
                    self.op("kill", *args, jid, host=host)
            elif what == "dlq":
                dead = sorted(n[:-5] for n in entries(Path(self.hosts[0].spool, "dead")) if n.endswith(".json"))
                if dead:
                    self.op("dlq", "retry", *rng.sample(dead, min(2, len(dead))), host=host)
            elif what == "clean":
                args = rng.choice([["--state", "completed", "--keep", rng.choice([10, 30])],
                                   ["--state", "completed", "--older-than", "5s"],
                                   ["--state", "dead", "--older-than", "5s"],
                                   ["--state", "cancelled", "--all"]])
                self.op("clean", *args, host=host)
            else:
                key, value = rng.choice([("backoff_max", rng.choice([0.2, 0.5, 1])),
                                         ("backoff_base", rng.choice([1.5, 2])),
                                         ("kill_grace", rng.choice([1, 2])),
                                         ("max_retries", rng.choice([1, 2, 3])),
                                         (f"queue.{LIMITED}.concurrency", 1)])
                self.config(key, value, host=host)

    def waiter(self) -> None:
        """`wait` on random sets, several at once (each in its own thread)."""
        rng = random.Random(self.p.seed * 7 + 3)
        threads = []
        while not self.stop.wait(rng.uniform(0.3, 1.5)):
            ids = self.some_ids(rng, rng.choice([1, 2, 3, 5]))
            threads = [t for t in threads if t.is_alive()]
            if not ids or len(threads) >= 3:  # at most three at once: a slow machine is not swamped
                continue
            t = threading.Thread(target=self.op, args=("wait", "--json", "--timeout", rng.choice([1, 3, 8, 20]),
                                                       *ids), kwargs={"host": self.rng_host(rng)}, daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(60)

    # -- faults ------------------------------------------------------------------------

    def workers(self) -> list[tuple[Host, int]]:
        out = []
        for h in self.hosts:
            for s in h.sups:
                if s is not None and s.poll() is None:
                    out += [(h, pid) for pid in children_of(s.pid)]
        return out

    def faulter(self) -> None:
        rng = random.Random(self.p.seed * 7 + 4)
        kinds = [f for f in self.p.faults if f != "full_disk" or self.p.fill_dir]
        if "full_disk" in self.p.faults and not self.p.fill_dir:
            self.rec.add("fault_skipped", fault="full_disk",
                         reason="no small filesystem to fill (give --small-fs, which mounts a tmpfs: root only)")
        while kinds and not self.stop.wait(rng.uniform(0.5, 1.5) * self.p.fault_every):
            if self.quiet.is_set():
                continue
            kind = rng.choice(kinds + ["full_disk"] * ("full_disk" in kinds))  # the rarest chance, so twice
            if kind == "kill9_worker":
                ws = self.workers()
                if ws:
                    h, pid = rng.choice(ws)
                    self.fault(kind, pid, signal.SIGKILL, host=h.n)
            elif kind in ("kill9_supervisor", "kill9_tree"):
                h = rng.choice(self.hosts)
                k = rng.randrange(len(h.sups))
                with h.lock:
                    s = h.sups[k]
                    if s is None or s.poll() is not None:
                        continue
                    victims = [s.pid] + (descendants(s.pid) if kind == "kill9_tree" else [])
                    h.sups[k] = None  # not the keeper's to restart
                t = time.time()
                for pid in victims:
                    signal_quietly(pid, signal.SIGKILL)
                self.rec.add("fault", fault=kind, t=t, pids=victims, host=h.n)
                s.wait()
                self.stop.wait(rng.uniform(0.2, 1.0))
                with h.lock:
                    if h.sups[k] is None:
                        h.start_supervisor(k)
            elif kind == "sigstop":
                ws = self.workers()
                if not ws:
                    continue
                h, pid = rng.choice(ws)
                t = time.time()
                self.stopped.append(pid)
                signal_quietly(pid, signal.SIGSTOP)
                self.stop.wait(rng.uniform(0.3, 1.5))
                signal_quietly(pid, signal.SIGCONT)
                self.stopped.remove(pid)
                self.rec.add("fault", fault=kind, t=t, t1=time.time(), pids=[pid], host=h.n)
            elif kind == "full_disk":
                t = time.time()
                self.fill()
                self.stop.wait(rng.uniform(0.3, 1.5))
                self.unfill()
                self.rec.add("fault", fault=kind, t=t, t1=time.time(), pids=[])

    def fault(self, kind: str, pid: int, sig: int, **extra) -> None:
        t = time.time()
        signal_quietly(pid, sig)
        self.rec.add("fault", fault=kind, t=t, pids=[pid], **extra)

    def fill(self) -> None:
        self.ballast = fill_disk(Path(self.p.fill_dir), ".ballast")

    def unfill(self) -> None:
        if self.ballast is not None:
            try:
                self.ballast.unlink()
            except FileNotFoundError:
                pass
            self.ballast = None

    def keeper(self) -> None:
        """Restarts a supervisor that exited on its own (a crash is recorded by its log)."""
        while not self.stop.wait(0.3):
            for h in self.hosts:
                with h.lock:
                    for k, s in enumerate(h.sups):
                        if s is not None and s.poll() is not None and not self.quiet.is_set():
                            self.rec.add("supervisor_exit", host=h.n, pid=s.pid, rc=s.returncode, t=time.time())
                            h.start_supervisor(k)


# -- small helpers ---------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def signal_quietly(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def entries(d: Path) -> list[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []


def iso_time(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
