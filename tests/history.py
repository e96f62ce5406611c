"""The history checker: a seeded random mix of everything users do, with faults,
recorded, then checked against every promise of the README's Guarantees.

    python tests/history.py --seeds 3 --jobs 300            # three seeds, one after another
    python tests/history.py --seed 1234 --jobs 150          # replay one seed
    python tests/history.py --small-fs 64m ...              # spool on a fresh tmpfs: full-disk faults too (root)
    python tests/history.py --spool /mnt/a/q --spool /mnt/b/q --spool /mnt/c/q \\
        --node a --node b --node c --shared ...             # one spool seen through three hosts' mounts
    python tests/history.py --check WORKDIR --spool ...     # check a recorded history again

The workload and recorder are tests/history_workload.py, the invariants
tests/history_check.py. Each run prints its seed first; a failure prints the
seed, the broken invariant and the job ids, and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from history_load import check_history  # noqa: E402
from history_workload import (FAULTS, LIMITED, Params, Workload, cmdline, descendants, entries,  # noqa: E402
                              proc_alive, signal_quietly)
from support import mount_tmpfs, unmount  # noqa: E402

SETTINGS = {"backoff_max": 0.5, "backoff_base": 2, "max_retries": 2, "dropin_grace": 0.5, "kill_grace": 1,
            f"queue.{LIMITED}.concurrency": 1}


def run_workload(params: Params, work: Path, log=print) -> Workload:
    """Run the workload to quiescence; everything it saw is in `work`."""
    w = Workload(params, work)
    t_start = time.time()
    w.rec.add("meta", params=params.as_dict(), token=w.token, t=t_start, limits={LIMITED: 1})
    for spec in w.specs:
        w.rec.add("job", spec=spec)
    # shared mode judges a node dead by its heartbeat's age: short leases, or recovery takes 35 s
    settings = {**SETTINGS, **({"lease": 3, "clock_skew": 1} if params.shared or len(params.spools) > 1 else {})}
    for key, value in settings.items():
        r = w.config(key, value)
        if r["rc"] != 0:
            raise RuntimeError(f"config set {key} {value} failed: {r['err']}")
    w.poller.start()
    for h in w.hosts:
        for k in range(params.supervisors):
            h.start_supervisor(k)
    threads = [threading.Thread(target=guarded, args=(w, f), daemon=True, name=f.__name__)
               for f in (w.enqueuer, w.controller, w.waiter, w.faulter, w.keeper)]
    for t in threads:
        t.start()
    try:
        threads[0].join(max(600.0, params.duration * 3))  # every job goes in, however slow the machine
        w.stop.wait(max(0.0, t_start + params.duration - time.time()))
        w.stop.set()
        for t in threads:
            t.join(120)
        quiesce(w, log)
    except BaseException:  # Ctrl-C, SIGTERM, a bug: leave no process behind
        w.stop.set()
        for t in threads:
            t.join(5)
        kill_everything(w)
        raise
    finally:
        w.rec.add("end", t=time.time())
        w.rec.close()
    return w


def kill_everything(w: Workload) -> None:
    """Every supervisor's whole tree, and every job still running; the disk emptied again."""
    w.quiet.set()
    for pid in list(w.stopped):
        signal_quietly(pid, signal.SIGCONT)
    for h in w.hosts:
        for s in h.sups:
            if s is not None:
                for pid in [s.pid, *descendants(s.pid)]:
                    signal_quietly(pid, signal.SIGKILL)
                s.wait()
    for k in w.poller.running():
        if w.token in cmdline(int(k[3])):
            signal_quietly(int(k[3]), signal.SIGKILL)
    w.unfill()


def guarded(w: Workload, f) -> None:
    """Run one of the workload's threads; a crash of the harness is recorded, and fails the run."""
    try:
        f()
    except BaseException:
        w.rec.add("harness_error", t=time.time(), thread=f.__name__, error=traceback.format_exc())
        raise


def quiesce(w: Workload, log) -> None:
    """Stop the faults, let the workers drain the queue, stop them, and note what still ran."""
    w.quiet.set()
    for pid in list(w.stopped):
        signal_quietly(pid, signal.SIGCONT)
    w.unfill()
    t0 = time.time()
    w.rec.add("quiesce", t=t0)
    for h in w.hosts:
        with h.lock:
            for k, s in enumerate(h.sups):
                if s is None or s.poll() is not None:
                    h.start_supervisor(k)
    spool = Path(w.hosts[0].spool)
    deadline = time.time() + w.p.drain_timeout
    left: list[str] = []
    while time.time() < deadline:
        held = sorted(n[:-5] for n in entries(spool / "held") if n.endswith(".json"))
        if held:
            w.op("release", *held, host=w.hosts[0])
        left = [f"{d}/{n}" for d in ("pending", "processing", "failed", "held")
                for n in entries(spool / d) if n.endswith(".json") and not n.startswith(".")]
        if not left and not w.poller.running():
            break
        time.sleep(0.2)
    w.rec.add("drained", t=time.time(), left=sorted(left))
    if left:
        log(f"not drained after {w.p.drain_timeout:.0f}s: {len(left)} jobs still waiting, e.g. {left[:5]}")
    for h in w.hosts:
        for s in h.sups:
            if s is not None and s.poll() is None:
                signal_quietly(s.pid, signal.SIGTERM)
    for h in w.hosts:
        for s in h.sups:
            if s is None:
                continue
            try:
                s.wait(60)
            except subprocess.TimeoutExpired:
                pids = [s.pid, *descendants(s.pid)]
                for pid in pids:
                    signal_quietly(pid, signal.SIGKILL)
                w.rec.add("harness_kill", t=time.time(), pids=pids, why="supervisor did not stop within 60s")
                s.wait()
    # a supervisor the harness lost track of would run on after the run: find it by its spool
    strays = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
              if any(f"--spool {sp} worker start" in cmdline(pid) for sp in w.p.spools)]
    for pid in strays:
        for p in [pid, *descendants(pid)]:
            signal_quietly(p, signal.SIGKILL)
    if strays:
        w.rec.add("harness_error", t=time.time(), thread="quiesce",
                  error=f"supervisors {strays} were not the harness's own any more; killed")
    # a job's background child may still print for a moment; the executions themselves should be gone
    end = time.time() + 3
    while w.poller.running() and time.time() < end:
        time.sleep(0.05)
    w.poller.stop.set()
    w.poller.join()
    leftover = [k for k in w.poller.last_seen if proc_alive(int(k[3])) and w.token in cmdline(int(k[3]))]
    for k in leftover:
        signal_quietly(int(k[3]), signal.SIGKILL)
    if leftover:
        w.rec.add("leftover", t=time.time(), executions=[list(k) for k in leftover])
    (w.work / "alive.json").write_text(json.dumps([[*k, t] for k, t in w.poller.last_seen.items()]))
    time.sleep(0.5)  # background children (sleep 0.4) end


def run_one(seed: int, jobs: int, base: Path, *, spools: list[str] | None = None, nodes: list[str] | None = None,
            small: str | None = None, duration: float | None = None, log=print, **kw) -> list[str]:
    """One seed: run, check; the violations found (empty: every promise held)."""
    work = base / f"seed-{seed}"
    mnt = None
    if spools is None:
        if small:
            mnt = mount_tmpfs(base / f"fs-{seed}", small)
            spools = [str(mnt / "spool")]
            kw["fill_dir"] = str(mnt)
        else:
            spools = [str(work / "spool")]  # beside its record, where --check WORKDIR looks
    for s in spools:
        if any(entries(Path(s, d)) for d in ("pending", "done", "dead", "failed", "held", "cancelled")):
            raise SystemExit(f"spool {s} already holds jobs: give each run a fresh spool")
    def terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old_term = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM (timeout, CI) cleans up too
        old_term = signal.signal(signal.SIGTERM, terminate)
    try:
        params = Params(seed, jobs=jobs, spools=spools, nodes=nodes,
                        duration=duration if duration is not None else max(10.0, jobs / 8), work=str(work), **kw)
        t0 = time.monotonic()
        log(f"seed {seed}: {jobs} jobs, {len(spools)} host(s), spool {spools[0]}, record in {work}")
        run_workload(params, work, log)
        t1 = time.monotonic()
        violations, what = check_history(work, spools, nodes)
        log(what)
        log(f"seed {seed}: ran {t1 - t0:.1f}s, checked {time.monotonic() - t1:.1f}s: "
            + ("every invariant held" if not violations else f"{len(violations)} violations"))
        for v in violations:
            log(v)
        return violations
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if mnt is not None:
            shutil.copytree(mnt / "spool", work / "spool", symlinks=True, dirs_exist_ok=True,
                            ignore_dangling_symlinks=True)
            unmount(mnt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=1, help="how many seeds to run (random ones, printed)")
    ap.add_argument("--seed", type=int, action="append", help="run this seed (repeatable)")
    ap.add_argument("--jobs", type=int, default=150)
    ap.add_argument("--duration", type=float, help="seconds of workload (default: jobs / 8, at least 10)")
    ap.add_argument("--spool", action="append", help="the spool as one host sees it (repeatable: one per host)")
    ap.add_argument("--node", action="append", help="QUEUECTL_NODE of each host, in --spool order")
    ap.add_argument("--shared", action="store_true", help="workers run with --shared")
    ap.add_argument("--supervisors", type=int, default=2, help="supervisors per host")
    ap.add_argument("--workers", type=int, default=2, help="workers per supervisor")
    ap.add_argument("--faults", default=",".join(FAULTS), help="comma-separated: " + ",".join(FAULTS))
    ap.add_argument("--fault-every", type=float, default=2.5, help="mean seconds between faults")
    ap.add_argument("--small-fs", metavar="SIZE",
                    help="put the spool on a fresh tmpfs of SIZE (root): full-disk faults")
    ap.add_argument("--workdir", help="where records go (default: a new temp directory, kept)")
    ap.add_argument("--check", metavar="WORKDIR", help="only check a recorded history (give its --spool too)")
    a = ap.parse_args(argv)
    if a.check:
        spools = a.spool or [str(Path(a.check) / "spool")]
        violations, what = check_history(Path(a.check), spools, a.node)
        print(what)
        for v in violations:
            print(v)
        print("every invariant held" if not violations else f"{len(violations)} violations")
        return 1 if violations else 0
    seeds = a.seed or [random.SystemRandom().randrange(1, 10 ** 6) for _ in range(a.seeds)]
    base = Path(a.workdir or tempfile.mkdtemp(prefix="qhistory-"))
    print(f"seeds {' '.join(map(str, seeds))}; records in {base}")
    failed = []
    for seed in seeds:
        # each seed gets a fresh spool: a directory of its own on every mount
        spools = [f"{s.rstrip('/')}/seed-{seed}" for s in a.spool] if a.spool else None
        v = run_one(seed, a.jobs, base, spools=spools, nodes=a.node, small=a.small_fs, duration=a.duration,
                    supervisors=a.supervisors, workers=a.workers, shared=a.shared,
                    faults=tuple(f for f in a.faults.split(",") if f), fault_every=a.fault_every)
        if v:
            failed.append(seed)
    print(f"{len(seeds) - len(failed)} of {len(seeds)} seeds passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
