"""Dependency cycles: refused by `enqueue`, found among waiting jobs.

A job admitted through `enqueue` or as a drop-in may only name jobs that
exist, which rules out most cycles, but not all: two drop-ins can name each
other (the second's file is already in pending/ when the first is admitted),
and an existing job may name an id that does not exist yet (a hand edit).
`enqueue` refuses a job that would close a cycle; a cycle that forms anyway
(drop-ins, a canonical file edited by hand) is found among the waiting jobs
and its members are cancelled together, each with the cycle as its reason
(controls.resolve_dependencies).
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol

from .errors import InvalidJob
from .job import Job


# Jobs that wait for their dependencies now or may again (a running one may fail and retry).
LIVE = ("pending", "failed", "held", "processing")
WAITING = ("pending", "failed", "held")


class DepsIndex(Protocol):
    """What cycle finding needs of the index (index.Index provides it)."""
    def dep_rows(self, states: Iterable[str], *, job: str | None = None,
                 dep: str | None = None) -> list[tuple[str, str, int]]: ...


class Batch:
    """The ids and dependencies of the jobs admitted earlier in one pass (one
    enqueue, one drop-in acceptance), whose index rows are not written yet."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}       # lower-cased id -> id
        self.edges: dict[str, list[str]] = {}
        self.named: set[str] = set()        # lower-cased ids some job of the batch waits for

    def __contains__(self, key: object) -> bool:
        return key in self.ids

    def get(self, key: str) -> str | None:
        return self.ids.get(key)

    def add(self, job: Job) -> None:
        key = job.id.lower()
        self.ids[key] = job.id
        deps = [*job.after, *job.after_any]
        if deps:
            self.edges[key] = deps
            self.named.update(d.lower() for d in deps)

    def drop(self, job: Job) -> None:
        """Take back a job added last (a batch that skips it: `enqueue --skip-invalid`)."""
        key = job.id.lower()
        self.ids.pop(key, None)
        if self.edges.pop(key, None) is not None:
            self.named = {d.lower() for deps in self.edges.values() for d in deps}


def path_back(start: str, edges_of: Callable[[str], Iterable[str]]) -> list[str] | None:
    """A cycle through start as [start, ..., last] (last waits for start), or None.

    Iterative, so a dependency chain of any length costs no recursion.
    """
    key = start.lower()
    parent: dict[str, tuple[str, str]] = {}  # lower id -> (its spelling, the lower id that named it)
    todo = []
    for dep in edges_of(start):
        if dep.lower() == key:
            return [start]  # it waits for itself (a hand edit: admission refuses it)
        if dep.lower() not in parent:
            parent[dep.lower()] = (dep, key)
            todo.append(dep)
    while todo:
        node = todo.pop()
        for dep in edges_of(node):
            if dep.lower() == key:
                path = [node]
                while parent[path[-1].lower()][1] != key:
                    path.append(parent[parent[path[-1].lower()][1]][0])
                return [start, *reversed(path)]
            if dep.lower() not in parent:
                parent[dep.lower()] = (dep, node.lower())
                todo.append(dep)
    return None


def describe(cycle: list[str], first: str | None = None) -> str:
    """`a -> b -> a`, starting at `first` when it is a member."""
    keys = [c.lower() for c in cycle]
    if first is not None and first.lower() in keys:
        i = keys.index(first.lower())
        cycle = cycle[i:] + cycle[:i]
    return " -> ".join([*cycle, cycle[0]])


def check_no_cycle(index: DepsIndex, job: Job, batch: Batch) -> None:
    """InvalidJob if admitting job would close a dependency cycle.

    Only a job some other job already waits for can close one, which one
    indexed lookup answers for nearly every job.
    """
    if not (job.after or job.after_any):
        return
    if job.id.lower() not in batch.named and not index.dep_rows(LIVE, dep=job.id):
        return

    def edges_of(node: str) -> list[str]:
        key = node.lower()
        if key == job.id.lower():
            return [*job.after, *job.after_any]
        found = batch.edges.get(key)
        return found if found is not None else [d for _, d, _ in index.dep_rows(LIVE, job=node)]

    cycle = path_back(job.id, edges_of)
    if cycle is not None:
        key = "after_any" if all(d.lower() != cycle[1].lower() for d in job.after) else "after"
        raise InvalidJob(f"{key}: dependency cycle {describe(cycle)}")


def cycles(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """One cycle (as path_back gives it) for each strongly connected group of
    jobs that wait for each other; Tarjan's algorithm, iterative."""
    graph: dict[str, list[str]] = {}
    spelling: dict[str, str] = {}
    for job, dep in edges:
        spelling.setdefault(job.lower(), job)
        spelling.setdefault(dep.lower(), dep)
        graph.setdefault(job.lower(), []).append(dep.lower())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            succ = graph.get(node, [])
            if i < len(succ):
                work.append((node, i + 1))
                nxt = succ[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1 or node in graph.get(node, []):
                    groups.append(group)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    out = []
    for group in groups:
        members = set(group)
        start = min(group)
        cycle = path_back(start, lambda n: [d for d in graph.get(n.lower(), []) if d in members])
        if cycle is not None:
            out.append([spelling[c.lower()] for c in cycle])
    return out
