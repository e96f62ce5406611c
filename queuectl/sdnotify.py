"""systemd's readiness protocol (sd_notify): a few lines over an AF_UNIX datagram socket.

`$NOTIFY_SOCKET` names the socket: a path, or `@name` for Linux's abstract
namespace. Without it every call does nothing, so the supervisor can always
call notify(). Errors are logged once, never raised: a service manager that
went away must not stop the workers.
"""

from __future__ import annotations

import os
import socket

from . import lazylog

log = lazylog.get("queuectl.sdnotify")


def socket_address() -> str | bytes | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr[0] == "@":
        return b"\0" + addr[1:].encode()
    if addr[0] != "/":
        return None  # vsock and other schemes: not for a local supervisor
    return addr


def notify(*fields: str) -> bool:
    """Send `READY=1`, `STOPPING=1`, `STATUS=...` (one datagram); True if it was sent."""
    addr = socket_address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(fields).encode("utf-8", "replace"), addr)
        return True
    except OSError as e:
        log.warning("cannot notify systemd through %s: %s", os.environ.get("NOTIFY_SOCKET"), e)
        return False
