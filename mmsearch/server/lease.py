"""In-flight accounting of one loaded engine, so a reload never closes what a request still reads.

Each search holds its engine's :class:`Lease` from the moment it reads ``state.current`` until its model
job ends (or is dropped unstarted). A reload swaps in a new engine with its own store and channels and
retires the old lease; the old store is closed by whichever comes last, the retirement or the last
release.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any


class Lease:
    def __init__(self, close: Callable[[], None]):
        self._close = close
        self._lock = threading.Lock()
        self.active = 0
        self.retired = False
        self.closed = False

    def acquire(self) -> None:
        with self._lock:
            if self.retired:  # callers acquire under the state's swap lock, so this is a bug
                raise RuntimeError("lease acquired after its engine was retired")
            self.active += 1

    def release(self) -> None:
        with self._lock:
            self.active -= 1
            close = self.retired and self.active == 0 and not self.closed
            self.closed = self.closed or close
        if close:
            self._close()

    def retire(self) -> None:
        with self._lock:
            self.retired = True
            close = self.active == 0 and not self.closed
            self.closed = self.closed or close
        if close:
            self._close()


class Hold:
    """One acquired unit of a lease, handed to at most one job; released exactly once.

    ``wrap(fn)`` gives the callable to run in a worker thread: it releases when it ends. ``drop()`` (always
    called by the request when it is done) releases the hold if that job never started, and stops it from
    starting later (a cancelled request whose job was still queued).
    """

    def __init__(self, lease: Lease):
        self._lease = lease
        self._lock = threading.Lock()
        self._state = "new"

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def job(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                if self._state != "new":
                    raise RuntimeError("the request was dropped before its job started")
                self._state = "running"
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._state = "done"
                self._lease.release()
        return job

    def drop(self) -> None:
        with self._lock:
            release = self._state == "new"
            if release:
                self._state = "dropped"
        if release:
            self._lease.release()
