"""The systemd unit that runs a spool's workers as a service (`queuectl systemd-unit`).

The unit's stop settings follow the supervisor's: systemd sends SIGTERM to the
supervisor only (KillMode=mixed), which lets running jobs finish for
`--stop-timeout` seconds, then kills them (they go back to pending/, uncounted)
and waits kill_grace for them to die; TimeoutStopSec covers all of that plus
a margin, so systemd's final SIGKILL of the whole cgroup never cuts a record short.
"""

from __future__ import annotations

import shlex

STOP_MARGIN = 15  # seconds on top of stop timeout + kill grace before systemd's SIGKILL


def timeout_stop(stop_timeout: float, kill_grace: float) -> int:
    return int(stop_timeout + kill_grace + STOP_MARGIN + 0.999)


def unit_text(exec_argv: list[str], spool: str, *, count: int, stop_timeout: float, kill_grace: float,
              user: bool, run_as: str | None = None) -> str:
    """A complete unit file. `exec_argv` is how to run queuectl (absolute path first)."""
    start = [*exec_argv, "--spool", spool, "worker", "start", "--count", str(count),
             "--stop-timeout", f"{stop_timeout:g}"]
    # systemd treats % and $ specially inside ExecStart: double them.
    exec_start = " ".join(shlex.quote(a) for a in start).replace("%", "%%").replace("$", "$$")
    lines = [
        "[Unit]",
        f"Description=queuectl workers for {spool}",
        "After=local-fs.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_start}",
        "KillMode=mixed",
        f"TimeoutStopSec={timeout_stop(stop_timeout, kill_grace)}",
        "Restart=on-failure",
        "RestartSec=5",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "UMask=0077",
    ]
    if not user and run_as:
        lines.append(f"User={run_as}")
    lines += ["", "[Install]", f"WantedBy={'default.target' if user else 'multi-user.target'}", ""]
    return "\n".join(lines)
