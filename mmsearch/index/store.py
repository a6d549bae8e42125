"""The item metadata store: one SQLite file per snapshot (``items.sqlite``).

``items`` has one row per item; ``fid`` is the int64 id used in every FAISS index and embedding table,
assigned once and never reused, so ids stay stable across updates. ``attrs`` holds one row per
(item, field, scalar value) of the item's metadata (list values give one row each, nested objects use
dotted keys) with an index on (key, value) and (key, num): every field is an indexed filter column
without a schema to declare. A snapshot's store is written once and then only read (opened immutable).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .filters import Condition, as_number, text_bound_error, unknown_fields_error, where_sql

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    fid INTEGER PRIMARY KEY,          -- FAISS id; never reused
    id TEXT NOT NULL UNIQUE,          -- catalog id: relative path, or the id given to add()
    path TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    text TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{}',
    image_sha256 TEXT,                -- content hash of the encoded image file
    text_sha256 TEXT                  -- hash of the embedded text (title + text); NULL: no text
);
CREATE TABLE IF NOT EXISTS attrs (item INTEGER NOT NULL, key TEXT NOT NULL, value, num REAL);
CREATE INDEX IF NOT EXISTS attrs_key_value ON attrs(key, value);
CREATE INDEX IF NOT EXISTS attrs_key_num ON attrs(key, num);
CREATE INDEX IF NOT EXISTS attrs_item ON attrs(item);
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS words USING fts5(body, tokenize = 'porter unicode61 remove_diacritics 2');
"""
# ``words``: full-text (FTS5, BM25) index of what a person may type to find an item by name: title, text,
# file and folder names, string metadata. rowid = fid. Stores of indexes written before it lack the table;
# readers then build it in memory on the first keyword query.
_WORD = re.compile(r"\w+")
_PATH_SPLIT = re.compile(r"[\\/_.\-\s]+")


def keyword_text(row: dict[str, Any]) -> str:
    """The words an item is found by in keyword search (see ``words`` above)."""
    parts = [row.get("title") or "", row.get("text") or ""]
    path = str(row.get("id") or row.get("path") or "")
    parts.append(" ".join(p for p in _PATH_SPLIT.split(path.rsplit(".", 1)[0]) if p))  # folders + file stem
    parts += [str(v) for _, v in flatten(row.get("metadata") or {}) if isinstance(v, str)]
    return "\n".join(p for p in parts if p)


def phrases(text: str) -> list[str]:
    """A user's text as FTS5 phrases, each quoted: one per space-separated term, a term's words in order
    ("XR-2000" -> ``"xr 2000"``, matching "xr 2000" adjacent; "white" -> ``"white"``). Quoting lets no FTS
    syntax through; words are stemmed by the index's tokenizer (porter: "shoes" finds "shoe")."""
    out = [" ".join(w.lower() for w in _WORD.findall(chunk)) for chunk in text.split()]
    return [f'"{p}"' for p in dict.fromkeys(p for p in out if p)][:64]


def match_query(text: str) -> str | None:
    """Any of the text's phrases (BM25 ranks items matching more and rarer ones first); None without words."""
    return " OR ".join(phrases(text)) or None


def bm25_idf(total: float, n: float) -> float:
    """BM25's IDF of a phrase that ``n`` items of ``total`` hold: ``log(1 + (N - n + 0.5) / (n + 0.5))``."""
    return float(np.log1p((total - n + 0.5) / (n + 0.5)))


@dataclass
class PhraseMatches:
    """Which of a text's ``phrases`` (:func:`phrases`) each candidate item holds (``hit``: phrases x items)
    and each phrase's BM25 IDF (``idf``): keyword search's coverage, read once per query."""

    phrases: list[str]
    idf: np.ndarray
    hit: np.ndarray

    @classmethod
    def none(cls, terms: list[str], n_items: int) -> "PhraseMatches":
        return cls(terms, np.zeros(len(terms)), np.zeros((len(terms), n_items), bool))

    def coverage(self, only: Iterable[str] | None = None) -> np.ndarray:
        """Per item, the share of the phrases (those in ``only``, when given) it holds, each phrase weighted
        by its IDF: 1.0 for an item holding every one, and little for one that holds only a common word of a
        longer text; a phrase no item has still counts."""
        w = self.idf if only is None else self.idf * np.isin(self.phrases, list(only))
        return (w @ self.hit / max(float(w.sum()), 1e-9)).astype(np.float32)


def match_phrases(conn: sqlite3.Connection, terms: list[str], fids: np.ndarray, df: Callable[[str], int],
                  total: float) -> PhraseMatches:
    """The :class:`PhraseMatches` of ``terms`` (quoted phrases) for the items ``fids`` in the FTS5 table
    ``words`` of ``conn`` (rowid = fid); ``df(phrase)``: how many of the ``total`` items hold the phrase."""
    pos: dict[int, list[int]] = {}
    for i, f in enumerate(fids.tolist()):
        pos.setdefault(int(f), []).append(i)
    uniq = list(pos)
    out = PhraseMatches(terms, np.array([bm25_idf(total, df(t)) for t in terms]), np.zeros((len(terms), len(fids)), bool))
    for p, t in enumerate(terms):
        for s in range(0, len(uniq), 500):
            part = uniq[s:s + 500]
            q = f"SELECT rowid FROM words WHERE words MATCH ? AND rowid IN ({','.join('?' * len(part))})"
            for (rowid,) in conn.execute(q, (t, *part)):
                out.hit[p, pos[rowid]] = True
    return out


def flatten(metadata: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(key, scalar) pairs: lists give one pair per element, nested dicts dotted keys, None nothing."""
    for k, v in metadata.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from flatten(v, key + ".")
        elif isinstance(v, (list, tuple)):
            for e in v:
                if isinstance(e, (str, int, float, bool)):
                    yield key, e
        elif isinstance(v, (str, int, float, bool)):
            yield key, v


def _attr_rows(fid: int, title: str, metadata: dict[str, Any]) -> list[tuple]:
    rows: list[tuple] = [(fid, "title", title, as_number(title))] if title else []
    for key, v in flatten(metadata):
        stored = int(v) if isinstance(v, bool) else v
        if isinstance(stored, int) and not -2**63 <= stored < 2**63:  # SQLite integers are 64-bit
            stored = str(stored)
        rows.append((fid, key, stored, as_number(v)))
    return rows


class ItemStore:
    """Read/write access to one ``items.sqlite``; writers use :meth:`create`, readers :meth:`open`."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path
        self._words: sqlite3.Connection | None = None  # where the ``words`` table is (see keyword_search)
        self._words_lock = threading.Lock()
        self._df: dict[str, int] = {}  # phrase -> items matching it (a reader's store never changes)

    @classmethod
    def create(cls, path: Path, copy_from: Path | None = None) -> "ItemStore":
        """A writable store at ``path`` (a new file, or a copy of an earlier snapshot's store)."""
        if copy_from is not None:
            src = sqlite3.connect(f"file:{copy_from}?mode=ro&immutable=1", uri=True)
            dst = sqlite3.connect(path)
            src.backup(dst)
            src.close()
            conn = dst
        else:
            conn = sqlite3.connect(path)
        # The file lives in a snapshot folder nobody reads until it is complete and fsynced, so
        # SQLite's own journal would only slow the write down.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.executescript(SCHEMA)
        store = cls(conn, path)
        if copy_from is not None:  # a store written before the keyword index: fill it once
            n_words = conn.execute("SELECT COUNT(*) FROM words").fetchone()[0]
            if n_words != store.count():
                conn.execute("DELETE FROM words")
                store._fill_words(conn)
        return store

    def _fill_words(self, conn: sqlite3.Connection) -> None:
        rows = self.conn.execute("SELECT fid, id, path, title, text, metadata FROM items")
        conn.executemany("INSERT INTO words(rowid, body) VALUES (?, ?)",
                         ((fid, keyword_text({"id": iid, "path": path, "title": title, "text": text,
                                              "metadata": json.loads(meta)}))
                          for fid, iid, path, title, text, meta in rows))

    @classmethod
    def open(cls, path: Path) -> "ItemStore":
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        return cls(conn, path)

    def close(self) -> None:
        self.conn.close()
        if self._words is not None and self._words is not self.conn:
            self._words.close()

    def commit(self) -> None:
        self.conn.commit()

    # ----------------------------------------------------------------------------------- writing
    def next_fid(self) -> int:
        row = self.conn.execute("SELECT value FROM info WHERE key = 'next_fid'").fetchone()
        top = self.conn.execute("SELECT COALESCE(MAX(fid) + 1, 0) FROM items").fetchone()[0]
        return max(int(row[0]) if row else 0, top)

    def set_next_fid(self, value: int) -> None:
        self.conn.execute("INSERT OR REPLACE INTO info(key, value) VALUES ('next_fid', ?)", (str(int(value)),))

    def upsert(self, rows: Iterable[dict[str, Any]]) -> None:
        """Insert or replace items (each with ``fid``) and their attribute rows."""
        self._df.clear()
        for r in rows:
            meta = r.get("metadata") or {}
            self.conn.execute("DELETE FROM attrs WHERE item = ?", (r["fid"],))
            self.conn.execute(
                "INSERT OR REPLACE INTO items(fid, id, path, title, text, metadata, image_sha256, text_sha256) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (r["fid"], r["id"], r["path"], r.get("title") or "", r.get("text") or "",
                 json.dumps(meta, ensure_ascii=False, sort_keys=True), r.get("image_sha256"), r.get("text_sha256")))
            self.conn.executemany("INSERT INTO attrs(item, key, value, num) VALUES (?, ?, ?, ?)",
                                  _attr_rows(r["fid"], r.get("title") or "", meta))
            self.conn.execute("DELETE FROM words WHERE rowid = ?", (r["fid"],))
            self.conn.execute("INSERT INTO words(rowid, body) VALUES (?, ?)", (r["fid"], keyword_text(r)))

    def delete(self, fids: Sequence[int]) -> None:
        self._df.clear()
        for s in range(0, len(fids), 500):
            part = [int(f) for f in fids[s:s + 500]]
            ph = ",".join("?" * len(part))
            self.conn.execute(f"DELETE FROM attrs WHERE item IN ({ph})", part)
            self.conn.execute(f"DELETE FROM items WHERE fid IN ({ph})", part)
            self.conn.execute(f"DELETE FROM words WHERE rowid IN ({ph})", part)

    # ----------------------------------------------------------------------------------- reading
    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def all_rows(self) -> dict[str, dict[str, Any]]:
        """id -> row (fid, path, title, text, metadata, hashes), for the update diff."""
        out = {}
        for fid, iid, path, title, text, meta, ih, th in self.conn.execute(
                "SELECT fid, id, path, title, text, metadata, image_sha256, text_sha256 FROM items"):
            out[iid] = {"fid": fid, "id": iid, "path": path, "title": title, "text": text,
                        "metadata": json.loads(meta), "image_sha256": ih, "text_sha256": th}
        return out

    def fids_of(self, ids: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in range(0, len(ids), 500):
            part = list(ids[s:s + 500])
            q = f"SELECT id, fid FROM items WHERE id IN ({','.join('?' * len(part))})"
            out.update({i: f for i, f in self.conn.execute(q, part)})
        return out

    def rows(self, fids: Sequence[int] | np.ndarray) -> dict[int, dict[str, Any]]:
        """fid -> {id, path, title, metadata} for the given fids."""
        out: dict[int, dict[str, Any]] = {}
        for s in range(0, len(fids), 500):
            part = [int(f) for f in fids[s:s + 500]]
            q = f"SELECT fid, id, path, title, metadata FROM items WHERE fid IN ({','.join('?' * len(part))})"
            for fid, iid, path, title, meta in self.conn.execute(q, part):
                out[fid] = {"id": iid, "path": path, "title": title, "metadata": json.loads(meta)}
        return out

    def fields(self) -> list[str]:
        """Every filterable field name (metadata keys, flattened with dots, and ``title``), sorted."""
        return [r[0] for r in self.conn.execute("SELECT DISTINCT key FROM attrs ORDER BY key")]

    def check_fields(self, conditions: Sequence[Condition]) -> None:
        """Raise QueryError naming the known fields when a condition's field is on no item (a typo would
        otherwise answer "no results"); one index lookup per field."""
        unknown = sorted(f for f in {c.field for c in conditions}
                         if self.conn.execute("SELECT 1 FROM attrs WHERE key = ? LIMIT 1", (f,)).fetchone() is None)
        if unknown:
            raise unknown_fields_error(unknown, self.fields())
        for c in conditions:  # a text bound on a field of numbers would silently match nothing
            if c.op in ("<", "<=", ">", ">=") and as_number(c.values[0]) is None and self.conn.execute(
                    "SELECT 1 FROM attrs WHERE key = ? AND typeof(value) = 'text' AND num IS NULL LIMIT 1",
                    (c.field,)).fetchone() is None:
                example = self.conn.execute("SELECT num FROM attrs WHERE key = ? AND num IS NOT NULL LIMIT 1",
                                            (c.field,)).fetchone()
                raise text_bound_error(c, example[0] if example else None)

    def select(self, conditions: Sequence[Condition]) -> np.ndarray:
        """Sorted int64 fids of the items satisfying every condition."""
        sql, params = where_sql(conditions)
        cur = self.conn.execute(f"SELECT fid FROM items WHERE {sql} ORDER BY fid", params)
        return np.fromiter((r[0] for r in cur), dtype=np.int64)

    # ----------------------------------------------------------------------------------- keywords
    def _words_conn(self) -> sqlite3.Connection:
        with self._words_lock:
            if self._words is None:
                has = self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'words'").fetchone()
                if has is not None:
                    self._words = self.conn
                else:  # an index written before the keyword index: build it in memory, once per store
                    mem = sqlite3.connect(":memory:", check_same_thread=False)
                    mem.execute(SCHEMA.splitlines()[-1].replace(" IF NOT EXISTS", ""))
                    self._fill_words(mem)
                    self._words = mem
            return self._words

    def keyword_search(self, text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(fids, BM25 scores, higher is better) of the ``n`` items whose words best match ``text``."""
        query = match_query(text)
        if query is None or n < 1:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        conn = self._words_conn()
        with self._words_lock:  # one in-memory connection may serve several threads
            rows = conn.execute("SELECT rowid, bm25(words) FROM words WHERE words MATCH ? ORDER BY bm25(words), "
                                "rowid LIMIT ?", (query, int(n))).fetchall()
        return (np.array([r[0] for r in rows], np.int64),
                np.array([-r[1] for r in rows], np.float32))  # FTS5's bm25() is negated: lower is better

    def keyword_matches(self, text: str, fids: np.ndarray) -> PhraseMatches:
        """Which of the text's phrases each item of ``fids`` holds, and the phrases' IDF (:class:`PhraseMatches`;
        its ``coverage()`` is hybrid search's keyword share)."""
        terms = phrases(text)
        if not terms or not len(fids):
            return PhraseMatches.none(terms, len(fids))
        conn = self._words_conn()
        total = float(self._df.setdefault("", self.count()))  # "" (no phrase) holds the item count
        with self._words_lock:
            return match_phrases(conn, terms, fids, lambda t: self._phrase_df(conn, t), total)

    def _phrase_df(self, conn: sqlite3.Connection, phrase: str) -> int:
        n = self._df.get(phrase)
        if n is None:  # a common word matches thousands of items: count it once per store
            n = int(conn.execute("SELECT COUNT(*) FROM words WHERE words MATCH ?", (phrase,)).fetchone()[0])
            if len(self._df) < 100_000:
                self._df[phrase] = n
        return n
