"""The invariants of the history checker (tests/history.py), over a recorded run.

Each invariant is a function of a `History` (loaded from a recorded run by
tests/history_load.py) returning its violations, one line each:
`invariant N (name): what; jobs IDS`. A test can feed one a hand-made history
and see it fire (tests/test_history.py).

Every check errs on the side of silence where the record cannot prove a
violation: an execution's measured interval lies inside the real one (its
`S` line is written after it started, its `E` line before it ended), and an
execution killed before its `E` line is taken to end when it was last seen
alive.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import datetime

STATE_DIRS = ("pending", "processing", "done", "failed", "dead", "held", "cancelled")
STATE_OF_DIR = {"pending": "pending", "processing": "processing", "done": "completed", "failed": "failed",
                "dead": "dead", "held": "held", "cancelled": "cancelled"}
FINAL = ("completed", "dead", "cancelled")
# One scan interval (queuectl/worker.py): a watch event (an enqueue, a drop-in, a
# release, a priority change) makes every worker scan at once, and an idle worker
# scans every RESCAN_INTERVAL; a job that becomes due by time or by its parents'
# completion is seen by a busy worker at its next timed scan, BUSY_RESCAN_INTERVAL.
SCAN_AFTER_EVENT = 1.0
SCAN_BUSY = 5.0
SLACK = 1.0  # process start-up and index flushes (INDEX_FLUSH_INTERVAL is 0.1 s) on a loaded machine
MARK_RE = re.compile(r"QCMARK (\S+) (\S+) (\S+) (\w+)")
DONE_LINE = re.compile(r"^(cancelled|held|released|requeued) job (\S+)$", re.M)
PRIORITY_LINE = re.compile(r"^job (\S+) priority (-?\d+)$", re.M)
REMOVED_LINE = re.compile(r"^removed job (\S+) \((\w+)\)$", re.M)


def epoch(iso) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Execution:
    """One run of a job's command, as its own `S` and `E` lines tell it."""

    __slots__ = ("id", "attempt", "node", "pid", "start", "end", "exit", "killed")

    def __init__(self, id: str, attempt: int, node: str, pid: int, start: float, end: float | None = None,
                 exit: int | None = None):
        self.id, self.attempt, self.node, self.pid, self.start = id, attempt, node, pid, start
        self.end = end if end is not None else start
        self.exit, self.killed = exit, end is None

    def __repr__(self) -> str:
        return (f"{self.id}#{self.attempt}@{self.node}:{self.pid}[{self.start:.3f}-{self.end:.3f}"
                f"{' killed' if self.killed else f' exit {self.exit}'}]")


class History:
    """Everything the checker looks at. Tests build one by hand."""

    def __init__(self):
        self.meta: dict = {}
        self.specs: dict[str, dict] = {}       # job id -> spec (queue, priority, after, delay, method)
        self.ops: list[dict] = []              # client operations, in start order
        self.faults: list[dict] = []
        self.execs: list[Execution] = []
        self.files: dict[str, list[tuple[str, dict | None]]] = {}  # id -> [(state, record)] per file found
        self.rejected: list[str] = []
        self.logs: dict[str, str] = {}         # job id -> its log's text
        self.index_before: dict[str, list] = {}  # host -> rows before reindex
        self.index_after: dict[str, list] = {}
        self.check_out: dict[str, tuple[int, str]] = {}  # host -> (exit, output) of `queuectl check`
        self.accepted: set[str] = set()        # ids an enqueue or drop-in reported accepted
        self.maybe: set[str] = set()           # ids whose enqueue failed (it may still have gone in)
        self.drained_left: list[str] = []
        self.harness_errors: list[str] = []     # the workload itself crashed: the run proves nothing
        self.skipped: list[str] = []            # faults the run could not inject, with the reason
        self.leftover: list[list] = []
        self.token = ""
        self.limits: dict[str, int] = {}
        self.t_quiesce = float("inf")
        self.arrived: dict[str, float] = {}    # id -> when its enqueue returned (or its drop-in was renamed)
        self.enqueue_began: dict[str, float] = {}  # id -> when the enqueue (or drop-in) that placed it began
        self.enqueued_on: dict[str, int] = {}  # id -> the host (index in the run's spools) that enqueued it

    # -- derived facts ------------------------------------------------------------------

    def state(self, jid: str) -> str | None:
        found = self.files.get(jid)
        return found[0][0] if found else None

    def record(self, jid: str) -> dict | None:
        found = self.files.get(jid)
        return found[0][1] if found else None

    def execs_of(self) -> dict[str, list[Execution]]:
        out: dict[str, list[Execution]] = defaultdict(list)
        for e in self.execs:
            out[e.id].append(e)
        for v in out.values():
            v.sort(key=lambda e: e.start)
        return out

    def done_ops(self, verb: str) -> dict[str, list[dict]]:
        """id -> the ops that reported `VERB job ID` (cancelled, held, released, requeued)."""
        out: dict[str, list[dict]] = defaultdict(list)
        for o in self.ops:
            for v, jid in DONE_LINE.findall(o.get("out") or ""):
                if v == verb:
                    out[jid].append(o)
        return out

    def removed(self) -> dict[str, tuple[str, dict]]:
        """id -> (state, op) of every job a `clean` removed."""
        out = {}
        for o in self.ops:
            if o["op"] == "clean":
                for jid, st in REMOVED_LINE.findall(o.get("out") or ""):
                    out[jid] = (st, o)
        return out

    def node_of(self, host: int | None) -> str | None:
        """The node name a host's jobs write in their S/E lines."""
        if host is None:
            return None
        nodes = self.meta.get("params", {}).get("nodes") or []
        return (nodes[host] if host < len(nodes) else None) or "local"

    def ops_on(self, jid: str) -> list[dict]:
        return [o for o in self.ops if o["op"] in ("priority", "hold", "release", "cancel", "kill", "dlq")
                and jid in o["args"]]


def _v(n: int, name: str, what: str, ids) -> str:
    ids = sorted(set(ids))
    more = f" (+{len(ids) - 12} more)" if len(ids) > 12 else ""
    return f"invariant {n} ({name}): {what}; jobs {' '.join(ids[:12])}{more}"


# -- 1. one state file each; check clean; index == files -------------------------------------


def check_states(h: History) -> list[str]:
    out = []
    twice = {j: [s for s, _ in f] for j, f in h.files.items() if len(f) > 1}
    for j, states in sorted(twice.items()):
        out.append(_v(1, "one state file", f"{j} is in {len(states)} state directories {states}", [j]))
    removed = h.removed()
    lost = sorted(j for j in h.accepted if j not in h.files and j not in removed)
    if lost:
        out.append(_v(1, "one state file", f"{len(lost)} accepted jobs have no file and no clean removed them",
                      lost))
    unknown = sorted(j for j in h.files if j not in h.accepted and j not in h.maybe)
    if unknown:
        out.append(_v(1, "one state file", f"{len(unknown)} job files no enqueue accepted", unknown))
    if h.rejected:
        out.append(_v(1, "one state file", f"valid jobs were rejected: {h.rejected[:5]}",
                      [r.split(":")[0].removesuffix(".json") for r in h.rejected]))
    unsettled = sorted(j for j, f in h.files.items() if f[0][0] in ("processing", "pending", "failed", "held"))
    if unsettled:
        out.append(_v(1, "one state file", "jobs neither final nor waiting for a reason after quiescence "
                      f"(states {sorted({h.state(j) for j in unsettled})})", unsettled))
    for host, (rc, text) in sorted(h.check_out.items()):
        if rc != 0:
            lines = text.strip().splitlines()
            out.append(_v(1, "check is clean", f"`queuectl check` on host {host} exited {rc}: "
                          + " | ".join(lines[:6]), _ids_in(text, h)))
    truth = {j: (f[0][0], (f[0][1] or {}).get("priority")) for j, f in h.files.items() if len(f) == 1}
    for host, rows in sorted(h.index_before.items()):
        got = {r[0]: (r[1], r[2]) for r in rows}
        bad = sorted(j for j in set(got) | set(truth) if got.get(j) != truth.get(j))
        if bad:
            ex = "; ".join(f"{j}: index {got.get(j)} files {truth.get(j)}" for j in bad[:4])
            out.append(_v(1, "index equals files", f"host {host}'s index disagrees with the files ({ex})", bad))
        before = {r[0]: r for r in rows}
        after = {r[0]: r for r in h.index_after.get(host, rows)}
        changed = sorted(j for j in set(after) | set(before) if after.get(j) != before.get(j))
        if changed:
            out.append(_v(1, "index equals files", f"`reindex` changed host {host}'s index rows", changed))
    return out


def _ids_in(text: str, h: History) -> list[str]:
    known = set(h.files) | h.accepted
    return [w for w in re.findall(r"[\w.-]+", text) if w in known]


# -- 2. no overlapping runs of one job; runs <= attempts + faults ------------------------------


def check_runs(h: History) -> list[str]:
    out = []
    nfaults = len(h.faults)
    extra_total = 0
    for jid, runs in sorted(h.execs_of().items()):
        for a, b in zip(runs, runs[1:]):
            if b.start < a.end:
                out.append(_v(2, "no overlapping runs", f"{jid} ran twice at once: {a} and {b}", [jid]))
        rec = h.record(jid)
        if rec is None:
            continue  # cleaned: its attempts went with it
        attempts = sum(1 for e in rec.get("history") or [] if "attempt" in e)
        extra = len(runs) - attempts
        if extra > 0:
            extra_total += extra
            if extra > nfaults:
                out.append(_v(2, "runs <= attempts + faults", f"{jid} ran {len(runs)} times, recorded {attempts} "
                              f"attempts, {nfaults} faults injected", [jid]))
    if extra_total > nfaults:
        out.append(_v(2, "runs <= attempts + faults", f"{extra_total} unrecorded runs in all, {nfaults} faults "
                      "injected", [j for j, r in h.execs_of().items() if h.record(j) and len(r) > 0]))
    for k in h.leftover:
        out.append(_v(2, "no overlapping runs", f"execution {k[0]}#{k[1]} (pid {k[3]}) still ran after the "
                      "workers stopped", [k[0]]))
    return out


# -- 3. a queue's limit holds, faults included -------------------------------------------------


def check_limits(h: History) -> list[str]:
    out = []
    for queue, limit in sorted(h.limits.items()):
        # a run cut short before it was ever seen alive has an empty interval: it proves no overlap
        runs = [e for e in h.execs if h.specs.get(e.id, {}).get("queue") == queue and e.end > e.start]
        points = sorted([(e.start, 1, e) for e in runs] + [(e.end, -1, e) for e in runs],
                        key=lambda p: (p[0], p[1]))
        live: set = set()
        reported: set = set()
        for _t, d, e in points:
            if d < 0:
                live.discard(e)
                continue
            live.add(e)
            if len(live) > limit:
                key = frozenset(x.id for x in live)
                if key not in reported:
                    reported.add(key)
                    out.append(_v(3, "queue limit", f"{len(live)} runs of queue {queue} (limit {limit}) at once: "
                                  + ", ".join(map(repr, sorted(live, key=lambda x: x.start))), key))
    return out


# -- 4. dependencies ------------------------------------------------------------------------------


def parent_completions(h: History) -> dict[str, float]:
    """id -> end of its first run that exited 0."""
    out: dict[str, float] = {}
    for e in h.execs:
        if e.exit == 0 and not e.killed:
            out[e.id] = min(out.get(e.id, e.end), e.end)
    return out


def check_dependencies(h: History) -> list[str]:
    out = []
    completed = parent_completions(h)
    execs = h.execs_of()
    cancelled_by_user = h.done_ops("cancelled")
    retried = h.done_ops("requeued")
    removed = h.removed()
    for jid, spec in sorted(h.specs.items()):
        parents = spec.get("after") or []
        if not parents:
            continue
        for e in execs.get(jid, []):
            early = [p for p in parents if completed.get(p, float("inf")) > e.start]
            if early:
                out.append(_v(4, "after parents", f"{jid} started at {e.start:.3f} before its parents completed: "
                              + ", ".join(f"{p} (completed {completed.get(p, 'never')})" for p in early),
                              [jid, *early]))
        if h.state(jid) != "cancelled" or any(o["t0"] < h.t_quiesce for o in cancelled_by_user.get(jid, [])
                                              if _own_cancel(o, jid)):
            continue
        # cancelled as a dependent: some parent must really have ended dead or cancelled
        def ended_badly(p: str) -> bool:
            return (h.state(p) in ("dead", "cancelled") or p in retried
                    or removed.get(p, ("",))[0] in ("dead", "cancelled"))
        if not any(ended_badly(p) for p in parents):
            reason = (h.record(jid) or {}).get("last_error")
            out.append(_v(4, "after parents", f"{jid} was cancelled ({reason!r}) though no parent ended dead or "
                          "cancelled: " + ", ".join(f"{p} {h.state(p) or removed.get(p, ('gone',))[0]}"
                                                     for p in parents), [jid, *parents]))
    return out


def _own_cancel(op: dict, jid: str) -> bool:
    return op["op"] == "cancel" and jid in op["args"]


# -- 5. priority decides the next claim -------------------------------------------------------------


def claim_entry(rec: dict | None, e: Execution) -> tuple[float, int | None]:
    """(when the worker claimed the job for this run, that worker's pid): its history entry's
    started_at (written just after the claim, before the command starts), else the run's own start."""
    best, pid = None, None
    for ent in (rec or {}).get("history") or []:
        t = epoch(ent.get("started_at"))
        if ent.get("attempt") == e.attempt and t is not None and t <= e.start + 0.001 and (best is None or t > best):
            best, pid = t, ent.get("pid")
    return (best, pid) if best is not None else (e.start, None)


def claim_time(rec: dict | None, e: Execution) -> float:
    return claim_entry(rec, e)[0]


def first_claim(h: History, jid: str, runs: list[Execution]) -> tuple[float, int | None] | None:
    """(when the job stopped waiting for the first time: claimed, held or cancelled; the claiming
    worker's pid); None if unknown, or if a dead worker's claim hides it."""
    times = [claim_entry(h.record(jid), e) for e in runs]
    rec = h.record(jid)
    for ent in (rec or {}).get("history") or []:
        if "attempt" in ent and ent.get("started_at") is None:
            died = epoch(ent.get("finished_at"))
            if died is not None and (not times or died <= min(times)[0] + 1):
                return None  # first claimed by a worker that died: when is unknown
        if ent.get("event") in ("cancelled", "held"):
            t = epoch(ent.get("at"))
            if t is not None:
                times.append((t, None))
    return min(times, key=lambda x: x[0]) if times else None


def priority_at(h: History, jid: str, t: float) -> tuple[int | None, float]:
    """The job's priority at t (None if a `priority` on it was under way then), and when it last changed."""
    p, changed = h.specs.get(jid, {}).get("priority", 0), 0.0
    for o in h.ops:
        if o["op"] != "priority" or o["rc"] != 0 or not o["args"] or o["args"][0] != jid:
            continue
        if o["t0"] <= t <= o["t1"]:
            return None, o["t1"]
        if o["t1"] < t:
            p, changed = int(o["args"][1]), max(changed, o["t1"])
    return p, changed


def due_time(h: History, jid: str, before: float,
             completed: dict[str, float]) -> tuple[float, float, str | None] | None:
    """(when the job became due, unblocked and not held; the scan interval that applies; the node whose
    index said so from then on, written by the command that made it due, or None); None if it was
    held or under an operation at `before`, or if the record cannot say."""
    spec = h.specs.get(jid)
    arrived = h.arrived.get(jid)
    if spec is None or arrived is None:
        return None
    # enqueue writes the row before it returns; a drop-in's row waits for a worker's scan
    due, interval = arrived, SCAN_AFTER_EVENT
    indexed = h.node_of(h.enqueued_on.get(jid)) if spec.get("method") != "dropin" else None
    rec = h.record(jid) or {}
    run_at = epoch(rec.get("run_at")) if rec.get("run_at") else (arrived + spec.get("delay", 0) if spec.get("delay")
                                                                 else None)
    if run_at is not None and run_at > due:
        due, interval = run_at, SCAN_BUSY
    for p in spec.get("after") or []:
        if p not in completed:
            return None
        if completed[p] + SLACK > due:  # the parent's row reaches the index when its worker flushes
            due, interval, indexed = completed[p] + SLACK, SCAN_BUSY, None
    held = False
    for o in h.ops_on(jid):
        if o["t0"] >= before:
            continue
        if o["t1"] > due:  # tried, whether it worked or not: it may have moved the file meanwhile
            due, interval, indexed = o["t1"], SCAN_AFTER_EVENT, h.node_of(o.get("host"))
        verb = {"hold": "held", "cancel": "cancelled", "release": "released"}.get(o["op"])
        if verb and re.search(rf"^{verb} job {re.escape(jid)}$", o.get("out") or "", re.M):
            held = o["op"] != "release"
    if held:
        return None
    return due, interval, indexed


def due_since(h: History, jid: str, completed: dict[str, float]) -> float | None:
    """A time before which the job was surely not claimable: its enqueue began, it was scheduled,
    its parents had not all completed."""
    spec, t = h.specs.get(jid), h.enqueue_began.get(jid)
    if spec is None or t is None:
        return None
    rec = h.record(jid) or {}
    run_at = epoch(rec.get("run_at")) if rec.get("run_at") else None
    return max([t, run_at or t] + [completed.get(p, t) for p in spec.get("after") or []])


def check_priority(h: History) -> list[str]:
    """Two kinds of evidence, each enough: the claimed job J became due after a higher-priority K was
    due and in the index (any list of candidates holding J held K first), or K had been due for more
    than one scan interval when J was claimed."""
    out = []
    execs = h.execs_of()
    completed = parent_completions(h)
    by_queue: dict[str, list[str]] = defaultdict(list)
    for jid, spec in h.specs.items():
        by_queue[spec.get("queue", "default")].append(jid)
    firsts = {jid: first_claim(h, jid, execs.get(jid, [])) for jid in h.specs}
    first = {jid: f[0] for jid, f in firsts.items() if f is not None}
    seen: set[str] = set()

    def explained(t0: float, t1: float, pids: set) -> bool:
        """In [t0, t1], a stopped worker of the two (its claim's started_at is late), or a fault that
        may stall any worker: a full disk, or one this checker does not know (a frozen host, a frozen
        network filesystem client: tests/test_gluster_history.py adds them). A kill -9 leaves a
        `worker died` entry, which first_claim already refuses to date."""
        return any(f.get("t1", f["t"]) >= t0 - 1 and f["t"] <= t1 + 1
                   and (f["fault"] not in ("sigstop", "kill9_worker", "kill9_supervisor", "kill9_tree")
                        or (f["fault"] == "sigstop" and pids & set(f.get("pids", []))))
                   for f in h.faults)

    for jid, runs in sorted(execs.items()):
        queue = h.specs.get(jid, {}).get("queue", "default")
        for n, e in enumerate(runs):
            c, jpid = claim_entry(h.record(jid), e)
            pj, _ = priority_at(h, jid, c)
            if pj is None:
                continue
            jdue = due_since(h, jid, completed) if n == 0 and first.get(jid) == c else None
            for k in by_queue[queue]:
                if k == jid or k in seen or first.get(k) is None or first[k] <= c:
                    continue
                pk, _ = priority_at(h, k, c)
                if pk is None or pk <= pj:
                    continue
                due = due_time(h, k, c, completed)
                if due is None:
                    continue
                d, interval, indexed = due
                # each node has its own index: the claimer's had the row only if its node wrote it
                overtaken = indexed == e.node and jdue is not None and jdue > d + SLACK
                if c <= d + interval + SLACK and not overtaken:
                    continue
                if explained(d, first[k], {jpid, firsts[k][1]}):
                    continue
                seen.add(k)
                why = (f"became due after {jdue:.3f}, after" if overtaken else
                       f"was claimed {c - d:.1f}s, more than one scan interval ({interval:g}s), after")
                out.append(_v(5, "priority", f"{jid} (priority {pj}, queue {queue}, claimed at {c:.3f}) {why} "
                              f"{k} (priority {pk}) was due at {d:.3f}; {k} waited until {first[k]:.3f}",
                              [jid, k]))
    return out


# -- 6. a log holds only its own job's output ------------------------------------------------------


def check_logs(h: History) -> list[str]:
    out = []
    for jid, text in sorted(h.logs.items()):
        foreign = sorted({m[1] for m in MARK_RE.findall(text) if m[0] == h.token and m[1] != jid})
        if foreign:
            out.append(_v(6, "own output only", f"{jid}'s log holds output of {', '.join(foreign)}",
                          [jid, *foreign]))
    return out


# -- 7. wait answers what the files show -------------------------------------------------------------


def final_at(h: History, jid: str) -> float | None:
    rec = h.record(jid)
    if rec is None or h.state(jid) not in FINAL:
        return None
    return epoch(rec.get("updated_at"))


def check_waits(h: History) -> list[str]:
    out = []
    removed = h.removed()
    requeued = h.done_ops("requeued")
    for o in h.ops:
        if o["op"] != "wait":
            continue
        ids = [a for a in o["args"][3:]]
        what = f"`wait {' '.join(o['args'])}` (started {o['t0']:.3f}, {o['t1'] - o['t0']:.1f}s)"
        if o["rc"] is None:
            out.append(_v(7, "wait", f"{what} did not return", ids))
            continue
        unsure = {j for j in ids if any(r["t1"] > o["t0"] - 0.5 for r in requeued.get(j, []))}
        if o["rc"] == 2:
            finals = [final_at(h, j) for j in ids]
            if not unsure and all(j not in removed and f is not None and f < o["t0"] - 1 for j, f in zip(ids, finals)):
                out.append(_v(7, "wait", f"{what} timed out though every job was final before it started", ids))
            continue
        try:
            got = {r["id"]: r.get("state") for r in json.loads(o["out"] or "null")}
        except (ValueError, TypeError, KeyError):
            gone_before = [j for j in ids if j in removed and removed[j][1]["t0"] < o["t1"]]
            if o["rc"] == 1 and "no job" in o["err"] and gone_before:
                continue  # it asked for a job a clean had removed
            out.append(_v(7, "wait", f"{what} exited {o['rc']} without a JSON answer: {o['err'].strip()[:200]}", ids))
            continue
        for j in ids:
            s = got.get(j, "missing")
            if j in unsure:
                continue
            truth = removed[j][0] if j in removed else h.state(j)
            if s == "missing":
                how = f" (a `clean` removed it at {removed[j][1]['t0']:.3f})" if j in removed else ""
                out.append(_v(7, "wait", f"{what} called {j} missing; the files say {truth}{how}", [j]))
            elif s not in FINAL:
                out.append(_v(7, "wait", f"{what} returned with {j} {s}, not final", [j]))
            elif s != truth:
                out.append(_v(7, "wait", f"{what} said {j} {s}; the files say {truth}", [j]))
            else:
                f = final_at(h, j)
                if f is not None and f > o["t1"] + 0.5:
                    out.append(_v(7, "wait", f"{what} returned at {o['t1']:.3f}, before {j} was final "
                                  f"({f:.3f})", [j]))
        expected = 0 if all(got.get(j) == "completed" for j in ids) else 1
        if o["rc"] != expected:
            out.append(_v(7, "wait", f"{what} exited {o['rc']}, expected {expected} for states "
                          f"{[got.get(j, 'missing') for j in ids]}", ids))
    return out


INVARIANTS = (check_states, check_runs, check_limits, check_dependencies, check_priority, check_logs, check_waits)


def check(h: History) -> list[str]:
    out = [f"harness error (the run is not valid): {e}" for e in h.harness_errors]
    for f in INVARIANTS:
        out += f(h)
    return out
