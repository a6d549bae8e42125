"""``mmsearch query --batch``: a JSONL file of queries in, one JSON line of hits per query out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..errors import QueryError


def query_batch(path: Path, index: Path, device: str, k: int, image_weight: Optional[float], where: Any, mode: str,
                paging: Any, with_terms: bool) -> None:
    """``query --batch``: refuse what a batch cannot take, then answer every query of the file."""
    if with_terms:
        raise QueryError("--batch takes its queries from the file; give no image or text as well")
    if mode in ("paths", "preview"):
        raise QueryError(f"--batch prints JSON lines; --{mode} is for single queries")
    if paging.windowed or paging.min_score is not None:
        raise QueryError("--batch takes no --sort-by, --offset or --min-score")
    queries = read_batch(path)
    from ..search.engine import SearchEngine

    engine = SearchEngine.open(index, device=device)
    failures = run_batch(engine, queries, k, image_weight, where=where)
    if failures:
        raise QueryError(f"{failures} of {len(queries)} queries failed (see their \"error\" fields)")


def read_batch(path: Path) -> list[dict[str, Any]]:
    """Parse and check a queries JSONL file up front, so a malformed line fails before any work."""
    from ..catalog.scan import jsonl_objects

    queries = []
    for lineno, q in jsonl_objects(path, QueryError, "batch"):
        if not isinstance(q, dict):
            raise QueryError(f'{path}:{lineno}: expected an object like {{"image": ..., "text": ...}}')
        img, txt = q.get("image"), q.get("text")
        if img is not None and not isinstance(img, str) or txt is not None and not isinstance(txt, str):
            raise QueryError(f'{path}:{lineno}: "image" and "text" must be strings or null')
        if img is None and not (txt or "").strip():
            raise QueryError(f"{path}:{lineno}: the query has neither an image nor a text")
        queries.append({"image": img, "text": txt if (txt or "").strip() else None})
    if not queries:
        raise QueryError(f"batch file {path} has no queries")
    return queries


def run_batch(engine, queries: list[dict[str, Any]], k: int, image_weight: Optional[float], chunk: int = 64,
              where: Any = None) -> int:
    """Print one JSON line per query, in order; a query whose image cannot be read gets an "error"."""
    from .output import hit_dict

    failures = 0
    for start in range(0, len(queries), chunk):
        part = queries[start:start + chunk]
        results: list[tuple[Any, str | None]]
        try:
            results = [(hits, None) for hits in engine.search_batch(part, k=k, image_weight=image_weight,
                                                                    where=where)]
        except QueryError:
            results = []
            for q in part:  # find the bad one(s); the rest still get answers
                try:
                    results.append((engine.search(q["image"], q["text"], k=k, image_weight=image_weight,
                                                  where=where), None))
                except QueryError as exc:
                    results.append(([], str(exc)))
        for hits, error in results:
            row: dict[str, Any] = {"ids": [h.id for h in hits], "scores": [round(h.score, 6) for h in hits],
                                   "hits": [hit_dict(h) for h in hits]}  # the fields of a single --json query
            if error:
                row["error"] = error
                failures += 1
            print(json.dumps(row, ensure_ascii=False))
    return failures
