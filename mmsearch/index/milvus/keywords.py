"""Keyword search on a Milvus index: Milvus' BM25 on a server, a local FTS5 copy under Milvus Lite.

Every row stores the words the folder store indexes (store.keyword_text: title, text, file and folder
names, string metadata) in ``words``, analyzed by Milvus (standard tokenizer, lowercase, ASCII folding,
English stemmer) into ``words_bm25`` by Milvus' BM25 function.

``milvus`` mode (servers): ``keyword_search`` is a BM25 search; ``keyword_matches`` counts the items
holding each phrase with ``TEXT_MATCH`` (all of its words, not necessarily adjacent: Milvus Lite has no
PHRASE_MATCH) and tests the candidates' own words in a small in-memory FTS5 table (the folder store's
tokenizer and phrase rules). BM25 scores differ from FTS5's in scale; filters and exact scores do not.

``local`` mode (Milvus Lite): Lite's analyzer ignores the stemmer and folding filters ("shoes" would not
find "shoe") and it evaluates TEXT_MATCH row by row in Python (seconds per phrase at 20k items), so the
first keyword query of a reader copies every item's words into an in-memory FTS5 index, which then
answers exactly as the folder backend's (same tokenizer, BM25 and coverage).

A Milvus server returns at most 16384 hits per search: asking for more uses a search iterator, only when
more items than that match.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any, Callable, Iterable

import numpy as np

from ..store import PhraseMatches, match_phrases, match_query, phrases
from .expr import quote

MAX_TOPK = 16384  # Milvus' cap on results per search and on offset + limit per query
FIELD = "words"
SPARSE = "words_bm25"
FTS = "CREATE VIRTUAL TABLE words USING fts5(body, tokenize = 'porter unicode61 remove_diacritics 2')"
WordRows = Callable[[], Iterable[tuple[int, str]]]


def _fts(rows: Iterable[tuple[int, str]]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.execute(FTS)
    conn.executemany("INSERT INTO words(rowid, body) VALUES (?, ?)", rows)
    return conn


def _count(client: Any, collection: str, expr: str) -> int:
    rows = client.query(collection, filter=expr, output_fields=["count(*)"])
    return int(rows[0]["count(*)"]) if rows else 0


class Keywords:
    """Keyword search and coverage of one reader (one index generation).

    all_words: every committed item's (fid, words), read once in ``local`` mode; some_words(fids): the
    words of those items.
    """

    def __init__(self, client: Any, collection: str, mode: str, total: int, all_words: WordRows,
                 some_words: Callable[[list[int]], Iterable[tuple[int, str]]]):
        self.client, self.collection, self.mode, self.total = client, collection, mode, total
        self.all_words, self.some_words = all_words, some_words
        self._local: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._df: dict[str, int] = {}  # phrase -> items holding it (one generation never changes)

    def _index(self) -> sqlite3.Connection:
        if self._local is None:
            self._local = _fts(self.all_words())
        return self._local

    def close(self) -> None:
        if self._local is not None:
            self._local.close()

    # ------------------------------------------------------------------------------------ search
    def search(self, text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(fids, scores, higher is better) of the ``n`` items whose words best match ``text``."""
        query = match_query(text)
        if query is None or n < 1:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if self.mode == "local":
            with self._lock:
                rows = self._index().execute("SELECT rowid, bm25(words) FROM words WHERE words MATCH ? ORDER BY "
                                             "bm25(words), rowid LIMIT ?", (query, int(n))).fetchall()
            return np.array([r[0] for r in rows], np.int64), np.array([-r[1] for r in rows], np.float32)
        words = " ".join(w for p in phrases(text) for w in p.strip('"').split())
        params = {"metric_type": "BM25"}
        if n > MAX_TOPK and _count(self.client, self.collection, f"TEXT_MATCH({FIELD}, {quote(words)})") > MAX_TOPK:
            hits: list = []
            it = self.client.search_iterator(self.collection, data=[words], anns_field=SPARSE, batch_size=1000,
                                             limit=n, output_fields=["fid"], search_params=params)
            try:
                while batch := it.next():
                    hits.extend(batch)
            finally:
                it.close()
        else:
            hits = self.client.search(self.collection, data=[words], anns_field=SPARSE, limit=min(n, MAX_TOPK),
                                      output_fields=["fid"], search_params=params)[0]
        # a server reports BM25 as a positive score, Milvus Lite as its negation: best first either way
        return (np.array([int(h["fid"]) for h in hits], np.int64),
                np.array([abs(float(h["distance"])) for h in hits], np.float32))

    # ---------------------------------------------------------------------------------- coverage
    def matches(self, text: str, fids: np.ndarray) -> PhraseMatches:
        """Which of the text's phrases each fid holds, and their BM25 IDF: ItemStore.keyword_matches."""
        terms = phrases(text)
        if not terms or not len(fids):
            return PhraseMatches.none(terms, len(fids))
        with self._lock:
            if self.mode == "local":
                conn, own = self._index(), False
            else:
                conn, own = _fts(self.some_words(list(dict.fromkeys(fids.tolist())))), True
            try:
                return match_phrases(conn, terms, fids, lambda t: self._phrase_df(conn, t), float(self.total))
            finally:
                if own:
                    conn.close()

    def _phrase_df(self, conn: sqlite3.Connection, phrase: str) -> int:
        n = self._df.get(phrase)
        if n is None:
            if self.mode == "local":
                n = int(conn.execute("SELECT COUNT(*) FROM words WHERE words MATCH ?", (phrase,)).fetchone()[0])
            else:
                words = phrase.strip('"').split()
                n = _count(self.client, self.collection,
                           " and ".join(f"TEXT_MATCH({FIELD}, {quote(w)})" for w in words))
            if len(self._df) < 100_000:
                self._df[phrase] = n
        return n
