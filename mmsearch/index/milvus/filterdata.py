"""Metadata stored in a filterable shape: what lets a Milvus expression answer exactly as ItemStore.select.

ItemStore keeps one ``attrs`` row per (item, field, scalar value) with the value as stored and its numeric
reading (filters.as_number); filters.py defines the semantics on it. The Milvus rows hold the same facts,
per item, in three forms a Milvus expression can test:

* equality tokens: a 64-bit hash per (field, "s", text value) for each text value, and per (field, "n",
  number) for each numeric reading (``"50"``, ``50`` and ``50.0`` all give the number token of 50.0).
  ``=`` / ``in`` become "the item holds one of the condition's tokens", ``!=`` its negation, so list fields
  match when any element does and an item without the field passes ``!=``. Stored twice: an ``ARRAY<INT64>``
  (``array_contains_any``, served by an INVERTED index on a Milvus server) and a VARCHAR of hex tokens
  between spaces (``like "% token %"``, which Milvus Lite evaluates vectorised; its array functions run
  row by row in Python).
* per field, the smallest and largest numeric reading and the smallest and largest text value, as dynamic
  fields ``m<hash>_lo`` / ``_hi`` / ``_slo`` / ``_shi``: "some value < 5" holds exactly when the smallest
  is < 5, so a range condition is one comparison (a missing field compares false, as in SQL).
* per field, whether the item has it and whether it has a text value that is not a number: summed into
  the field statistics (meta.py) that ``fields`` and ``check_fields`` read.

Field names only ever appear hashed (``m`` + 16 hex digits) in expressions and equality values only as
integer tokens, so neither can inject anything; text bounds are the one place a user's text reaches an
expression, as an escaped string literal (expr.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

from ...errors import QueryError
from ..filters import Condition, as_number
from ..store import flatten

INT64 = 2 ** 63


def _hash(data: str, size: int = 8) -> bytes:
    return hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=size).digest()


def token(key: str, kind: str, value: str | float) -> int:
    """The signed int64 equality token of a field's text (``kind`` "s") or numeric ("n") value."""
    if kind == "n":
        value = repr(float(value) + 0.0)  # -0.0 + 0.0 == 0.0: SQL's REAL equality does not tell them apart
    return int.from_bytes(_hash(json.dumps([kind, key, value], ensure_ascii=False)), "little", signed=True)


def hex_token(tok: int) -> str:
    """A token as 16 hex digits (the VARCHAR form): no LIKE wildcard or quote can appear in it."""
    return f"{tok & (INT64 * 2 - 1):016x}"


def key_name(key: str) -> str:
    """The dynamic-field prefix of a metadata field: ``m`` + 16 hex digits of its hash."""
    return "m" + _hash(key).hex()


def attrs(title: str, metadata: dict[str, Any]) -> Iterator[tuple[str, str | None, float | None]]:
    """(field, text value or None, numeric reading or None) per scalar value, as ItemStore's ``attrs`` rows:
    ``title`` when non-empty, then the flattened metadata. A text value is a string, or an integer beyond
    64 bits (SQLite stores those as text)."""
    if title:
        yield "title", title, as_number(title)
    for key, v in flatten(metadata or {}):
        if isinstance(v, str):
            text: str | None = v
        elif isinstance(v, int) and not isinstance(v, bool) and not -INT64 <= v < INT64:
            text = str(v)
        else:
            text = None
        yield key, text, as_number(v)


@dataclass
class FieldFacts:
    """One item's values of one field, reduced to what filters need."""

    lo: float | None = None
    hi: float | None = None
    slo: str | None = None
    shi: str | None = None
    text_only: bool = False  # a text value that reads as no number (ItemStore: typeof text AND num IS NULL)
    example: float | None = None

    def add(self, text: str | None, num: float | None) -> None:
        if num is not None:
            self.lo = num if self.lo is None else min(self.lo, num)
            self.hi = num if self.hi is None else max(self.hi, num)
            self.example = num if self.example is None else self.example
        if text is not None:
            self.slo = text if self.slo is None else min(self.slo, text)
            self.shi = text if self.shi is None else max(self.shi, text)
            self.text_only = self.text_only or num is None


@dataclass
class FilterData:
    """What one item stores for filtering (see the module docstring)."""

    tokens: list[int] = field(default_factory=list)
    facts: dict[str, FieldFacts] = field(default_factory=dict)

    def dynamic(self) -> dict[str, float | str]:
        """The range columns: ``m<hash>_lo`` ... per field (only those the item has)."""
        out: dict[str, float | str] = {}
        for key, f in self.facts.items():
            name = key_name(key)
            for suffix, value in (("_lo", f.lo), ("_hi", f.hi), ("_slo", f.slo), ("_shi", f.shi)):
                if value is not None:
                    out[name + suffix] = value
        return out

    def token_text(self) -> str:
        """The VARCHAR form of the tokens: `` t1 t2 `` (each between spaces, for ``like "% t %"``)."""
        return " " + " ".join(hex_token(t) for t in self.tokens) + " " if self.tokens else " "


def filter_data(title: str, metadata: dict[str, Any]) -> FilterData:
    out = FilterData()
    seen: set[int] = set()
    for key, text, num in attrs(title, metadata):
        for tok in ([token(key, "s", text)] if text is not None else []) + \
                   ([token(key, "n", num)] if num is not None else []):
            if tok not in seen:
                seen.add(tok)
                out.tokens.append(tok)
        out.facts.setdefault(key, FieldFacts()).add(text, num)
    return out


def condition_texts(c: Condition) -> list[str]:
    """The condition's values as the text SQL compares (filters.condition_sql)."""
    return [v if isinstance(v, str) else ("true" if v else "false") if isinstance(v, bool) else str(v)
            for v in c.values]


def condition_tokens(c: Condition) -> list[int]:
    """The tokens an item must hold one of for ``c`` (``=``, ``in``; ``!=`` negates) to hold."""
    out: dict[int, None] = {}
    for text in condition_texts(c):
        out[token(c.field, "s", text)] = None
    for v in c.values:
        num = as_number(v)
        if num is not None:
            out[token(c.field, "n", num)] = None
    return list(out)


def check_text(value: str, what: str) -> str:
    """``value`` if Milvus can carry it (valid UTF-8 text), else QueryError naming ``what``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError(f"{what}: the value {value!r} is not valid UTF-8 text, which a Milvus index cannot "
                         f"compare") from None
    return value
