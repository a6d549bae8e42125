"""Retrieval evaluation: queries with known targets -> Recall@k and MRR, overall and per query type,
with 95% bootstrap confidence intervals. The metric functions are pure and unit-tested."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .catalog.scan import jsonl_objects
from .errors import QueryError

KS = (1, 5, 10, 50)
QUERY_TYPES = ("text", "image", "image+text")


@dataclass
class EvalQuery:
    image: str | None
    text: str | None
    targets: list[str]
    line: int = 0

    @property
    def type(self) -> str:
        return "image+text" if self.image and self.text else ("image" if self.image else "text")


def recall_at_k(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Share of queries whose target column is among the top k of its row. scores (Q, N), targets (Q,).

    The target's rank is the number of items scoring at least as high as it (itself included), so ties
    count against it and a constant scorer never looks good.
    """
    if len(targets) == 0:
        return 0.0
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    rank = (scores >= target_scores).sum(1)  # 1-based, pessimistic on ties
    return float((rank <= k).mean())


def metrics_from_ranks(ranks: Sequence[int | None], ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@k and MRR from the 1-based rank of each query's first relevant hit (None: not retrieved)."""
    r = np.array([np.inf if x is None else x for x in ranks], dtype=np.float64)
    if len(r) == 0:
        return {**{f"R@{k}": float("nan") for k in ks}, "MRR": float("nan")}
    out = {f"R@{k}": float((r <= k).mean()) for k in ks}
    out["MRR"] = float(np.where(np.isfinite(r), 1.0 / r, 0.0).mean())
    return out


def bootstrap_ci(ranks: Sequence[int | None], ks: Sequence[int] = KS, n: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap over queries: metric -> (low, high) at ``level`` (default 95%)."""
    r = np.array([np.inf if x is None else x for x in ranks], dtype=np.float64)
    if len(r) == 0:
        return {}
    rng = np.random.default_rng(seed)
    samples = r[rng.integers(0, len(r), size=(n, len(r)))]  # (n, Q)
    stats = {f"R@{k}": (samples <= k).mean(1) for k in ks}
    stats["MRR"] = np.where(np.isfinite(samples), 1.0 / samples, 0.0).mean(1)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {name: (float(np.percentile(v, lo)), float(np.percentile(v, hi))) for name, v in stats.items()}


def first_rank(hit_ids: Sequence[str], targets: Sequence[str]) -> int | None:
    wanted = set(targets)
    for i, h in enumerate(hit_ids, 1):
        if h in wanted:
            return i
    return None


def read_queries(path: str | Path) -> list[EvalQuery]:
    """``{"image": path or null, "text": str or null, "target": [ids]}`` per line; relative image paths
    are resolved against the file's folder. A malformed line is an error naming it."""
    path = Path(path)
    out = []
    for lineno, q in jsonl_objects(path, QueryError, "queries"):
        if not isinstance(q, dict):
            raise QueryError(f'{path}:{lineno}: expected an object like {{"text": ..., "target": [ids]}}')
        img, txt, tgt = q.get("image"), q.get("text"), q.get("target")
        if img is not None and not isinstance(img, str) or txt is not None and not isinstance(txt, str):
            raise QueryError(f'{path}:{lineno}: "image" and "text" must be strings or null')
        if isinstance(tgt, str):
            tgt = [tgt]
        if not isinstance(tgt, list) or not tgt or not all(isinstance(t, str) for t in tgt):
            raise QueryError(f'{path}:{lineno}: "target" must be a non-empty list of item ids')
        txt = txt if (txt or "").strip() else None
        if img is None and txt is None:
            raise QueryError(f"{path}:{lineno}: the query has neither an image nor a text")
        if img is not None and not Path(img).is_absolute():
            img = str(path.parent / img)
        out.append(EvalQuery(image=img, text=txt, targets=tgt, line=lineno))
    if not out:
        raise QueryError(f"queries file {path} has no queries")
    return out


def evaluate(index: str | Path, queries: str | Path | list[EvalQuery], device: str = "auto",
             image_weight: float | None = None, depth: int = 1000, bootstrap: int = 1000, seed: int = 0,
             engine: Any = None) -> dict[str, Any]:
    """Run ``queries`` against the index and report Recall@1/5/10/50 and MRR with 95% bootstrap CIs.

    Args:
        index: index folder built by ``mmsearch index``.
        queries: a queries JSONL path or parsed :class:`EvalQuery` objects.
        depth: how many hits are retrieved per query; a target below it counts as not found (RR = 0).
        engine: an already open SearchEngine (skips loading).

    Returns:
        ``{"n", "overall": {metric: value, "ci": {...}}, "by_type": {type: {...}}}``.

    Example:
        >>> from mmsearch.evaluate import evaluate                          # doctest: +SKIP
        >>> evaluate("index", "queries.jsonl")["overall"]["R@10"]           # doctest: +SKIP
    """
    from .search.engine import SearchEngine

    qs = read_queries(queries) if not isinstance(queries, list) else queries
    engine = engine or SearchEngine.open(index, device=device)
    known = {row["id"] for row in engine.items}
    for q in qs:
        unknown = [t for t in q.targets if t not in known]
        if unknown:
            raise QueryError(f"query on line {q.line}: target id {unknown[0]!r} is not in the index")
    hits = engine.search_batch([{"image": q.image, "text": q.text} for q in qs], k=min(depth, len(engine)),
                               image_weight=image_weight)
    ranks = [first_rank([h.id for h in hs], q.targets) for hs, q in zip(hits, qs)]
    return summarize(ranks, [q.type for q in qs], bootstrap=bootstrap, seed=seed)


def summarize(ranks: Sequence[int | None], types: Sequence[str], bootstrap: int = 1000, seed: int = 0) -> dict:
    def block(rs):
        return {"n": len(rs), **metrics_from_ranks(rs), "ci": bootstrap_ci(rs, n=bootstrap, seed=seed)}

    by_type = {t: block([r for r, tt in zip(ranks, types) if tt == t]) for t in QUERY_TYPES if t in types}
    return {"n": len(ranks), "overall": block(list(ranks)), "by_type": by_type}
