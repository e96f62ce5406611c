"""Loading a run recorded by tests/history_workload.py into a History
(tests/history_check.py): the events, the executions' S/E lines, the spool's
files and logs, and each host's index before and after `reindex`, and
`queuectl check` from each host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from history_check import STATE_DIRS, STATE_OF_DIR, Execution, History, check

def stats(h: History) -> str:
    """What the run exercised, so a pass is seen not to be vacuous."""
    ops = Counter(o["op"] for o in h.ops)
    ok = Counter(o["op"] for o in h.ops if o["rc"] == 0)
    faults = Counter(f["fault"] for f in h.faults)
    killed = sum(1 for e in h.execs if e.killed)
    deps = sum(1 for s in h.specs.values() if s.get("after"))
    return (f"{len(h.accepted)} of {len(h.specs)} jobs enqueued ({deps} with --after), "
            f"{len(h.execs)} runs ({killed} cut short); ops "
            + ", ".join(f"{k} {ok[k]}/{n}" for k, n in sorted(ops.items()))
            + "; faults " + (", ".join(f"{k} {n}" for k, n in sorted(faults.items())) or "none")
            + "".join(f"; {s}" for s in h.skipped))



DUMP_INDEX = """
import json, sys
from queuectl.spool import Spool
s = Spool(sys.argv[1], create=False)
print(json.dumps(sorted([r.id, r.state.value, r.priority, r.run_at, r.attempts, r.last_error]
                        for r in s.index.rows())))
"""


def _host_env(node: str | None) -> dict:
    env = dict(os.environ)
    if node:
        env["QUEUECTL_NODE"] = node
    return env


def _qc(spool: str, node: str | None, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "queuectl", "--spool", spool, *args], capture_output=True,
                          text=True, env=_host_env(node), stdin=subprocess.DEVNULL, timeout=300)


def _index_rows(spool: str, node: str | None) -> list:
    r = subprocess.run([sys.executable, "-c", DUMP_INDEX, spool], capture_output=True, text=True,
                       env=_host_env(node), timeout=300)
    if r.returncode != 0:
        return [["<index unreadable>", r.stderr.strip()[-300:], None]]
    return [[row[0], row[1], row[2], *row[3:]] for row in json.loads(r.stdout)]


def _read_record(path: Path) -> dict | None:
    """A job file's JSON, or None if it is not valid. Through a GlusterFS client a file
    replaced a moment ago may fail with ESTALE or read short for up to a second: read again."""
    for attempt in range(8):
        try:
            return json.loads(path.read_bytes())
        except (OSError, ValueError):
            if attempt == 7:
                return None
            time.sleep(0.25)
    return None


def load(work: Path, spools: list[str], nodes: list[str] | None = None) -> History:
    h = History()
    nodes = nodes or [None] * len(spools)
    renamed: dict[str, str] = {}
    for line in (work / "events.jsonl").read_text().splitlines():
        ev = json.loads(line)
        k = ev.pop("kind")
        if k == "meta":
            h.meta, h.token, h.limits = ev, ev["token"], ev.get("limits", {})
        elif k == "job":
            h.specs[ev["spec"]["id"]] = ev["spec"]
        elif k == "op":
            h.ops.append(ev)
        elif k == "fault":
            h.faults.append(ev)
        elif k == "rename":
            renamed.update(dict(ev["pairs"]))
        elif k == "quiesce":
            h.t_quiesce = ev["t"]
        elif k == "drained":
            h.drained_left = ev["left"]
        elif k == "fault_skipped":
            h.skipped.append(f"{ev['fault']} skipped: {ev['reason']}")
        elif k == "harness_error":
            h.harness_errors.append(f"{ev['thread']}: {ev['error'].strip().splitlines()[-1]}")
        elif k == "leftover":
            h.leftover = ev["executions"]
    for old, new in renamed.items():  # --lines gave its own ids
        if old in h.specs:
            h.specs[new] = dict(h.specs.pop(old), id=new)
    h.ops.sort(key=lambda o: o["t0"])
    for o in h.ops:
        if o["op"] in ("enqueue", "dropin"):
            ids = [renamed.get(i, i) for i in o.get("ids", [])]
            (h.accepted if o["rc"] == 0 else h.maybe).update(ids)
            for i in ids:
                h.arrived.setdefault(i, o["t1"])
                h.enqueue_began.setdefault(i, o["t0"])
                h.enqueued_on.setdefault(i, o.get("host", 0))
    ends = {}
    starts = []
    for line in (work / "hist").read_text(errors="replace").splitlines():
        p = line.split()
        if len(p) == 6 and p[0] == "S":
            starts.append(p)
        elif len(p) == 8 and p[0] == "E":
            ends[(p[1], p[2], p[3], p[4], p[5])] = (float(p[6]), int(p[7]))
    alive = {tuple(k[:5]): k[5] for k in json.loads((work / "alive.json").read_text())} \
        if (work / "alive.json").exists() else {}
    for p in starts:
        key = (p[1], p[2], p[3], p[4], p[5])
        end, code = ends.get(key, (None, None))
        e = Execution(p[1], int(p[2]), p[3], int(p[4]), float(p[5]), end, code)
        if end is None:
            e.end = max(e.start, alive.get(key, e.start))
        h.execs.append(e)
    root = Path(spools[0])
    for d in STATE_DIRS:
        for n in sorted(os.listdir(root / d)) if (root / d).exists() else []:
            if n.startswith(".") or not n.endswith(".json"):
                continue
            rec = _read_record(root / d / n)
            h.files.setdefault(n[:-5], []).append((STATE_OF_DIR[d], rec))
    rej = root / "rejected"
    for n in sorted(os.listdir(rej)) if rej.exists() else []:
        if n.endswith(".reason"):
            h.rejected.append(f"{n[:-7]}: {(rej / n).read_text(errors='replace').strip()}")
    # a failed `enqueue --lines` may have placed some of its jobs, under ids of its own
    for jid, found in h.files.items():
        if jid not in h.specs and found[0][1]:
            spec = (found[0][1].get("command") or "").rsplit(" ", 1)[-1]
            if spec in h.specs and spec in h.maybe:
                h.specs[jid] = dict(h.specs.pop(spec), id=jid)
                h.maybe.add(jid)
    logs = root / "logs"
    for n in sorted(os.listdir(logs)) if logs.exists() else []:
        if n.endswith(".log") and (n[:-4] in h.files or n[:-4] in h.specs):
            h.logs[n[:-4]] = (logs / n).read_text(errors="replace")
    for i, (spool, node) in enumerate(zip(spools, nodes)):
        host = node or str(i)
        h.index_before[host] = _index_rows(spool, node)
        r = _qc(spool, node, "check")
        h.check_out[host] = (r.returncode, r.stdout + r.stderr)
        _qc(spool, node, "reindex")
        h.index_after[host] = _index_rows(spool, node)
    return h


def check_history(work: Path, spools: list[str], nodes: list[str] | None = None) -> tuple[list[str], str]:
    """Load a recorded run and check every invariant: (the violations, one line each; what it exercised)."""
    h = load(Path(work), spools, nodes)
    seed = h.meta.get("params", {}).get("seed")
    return [f"seed {seed}: {v}" for v in check(h)], f"seed {seed}: {stats(h)}"
