"""Completion hooks: `on_finish` after a job reaches a final state, `on_failure` after a failed attempt.

A hook runs after the outcome is recorded, so nothing it does (fail, hang,
not exist) can change the job's state; it is killed after `hook_timeout`
seconds, and its output goes to the job's log between marker lines.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Mapping

from . import lazylog
from .config import Config
from .job import Job, JobState, now_iso
from .runner import NotStarted, line_break, log, open_log, spawn, supervise

log_ = lazylog.get("queuectl.hooks")


def hook_env(job: Job, state: str, base: Mapping[str, str]) -> dict[str, str]:
    """What a hook knows about the job: its id, the state it reached, its last exit code and attempts."""
    return {**base, **(job.env or {}), "QUEUECTL_JOB_ID": job.id, "QUEUECTL_STATE": state,
            "QUEUECTL_EXIT_CODE": "" if job.exit_code is None else str(job.exit_code),
            "QUEUECTL_ATTEMPTS": str(job.attempts), "QUEUECTL_QUEUE": job.queue}


def run_hooks(job: Job, failed: bool, cfg: Config, *, log_path: str, env: Mapping[str, str],
              should_kill: Callable[[], bool] | None = None, tick: Callable[[], None] | None = None) -> None:
    """After a recorded outcome: on_failure if the attempt failed, then on_finish if the job is final."""
    hooks = []
    if failed and cfg.on_failure:
        hooks.append(("on_failure", cfg.on_failure))
    on_finish = job.on_finish or cfg.on_finish
    if job.state in (JobState.COMPLETED, JobState.DEAD) and on_finish:
        hooks.append(("on_finish", on_finish))
    for kind, command in hooks:
        run_hook(kind, command, job, job.state.value, log_path=log_path, env=env, timeout=cfg.hook_timeout,
                 grace=min(cfg.kill_grace, cfg.hook_timeout), should_kill=should_kill, tick=tick)


def run_hook(kind: str, command: str, job: Job, state: str, *, log_path: str, env: Mapping[str, str],
             timeout: float, grace: float, should_kill: Callable[[], bool] | None = None,
             tick: Callable[[], None] | None = None) -> int | None:
    """Run one hook to its end (or its timeout); its exit status, None if it did not start.

    Never raises: a hook's trouble is a logged warning, never the job's.
    `tick` is called while it runs (the worker keeps its heartbeat fresh).
    """
    fd = open_log(log_path)
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    t0 = time.monotonic()
    try:
        log(fd, f"=== hook {kind} started {now_iso()} (job {state}) ===\n")
        cwd = job.cwd if job.cwd and os.path.isdir(job.cwd) else None
        try:
            proc = spawn(command, log_fd=fd, stdin_fd=devnull, cwd=cwd, env=hook_env(job, state, env))
        except NotStarted as e:
            log_.warning("hook %s of job %s did not start: %s", kind, job.id, e)
            return None
        outcome = supervise(proc, timeout=timeout, grace=grace, log_fd=fd, tick=tick, should_kill=should_kill)
        log(fd, line_break(fd) + f"=== hook {kind} finished {now_iso()} exit {outcome.describe()} "
                                 f"after {time.monotonic() - t0:.3f}s ===\n")
        if outcome.exit_code != 0:
            log_.warning("hook %s of job %s failed (%s); the job stays %s", kind, job.id,
                         outcome.error, state)
        return outcome.exit_code
    except OSError as e:
        log_.warning("hook %s of job %s: %s", kind, job.id, e)
        return None
    finally:
        os.close(devnull)
        os.close(fd)
