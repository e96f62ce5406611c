"""Wake idle workers when a job file arrives. Events are hints; scans are the truth."""

from __future__ import annotations

import os
import select
import struct
import threading
from typing import Callable, Iterable

# inotify(7) constants (linux/inotify.h; the same on every Linux architecture)
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_CLOEXEC = 0o2000000
IN_NONBLOCK = 0o4000
ARRIVALS = IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE
# The watched directory itself went away or moved: whatever it held must be looked at again.
LOST = IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class Watcher:
    """Wakes `wait()` whenever something is created in or moved into the watched directories.

    Arrivals in `dirs` (new jobs, retries) also raise the `arrived()` flag, worth
    a scan; arrivals in `wake_dirs` (a finished job, say) only wake a waiter.
    Names for which `ignore(name)` is true (a writer's scratch file) wake nobody:
    the rename that publishes the finished file does.

    On Linux the watcher reads inotify itself, in the caller's thread: a
    worker waits in one select() on the inotify descriptor and a wake-up pipe.
    watchdog's observer hands every event through three threads (reader,
    emitter, dispatcher), and in a busy worker those threads and the GIL they
    contend for cost as much as running the jobs: a 1,000-job drain took
    1.33 s with them and 0.70 s with no watcher at all. inotify is asked for
    arrivals only (IN_CREATE, IN_MOVED_TO, IN_CLOSE_WRITE), so the rename of
    each claim out of pending/ is not even queued. A queue overflow, or a
    watched directory that vanishes, counts as an arrival: the scan is the truth.

    Elsewhere (`poll=True` for network filesystems, where inotify sees nothing
    written by other hosts; a platform without inotify; inotify instances
    exhausted) watchdog's observer does the watching.
    """

    def __init__(self, dirs: Iterable[str], *, poll: bool = False, poll_interval: float = 0.5,
                 wake_dirs: Iterable[str] = (), ignore: Callable[[str], bool] | None = None):
        self.dirs = [os.path.abspath(d) for d in dirs]
        self.wake_dirs = [os.path.abspath(d) for d in wake_dirs]
        self.poll = poll
        self.poll_interval = poll_interval
        self.ignore = ignore
        self._observer = None
        self._ino = -1                      # the inotify descriptor, when we read it ourselves
        self._wds: dict[int, bool] = {}     # watch descriptor -> is it an arrival directory
        self._pipe: tuple[int, int] | None = None
        self._arrival = False
        self._woke = False
        self._event = threading.Event()     # the watchdog path's wake-up

    def start(self) -> None:
        if not self.poll:
            try:
                self._start_inotify()
                return
            except OSError:
                self._close_inotify()  # no inotify here, or no instance left: watchdog chooses
        self._start_watchdog()

    # -- inotify, read in the caller's thread -----------------------------------------------------

    def _start_inotify(self) -> None:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "inotify_init1"):
            raise OSError("no inotify")
        self._ino = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._ino < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        for path, arrival in [*((d, True) for d in self.dirs), *((d, False) for d in self.wake_dirs)]:
            wd = libc.inotify_add_watch(self._ino, os.fsencode(path), ARRIVALS | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
            if wd < 0:
                raise OSError(ctypes.get_errno(), "inotify_add_watch", path)
            self._wds[wd] = self._wds.get(wd, False) or arrival
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._pipe = (r, w)

    def _drain(self) -> None:
        """Read every queued event (never blocks) and note what arrived where."""
        while True:
            try:
                buf = os.read(self._ino, 65536)
            except BlockingIOError:
                return
            except OSError:
                self._arrival = self._woke = True  # a broken watch: fall back on scans
                return
            off, end = 0, len(buf)
            while off < end:
                wd, mask, _, size = EVENT.unpack_from(buf, off)
                name_at, off = off + EVENT.size, off + EVENT.size + size
                if mask & LOST:
                    self._arrival = self._woke = True
                    continue
                if self.ignore is not None and size:
                    name = buf[name_at:off].rstrip(b"\0").decode("utf-8", "surrogateescape")
                    if self.ignore(name):
                        continue
                arrival = self._wds.get(wd)
                if arrival:
                    self._arrival = self._woke = True
                elif arrival is not None:
                    self._woke = True

    def _close_inotify(self) -> None:
        for fd in (self._ino, *(self._pipe or ())):
            if fd >= 0:
                os.close(fd)
        self._ino, self._pipe, self._wds = -1, None, {}

    # -- watchdog (polling, other platforms) ---------------------------------------------------------

    def _start_watchdog(self) -> None:
        import logging
        from watchdog.events import FileSystemEventHandler

        # watchdog logs events racing a stop at ERROR level ("queue_events() called
        # when the thread is inactive") and they reach stderr on every burst exit;
        # events are only hints, so only a critical failure is worth a line.
        logging.getLogger("watchdog").setLevel(logging.CRITICAL)
        watcher, dirs, wake_dirs, ignore = self, set(self.dirs), set(self.wake_dirs), self.ignore

        def seen(path: str) -> None:
            where, name = os.path.split(path)
            if ignore is not None and ignore(name):
                return
            if where in dirs:
                watcher._arrival = True
                watcher._event.set()
            elif where in wake_dirs:
                watcher._event.set()

        class Handler(FileSystemEventHandler):
            def on_any_event(self, ev) -> None:  # noqa: ANN001 - watchdog's event type
                # Only arrivals matter: a claim renames a file *out* of pending/,
                # and waking every worker for that would make each claim cost a rescan.
                kind = ev.event_type
                if kind == "moved":
                    seen(os.fsdecode(ev.dest_path or b""))
                elif kind in ("created", "closed"):
                    seen(os.fsdecode(ev.src_path or b""))

        if self.poll:
            from watchdog.observers.polling import PollingObserver
            observer = PollingObserver(timeout=self.poll_interval)
        else:
            from watchdog.observers import Observer
            _no_move_pairing_delay()
            observer = Observer()
        from watchdog.events import FileClosedEvent, FileCreatedEvent, FileMovedEvent
        handler = Handler()
        # Ask for arrivals only: without a filter every open, read and close of
        # a job file (each claim) would wake the observer thread.
        arrivals = [FileCreatedEvent, FileMovedEvent, FileClosedEvent]
        for d in [*self.dirs, *self.wake_dirs]:
            observer.schedule(handler, d, recursive=False, event_filter=arrivals)
        observer.daemon = True
        observer.start()
        self._observer = observer

    # -- the interface ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._observer is not None or self._ino >= 0

    def arrived(self) -> bool:
        """Did something arrive in `dirs` since the last call? (Consumes the flag.)"""
        if self._ino >= 0:
            self._drain()
        arrival, self._arrival = self._arrival, False
        return arrival

    def wake(self) -> None:
        """Make the current or next wait() return at once. Safe from a signal handler or another thread."""
        if self._pipe is not None:
            try:
                os.write(self._pipe[1], b"!")
            except OSError:
                pass  # the pipe is full: a wake-up is pending already
        self._woke = True
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Block until an event, a wake() or the timeout; True unless it timed out."""
        if self._ino < 0:
            woke = self._event.wait(timeout)
            self._event.clear()
            return woke
        if not self._woke:
            self._drain()  # events read (and dropped) since: waiting on them would sleep through them
        if not self._woke:
            ready, _, _ = select.select([self._ino, self._pipe[0]], [], [], max(0.0, timeout))
            self._woke = self._pipe[0] in ready
            self._drain()
        try:
            os.read(self._pipe[0], 4096)  # this wait answers every wake() so far
        except OSError:
            pass
        woke, self._woke = self._woke, False
        return woke

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer = None
        self._close_inotify()


def _no_move_pairing_delay() -> None:
    """Deliver inotify events at once instead of up to 0.5 s late.

    watchdog holds every IN_MOVED_FROM for 0.5 s hoping to pair it with its
    IN_MOVED_TO, in a FIFO queue: each claim (a rename from pending/ into the
    unwatched processing/) never pairs, so every event behind it, the arrival
    of the next job included, waited half a second. Unpaired, a file renamed
    into pending/ arrives as "created", which is all a worker needs.
    """
    try:
        from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
    except ImportError:  # older watchdog: no grouper, nothing to tune
        return
    InotifyMoveEventGrouper.delay = 0
