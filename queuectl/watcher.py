"""Wake idle workers when a job file arrives. Events are hints; scans are the truth."""

from __future__ import annotations

import errno
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
POLL_INTERVAL = 0.5  # seconds between two listings when polling
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

    A watched directory that is replaced (`pending/` removed and made again,
    or moved away and another moved in) is watched again by its path: the old
    watch followed the old inode, and the new directory would only be seen by
    the timed rescans.

    Elsewhere (`poll=True` for network filesystems, where inotify sees nothing
    written by other hosts; a platform without inotify) watchdog's observer
    does the watching. When inotify's instance or watch limit is used up
    (fs.inotify.max_user_instances / max_user_watches: any program of the
    same user can exhaust them), the watcher polls instead, and `degraded`
    says why for the caller's one warning line: watchdog's own inotify
    observer would fail the same way.
    """

    def __init__(self, dirs: Iterable[str], *, poll: bool = False, poll_interval: float = POLL_INTERVAL,
                 wake_dirs: Iterable[str] = (), ignore: Callable[[str], bool] | None = None):
        self.dirs = [os.path.abspath(d) for d in dirs]
        self.wake_dirs = [os.path.abspath(d) for d in wake_dirs]
        self.poll = poll
        self.poll_interval = poll_interval
        self.ignore = ignore
        self._observer = None
        self._ino = -1                      # the inotify descriptor, when we read it ourselves
        self._wds: dict[int, bool] = {}     # watch descriptor -> is it an arrival directory
        self._paths: dict[str, int] = {}    # watched path -> its watch descriptor
        self._rewatch = False               # a watched directory went away: watch its path again
        self._libc = None
        self.degraded: str | None = None    # why inotify could not be used, when it could not
        self._pipe: tuple[int, int] | None = None
        self._arrival = False
        self._woke = False
        self._event = threading.Event()     # the watchdog path's wake-up

    def start(self) -> None:
        if not self.poll:
            try:
                self._start_inotify()
                return
            except OSError as e:
                self._close_inotify()
                failed = e
            if failed.errno not in _EXHAUSTED:
                try:
                    self._start_watchdog()  # no inotify here (another platform): watchdog chooses
                    return
                except OSError as e:
                    failed = e
            self.degraded = _why(failed)
            self.poll = True
        self._start_watchdog()

    # -- inotify, read in the caller's thread -----------------------------------------------------

    def _start_inotify(self) -> None:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "inotify_init1"):
            raise OSError("no inotify")
        self._libc = libc
        self._ino = _inotify_init(libc)
        for path in [*self.dirs, *self.wake_dirs]:
            self._add_watch(path)
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._pipe = (r, w)

    def _add_watch(self, path: str) -> None:
        wd = _inotify_add_watch(self._libc, self._ino, path)
        self._paths[path] = wd
        self._wds[wd] = self._wds.get(wd, False) or path in self.dirs

    def _watch_again(self) -> None:
        """Watch each path again; a replaced directory gets a new watch, its old one is dropped.

        A path that does not exist at the moment (removed, not yet made again)
        is tried again on the next call; the timed rescans cover the gap.
        """
        self._rewatch = False
        for path, old in list(self._paths.items()):
            try:
                wd = _inotify_add_watch(self._libc, self._ino, path)  # the same inode: the same wd
            except OSError:
                self._rewatch = True
                continue
            if wd != old:
                if old in self._wds and old not in (w for p, w in self._paths.items() if p != path):
                    self._libc.inotify_rm_watch(self._ino, old)  # the old directory, moved elsewhere
                    self._wds.pop(old, None)
                self._paths[path] = wd
                self._wds[wd] = self._wds.get(wd, False) or path in self.dirs

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
                if mask & IN_Q_OVERFLOW:
                    self._arrival = self._woke = self._rewatch = True  # events lost: maybe a directory's too
                    continue
                if wd not in self._wds:
                    continue  # a watch dropped since (the old directory of a replaced path)
                if mask & LOST:
                    self._arrival = self._woke = self._rewatch = True
                    if mask & IN_IGNORED:
                        del self._wds[wd]  # the kernel dropped this watch
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
        self._ino, self._pipe, self._wds, self._paths = -1, None, {}, {}

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
            if self._rewatch:
                self._watch_again()
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
        if self._rewatch:
            self._watch_again()
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


def inotify_problem(dirs: Iterable[str]) -> str | None:
    """Why watching `dirs` with inotify would fail for want of a resource, or None.

    A supervisor asks once, so that N workers falling back to polling make one
    warning line, not N.
    """
    w = Watcher(dirs)
    try:
        w._start_inotify()
    except OSError as e:
        return _why(e) if e.errno in _EXHAUSTED else None
    finally:
        w._close_inotify()
    return None


# inotify_init1 / inotify_add_watch failing for want of a resource, not for want of inotify:
# the instance limit or the process's descriptors (EMFILE), the system's (ENFILE), the watch
# limit (ENOSPC), kernel memory (ENOMEM).
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.ENOMEM)


def _inotify_init(libc) -> int:  # noqa: ANN001 - a ctypes library
    import ctypes
    fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    return fd


def _inotify_add_watch(libc, ino: int, path: str) -> int:  # noqa: ANN001 - a ctypes library
    import ctypes
    wd = libc.inotify_add_watch(ino, os.fsencode(path), ARRIVALS | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
    if wd < 0:
        raise OSError(ctypes.get_errno(), "inotify_add_watch", path)
    return wd


def _why(e: OSError) -> str:
    """The reason inotify is not used, for a person: which limit, and what to raise."""
    if e.errno == errno.ENOSPC:
        return "the inotify watch limit is reached (sysctl fs.inotify.max_user_watches)"
    if e.errno == errno.EMFILE:
        return ("no inotify instance is left (sysctl fs.inotify.max_user_instances) "
                "or this process has no descriptor left (ulimit -n)")
    return f"inotify failed: {os.strerror(e.errno) if e.errno else e}"


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
