"""SearchEngine: the facade over an index backend, a query encoder and a retriever.

``SearchEngine.open(location)`` opens the index's reader (index/backend.py: a folder, or Milvus), the
model that built it (encoder.py: ONNX or torch towers) and the retriever that ranks with both
(retriever.py). Every query, from the CLI, HTTP or Python, goes through :meth:`SearchEngine.search` /
:meth:`SearchEngine.search_batch`.
"""

from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from ..config import RankingCfg
from ..errors import QueryError
from ..index.backend import IndexReader, is_milvus, location_text, open_reader
from ..index.filters import WhereSpec, parse_where
from . import hybrid as _hybrid
from . import runtime as _runtime
from .encoder import ImageInput, QueryEncoder, model_ref_of
from .hits import SearchHit
from .paging import arrange
from .query import Query
from .retriever import Encoded, Retriever

if TYPE_CHECKING:
    from ..index.plan import BuildReport

__all__ = ["ImageInput", "SearchEngine", "SearchHit"]

log = logging.getLogger(__name__)


class SearchEngine:
    """A loaded index plus the model that built it.

    Example:
        >>> from mmsearch import SearchEngine                            # doctest: +SKIP
        >>> engine = SearchEngine.open("index")                          # doctest: +SKIP
        >>> hits = engine.search(image="photo.jpg", text="red shoes", k=5)   # doctest: +SKIP
        >>> hits[0].id, hits[0].score                                    # doctest: +SKIP
        >>> engine.search(text="shoes", where={"price": ("<", 50)})      # doctest: +SKIP
    """

    def __init__(self, path: str | Path, device: str = "auto", ranking: RankingCfg | None = None,
                 verify: bool = True, runtime: str | None = None, lazy_model: bool = False):
        self.location = location_text(path)
        self.path = None if is_milvus(path) else Path(path)  # a folder index (None: Milvus)
        self.device = device
        self.runtime = runtime  # query encoders: auto | onnx | torch (models/onnx.py)
        self._lazy_model = lazy_model  # the model opens at the first encode (list, export: never)
        self._verify = verify
        self._ranking = ranking or RankingCfg()
        self.encoder: QueryEncoder | None = None
        self.backend: IndexReader
        self._load()

    @classmethod
    def open(cls, path: str | Path = "index", device: str = "auto", ranking: RankingCfg | None = None,
             verify: bool = True, runtime: str | None = None, lazy_model: bool = False) -> "SearchEngine":
        """Open the index at ``path`` (an index folder or one snapshot, ``milvus-lite:FILE.db`` or
        ``milvus://HOST:PORT/COLLECTION``) with the model that built it; ``runtime`` runs the query encoders
        in ``onnx`` (onnxruntime), ``torch`` or ``auto``; ``lazy_model``: open the model only when a query
        is first encoded (tools that only read items)."""
        return cls(path, device=device, ranking=ranking, verify=verify, runtime=runtime, lazy_model=lazy_model)

    # ------------------------------------------------------------------------------------- loading
    def _load(self) -> None:
        backend = open_reader(self.location, verify=self._verify, ranking=self._ranking)
        try:
            manifest = backend.manifest
            ref = model_ref_of(manifest, getattr(backend, "snapshot", None))
            key = (ref, manifest["model"]["fingerprint"])
            encoder = self.encoder
            if encoder is None or encoder.key != key:  # the model is reused across reloads when the same
                encoder = QueryEncoder(ref, manifest, self.device, self.runtime, lazy=self._lazy_model,
                                       location=self.location)
        except BaseException:
            backend.close()
            raise
        old = getattr(self, "backend", None)
        # swap everything at once so a search running in another thread sees one index version or the other
        self.backend, self.encoder, self.retriever = backend, encoder, Retriever(backend, self._ranking)
        if old is not None:
            old.close()

    def reload(self) -> bool:
        """Pick up a rebuilt or updated index; True if it changed. The model is reused when the same.

        Until then the engine keeps answering from the version it opened, even while another process
        writes the index (folder snapshots are immutable; the previous one is kept on disk).
        """
        if not self.backend.changed():
            return False
        self._load()
        return True

    def reopened(self) -> "SearchEngine | None":
        """A new engine on the index's newer version, sharing this one's model, or None when unchanged.
        Unlike :meth:`reload`, this engine stays as it is, its backend open (a server closes it once its
        last in-flight request ends)."""
        if not self.backend.changed():
            return None
        fresh = copy.copy(self)
        del fresh.backend  # ... so the fresh one's load leaves this one's backend open
        fresh._load()
        return fresh

    @property
    def ranking(self) -> RankingCfg:
        return self._ranking

    @ranking.setter
    def ranking(self, value: RankingCfg) -> None:
        self._ranking = value
        self.retriever.ranking = value
        if hasattr(self.backend, "ranking"):
            self.backend.ranking = value  # type: ignore[attr-defined]

    @property
    def manifest(self) -> dict[str, Any]:
        return self.backend.manifest

    @property
    def snapshot(self) -> Path | str:
        """The folder snapshot being served (a Milvus index: its location and version)."""
        return getattr(self.backend, "snapshot", None) or f"{self.location}@{self.backend.version}"

    @property
    def model(self) -> Any:
        return self.encoder.open().model  # type: ignore[union-attr]

    @property
    def tokenizer(self) -> Any:
        return self.encoder.open().tokenizer  # type: ignore[union-attr]

    @property
    def preprocess(self) -> Any:
        return self.encoder.open().preprocess  # type: ignore[union-attr]

    def __len__(self) -> int:
        return self.backend.count()

    @property
    def items(self) -> list[dict[str, Any]]:
        """Every item row (``fid``, ``id``, ``path``, ``title``, ``text``, ``metadata``), ordered by fid.

        Reads the whole item store: meant for listings and tools, not for the query path.
        """
        keys = ("fid", "id", "path", "title", "text", "metadata")
        rows = sorted(self.backend.all_rows().values(), key=lambda r: r["fid"])
        return [{k: r[k] for k in keys} for r in rows]

    def select(self, where: WhereSpec) -> np.ndarray:
        """Sorted int64 ids (fids) of the items matching ``where`` (see filters.py for the forms)."""
        return self.backend.select(self.conditions(where))

    def conditions(self, where: WhereSpec) -> list:
        """``where`` parsed and checked against the index's fields (empty: no filter); a filter on a field
        no item has is an error, not "no results"."""
        conditions = parse_where(where)
        if conditions:
            self.backend.check_fields(conditions)
        return conditions

    # -------------------------------------------------------------------------------- writing
    def add(self, items: list[dict[str, Any]], **kw: Any) -> "BuildReport":
        """Add or update items by id (``{"id", "image", "title", "text", "metadata"}``), then reload."""
        from ..index.build import upsert_items

        report = upsert_items(self.location, items, device=self.device, **kw)
        self.reload()
        return report

    def update(self, items: list[dict[str, Any]], **kw: Any) -> "BuildReport":
        """Alias of :meth:`add` (documented in the README)."""
        return self.add(items, **kw)

    def remove(self, ids: Sequence[str], **kw: Any) -> "BuildReport":
        """Remove items by id (all must exist), then reload."""
        from ..index.build import remove_items

        report = remove_items(self.location, ids, **kw)
        self.reload()
        return report

    # ------------------------------------------------------------------------------------ encoding
    def encode_image_channels(self, images: Sequence[ImageInput]) -> dict[str, np.ndarray]:
        """Per-channel unit embeddings of query images: ``image`` (n, D) and, if present, ``visual``."""
        return self.encoder.image_channels(images)  # type: ignore[union-attr]

    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """(n, D) float32 unit embeddings in the shared space; images as paths, bytes or PIL images."""
        return self.encode_image_channels(images)["image"]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, D) float32 unit embeddings in the shared space."""
        return self.encoder.texts(texts)  # type: ignore[union-attr]

    # ------------------------------------------------------------------------------------- ranking
    def search_vectors(self, image: dict[str, np.ndarray] | None, text: np.ndarray | None, k: int = 10,
                       image_weight: float | None = None, where: WhereSpec = None,
                       boost: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> list[list[SearchHit]]:
        """Rank the index for already-encoded queries (B rows in each given array); see ranking.py.

        With ``where``, every hit satisfies the filter and k hits come back whenever k items match:
        few matches are scored exhaustively; otherwise the backend searches only matching ids, and a query
        for which the approximate index finds fewer than k falls back to an exact scan of the matches.
        """
        if image is None and text is None:
            raise QueryError("a query needs an image, a text, or both")
        w = self.ranking.image_weight if image_weight is None else float(image_weight)
        if not 0.0 <= w <= 1.0:
            raise QueryError(f"image weight must be between 0 and 1, got {w}")
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        q = Encoded(image, text)
        if image is not None and text is not None and 0.0 < w < 1.0 and self.encoder.learned_fusion():  # type: ignore[union-attr]
            q.fused = self.encoder.fuse(image["image"], text, w)  # type: ignore[union-attr]
        conditions = self.conditions(where)
        with _runtime.faiss_threads(q.batch):  # batch-1 searches on one thread (no barrier on a busy CPU)
            return self.retriever.rank(q, k, w, conditions or None, boost)

    def run(self, query: Query) -> list[SearchHit]:
        """Answer one :class:`Query`: every entrance (Python, CLI, HTTP) comes here."""
        from .compose import search_terms, similar_to_item, similar_to_items

        n = query.paging.fetch(query.k)
        if len(query.like) == 1 and not query.not_like:
            hits = similar_to_item(self, query.like[0], query.text, n, query.image_weight, query.where)
        elif query.like or query.not_like:
            hits = similar_to_items(self, query.like, query.not_like, text=query.text, k=n, where=query.where)
        else:
            hits = search_terms(self, query.terms, k=n, image_weight=query.image_weight, where=query.where,
                                mode=query.mode)
        return arrange(hits, query.k, query.paging)

    def search_similar(self, item_id: str | Sequence[str], text: str | None = None, k: int = 10,
                       image_weight: float | None = None, where: WhereSpec = None, *,
                       not_ids: Sequence[str] = ()) -> list[SearchHit]:
        """"More like this": items whose images resemble item ``item_id``'s stored embedding (the item
        itself is left out); ``text`` steers the results as in a photo + text query.

        "More like these": with a list of ids and/or ``not_ids`` (items the results should not look like),
        the liked and disliked items are terms of one algebra query (compose.similar_to_items); every
        given item is left out of the hits.
        """
        return self.run(Query.similar(item_id, not_ids, text, k=k, where=where, image_weight=image_weight))

    def search(self, image: Any = None, text: Any = None, k: int = 10,
               image_weight: float | None = None, where: WhereSpec = None, *,
               not_image: Any = None, not_text: Any = None, min_score: float | None = None,
               sort_by: str | None = None, descending: bool = False, offset: int | None = None,
               window: int = 200, mode: str | None = None) -> list[SearchHit]:
        """Search by photo, text, or both; or by any number of weighted photos and texts (algebra.py).

        Args:
            image: a path, raw bytes or a PIL image, or None; or a list of them, each optionally
                ``(weight, image)``.
            text: the query text, or None. Empty or whitespace-only text counts as no text. Or a list
                of texts, each optionally ``(weight, text)``.
            not_image, not_text: photos / texts the results should not look like (negative terms).
            k: number of hits.
            image_weight: weight of the photo in a photo + text query (default 0.5); see ranking.py.
            where: metadata filter: ``{"category": "shoes", "price": ("<", 50)}``, ``["price<50"]`` or
                ``"brand!=acme"`` (see filters.py); every hit satisfies it.
            min_score: leave out hits scoring below this (scores: README "How ranking works").
            sort_by, descending: order the best ``window`` hits by ``score``, ``id``, ``title`` or a
                metadata field instead of by score (paging.py).
            offset: skip this many hits of the ordered window (stable pages: ``offset=0, 10, 20 ...``).
            mode: ``auto`` (default), ``hybrid``, ``semantic`` or ``keyword`` (hybrid.py).

        Returns:
            Up to ``k`` :class:`SearchHit`, best first.
        """
        return self.run(Query.of(image, text, not_image=not_image, not_text=not_text, k=k, where=where,
                                 image_weight=image_weight, mode=mode, min_score=min_score, sort_by=sort_by,
                                 descending=descending, offset=offset, window=window))

    def search_batch(self, queries: Iterable[dict[str, Any]], k: int = 10, image_weight: float | None = None,
                     where: WhereSpec = None, mode: str | None = None) -> list[list[SearchHit]]:
        """Many queries at once (``{"image": ..., "text": ...}`` each); results in the same order.
        ``mode``: auto (default), hybrid, semantic or keyword (hybrid.py)."""
        queries = list(queries)
        for i, q in enumerate(queries):
            if q.get("image") is None and not (q.get("text") or "").strip():
                raise QueryError(f"query {i + 1} has neither an image nor a text")
            if isinstance(q.get("text"), str) and not q["text"].isascii():
                try:
                    q["text"].encode("utf-8")
                except UnicodeEncodeError:  # undecodable bytes of a command line, a lone surrogate
                    raise QueryError(f"query {i + 1}: the text is not valid UTF-8") from None
        results: list[list[SearchHit] | None] = [None] * len(queries)
        # Group by query type so each group is one batched encode and one ranking pass.
        groups: dict[tuple[bool, bool], list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault((q.get("image") is not None, bool((q.get("text") or "").strip())), []).append(i)
        for (has_img, has_txt), idx in groups.items():
            titled = self.backend.channel_count("text") > 0  # items with title or text
            how = _hybrid.resolve_mode(mode, has_txt, has_txt and not has_img and titled)
            texts = [queries[i].get("text") or "" for i in idx]
            if how == "keyword":
                for i, t in zip(idx, texts):
                    results[i] = _hybrid.keyword_hits(self, t, k, where)
                continue
            boost = _hybrid.boosts(self, texts, self.ranking) if how == "hybrid" else None
            group_images = [queries[i]["image"] for i in idx] if has_img else None
            img, txt = _runtime.both(  # photo and text encoders at once (the text one in a helper thread)
                functools.partial(_maybe, self.encode_texts, texts if has_txt else None),
                functools.partial(_maybe, self.encode_image_channels, group_images),
                concurrent=has_img and has_txt and _runtime.concurrent_towers())[::-1]
            for i, hits in zip(idx, self.search_vectors(img, txt, k=k, image_weight=image_weight, where=where,
                                                        boost=boost)):
                results[i] = hits
        return results  # type: ignore[return-value]


def _maybe(encode: Any, values: Any) -> Any:
    """``encode(values)``, or None when there are no values."""
    return None if values is None else encode(values)
