"""A worker's candidates: the jobs it tries to claim next, in order, and the queue slot a claim needs.

A worker asks the index for a few dozen claimable jobs at a time and works down
that list; new arrivals, a `priority` change or a due retry empty it, and the
next claim asks again. The list is only ever a proposal (the claim's rename
decides), but its order is a promise: no job of a queue is claimed while a due
job of higher priority of the same queue waits (README, Guarantees).
"""

from __future__ import annotations

import random
from zlib import crc32

from .job import JobState
from .queues import take_slot
from .spool import Spool

CANDIDATES = 16  # jobs a worker takes from one index query (times its sibling workers)
SPREAD = 8       # on a shared spool, claim in random order among up to this many equal best candidates

Candidate = tuple[str, JobState, str, int]  # id, state, queue, priority


def candidates(spool: Spool, queues: tuple[str, ...] | None, skip: set[str], lane: int,
               lanes: int, taken: set[str] = frozenset()) -> list[Candidate]:
    """The jobs to try next, in the order to try them, last first (the caller pops); none of
    `taken` (ids whose claim failed since the last scan: other hosts' now, as the index cannot know yet).

    Sibling workers would all race for the best job, and each one's index lags
    the others' batched writes, listing jobs they already ran: over half the
    claims failed, and the list ran dry twice as often. Among jobs of equal
    priority each tries its own share first (by a hash of the id, the same in
    every worker and every query), then the rest in order. Lanes only order
    equals: a job of higher priority comes first whoever's share it is, or an
    idle worker would run its own low-priority jobs while a better one waits
    for its busy sibling.
    """
    spool.flush_index()  # or the query returns jobs this worker already ran
    ranked = [c for c in spool.index.ranked(min(CANDIDATES * lanes, 256), queues=queues, paused=skip)
              if c[0] not in taken]
    if lanes > 1:
        # Sorted by priority already: a stable sort on (priority, not ours) moves each
        # worker's share ahead within its priority and nowhere else.
        ranked.sort(key=lambda c: (-c[3], crc32(c[0].encode()) % lanes != lane))
    ranked.reverse()
    if spool.multihost:
        spread(ranked)
    return ranked


def spread(found: list[Candidate]) -> None:
    """Shuffle, in place, the best few of a list in pop order (best last) among themselves.

    Hosts that all take the best job first collide on it, and the fastest lister
    wins most races. Only jobs of the best priority are shuffled: a job of lower
    priority tried first could take its queue's last slot (or the worker) while a
    better one of the same queue waits.
    """
    if not found:
        return
    best = found[-1][3]
    n = 0
    while n < min(SPREAD, len(found)) and found[-1 - n][3] == best:
        n += 1
    head = found[len(found) - n:]
    random.shuffle(head)
    found[len(found) - n:] = head


def without_queue(found: list[Candidate], queue: str) -> list[Candidate]:
    """The list without the jobs of a queue whose every slot is held.

    Skipping just the one popped would leave the queue's lower-priority jobs
    further down: once a slot freed they would be claimed before it. The
    queue's jobs come back, in order, with the next query.
    """
    return [c for c in found if c[2] != queue]


def queue_slot(spool: Spool, queue: str):
    """None for a queue without a limit, a held slot lock's fd, or False if all are held.

    Taken before the claim: a job is never claimed only to wait for a slot.
    """
    limit = spool.config.limit(queue)
    if limit is None:
        return None
    fd = take_slot(spool, queue, limit)
    return False if fd is None else fd
