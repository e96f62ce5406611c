"""`worker scale N`: ask the running supervisors of this node for a new worker count.

The request is a file beside each supervisor's heartbeat (workers/NODE.PID.scale),
which the supervisor reads on every pass of its loop (Supervisor._check_scale),
so no signal is needed and a supervisor that is busy starting or stopping just
reads it a moment later.
"""

from __future__ import annotations

import os
import time

from .errors import WorkerError
from .registry import MAX_WORKERS, SCALE_SUFFIX, read_workers
from .spool import Spool
from .supervisor import supervisors_here

SCALE_WAIT = 5.0  # seconds `worker scale` waits for each supervisor to take the new count


def scale_supervisors(spool: Spool, count: int) -> list[tuple[int, int]]:
    """Ask every supervisor of this spool on this node to run `count` workers; wait until
    each has taken it (within a second, as it looks every WAKE seconds). [(pid, count before)]."""
    if not 1 <= count <= MAX_WORKERS:
        raise WorkerError(f"a supervisor runs 1 to {MAX_WORKERS} workers, not {count}")
    sups = supervisors_here(spool)
    if not sups:
        raise WorkerError("no supervisor of this spool runs on this node: start one with "
                          f"`queuectl worker start --count {count} --detach`")
    for s in sups:
        spool.write_file(_request(spool, s.file), f"{count}\n".encode(), durable=False)
    deadline = time.monotonic() + SCALE_WAIT
    waiting = {s.pid for s in sups}
    while waiting:
        for w in read_workers(spool):
            if w.pid in waiting and w.get("workers") == count and \
                    not os.path.exists(_request(spool, w.file)):
                waiting.discard(w.pid)
        if waiting and time.monotonic() >= deadline:
            raise WorkerError(f"supervisor PID {', '.join(map(str, sorted(waiting)))} did not take the new "
                              f"count within {SCALE_WAIT:g}s")
        if waiting:
            time.sleep(0.05)
    return [(s.pid, s.get("workers")) for s in sups]


def _request(spool: Spool, heartbeat_file: str) -> str:
    return spool.path("workers", heartbeat_file[:-len(".json")] + SCALE_SUFFIX)
