"""The seam between the query path and where an index lives.

An index is read through an :class:`IndexReader`: the folder backend (FAISS + SQLite snapshots, the
default, ``index/folder.py``) and the Milvus backend (``index/milvus/``: Milvus Lite in one file, or a
Milvus server / cluster) implement it; the search engine, the tools and the server only talk to this
interface. Ranking stays in mmsearch: a backend returns *candidates* per channel and the stored vectors
of any items, and the engine re-scores them exactly (search/ranking.py), so both backends rank alike.

Channels: ``image`` (the shared space, every item), ``visual`` (the photo-only channel, when the model
has one), ``text`` (items with a title or text). Item ids inside a backend are int64 ``fid`` values,
stable across updates; the user's string id travels in the rows.

Locations: a folder path (``index``), ``milvus-lite:PATH.db`` or ``milvus://HOST:PORT/COLLECTION``.
"""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any, Protocol, Sequence

import numpy as np

from .filters import Condition
from .store import PhraseMatches

MILVUS_PREFIXES = ("milvus-lite:", "milvus://", "milvus+https://")


def location_text(location: Any) -> str:
    """A location as text, mending what ``pathlib.Path`` did to a Milvus URI (``milvus://h`` -> ``milvus:/h``)."""
    text = str(location)
    for scheme in ("milvus+https:", "milvus:"):
        if text.startswith(scheme + "/") and not text.startswith(scheme + "//"):
            return scheme + "/" + text[len(scheme):]
    return text


def is_milvus(location: Any) -> bool:
    """True for a Milvus location (``milvus-lite:PATH.db``, ``milvus://HOST:PORT/COLLECTION``), given as text
    or as the Path a command-line option made of it."""
    return isinstance(location, (str, PurePath)) and location_text(location).startswith(MILVUS_PREFIXES)


def index_location(value: Any) -> Any:
    """A command-line ``--index`` value: the Milvus location as text, else the folder as a Path."""
    return location_text(value) if is_milvus(value) else Path(value)


class IndexReader(Protocol):
    """The read side of an index, as the query path uses it."""

    location: str
    manifest: dict[str, Any]  # model (ref, fingerprint), dim, count, catalog, channels {name: {dim, count}}

    @property
    def version(self) -> str:
        """Changes whenever the index's content changes (a snapshot name, a Milvus generation)."""

    def latest_version(self) -> str:
        """The version the index has now (cheap: polled by servers to see writes of other processes)."""

    def changed(self) -> bool:
        """``latest_version() != version``."""

    def close(self) -> None: ...

    # --------------------------------------------------------------------------------- vectors
    def channel_names(self) -> list[str]: ...

    def channel_count(self, channel: str) -> int:
        """How many items have a vector in ``channel`` (0 for a channel the index lacks)."""

    def search(self, channel: str, queries: np.ndarray, n: int, where: Sequence[Condition] | None = None,
               allowed: np.ndarray | None = None) -> np.ndarray:
        """(B, n') candidate fids per query row (-1 pads), best first, among items matching ``where``
        (``allowed``: the same set as sorted fids, when the caller already has it)."""

    def vectors(self, channel: str, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of ``fids`` present in ``channel``, their stored unit vectors as float32 (m, dim))."""

    def all_vectors(self, channel: str) -> tuple[np.ndarray, np.ndarray]:
        """(sorted fids, float32 (n, dim)) of a whole channel: dedupe, export (not the query path)."""

    # ----------------------------------------------------------------------------------- items
    def count(self) -> int: ...

    def rows(self, fids: Sequence[int] | np.ndarray) -> dict[int, dict[str, Any]]:
        """fid -> {id, path, title, metadata}."""

    def all_rows(self) -> dict[str, dict[str, Any]]:
        """id -> {fid, id, path, title, text, metadata, image_sha256, text_sha256} (update plans, listings)."""

    def fids_of(self, ids: Sequence[str]) -> dict[str, int]: ...

    def fields(self) -> list[str]:
        """Every filterable field (metadata keys, flattened with dots, and ``title``), sorted."""

    def check_fields(self, conditions: Sequence[Condition]) -> None:
        """QueryError for a field no item has, or a text bound on a field of numbers (as the folder does)."""

    def select(self, conditions: Sequence[Condition], limit: int | None = None) -> np.ndarray:
        """Sorted int64 fids of the items satisfying every condition; with ``limit``, at most ``limit + 1``
        of them are read (enough to tell "at most limit" from "more")."""

    # -------------------------------------------------------------------------------- keywords
    def keyword_search(self, text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(fids, scores, higher is better) of the ``n`` items whose words best match ``text``."""

    def keyword_matches(self, text: str, fids: np.ndarray) -> PhraseMatches:
        """Which of the text's phrases each fid holds, and their IDF; ``.coverage()`` is the IDF-weighted
        share it holds (0..1; see index/store.py)."""


def open_reader(location: Any, verify: bool = True, ranking: Any = None) -> IndexReader:
    """The reader of the index at ``location``: a folder (FAISS + SQLite snapshots) or a Milvus location."""
    if is_milvus(location):
        from .milvus import MilvusReader

        return MilvusReader(location_text(location), verify=verify, ranking=ranking)
    from .folder import FolderReader

    return FolderReader(location, verify=verify, ranking=ranking)
