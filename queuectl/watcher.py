"""Wake idle workers when a job file arrives. Events are hints; scans are the truth."""

from __future__ import annotations

import os
import threading
from typing import Iterable


class Watcher:
    """Sets `event` whenever something is created in or moved into the watched directories.

    Arrivals in `dirs` (new jobs, retries) also raise the `arrived()` flag, worth
    a scan; arrivals in `wake_dirs` (a finished job, say) only wake a waiter.

    With inotify a file renamed into pending/ from elsewhere in the spool is a
    "moved" event and one written in place is "created"; both wake a worker.
    An inotify queue overflow loses events, which is why workers also rescan
    on a timer. `poll=True` uses watchdog's polling observer, for network
    filesystems where inotify sees nothing written by other hosts.
    """

    def __init__(self, dirs: Iterable[str], *, poll: bool = False, poll_interval: float = 0.5,
                 wake_dirs: Iterable[str] = ()):
        self.event = threading.Event()
        self._arrival = threading.Event()
        self.dirs = list(dirs)
        self.wake_dirs = list(wake_dirs)
        self.poll = poll
        self.poll_interval = poll_interval
        self._observer = None

    def start(self) -> None:
        import logging
        from watchdog.events import FileSystemEventHandler

        # watchdog logs events racing a stop at ERROR level ("queue_events() called
        # when the thread is inactive") and they reach stderr on every burst exit;
        # events are only hints, so only a critical failure is worth a line.
        logging.getLogger("watchdog").setLevel(logging.CRITICAL)

        event, arrival = self.event, self._arrival
        dirs = {os.path.abspath(d) for d in self.dirs}
        wake_dirs = {os.path.abspath(d) for d in self.wake_dirs}

        def seen(where: str) -> None:
            if where in dirs:
                arrival.set()
                event.set()
            elif where in wake_dirs:
                event.set()

        class Handler(FileSystemEventHandler):
            def on_any_event(self, ev) -> None:  # noqa: ANN001 - watchdog's event type
                # Only arrivals matter. A claim renames a file *out* of pending/,
                # and waking every worker for that would make each claim cost
                # a rescan.
                kind = ev.event_type
                if kind == "moved":
                    seen(os.path.dirname(os.fsdecode(ev.dest_path or b"")))
                elif kind in ("created", "closed"):
                    seen(os.path.dirname(os.fsdecode(ev.src_path or b"")))

        if self.poll:
            from watchdog.observers.polling import PollingObserver
            observer = PollingObserver(timeout=self.poll_interval)
        else:
            from watchdog.observers import Observer
            _no_move_pairing_delay()
            observer = Observer()
        from watchdog.events import FileClosedEvent, FileCreatedEvent, FileMovedEvent
        handler = Handler()
        # Ask inotify for arrivals only: without a filter every open, read and
        # close of a job file (each claim) would wake the observer thread.
        arrivals = [FileCreatedEvent, FileMovedEvent, FileClosedEvent]
        for d in [*self.dirs, *self.wake_dirs]:
            observer.schedule(handler, d, recursive=False, event_filter=arrivals)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def arrived(self) -> bool:
        """Did something arrive in `dirs` since the last call? (Consumes the flag.)"""
        if self._arrival.is_set():
            self._arrival.clear()
            return True
        return False

    @property
    def running(self) -> bool:
        return self._observer is not None

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer = None

    def wait(self, timeout: float) -> bool:
        """Block until an event or the timeout; True if woken by an event."""
        woke = self.event.wait(timeout)
        self.event.clear()
        return woke


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
