#!/usr/bin/env python3
"""queuectl on many hosts: one spool on an sshfs export, 1 node vs 3 nodes (root only).

    python bench/cluster.py                 # 2000 jobs; writes the "Many hosts" section of bench/results.md
    python bench/cluster.py --jobs 300 --samples 5 --no-write

Three sshfs mounts of one loopback export stand for three machines
(tests/cluster.py, the fixture the tests use). Workloads:

1. drain: the same N `true` jobs, enqueued from hostA, drained by `worker start
   --count 2 --burst --shared` on 1 node, then (a fresh spool) on 3 nodes at once.
   The time includes each node building its own local index of the spool.
2. pickup latency across nodes: hostB and hostC idle in shared mode (polling);
   hostA enqueues one job at a time; latency = the job's first instruction
   (`date +%s.%N`) minus the moment `enqueue` returned on hostA.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from cluster import MOUNT_OPTIONS, Cluster, Unavailable  # noqa: E402

SECTION = "## Many hosts (bench/cluster.py)"


def drain(c: Cluster, spool: str, jobs: int, nodes: int) -> tuple[float, dict[str, int]]:
    marks = c.base / f"marks-{spool}"
    marks.mkdir()
    lines = "\n".join(json.dumps({"id": f"j{i:05d}", "command": f"touch {marks}/j{i:05d}.$QUEUECTL_NODE"})
                      for i in range(jobs)) + "\n"
    r = c.cli(0, spool, "enqueue", "-q", "-f", "-", input=lines, timeout=600)
    if r.returncode:
        raise SystemExit(f"enqueue failed: {r.stderr}")
    t0 = time.monotonic()
    procs = [c.start(i, spool, "worker", "start", "--count", "2", "--burst", "--shared",
                     log=c.base / f"{spool}-{c.nodes[i]}.log") for i in range(nodes)]
    for p in procs:
        if p.wait(1800):
            raise SystemExit(f"a worker exited with {p.returncode}")
    elapsed = time.monotonic() - t0
    names = [p.name for p in marks.iterdir()]
    ran = {n.split(".")[0] for n in names}
    if len(ran) != jobs or len(names) != jobs:
        raise SystemExit(f"{spool}: {len(ran)} of {jobs} jobs ran, {len(names)} runs")
    spread: dict[str, int] = {}
    for n in names:
        spread[n.split(".")[1]] = spread.get(n.split(".")[1], 0) + 1
    return elapsed, dict(sorted(spread.items()))


def latency(c: Cluster, spool: str, samples: int) -> list[float]:
    c.cli(0, spool, "config", "set", "shared", "true")
    procs = [c.start(i, spool, "worker", "start", "--count", "1", log=c.base / f"{spool}-{c.nodes[i]}.log")
             for i in (1, 2)]
    out = c.base / "latency"
    out.mkdir()
    try:
        time.sleep(3)  # both idle, their indexes built
        lat = []
        for k in range(samples):
            stamp = out / f"l{k}"
            r = c.cli(0, spool, "enqueue", "--id", f"l{k}", f"date +%s.%N > {stamp}")
            t_enq = time.time()
            if r.returncode:
                raise SystemExit(f"enqueue failed: {r.stderr}")
            deadline = time.monotonic() + 60
            while not (stamp.exists() and stamp.read_text().strip()):
                if time.monotonic() > deadline:
                    raise SystemExit(f"job l{k} was not picked up within 60 s")
                time.sleep(0.005)
            lat.append(max(0.0, float(stamp.read_text()) - t_enq))
            time.sleep(0.2 + (k % 5) * 0.1)  # land at different points of the pollers' cycles
        return lat
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="qcluster-"))
    c = Cluster(base, 3)
    try:
        c.up()
    except Unavailable as e:
        print(f"skipped: {e}")
        return 0
    try:
        for name in ("one", "three", "lat"):
            os.makedirs(c.export / name, exist_ok=True)
        one, spread1 = drain(c, "one", args.jobs, 1)
        three, spread3 = drain(c, "three", args.jobs, 3)
        lat = latency(c, "lat", args.samples)
    finally:
        c.down()
    rows = [
        f"| drain, 1 node x 2 workers | {args.jobs} `true` jobs: {one:.1f} s, {args.jobs / one:.0f} jobs/s | {spread1} |",
        f"| drain, 3 nodes x 2 workers | {args.jobs} `true` jobs: {three:.1f} s, {args.jobs / three:.0f} jobs/s "
        f"({one / three:.2f}x the 1-node rate) | {spread3} |",
        f"| pickup latency across nodes | p50 {statistics.median(lat) * 1000:.0f} ms, p90 {pct(lat, 0.9) * 1000:.0f} ms, "
        f"max {max(lat) * 1000:.0f} ms | {len(lat)} jobs enqueued on hostA, run by idle hostB/hostC (polling) |",
    ]
    table = "\n".join([
        SECTION, "",
        f"Produced by `python bench/cluster.py --jobs {args.jobs} --samples {args.samples}` on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, Linux {platform.release()}. "
        "Three sshfs mounts of one loopback export (one machine: the nodes share its cores), mount options "
        f"`{MOUNT_OPTIONS}`; lease 30 s, clock_skew 5 s (the defaults).", "",
        "| workload | figure | notes |", "|---|---|---|", *rows, ""])
    print(table)
    if not args.no_write:
        results = HERE / "results.md"
        text = results.read_text() if results.exists() else ""
        if SECTION in text:
            text = text[:text.index(SECTION)].rstrip() + "\n"
        results.write_text(text.rstrip() + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
