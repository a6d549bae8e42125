"""In-flight accounting of one loaded engine, so a reload never closes what a request still reads.

Each request holds its engine's :class:`Lease` from the moment it takes the engine (``ServerState.use``)
until the request is done and every model job it started has ended. A reload swaps in a new engine with
its own store and channels and retires the old lease; the old store is closed by whichever comes last,
the retirement or the last release.
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
    """One request's share of a lease: the request counts until :meth:`drop`, and each job started from
    :meth:`wrap` counts until it ends; the lease is released once, when the last of them is done.

    So a request may read the engine for as long as it holds (``held``), a job it handed to a worker thread
    keeps the store open even when the client goes away mid-search, and a job still queued when the request
    is dropped never starts (a cancelled request).
    """

    def __init__(self, lease: Lease):
        self._lease = lease
        self._lock = threading.Lock()
        self._dropped = False
        self._jobs = 0

    @property
    def held(self) -> bool:
        """True until the request drops its hold (jobs it started may still run after that)."""
        return not self._dropped

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def job(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                if self._dropped:
                    raise RuntimeError("the request was dropped before its job started")
                self._jobs += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._end(job=True)
        return job

    def drop(self) -> None:
        """The request is done (idempotent); the lease is released now, or when its last job ends."""
        self._end(job=False)

    def _end(self, job: bool) -> None:
        with self._lock:
            if job:
                self._jobs -= 1
            elif self._dropped:
                return
            self._dropped = self._dropped or not job
            release = self._dropped and self._jobs == 0
        if release:
            self._lease.release()
