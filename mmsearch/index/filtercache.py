"""Matching item ids per ``--where`` filter, remembered per snapshot, so a repeated filter (the common
case: a category facet, a price band) costs a dictionary look-up instead of an SQL scan plus a sorted
intersection with every channel's ids, both of which grow with the catalog.

Entries are keyed by the snapshot and the parsed conditions; a reload opens another snapshot, so stale
entries are never hit (and fall out of the LRU). Arrays handed out are read-only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from .filters import parse_where

SIZE = 32  # filters remembered; each costs 8 bytes per matching item per channel (and a FAISS selector
# per channel searched with one: a hash set of those ids)


class FilterCache:
    def __init__(self, size: int = SIZE):
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, dict[str, Any]] = OrderedDict()

    def _get(self, key: tuple, name: str, make: Callable[[], Any]) -> Any:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                if name in entry:
                    return entry[name]
        value = make()
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
        with self._lock:
            entry = self._entries.setdefault(key, {})
            entry[name] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value

    @staticmethod
    def key(snapshot: Any, where: Any) -> tuple | None:
        try:
            return (str(snapshot), repr(parse_where(where)))
        except Exception:  # an unhashable or malformed filter: let the caller's own parse report it
            return None

    def allowed(self, snapshot: Any, where: Any, select: Callable[[Any], np.ndarray]) -> np.ndarray:
        """Sorted int64 ids matching ``where`` (``select(where)`` on a miss)."""
        key = self.key(snapshot, where)
        if key is None:
            return select(where)
        return self._get(key, "", lambda: select(where))

    def attached(self, ids: np.ndarray, source: str, name: str, make: Callable[[], Any]) -> Any:
        """``make()``, remembered as ``name`` in the filter entry whose ``source`` value is ``ids`` (by
        identity: the cache keeps it alive), or made afresh for ids that came from elsewhere."""
        with self._lock:
            key = next((k for k, e in self._entries.items() if e.get(source) is ids), None)
        return make() if key is None else self._get(key, name, make)

    def in_channel(self, channel: str, allowed: np.ndarray, channel_ids: np.ndarray) -> np.ndarray:
        """The ``allowed`` ids present in a channel (its ``ids``); remembered with the filter when
        ``allowed`` came from :meth:`allowed`."""
        return self.attached(allowed, "", f"channel:{channel}", lambda: allowed[np.isin(allowed, channel_ids)])
