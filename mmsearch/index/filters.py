"""Metadata filters: ``category=shoes``, ``price<50``, ``brand!=acme``, ``color in red,blue``.

A filter is parsed into :class:`Condition` objects and compiled into parameterised SQL over the
``attrs`` table of the metadata store (see index/README.md). Field names and values always travel as
SQL parameters, never inside the SQL text, so a value like ``x' OR 1=1 --`` is just a string to match.

Semantics (all conditions must hold):
  ``=`` / ``in``   some value of the field equals (one of) the given value(s); a list field matches
                   when any element does; numbers compare numerically (``50`` equals ``50.0`` and "50").
  ``!=``           no value of the field equals the given value (items without the field pass).
  ``< <= > >=``    numeric when the given value is a number (text values of the field are ignored),
                   otherwise text order against text values.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence, Union

from ..errors import QueryError

OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "in")
MAX_VALUES = 1000  # per ``in`` list: SQLite binds at most 32766 parameters per statement
MAX_CONDITIONS = 64
_CLAUSE = re.compile(r"^\s*(?P<field>[^\s=!<>]+?)\s*(?P<op><=|>=|!=|==|=|<|>)\s*(?P<value>.*?)\s*$", re.S)
_IN = re.compile(r"^\s*(?P<field>\S+)\s+in\s+(?P<values>.+?)\s*$", re.S | re.I)

Scalar = Union[str, int, float, bool]
WhereSpec = Union[None, str, Mapping[str, Any], Sequence[Any]]


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    values: tuple[Scalar, ...]  # one value, except for ``in``


def as_number(v: Any) -> float | None:
    """The numeric reading of a value (bools are 1/0, numeric strings count), or None."""
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, (int, float)):
        try:
            return float(v) if math.isfinite(v) else None
        except OverflowError:  # an int beyond float range (metadata may hold 10**400)
            return None
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("true", "false"):
            return 1.0 if s == "true" else 0.0
        try:
            f = float(s)
        except ValueError:
            return None
        return f if math.isfinite(f) and s not in ("nan", "inf", "-inf", "infinity") else None
    return None


def _split_values(text: str) -> tuple[str, ...]:
    text = text.strip()
    if len(text) >= 2 and text[0] + text[-1] in ("()", "[]", "{}"):
        text = text[1:-1]
    values = tuple(v.strip().strip("'\"") for v in text.split(","))
    if not values or any(v == "" for v in values):
        raise QueryError(f"filter list {text!r} has an empty value; write e.g. color in red,blue")
    return values


def parse_clause(text: str) -> Condition:
    """``"price<50"`` -> Condition("price", "<", ("50",)); raises QueryError with a hint when malformed."""
    m = _IN.match(text)
    if m:
        return Condition(m.group("field"), "in", _split_values(m.group("values")))
    m = _CLAUSE.match(text)
    if not m or not m.group("field"):
        raise QueryError(f"cannot read filter {text!r}: write FIELD OP VALUE with OP one of = != < <= > >=, "
                         f"or FIELD in A,B,C (e.g. --where category=shoes --where 'price<50')")
    op = "=" if m.group("op") == "==" else m.group("op")
    value = m.group("value").strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    if value == "":
        raise QueryError(f"filter {text!r} has no value after {op!r}")
    if value[0] in "=<>!" and value == m.group("value").strip():  # price<==5, price=>5: a typo, not a value
        raise QueryError(f"cannot read filter {text!r}: {m.group('op') + value[0]!r} is not an operator; use one "
                         f"of = != < <= > >=")
    return Condition(m.group("field"), op, (value,))


def _from_pair(field: str, spec: Any) -> Condition:
    """Dict entry -> Condition: ``value`` (=), ``[a, b]`` (in), ``(op, value)`` or ``(\"in\", [a, b])``."""
    # (op, value), or its JSON spelling [op, value]: {"price": ["<", 50]} is a range, as documented
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str) and spec[0].lower() in OPERATORS:
        op, value = spec[0].lower(), spec[1]
        if op == "in":
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise QueryError(f"filter {field} in ...: give a list of values")
            return _checked(Condition(field, "in", tuple(value)))
        return _checked(Condition(field, op, (value,)))
    if isinstance(spec, (list, tuple, set, frozenset)):
        return _checked(Condition(field, "in", tuple(spec)))
    return _checked(Condition(field, "=", (spec,)))


def _checked(c: Condition) -> Condition:
    if not isinstance(c.field, str) or not c.field:
        raise QueryError(f"filter field must be a non-empty string, got {c.field!r}")
    if c.op not in OPERATORS:
        raise QueryError(f"unknown filter operator {c.op!r}: use one of {', '.join(OPERATORS)}")
    if not c.values:
        raise QueryError(f"filter on {c.field!r} has no value")
    if len(c.values) > MAX_VALUES:
        raise QueryError(f"filter on {c.field!r} lists {len(c.values)} values; at most {MAX_VALUES} are allowed")
    for v in c.values:
        if not isinstance(v, (str, int, float, bool)):
            raise QueryError(f"filter value for {c.field!r} must be a string or a number, got {type(v).__name__}")
    return c


def parse_where(where: WhereSpec) -> list[Condition]:
    """Any accepted filter form -> conditions (all must hold).

    Accepted: None; a clause string; a list of clause strings, ``(field, op, value)`` triples or
    Conditions; a dict ``{field: value | [values] | (op, value)}``.
    """
    if where is None:
        return []
    if not isinstance(where, str) and isinstance(where, (Mapping, list, tuple)) and len(where) > MAX_CONDITIONS:
        raise QueryError(f"{len(where)} filter conditions given; at most {MAX_CONDITIONS} are allowed")
    if isinstance(where, str):
        return [_checked(parse_clause(where))]
    if isinstance(where, Condition):
        return [_checked(where)]
    if isinstance(where, Mapping):
        return [_from_pair(str(f), v) for f, v in where.items()]
    out: list[Condition] = []
    for item in where:
        if isinstance(item, Condition):
            out.append(_checked(item))
        elif isinstance(item, str):
            out.append(_checked(parse_clause(item)))
        elif isinstance(item, (tuple, list)) and len(item) == 3:
            f, op, v = item
            op = str(op).lower().replace("==", "=")
            if op not in OPERATORS:
                raise QueryError(f"unknown filter operator {op!r}: use one of {', '.join(OPERATORS)}")
            out.append(_from_pair(str(f), (op, v)))
        else:
            raise QueryError(f"cannot read filter {item!r}: use 'field=value', (field, op, value) or a dict")
    return out


def condition_sql(c: Condition) -> tuple[str, list[Any]]:
    """One condition -> (``fid IN (...)`` / ``fid NOT IN (...)`` SQL with ? placeholders, parameters)."""
    nums = [as_number(v) for v in c.values]
    texts = [v if isinstance(v, str) else str(v) if not isinstance(v, bool) else ("true" if v else "false")
             for v in c.values]
    if c.op in ("=", "!=", "in"):
        # equal as text, or equal as numbers when both sides read as numbers
        text_ph = ",".join("?" * len(texts))
        num_vals = [n for n in nums if n is not None]
        match = f"(value IN ({text_ph})" + (f" OR num IN ({','.join('?' * len(num_vals))}))" if num_vals else ")")
        sub = f"SELECT item FROM attrs WHERE key = ? AND {match}"
        params = [c.field, *texts, *num_vals]
        return (f"fid NOT IN ({sub})" if c.op == "!=" else f"fid IN ({sub})"), params
    n = nums[0]
    if n is not None:
        return f"fid IN (SELECT item FROM attrs WHERE key = ? AND num {c.op} ?)", [c.field, n]
    return (f"fid IN (SELECT item FROM attrs WHERE key = ? AND typeof(value) = 'text' AND value {c.op} ?)",
            [c.field, texts[0]])


def where_sql(conditions: Sequence[Condition]) -> tuple[str, list[Any]]:
    """All conditions -> (a WHERE expression over ``items.fid``, parameters); ``1`` when empty."""
    if not conditions:
        return "1", []
    parts, params = [], []
    for c in conditions:
        # c.op is checked against OPERATORS; only the fixed operator text reaches the SQL string
        assert c.op in OPERATORS
        sql, p = condition_sql(c)
        parts.append(sql)
        params.extend(p)
    return " AND ".join(parts), params


def unknown_fields_error(unknown: Sequence[str], known: Sequence[str]) -> QueryError:
    """The error for a filter on fields no item has (a typo would otherwise answer "no results")."""
    shown = ", ".join(known[:30]) + (f" and {len(known) - 30} more" if len(known) > 30 else "")
    return QueryError(f"no item has the field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                      f"(known fields: {shown or 'none'})")


def text_bound_error(c: Condition, example: float | None) -> QueryError:
    """The error for a text bound (``price<cheap``) on a field that holds only numbers: it would match nothing."""
    return QueryError(f"filter {c.field}{c.op}{c.values[0]!r}: the field {c.field!r} holds numbers"
                      f"{f' (e.g. {example:g})' if example is not None else ''}, so compare it with a number, "
                      f"e.g. --where '{c.field}{c.op}10'")
