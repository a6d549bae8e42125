"""Keyword search on Milvus: BM25 over each item's words (Milvus' BM25 function), TEXT_MATCH for coverage.

The words are the folder store's (store.keyword_text: title, text, file and folder names, string
metadata), analyzed by Milvus (standard tokenizer, lowercase, ASCII folding, English stemmer) where the
folder index uses SQLite FTS5 (unicode61 + porter). What differs from the folder backend, by design:

* a phrase of several words (``XR-2000``) matches items holding all its words, not only adjacent ones
  (Milvus Lite has no PHRASE_MATCH);
* Milvus Lite's analyzer ignores the stemmer and ASCII-folding filters (its tokens are lowercased \w+
  runs): there "shoes" does not find "shoe", nor "cafe" "café". A Milvus server applies them;
* BM25 scores differ in scale (and Milvus Lite's IDF is per segment): keyword ranks and the hybrid bonus
  are close, not identical. Filters, vectors and exact scores are unaffected.

A Milvus server returns at most 16384 hits per search: asking for more uses a search iterator, only when
more items than that match.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..store import phrases
from .expr import int_list, quote

MAX_TOPK = 16384  # Milvus' cap on results per search and on offset + limit per query
FIELD = "words"
SPARSE = "words_bm25"


def phrase_words(text: str) -> list[list[str]]:
    """The user's text as phrases (store.phrases), each a list of words."""
    return [p.strip('"').split() for p in phrases(text)]


def phrase_expr(words: list[str]) -> str:
    """Items holding every word of a phrase (words are \\w+ runs: no quote can reach the literal)."""
    return " and ".join(f"TEXT_MATCH({FIELD}, {quote(w)})" for w in words)


def any_word_expr(groups: list[list[str]]) -> str:
    return f"TEXT_MATCH({FIELD}, {quote(' '.join(w for g in groups for w in g))})"


def count(client: Any, collection: str, expr: str) -> int:
    rows = client.query(collection, filter=expr, output_fields=["count(*)"])
    return int(rows[0]["count(*)"]) if rows else 0


def keyword_search(client: Any, collection: str, text: str, n: int, lite: bool) -> tuple[np.ndarray, np.ndarray]:
    """(fids, BM25 scores, higher is better) of the ``n`` items whose words best match ``text``
    (``lite``: Milvus Lite, which caps no search, so no iterator is needed)."""
    groups = phrase_words(text)
    if not groups or n < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    query = " ".join(w for g in groups for w in g)
    params = {"metric_type": "BM25"}
    if n > MAX_TOPK and not lite and count(client, collection, any_word_expr(groups)) > MAX_TOPK:
        hits = []
        it = client.search_iterator(collection, data=[query], anns_field=SPARSE, batch_size=1000, limit=n,
                                    output_fields=["fid"], search_params=params)
        try:
            while True:
                batch = it.next()
                if not batch:
                    break
                hits.extend(batch)
        finally:
            it.close()
    else:
        hits = client.search(collection, data=[query], anns_field=SPARSE, limit=n if lite else min(n, MAX_TOPK),
                             output_fields=["fid"], search_params=params)[0]
    # Milvus servers report BM25 as a positive score, Milvus Lite as its negation: the order is best first
    # either way, and the magnitude is the score
    return (np.array([int(h["fid"]) for h in hits], np.int64),
            np.array([abs(float(h["distance"])) for h in hits], np.float32))


def keyword_coverage(client: Any, collection: str, text: str, fids: np.ndarray, total: int,
                     df: dict[str, int]) -> np.ndarray:
    """Per fid, the share of the text's phrases it holds, each weighted by its BM25 IDF
    (``log(1 + (N - n + 0.5) / (n + 0.5))``, n items holding it of N), as ItemStore.keyword_coverage.
    ``df``: phrase -> n, remembered by the caller for one index version."""
    out = np.zeros(len(fids), np.float32)
    groups = phrase_words(text)
    if not groups or not len(fids):
        return out
    ids = [int(f) for f in fids]
    pos: dict[int, list[int]] = {}
    for i, f in enumerate(ids):
        pos.setdefault(f, []).append(i)
    weights = []
    for words in groups:
        expr = phrase_expr(words)
        key = " ".join(words)
        if key not in df:
            df[key] = count(client, collection, expr)
        idf = float(np.log1p((total - df[key] + 0.5) / (df[key] + 0.5)))
        weights.append(idf)
        uniq = list(pos)
        for s in range(0, len(uniq), 1000):
            found = client.query(collection, filter=f"({expr}) and {int_list('fid', uniq[s:s + 1000])}",
                                 output_fields=["fid"])
            for r in found:
                for i in pos[int(r["fid"])]:
                    out[i] += idf
    return out / max(sum(weights), 1e-9)
