"""``--where`` conditions -> a Milvus boolean expression with ItemStore.select's answers (filters.py).

Over the columns filterdata.py writes:

  ``=`` / ``in``   the item holds one of the condition's equality tokens
  ``!=``           it holds none of them (an item without the field passes: the token column is never null)
  ``< <=``         ``m<hash>_lo OP n`` (numeric) or ``m<hash>_slo OP "text"``: some value is below the bound
                   exactly when the smallest is
  ``> >=``         ``m<hash>_hi`` / ``m<hash>_shi`` likewise

Two dialects test the tokens: ``server`` with ``array_contains_any(eq_tokens, [...])`` (an INVERTED index
on a Milvus server serves it), ``lite`` with ``eq_text like "% hex %"`` (Milvus Lite evaluates LIKE on a
VARCHAR vectorised, array functions row by row). Both are plain Milvus syntax and give the same rows.

Everything user-typed is either hashed (field names, equality values) or, for a text bound, a string
literal escaped here; numbers are written with ``repr`` (exact: the bound is the same double SQL uses).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from ...errors import QueryError
from ..filters import OPERATORS, Condition, as_number
from .filterdata import check_text, condition_tokens, hex_token, key_name

DIALECTS = ("server", "lite")
TOKENS = "eq_tokens"  # ARRAY<INT64>
TOKEN_TEXT = "eq_text"  # VARCHAR " hex hex "
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quote(value: str) -> str:
    """A Milvus double-quoted string literal of ``value``: backslash, quote and line breaks escaped, so a
    value like ``x" or fid > 0 or "`` stays one literal."""
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


def number(value: float) -> str:
    """A float literal Milvus reads back as the same double (``repr``: shortest round-trip form)."""
    if not math.isfinite(value):
        raise QueryError(f"filter bound {value!r} is not a finite number")
    return repr(float(value))


def meta(name: str) -> str:
    """A dynamic field reference (``$meta["name"]``): names are mmsearch's own hashes, never user text."""
    assert name.replace("_", "").isalnum(), name
    return f'$meta["{name}"]'


def tokens_expr(tokens: Sequence[int], dialect: str) -> str:
    if dialect == "server":
        return f"array_contains_any({TOKENS}, [{', '.join(str(int(t)) for t in tokens)}])"
    return "(" + " or ".join(f'{TOKEN_TEXT} like "% {hex_token(t)} %"' for t in tokens) + ")"


def condition_expr(c: Condition, dialect: str = "server") -> str:
    """One condition -> an expression (see the module docstring)."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown filter dialect {dialect!r}")
    if c.op not in OPERATORS:
        raise QueryError(f"unknown filter operator {c.op!r}: use one of {', '.join(OPERATORS)}")
    name = key_name(c.field)
    if c.op in ("=", "in", "!="):
        match = tokens_expr(condition_tokens(c), dialect)
        return f"not {match}" if c.op == "!=" else match
    low = c.op in ("<", "<=")
    bound = c.values[0]
    num = as_number(bound)
    if num is not None:
        return f"{meta(name + ('_lo' if low else '_hi'))} {c.op} {number(num)}"
    text = bound if isinstance(bound, str) else str(bound)
    check_text(text, f"filter {c.field}{c.op}{text}")
    return f"{meta(name + ('_slo' if low else '_shi'))} {c.op} {quote(text)}"


def where_expr(conditions: Iterable[Condition], dialect: str = "server") -> str:
    """All conditions (each must hold) -> one expression; "" when there are none."""
    parts = [condition_expr(c, dialect) for c in conditions]
    return " and ".join(f"({p})" for p in parts)


def both(*parts: str) -> str:
    """The conjunction of the non-empty expressions."""
    kept = [p for p in parts if p]
    return " and ".join(f"({p})" for p in kept) if len(kept) > 1 else (kept[0] if kept else "")


def int_list(name: str, values: Iterable[int]) -> str:
    """``name in [1, 2, 3]`` for int64 values (ids are formatted as integers, nothing else)."""
    return f"{name} in [{', '.join(str(int(v)) for v in values)}]"


def str_list(name: str, values: Iterable[str]) -> str:
    """``name in ["a", "b"]`` with each value an escaped literal."""
    return f"{name} in [{', '.join(quote(check_text(v, name)) for v in values)}]"
