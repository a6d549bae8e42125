"""Retriever: encoded queries -> candidates from an index backend -> exact scores -> ranked hits.

The backend (index/backend.py: the folder's FAISS + SQLite, or Milvus) only proposes candidates per
channel and returns stored vectors; every candidate is re-scored here with the same functions
(ranking.py), so the ranking does not depend on where the index lives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..config import RankingCfg
from ..index.backend import IndexReader
from ..index.filters import Condition
from . import hybrid as _hybrid
from .hits import SearchHit, hits_of
from .ranking import combine, text_part, top_k


@dataclass
class Encoded:
    """One batch of encoded queries: per-channel photo embeddings, text embeddings, the learned fusion's."""

    image: dict[str, np.ndarray] | None
    text: np.ndarray | None
    fused: np.ndarray | None = None

    @property
    def batch(self) -> int:
        if self.fused is not None:
            return len(self.fused)
        return len(self.text) if self.text is not None else len(next(iter(self.image.values())))  # type: ignore[union-attr]


class Retriever:
    """Ranks an index (an :class:`IndexReader`) for encoded queries."""

    def __init__(self, backend: IndexReader, ranking: RankingCfg):
        self.backend = backend
        self.ranking = ranking

    def image_channel(self, image: dict[str, np.ndarray] | None) -> str:
        """The channel photos are matched in: the photo-only ``visual`` one when index and query have it."""
        has = image is not None and "visual" in image and self.backend.channel_count("visual") > 0
        return "visual" if has else "image"

    def rank(self, q: Encoded, k: int, w: float, where: Sequence[Condition] | None = None,
             boost: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> list[list[SearchHit]]:
        """Up to ``k`` hits per query, best first; every hit satisfies ``where`` (see engine.search_vectors)."""
        img_channel = self.image_channel(q.image)
        n_cand = self.n_candidates(k)
        cands = self.candidates(q, img_channel, k, n_cand, where, self.few_matches(where, n_cand))
        extra: list[Any] = [0.0] * q.batch
        if boost is not None:  # hybrid: keyword matches join the candidates and add their bonus (hybrid.py)
            allowed = self.backend.select(where) if where else None
            cands = [np.union1d(c, f if allowed is None else f[np.isin(f, allowed)]) for c, (f, _) in zip(cands, boost)]
            tw = 1.0 - w if q.image is not None else 1.0  # the bonus belongs to the text part
            extra = [tw * _hybrid.bonus_of(c, *bo) for c, bo in zip(cands, boost)]
        results = [top_k(self.score(q, img_channel, b, cand, w) + extra[b], cand, k) for b, cand in enumerate(cands)]
        return hits_of(self.backend, results)

    def n_candidates(self, k: int) -> int:
        """How many candidates each channel proposes for ``k`` hits (RankingCfg.candidates, at least 4 k)."""
        return max(self.ranking.candidates, 4 * k)

    def few_matches(self, where: Sequence[Condition] | None, n_cand: int) -> np.ndarray | None:
        """Every item matching ``where`` when they are few enough to score exactly (else None)."""
        if not where:
            return None
        limit = max(self.ranking.exact_filter_max, n_cand)
        matches = self.backend.select(where, limit=limit)
        return matches if len(matches) <= limit else None

    def candidates(self, q: Encoded, img_channel: str, k: int, n_cand: int, where: Sequence[Condition] | None,
                   few: np.ndarray | None) -> list[np.ndarray]:
        """Per query, the item ids (fids) to score exactly: the union of the channels' candidates (the fused
        query's when there is one), or ``few``, every match of a filter that leaves few."""
        if few is not None:
            return [few] * q.batch
        pools = []
        search = self.backend.search
        if q.fused is not None:
            pools.append(search("image", q.fused, n_cand, where))
        else:
            if q.image is not None:
                pools.append(search(img_channel, q.image[img_channel], n_cand, where))
            if q.text is not None:
                pools.append(search("image", q.text, n_cand, where))
                pools.append(search("text", q.text, n_cand, where))
        out = []
        everything = None
        for b in range(q.batch):
            cand = np.unique(np.concatenate([p[b] for p in pools] + [np.zeros(0, np.int64)]))
            cand = cand[cand >= 0]
            if where and len(cand) < k:  # the approximate index may have missed matches: score them all
                everything = self.backend.select(where) if everything is None else everything
                if len(cand) < len(everything):
                    cand = everything
            out.append(cand)
        return out

    def sims(self, channel: str, v: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of candidates present in ``channel``, cosine similarity to v, 0 where absent)."""
        present, vecs = self.backend.vectors(channel, cand)
        sims = np.zeros(len(cand), np.float32)
        sims[present] = vecs @ v
        return present, sims

    def score(self, q: Encoded, img_channel: str, b: int, cand: np.ndarray, w: float) -> np.ndarray:
        """Exact scores of query ``b`` for the candidates ``cand`` (see ranking.py for how parts combine)."""
        if q.fused is not None:
            return self.sims("image", q.fused[b], cand)[1]
        ipart = self.sims(img_channel, q.image[img_channel][b], cand)[1] if q.image is not None else None
        tpart = None
        if q.text is not None:
            txt_img = self.sims("image", q.text[b], cand)[1]
            if self.backend.channel_count("text"):
                has_text, txt_txt = self.sims("text", q.text[b], cand)
            else:
                has_text, txt_txt = np.zeros(len(cand), bool), np.zeros(len(cand), np.float32)
            tpart = text_part(txt_img, txt_txt, has_text, self.ranking.item_text_weight)
        return combine(ipart, tpart, w)
