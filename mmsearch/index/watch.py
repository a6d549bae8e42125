"""Keep an index in step with its catalog folder while it changes (``mmsearch index CATALOG --watch``).

File-system events (``watchdog``: inotify on Linux, FSEvents on macOS, polling elsewhere) are debounced: a
burst of events (a copy of 500 photos, an editor's save) waits until the folder has been quiet for
``debounce`` seconds, then runs the same incremental update as ``mmsearch index`` (new and changed files
encoded, removed files dropped; an update that finds nothing to do loads no model). A running ``mmsearch
serve`` picks each new snapshot up on its own. An update that fails (the index locked by another writer,
a full disk) is logged and retried at the next event; the watcher keeps going.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import MMSearchError
from .options import BuildKw, BuildOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger(__name__)

IGNORED = ("opened", "closed_no_write")  # reads of a file are no change


class Debouncer:
    """Says when a burst of events is over: ``touch()`` on each event, ``due()`` once nothing came for
    ``delay`` seconds (then it re-arms)."""

    def __init__(self, delay: float, clock: Callable[[], float] = time.monotonic):
        self.delay = float(delay)
        self.clock = clock
        self._last: float | None = None
        self._lock = threading.Lock()

    def touch(self) -> None:
        with self._lock:
            self._last = self.clock()

    def due(self) -> bool:
        with self._lock:
            if self._last is None or self.clock() - self._last < self.delay:
                return False
            self._last = None
            return True


def watch(catalog: str | Path, out: str | Path = "index", *, debounce: float = 2.0,
          stop: threading.Event | None = None, on_update: Callable[[Any], None] | None = None,
          poll: float = 0.2, options: BuildOptions | None = None, **build_kw: Unpack[BuildKw]) -> None:
    """Update ``out`` from ``catalog`` now, then after every burst of changes until ``stop`` is set (or
    KeyboardInterrupt). ``on_update(report)`` gets each update's :class:`BuildReport`; ``options`` and
    ``build_kw`` (its fields by name: model, device, exclude ...) go to :func:`build_index`."""
    if debounce < 0:
        raise MMSearchError(f"debounce must be 0 or more seconds, got {debounce}")
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:
        raise MMSearchError("index --watch needs watchdog: pip install 'mmsearch[watch]'") from None
    from .build import build_index

    root, index_dir = Path(catalog).resolve(), Path(out).resolve()
    stop = stop or threading.Event()
    pending = Debouncer(debounce)

    def update() -> None:
        try:
            report = build_index(catalog, out=out, options=options, **build_kw)
        except MMSearchError as exc:  # e.g. another writer holds the index: try again at the next change
            log.error("update of %s failed (watching on): %s", out, exc)
            return
        if on_update is not None:
            on_update(report)

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            if event.event_type in IGNORED or (event.is_directory and event.event_type == "modified"):
                return  # a folder's mtime moves with its entries, which bring events of their own
            paths = [Path(str(p)) for p in (event.src_path, getattr(event, "dest_path", "")) if p]
            if all(p == index_dir or index_dir in p.parents for p in paths):
                return  # the index's own writes (an index folder inside its catalog)
            pending.touch()

    observer = Observer()
    observer.schedule(Handler(), str(root), recursive=True)
    observer.start()  # before the first update: a file that arrives while it runs is seen, and updated after
    try:
        update()
        while not stop.wait(poll):
            if pending.due():
                update()
    finally:
        observer.stop()
        observer.join(timeout=5)
