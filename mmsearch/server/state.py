"""What the server holds: the loaded engine (swapped as a whole on reload), the model gate, caches."""

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import MMSearchError
from ..search.engine import SearchEngine
from .files import ThumbnailCache
from .lease import Hold, Lease
from .limits import LatencyStats, ModelGate
from .settings import ServeCfg

log = logging.getLogger(__name__)

MAX_FILTER_VALUES = 50  # a metadata field with more distinct values is not offered as a filter menu


@dataclass
class Loaded:
    """One engine and what the routes derive from it, swapped as a whole on reload.

    The engine itself is private: a route reaches it only through :meth:`ServerState.use`, which holds the
    lease (so the store cannot be closed under it).
    """

    _engine: SearchEngine
    row_of: dict[str, dict[str, Any]]  # item id -> its row (fid, id, path, title, text, metadata)
    root: Path  # resolved catalog folder; only files below it are served
    fields: dict[str, list[Any]]
    numeric: dict[str, dict[str, float]]  # numeric metadata fields -> {"min", "max"}: range filters
    version: str  # snapshot name, used to bust thumbnail caches after a rebuild
    lease: Lease  # in-flight requests; the engine's store closes after the last one, once retired

    @classmethod
    def of(cls, engine: SearchEngine) -> "Loaded":
        items = engine.items
        return cls(_engine=engine, row_of={row["id"]: row for row in items},
                   root=Path(engine.manifest["catalog"]).resolve(), fields=filter_fields(items),
                   numeric=numeric_fields(items),
                   version=engine.backend.version, lease=Lease(engine.backend.close))


def filter_fields(items: list[dict]) -> dict[str, list[Any]]:
    """Metadata fields whose values are scalars with few distinct values: the page offers them as menus."""
    values: dict[str, set] = {}
    dropped: set[str] = set()
    for row in items:
        for key, val in (row.get("metadata") or {}).items():
            if key in dropped:
                continue
            if not isinstance(val, (str, int, float, bool)) or len(values.setdefault(key, set())) > MAX_FILTER_VALUES:
                dropped.add(key)
                values.pop(key, None)
                continue
            values[key].add(val)
    return {k: sorted(v, key=str) for k, v in sorted(values.items()) if 1 < len(v) <= MAX_FILTER_VALUES}


def is_number(val: Any) -> bool:
    """A finite number as the item store keeps it (ints beyond 64 bits are stored as text; bools are not)."""
    if isinstance(val, bool):
        return False
    if isinstance(val, int):
        return -2**63 <= val < 2**63
    return isinstance(val, float) and math.isfinite(val)


def numeric_fields(items: list[dict]) -> dict[str, dict[str, float]]:
    """Metadata fields whose every value is a finite number (not a bool), spanning a range: the page offers
    them as min / max inputs, however many distinct values they have."""
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    dropped: set[str] = set()
    for row in items:
        for key, val in (row.get("metadata") or {}).items():
            if key in dropped:
                continue
            if not is_number(val):
                dropped.add(key)
                continue
            lo[key] = min(lo.get(key, val), val)
            hi[key] = max(hi.get(key, val), val)
    return {k: {"min": lo[k], "max": hi[k]} for k in sorted(lo) if k not in dropped and lo[k] < hi[k]}


class Use:
    """One request's hold on a loaded engine (:meth:`ServerState.use`)."""

    def __init__(self, loaded: Loaded, hold: Hold):
        self._loaded = loaded
        self._hold = hold
        self.version, self.row_of, self.root, self.fields = loaded.version, loaded.row_of, loaded.root, loaded.fields
        self.numeric = loaded.numeric

    @property
    def engine(self) -> SearchEngine:
        if not self._hold.held:
            raise RuntimeError("the engine's lease was released: read it inside `with state.use()` only")
        return self._loaded._engine

    def job(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` as a job for a worker thread that holds the lease while it runs (it never starts once the
        request has ended)."""
        return self._hold.wrap(fn)


class ServerState:
    def __init__(self, engine: SearchEngine, cfg: ServeCfg):
        self.cfg = cfg
        self._current = Loaded.of(engine)
        self.gate = ModelGate(cfg.model_workers, cfg.max_pending)
        self.thumbs = ThumbnailCache(cfg.thumbnail_size, cfg.thumbnail_cache_bytes, cfg.thumbnail_workers)
        self.latency = LatencyStats(cfg.latency_window)
        self.started = time.time()
        self._reload_lock = threading.Lock()
        self._swap_lock = threading.Lock()  # reading current + acquiring its lease vs swapping it
        self.failed_version: str | None = None  # index version that failed to load: not retried by the watcher
        self._key_digest = hashlib.sha256(cfg.api_key.encode()).digest() if cfg.api_key else None

    def key_ok(self, given: str | None) -> bool:
        """Constant-time check: both sides are hashed to 32 bytes first, so even the length is not leaked."""
        if self._key_digest is None:
            return True
        return hmac.compare_digest(hashlib.sha256((given or "").encode()).digest(), self._key_digest)

    @property
    def current(self) -> Loaded:
        """What is loaded now (for the watcher, logs and tests); its engine is reached through :meth:`use`."""
        return self._current

    @contextlib.contextmanager
    def use(self) -> Iterator["Use"]:
        """The loaded engine for one request, held until the block ends and every job started with
        ``use.job`` has ended: every route that touches the engine or its store goes through here."""
        with self._swap_lock:
            cur = self._current
            cur.lease.acquire()
        hold = Hold(cur.lease)
        try:
            yield Use(cur, hold)
        finally:
            hold.drop()

    def reload(self) -> bool:
        """Load the index's current snapshot if it changed; the old engine keeps serving until the swap,
        and its store closes when its last in-flight search ends."""
        with self._reload_lock:
            engine = self._current._engine
            try:
                fresh = engine.reopened()  # shares the model; the old backend is the old engine's to close
                if fresh is None:
                    return False
            except MMSearchError:
                with contextlib.suppress(MMSearchError):
                    self.failed_version = engine.backend.latest_version()
                raise
            loaded = Loaded.of(fresh)
            with self._swap_lock:
                old, self._current = self._current, loaded
            old.lease.retire()
            log.info("reloaded index: now serving snapshot %s (%d items)", fresh.snapshot, len(fresh))
            return True

    def changed_on_disk(self) -> bool:
        try:
            backend = self._current._engine.backend  # the version only: no item store access
            latest = backend.latest_version()
            return latest != backend.version and latest != self.failed_version  # a bad version is logged once
        except MMSearchError:
            return False  # index folder mid-replacement or gone: keep serving what is loaded


async def watch(state: ServerState) -> None:
    """Poll the index folder and reload when its CURRENT snapshot changes."""
    while True:
        await asyncio.sleep(state.cfg.reload_interval_s)
        try:
            if await asyncio.to_thread(state.changed_on_disk):
                await asyncio.to_thread(state.reload)
        except MMSearchError as exc:
            log.error("index changed but cannot be loaded (still serving the old one): %s", exc)
        except Exception:  # never let the watcher die silently
            log.exception("index watcher failed")
