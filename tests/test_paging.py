"""Score cut-off, sorting and stable pages (search/paging.py), pure and through the engine."""

from dataclasses import dataclass, field
from typing import Any

import pytest

from mmsearch.errors import QueryError
from mmsearch.search.paging import Paging, arrange, field_value


@dataclass
class H:
    id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    rank: int = 0


def hits() -> list[H]:
    prices = [30, None, 5, "n/a", 30, 12.5, None, 99]
    return [H(f"i{n}", 1.0 - n / 10, {} if p is None else {"price": p, "shop": {"city": "Oslo" if n % 2 else "Bergen"}})
            for n, p in enumerate(prices)]


def test_sort_by_a_field_numbers_then_strings_missing_last_ties_by_score():
    asc = [h.id for h in arrange(hits(), 8, Paging(sort_by="price"))]
    assert asc == ["i2", "i5", "i0", "i4", "i7", "i3", "i1", "i6"]  # 5, 12.5, 30 (i0 scores above i4), 99, "n/a"
    desc = [h.id for h in arrange(hits(), 8, Paging(sort_by="price", descending=True))]
    assert desc == ["i7", "i0", "i4", "i5", "i2", "i3", "i1", "i6"]  # missing values last in both directions
    assert [h.id for h in arrange(hits(), 3, Paging(sort_by="shop.city"))][:3] == ["i0", "i2", "i4"]  # Bergen


def test_pages_are_slices_of_one_ordered_window():
    full = [h.id for h in arrange(hits(), 8, Paging(sort_by="price", descending=True))]
    pages = [arrange(hits(), 3, Paging(offset=o, sort_by="price", descending=True)) for o in (0, 3, 6)]
    assert [h.id for p in pages for h in p] == full  # nothing repeated, nothing dropped
    assert [h.rank for p in pages for h in p] == list(range(1, 9))  # ranks continue across pages


def test_min_score_cuts_before_paging():
    got = arrange(hits(), 10, Paging(min_score=0.65))
    assert [h.id for h in got] == ["i0", "i1", "i2", "i3"] and all(h.score >= 0.65 for h in got)


def test_field_value_and_bad_settings():
    h = hits()[0]
    assert field_value(h, "score") == 1.0 and field_value(h, "shop.city") == "Bergen"
    assert field_value(h, "nope") is None and field_value(h, "price.x") is None
    for bad in ({"offset": -1}, {"min_score": float("nan")}, {"window": 0}, {"window": 10_001}, {"sort_by": " "}):
        with pytest.raises(QueryError):
            Paging(**bad)
    with pytest.raises(QueryError, match="past the window"):
        Paging(offset=200).fetch(10)
    assert Paging().fetch(7) == 7 and Paging(offset=0).fetch(7) == 200


def test_engine_pages_a_sorted_query_without_repeats(engine):
    window = engine.search(text="fruit", k=40, sort_by="category", offset=0, window=40)
    pages = [engine.search(text="fruit", k=15, sort_by="category", offset=o, window=40) for o in (0, 15, 30)]
    ids = [h.id for p in pages for h in p]
    assert ids == [h.id for h in window] and len(ids) == len(set(ids)) == 40
    cats = [h.metadata["category"] for h in window]
    assert cats == sorted(cats)
    # within one category, hits stay in score order
    for c in set(cats):
        scores = [h.score for h in window if h.metadata["category"] == c]
        assert scores == sorted(scores, reverse=True)
    # the window holds the best 40 by score, whatever the order
    assert {h.id for h in window} == {h.id for h in engine.search(text="fruit", k=40)}


def test_engine_min_score_and_offset_without_sort(engine):
    best = engine.search(text="taxi", k=20)
    cut = best[5].score
    got = engine.search(text="taxi", k=20, min_score=cut)
    assert [h.id for h in got] == [h.id for h in best if h.score >= cut]
    assert [h.id for h in engine.search(text="taxi", k=5, offset=5)] == [h.id for h in best[5:10]]
    assert engine.search(text="taxi", k=5, offset=5)[0].rank == 6
    with pytest.raises(QueryError, match="past the window"):
        engine.search(text="taxi", offset=300)


def test_cli_query_pages_and_sorts(tiny_index):
    import json

    from typer.testing import CliRunner

    from mmsearch.cli import app

    def q(*args):
        res = CliRunner().invoke(app, ["query", "fruit", "-i", str(tiny_index), "--no-server", "--json", *args])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    window = q("-k", "30", "--sort-by", "title", "--desc", "--offset", "0", "--window", "30")
    pages = q("-k", "10", "--sort-by", "title", "--desc", "--offset", "0", "--window", "30") + \
        q("-k", "10", "--sort-by", "title", "--desc", "--offset", "10", "--window", "30") + \
        q("-k", "10", "--sort-by", "title", "--desc", "--offset", "20", "--window", "30")
    assert [h["id"] for h in pages] == [h["id"] for h in window]
    titles = [h["title"] for h in window]
    assert titles == sorted(titles, reverse=True)
    top = q("-k", "10")
    bar = top[3]["score"] - 1e-6  # printed scores are rounded
    cut = q("-k", "10", "--min-score", str(bar))
    assert [h["id"] for h in cut] == [h["id"] for h in top if h["score"] >= bar]
    bad = CliRunner().invoke(app, ["query", "fruit", "-i", str(tiny_index), "--offset", "-1"])
    assert bad.exit_code != 0 and "offset must be 0 or more" in bad.output
