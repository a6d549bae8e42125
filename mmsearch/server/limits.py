"""Resource limits of the server: bounded model concurrency, and latency bookkeeping.

Request bodies are capped by FastAPI itself (``FastAPI(max_body_size=...)``): 413 before the body is read.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
from fastapi import HTTPException


class RequestBudget:
    """What one request may ask for: ``max_terms`` query terms, ``max_request_pixels`` photo pixels in all
    (counted from the headers before anything is decoded). Over either: 413 naming the limit."""

    def __init__(self, max_terms: int, max_pixels: int):
        self.max_terms = int(max_terms)
        self.max_pixels = int(max_pixels)
        self.pixels = 0

    def terms(self, n: int) -> None:
        if n > self.max_terms:
            raise HTTPException(413, f"too many query terms ({n}; the limit is max_terms = {self.max_terms}, "
                                     f"texts and photos together)")

    def photo(self, size: tuple[int, int]) -> None:
        self.pixels += int(size[0]) * int(size[1])
        if self.pixels > self.max_pixels:
            raise HTTPException(413, f"the photos of this request have more than {self.max_pixels:,} pixels in all "
                                     f"(the limit is max_request_pixels)")


class Busy(Exception):
    """The model queue is full; the client should retry later."""


class ModelGate:
    """Bounded concurrency for model work.

    At most ``workers`` jobs run at once (in a private thread pool, FIFO), and at most ``max_pending``
    are admitted (running + waiting). A job over that is refused at once with :class:`Busy`. A job counts
    until its thread finishes, even when the client that asked for it has gone away.
    """

    def __init__(self, workers: int, max_pending: int):
        self.workers = int(workers)
        self.max_pending = int(max_pending)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mmsearch-model")
        self._lock = threading.Lock()
        self.pending = 0
        self.rejected = 0

    def _release(self, _future: Any) -> None:
        with self._lock:
            self.pending -= 1

    async def run(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self.pending >= self.max_pending:
                self.rejected += 1
                raise Busy(f"the server is busy ({self.pending} searches in progress); retry shortly")
            self.pending += 1
        try:
            future = self._pool.submit(fn, *args, **kwargs)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)  # runs when done, failed, or cancelled before starting
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class LatencyStats:
    """Query latencies (ms) over a sliding window, with percentiles for ``GET /stats``."""

    def __init__(self, window: int = 2048):
        self._ms: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.total = 0

    def add(self, ms: float) -> None:
        with self._lock:
            self._ms.append(ms)
            self.total += 1

    def summary(self) -> dict[str, Any]:
        with self._lock:
            ms = np.array(self._ms, dtype=np.float64)
            total = self.total
        out: dict[str, Any] = {"queries": total, "window": int(len(ms))}
        for p in (50, 90, 99):
            out[f"p{p}_ms"] = round(float(np.percentile(ms, p)), 2) if len(ms) else None
        return out
