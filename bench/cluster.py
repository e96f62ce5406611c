#!/usr/bin/env python3
"""queuectl on many hosts: one spool on GlusterFS (or sshfs), 1, 2 and 3 nodes (root only).

    python bench/cluster.py                      # GlusterFS, 600 jobs of `sleep 0.2`; writes bench/results.md
    python bench/cluster.py --fs sshfs --jobs 300 --samples 10 --no-write

Three mounts of one volume stand for three machines (tests/gluster.py: a one-brick GlusterFS volume with
default options, mounted three times with the native client; or tests/cluster.py: sshfs with the options the
docs recommend). Workloads:

1. drain: the same N jobs (default `sleep 0.2`: each job waits, so the figure is about claiming and recording,
   not this machine's 2 cores), enqueued from hostA, drained by `worker start --count 2 --burst --shared` on 1,
   then 2, then 3 nodes (a fresh spool each). The time includes each node building its own local index.
2. pickup latency across nodes: hostB and hostC idle in shared mode (polling); hostA enqueues one job at a
   time; latency = the job's first instruction (`date +%s.%N`) minus the moment `enqueue` returned on hostA.

The machine is shared with other work while this runs: say so next to the figures.
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
from gluster import GlusterCluster  # noqa: E402

SECTION = "## Many hosts (bench/cluster.py)"


def drain(c: Cluster, spool: str, jobs: int, nodes: int, command: str) -> tuple[float, dict[str, int]]:
    marks = c.base / f"marks-{spool}"
    marks.mkdir()
    lines = "\n".join(json.dumps({"id": f"j{i:05d}", "command": f"{command}; touch {marks}/j{i:05d}.$QUEUECTL_NODE"})
                      for i in range(jobs)) + "\n"
    r = c.cli(0, spool, "enqueue", "-q", "--file", "-", input=lines, timeout=600)
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
    ap.add_argument("--fs", choices=("glusterfs", "sshfs"), default="glusterfs")
    ap.add_argument("--jobs", type=int, default=600)
    ap.add_argument("--command", default="sleep 0.2", help="each job's command (default: sleep 0.2)")
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="qcluster-"))
    c = (GlusterCluster if args.fs == "glusterfs" else Cluster)(base, 3)
    try:
        c.up()
    except Unavailable as e:
        print(f"skipped: {e}")
        return 0
    times: dict[int, float] = {}
    spreads: dict[int, dict[str, int]] = {}
    try:
        for n in (1, 2, 3):
            times[n], spreads[n] = drain(c, f"drain{n}", args.jobs, n, args.command)
            print(f"{n} node(s): {times[n]:.1f} s, {args.jobs / times[n]:.1f} jobs/s {spreads[n]}", flush=True)
        lat = latency(c, "lat", args.samples)
    finally:
        c.down()
    rate = {n: args.jobs / t for n, t in times.items()}
    rows = [f"| drain, {n} node{'s' if n > 1 else ''} x 2 workers | {args.jobs} `{args.command}` jobs: "
            f"{times[n]:.1f} s, {rate[n]:.1f} jobs/s ({rate[n] / rate[1]:.2f}x 1 node) | {spreads[n]} |"
            for n in (1, 2, 3)]
    rows.append(f"| pickup latency across nodes | p50 {statistics.median(lat) * 1000:.0f} ms, "
                f"p99 {pct(lat, 0.99) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms | {len(lat)} jobs enqueued on "
                "hostA, each run by idle hostB/hostC (polling) |")
    where = ("Three mounts of one GlusterFS volume (one brick on this machine's disk, default volume and mount "
             "options, the native FUSE client)" if args.fs == "glusterfs" else
             f"Three sshfs mounts of one loopback export, mount options `{MOUNT_OPTIONS}`")
    table = "\n".join([
        SECTION, "",
        f"Produced by `python bench/cluster.py --fs {args.fs} --jobs {args.jobs} --samples {args.samples}` on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, Linux {platform.release()}. "
        f"{where}: one machine, so the nodes share its cores, and other work ran on it at the same time; "
        "lease 30 s, clock_skew 5 s (the defaults).", "",
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
