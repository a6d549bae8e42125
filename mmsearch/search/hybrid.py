"""Keyword + semantic search: the item store's full-text index (FTS5, BM25) next to the embeddings.

Modes (``--mode``, ``mode=``):
    ``semantic``  embeddings only (ranking.py);
    ``keyword``   BM25 over the items' words only (title, text, file and folder names, string metadata;
                  index/store.py ``keyword_text``): no model is loaded;
    ``hybrid``    the semantic score plus a keyword bonus: the items a text's words match best (BM25) join
                  the candidates, and each gets ``keyword_weight`` times the IDF-weighted share of the
                  text's phrases it matches (store.PhraseMatches.coverage: an item matching every phrase gets the
                  whole weight, ``RankingCfg.keyword_weight``) on top of its exact semantic score, and
                  ``identifier_weight`` times the IDF-weighted share of the text's identifiers it holds
                  (:func:`identifiers`: terms with a digit, model numbers, SKUs, years): an exact
                  "XR-2000" is evidence no embedding has, while a word like "red" is one the semantic
                  score already weighs, so only identifiers get the second bonus; with a photo the bonus
                  belongs to the text part (times ``1 - w``);
    ``auto``      (default) hybrid for a text-only query on an index whose items have titles or texts,
                  else semantic: an untitled photo library ranks exactly as before, and a photo + text
                  query ("this jacket, in red") keeps its text a modifier, not a name to look up.

benchmarks/bench_hybrid.py measures the modes, the weight and reciprocal-rank fusion (:func:`rrf`, kept for
that comparison) side by side. Pure functions, except :func:`keyword_hits` and :func:`boosts` (read the store).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..config import RankingCfg
from ..errors import QueryError
from ..index.filters import WhereSpec
from ..index.store import phrases
from .hits import hits_of

MODES = ("auto", "hybrid", "semantic", "keyword")


def resolve_mode(mode: str | None, has_text: bool, auto_hybrid: bool) -> str:
    """The mode a query runs in: ``semantic``, ``keyword`` or ``hybrid`` (see the module doc);
    ``auto_hybrid``: whether ``auto`` means hybrid for this query."""
    mode = mode or "auto"
    if mode not in MODES:
        raise QueryError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "keyword" and not has_text:
        raise QueryError("keyword search needs a query text")
    if mode == "auto":
        return "hybrid" if has_text and auto_hybrid else "semantic"
    return mode if has_text else "semantic"


def rrf(rankings: Sequence[np.ndarray], k: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal-rank fusion of id lists (each best first): (ids, sum_r 1 / (k + rank)), best first."""
    score: dict[int, float] = {}
    for ids in rankings:
        for r, i in enumerate(ids.tolist(), 1):
            score[i] = score.get(i, 0.0) + 1.0 / (k + r)
    ids = np.array(sorted(score, key=lambda i: (-score[i], i)), np.int64)
    return ids, np.array([score[i] for i in ids.tolist()], np.float32)


def keyword_hits(engine: Any, text: str, k: int, where: WhereSpec = None) -> list[Any]:
    """Keyword mode: the ``k`` best BM25 matches of ``text`` (score = BM25), every hit satisfying ``where``."""
    if where is None:
        fids, bm25 = engine.backend.keyword_search(text, k)
    else:
        allowed = engine.select(where)
        fids, bm25 = engine.backend.keyword_search(text, len(engine))  # every match, then the filter
        keep = np.isin(fids, allowed)
        fids, bm25 = fids[keep][:k], bm25[keep][:k]
    return hits_of(engine.backend, [(fids, bm25)])[0]


def identifiers(text: str) -> str:
    """The text's identifier terms, space-separated: those holding a digit ("XR-2000", "KX-4821", "2019",
    "4k"), the model numbers, SKUs and years no embedding knows; "" when it has none."""
    return " ".join(t for t in text.split() if any(c.isdigit() for c in t))


def boosts(engine: Any, texts: Sequence[str], ranking: RankingCfg) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query text, (fids, bonus) of its ``ranking.keyword_candidates`` best keyword matches (hybrid mode):
    ``keyword_weight`` times the IDF-weighted share of the text's phrases each matches, plus
    ``identifier_weight`` times the share of its identifiers (store.PhraseMatches.coverage)."""
    out = []
    for t in texts:
        fids, _ = engine.backend.keyword_search(t, ranking.keyword_candidates)
        matches = engine.backend.keyword_matches(t, fids)  # one read serves both shares
        bonus = ranking.keyword_weight * matches.coverage()
        ids = phrases(identifiers(t))
        if ids and ranking.identifier_weight:
            bonus = bonus + ranking.identifier_weight * matches.coverage(only=ids)
        out.append((fids, bonus.astype(np.float32)))
    return out


def bonus_of(cand: np.ndarray, fids: np.ndarray, bonus: np.ndarray) -> np.ndarray:
    """Per candidate (sorted fids), its keyword bonus; 0 for candidates the keyword search did not return."""
    out = np.zeros(len(cand), np.float32)
    if not len(cand):
        return out
    pos = np.searchsorted(cand, fids)
    ok = (pos < len(cand)) & (cand[np.minimum(pos, len(cand) - 1)] == fids)
    out[pos[ok]] = bonus[ok]
    return out
