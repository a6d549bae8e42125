"""Answer a query-algebra query (algebra.py) with a loaded :class:`SearchEngine`.

One photo and/or one text, all positive, goes to the engine's plain path (learned fusion included);
anything else is encoded term by term, fused (algebra.fuse), and scored term by term over the
candidates of the fused vector.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import ItemNotFoundError, QueryError
from ..index.filters import WhereSpec
from .algebra import Term, check_terms, combine_terms, fuse, plain_form
from .hits import hits_of
from .ranking import top_k
from .retriever import Encoded

# the engine imports this module (engine.search delegates algebra queries here): no import back
SearchEngine = Any
SearchHit = Any


def search_terms(engine: "SearchEngine", terms: Sequence[Term], k: int = 10, image_weight: float | None = None,
                 where: WhereSpec = None, exclude: Sequence[str] = (), mode: str | None = None) -> list["SearchHit"]:
    """Up to ``k`` hits for the weighted terms, best first; ``exclude``: item ids to leave out. ``mode``
    (hybrid.py) applies to a plain query; a weighted or negative one is semantic."""
    check_terms(terms)
    if k < 1:
        raise QueryError(f"k must be at least 1, got {k}")
    plain = plain_form(terms) if not exclude else None
    if plain is not None:
        image, text, w = plain
        return engine.search_batch([{"image": image, "text": text}], k=k,
                                   image_weight=image_weight if w is None else w, where=where, mode=mode)[0]
    if mode in ("keyword", "hybrid"):
        raise QueryError(f"--mode {mode} takes one text (and at most one photo); weighted and --not queries are "
                         "semantic")
    images = [t for t in terms if t.kind == "image"]
    texts = [t for t in terms if t.kind == "text"]
    img = engine.encode_image_channels([t.value for t in images]) if images else None
    txt = engine.encode_texts([t.value for t in texts]) if texts else None
    shared = np.concatenate([a for a in ((img or {}).get("image"), txt) if a is not None])  # (n_terms, D)
    weights = [t.weight for t in images] + [t.weight for t in texts]
    q, norm = fuse(shared, weights)
    return rank_fused(engine, q, norm, img, txt, weights, k, where, exclude)


def rank_fused(engine: "SearchEngine", q: np.ndarray, norm: float, img: dict[str, np.ndarray] | None,
               txt: np.ndarray | None, weights: list[float], k: int, where: WhereSpec,
               exclude: Sequence[str] = ()) -> list["SearchHit"]:
    """Candidates of the fused vector ``q`` (D,), each scored term by term (see algebra.py)."""
    conditions = engine.conditions(where) or None
    drop = np.array(sorted(engine.backend.fids_of(list(exclude)).values()), np.int64) if exclude else None
    n = k + (len(drop) if drop is not None else 0)
    retriever = engine.retriever
    n_cand = retriever.n_candidates(n)
    few = retriever.few_matches(conditions, n_cand)
    cand = retriever.candidates(Encoded(None, None, q[None]), "image", n, n_cand, conditions, few)[0]
    if txt is not None and few is None:  # texts also find items by their own text
        extra = engine.backend.search("text", q[None], n_cand, conditions)[0]
        cand = np.union1d(cand, extra[extra >= 0])
    if drop is not None:
        cand = cand[~np.isin(cand, drop)]
    img_channel = retriever.image_channel(img)
    parts = []
    for j in range(len(next(iter(img.values()))) if img else 0):
        one = {name: vecs[j:j + 1] for name, vecs in img.items()}  # type: ignore[union-attr]
        parts.append(retriever.score(Encoded(one, None), img_channel, 0, cand, 1.0))
    for row in txt if txt is not None else []:
        parts.append(retriever.score(Encoded(None, row[None]), img_channel, 0, cand, 0.0))
    scores = combine_terms(np.stack(parts), weights, norm) if len(cand) else np.zeros(0, np.float32)
    return hits_of(engine.backend, [top_k(scores, cand, k)])[0]


def similar_to_items(engine: "SearchEngine", like: Sequence[str], not_like: Sequence[str] = (), text: str | None = None,
                     k: int = 10, where: WhereSpec = None) -> list["SearchHit"]:
    """"More like these": items resembling every item of ``like`` and unlike those of ``not_like``.

    Each given item is a term of the query algebra with its *stored* embeddings (weight 1 for a liked item,
    -1 for a disliked one, and 1 for ``text``), so a basket of liked items ranks by the sum of its
    members' scores (README "Query algebra"). The given items are left out of the hits.
    """
    like, not_like = list(dict.fromkeys(like)), list(dict.fromkeys(not_like))
    if not like:
        raise QueryError("give at least one item to find similar items to")
    both = sorted(set(like) & set(not_like))
    if both:
        raise QueryError(f"item {both[0]!r} is both liked and disliked")
    ids = like + not_like
    img = stored_images(engine, ids)
    txt = engine.encode_texts([text]) if text and text.strip() else None
    weights = [1.0] * len(like) + [-1.0] * len(not_like) + ([1.0] if txt is not None else [])
    shared = np.concatenate([img["image"]] + ([txt] if txt is not None else []))  # (n_terms, D)
    q, norm = fuse(shared, weights)
    return rank_fused(engine, q, norm, img, txt, weights, k, where, exclude=ids)


def stored_images(engine: "SearchEngine", ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The stored image-side vectors of items ``ids``: channel ("image", and "visual" when every item has
    one) -> (n, dim) unit rows in the order of ``ids``."""
    fids = engine.backend.fids_of(list(ids))
    missing = [i for i in ids if i not in fids]
    if missing:
        raise ItemNotFoundError(f"no item {missing[0]!r} in this index"
                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    rows = np.array([fids[i] for i in ids], np.int64)
    img: dict[str, np.ndarray] = {}
    for name in ("image", "visual"):
        if not engine.backend.channel_count(name):
            continue
        present, vecs = engine.backend.vectors(name, rows)
        if not present.all():
            if name == "image":
                raise ItemNotFoundError(f"item {ids[int(np.argmin(present))]!r} has no stored image embedding")
            continue  # a visual channel is used only when every given item has it
        img[name] = vecs
    return img


def similar_to_item(engine: "SearchEngine", item_id: str, text: str | None, k: int, image_weight: float | None,
                    where: WhereSpec) -> list["SearchHit"]:
    """"More like this": items whose images resemble ``item_id``'s stored embedding (the item left out);
    ``text`` steers them as in a photo + text query."""
    txt = engine.encode_texts([text]) if text else None
    hits = engine.search_vectors(stored_images(engine, [item_id]), txt, k=k + 1, image_weight=image_weight,
                                 where=where)[0]
    hits = [h for h in hits if h.id != item_id][:k]
    for rank, h in enumerate(hits, 1):
        h.rank = rank
    return hits
