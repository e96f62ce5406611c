"""The history checker (tests/history.py) on GlusterFS: three hosts of two workers on one volume
(tests/gluster.py, default options), a seeded mix of everything users do, with faults, then every
invariant of the Guarantees checked.

Faults: the checker's own (kill -9 of a worker, of a host's whole tree, short SIGSTOPs of a worker),
and two of this module's, each longer than the lease: SIGSTOP of every process of one host, and
SIGSTOP of one host's Gluster client process (its mount stops answering: a partition). On GlusterFS
a frozen host's flocks still hold on the server, so its jobs are not run behind its back.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from cluster import processes_of_node

pytestmark = pytest.mark.slow

LEASE, SKEW = 3, 1
SEED, JOBS = 303, 80
HOST_FAULT_EVERY = 6.0  # seconds between this module's faults (alternating kinds)


def _host_faults_workload(gluster):
    import history_workload

    class HostFaults(history_workload.Workload):
        """The checker's workload plus whole-host faults: a frozen host, a frozen Gluster client."""

        def faulter(self) -> None:
            theirs = threading.Thread(target=super().faulter, daemon=True, name="faulter")
            theirs.start()
            rng = random.Random(self.p.seed * 11 + 5)
            k = 0
            while not self.stop.wait(rng.uniform(0.7, 1.3) * HOST_FAULT_EVERY):
                if self.quiet.is_set():
                    continue
                h = rng.choice(self.hosts)
                kind = ("sigstop_host", "sigstop_client")[k % 2]
                k += 1
                if kind == "sigstop_host":
                    pids = [p for p in processes_of_node(h.node) if p != os.getpid()]
                else:
                    pid = gluster.client_pid(h.n)
                    pids = [pid] if pid else []
                t = time.time()
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGSTOP)
                    except ProcessLookupError:
                        pass
                try:
                    time.sleep(LEASE + SKEW + 1.5)  # past the lease: other hosts think it dead
                finally:
                    for pid in pids:
                        try:
                            os.kill(pid, signal.SIGCONT)
                        except ProcessLookupError:
                            pass
                self.rec.add("fault", fault=kind, t=t, t1=time.time(), pids=pids, host=h.n)
            theirs.join()

    return HostFaults


@pytest.fixture(scope="module")
def violations(gluster, tmp_path_factory):
    import history
    base = tmp_path_factory.mktemp("ghistory")
    saved_settings, saved_workload = dict(history.SETTINGS), history.Workload
    history.SETTINGS.update(lease=LEASE, clock_skew=SKEW)
    history.Workload = _host_faults_workload(gluster)
    lines: list[str] = []
    try:
        name = f"hist{SEED}"
        found = history.run_one(SEED, JOBS, base, spools=[str(gluster.spool(i, name)) for i in range(3)],
                                nodes=list(gluster.nodes), shared=True, supervisors=1, workers=2,
                                faults=("kill9_worker", "kill9_tree", "sigstop"), fault_every=4.0, duration=25,
                                log=lines.append)
    finally:
        history.SETTINGS.clear()
        history.SETTINGS.update(saved_settings)
        history.Workload = saved_workload
    print("\n".join(lines))
    by: dict[int, list[str]] = {n: [] for n in range(1, 8)}
    for v in found:
        by[int(v.split("invariant ", 1)[1].split()[0])].append(v)
    return by, "\n".join(lines)


# Invariants that still break on GlusterFS (open findings; remove once fixed).
OPEN_FINDINGS: dict[int, str] = {
    5: "priority across hosts: a `priority` on one host replaces pending/ID.json; another host sees it only at "
       "its next listing (no inotify across mounts: up to 1 s) and may read the name stale (the old file, "
       "old priority) for up to a second more, then reads it again at the listing after: its workers may claim "
       "a lower-priority job of the same queue 2-3 s after the change, past the checker's allowance (1 s after "
       "an arrival, plus 1 s). Seen at seed 303 (3.0 s, next to a frozen Gluster client and a killed host) "
       "before two local causes of the same symptom were fixed (a worker kept a full queue's lower-priority "
       "candidates; shared mode shuffled the best 8 across priorities); [5] passed in 2 of 2 runs after those fixes",
}


@pytest.mark.parametrize("n", [pytest.param(n, marks=pytest.mark.xfail(strict=False, reason=OPEN_FINDINGS[n]))
                               if n in OPEN_FINDINGS else n for n in range(1, 8)])
def test_three_glusterfs_hosts_with_host_faults_keep_invariant(violations, n):
    by, what = violations
    assert by[n] == [], "\n".join(by[n])
