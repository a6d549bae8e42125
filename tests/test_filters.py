"""Metadata filters: parsing, SQL against a brute-force reference, injection, filtered search exactness."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
from typer.testing import CliRunner

from mmsearch import SearchEngine, build_index
from mmsearch.cli import app
from mmsearch.errors import QueryError
from mmsearch.index.filters import Condition, as_number, parse_clause, parse_where
from mmsearch.index.store import ItemStore

CATS = ["shoes", "bags", "hats", "o'neil", "x"]
BRANDS = ["acme", "globex", "initech"]


def random_meta(rng: random.Random) -> dict:
    m = {}
    if rng.random() < 0.9:
        m["category"] = rng.choice(CATS)
    if rng.random() < 0.8:
        m["price"] = rng.choice([rng.randint(1, 100), round(rng.uniform(1, 100), 2), str(rng.randint(1, 100))])
    if rng.random() < 0.7:
        m["brand"] = rng.choice(BRANDS)
    if rng.random() < 0.6:
        m["tags"] = rng.sample(["red", "blue", "green", "sale"], rng.randint(0, 3))
    return m


def reference(meta: dict, c: Condition) -> bool:
    """What a condition means, written independently of the SQL (see filters.py docstring)."""
    raw = meta.get(c.field)
    vals = raw if isinstance(raw, list) else ([] if raw is None else [raw])

    def eq(v, w) -> bool:
        nv, nw = as_number(v), as_number(w)
        return str(v) == str(w) or (nv is not None and nw is not None and nv == nw)

    if c.op in ("=", "in"):
        return any(eq(v, w) for v in vals for w in c.values)
    if c.op == "!=":
        return not any(eq(v, c.values[0]) for v in vals)
    w = c.values[0]
    ops = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
    if as_number(w) is not None:
        return any(as_number(v) is not None and ops[c.op](as_number(v), as_number(w)) for v in vals)
    return any(isinstance(v, str) and ops[c.op](v, w) for v in vals)


def random_condition(rng: random.Random) -> Condition:
    field = rng.choice(["category", "price", "brand", "tags", "missing"])
    op = rng.choice(["=", "!=", "<", "<=", ">", ">=", "in"])
    pool = {"category": CATS, "brand": BRANDS, "tags": ["red", "blue", "sale", "none"],
            "price": ["50", "10.5", "99", "1"], "missing": ["a"]}[field]
    if op == "in":
        return Condition(field, "in", tuple(rng.sample(pool, min(2, len(pool)))))
    return Condition(field, op, (rng.choice(pool),))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = random.Random(7)
    path = tmp_path_factory.mktemp("store") / "items.sqlite"
    st = ItemStore.create(path)
    metas = {i: random_meta(rng) for i in range(400)}
    st.upsert({"fid": i, "id": f"item{i}", "path": f"/x/{i}.jpg", "metadata": m} for i, m in metas.items())
    st.commit()
    st.close()
    return ItemStore.open(path), metas


def test_filters_match_brute_force_reference(store):
    st, metas = store
    rng = random.Random(11)
    for _ in range(150):
        conds = [random_condition(rng) for _ in range(rng.randint(1, 3))]
        got = st.select(conds).tolist()
        want = [i for i, m in metas.items() if all(reference(m, c) for c in conds)]
        assert got == want, conds


@pytest.mark.parametrize("value", ["x' OR '1'='1", "1; DROP TABLE items; --", "') OR 1=1 --", "%", "*"])
def test_injection_attempts_stay_data(store, value):
    st, metas = store
    assert st.select(parse_where({"category": value})).tolist() == []
    assert st.select(parse_where([f"category={value}"])).tolist() == []
    # as a field name, too
    assert st.select([Condition(value, "=", ("shoes",))]).tolist() == []
    assert st.count() == len(metas)  # the table is still there and whole
    # a value with a quote that does exist is found, as plain data
    assert st.select(parse_where("category=o'neil")).tolist() == [i for i, m in metas.items()
                                                                  if m.get("category") == "o'neil"]


def test_parse_forms():
    assert parse_clause("price<50") == Condition("price", "<", ("50",))
    assert parse_clause(" brand != acme ") == Condition("brand", "!=", ("acme",))
    assert parse_clause("price>=10.5") == Condition("price", ">=", ("10.5",))
    assert parse_clause("category==shoes") == Condition("category", "=", ("shoes",))
    assert parse_clause("color in (red, blue)") == Condition("color", "in", ("red", "blue"))
    assert parse_clause('title="a = b"') == Condition("title", "=", ("a = b",))
    assert parse_where({"price": ("<", 50), "color": ["red", "blue"], "category": "shoes"}) == [
        Condition("price", "<", (50,)), Condition("color", "in", ("red", "blue")), Condition("category", "=", ("shoes",))]
    assert parse_where([("price", "<=", 3), "brand!=acme"]) == [Condition("price", "<=", (3,)),
                                                                Condition("brand", "!=", ("acme",))]
    for bad in ["price<", "=shoes", "justaword", "color in ,", {"x": {"nested": 1}}, [("x", "~", 1)], [1]]:
        with pytest.raises(QueryError):
            parse_where(bad)


@pytest.fixture(scope="module")
def filtered_index(tmp_path_factory, sample_catalog):
    """The sample catalog with random metadata, indexed with the tiny model."""
    rng = random.Random(3)
    cat = tmp_path_factory.mktemp("fcat") / "catalog"
    rows = [json.loads(x) for x in (sample_catalog / "catalog.jsonl").read_text().splitlines()]
    for r in rows:
        (cat / r["image"]).parent.mkdir(parents=True, exist_ok=True)
        (cat / r["image"]).write_bytes((sample_catalog / r["image"]).read_bytes())
        r.update(random_meta(rng))
    (cat / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = cat.parent / "index"
    build_index(cat, out=out, model="tiny", device="cpu", num_workers=0, progress=False)
    return out, {r["image"]: r for r in rows}


@pytest.mark.parametrize("strategy", ["selector", "overfetch"])
def test_filtered_search_is_exact(filtered_index, strategy, sample_catalog):
    out, rows = filtered_index
    engine = SearchEngine.open(out, device="cpu")
    engine.ranking = dataclasses.replace(engine.ranking, filter_strategy=strategy,
                                         exact_filter_max=0)  # go through FAISS, not the exhaustive path
    photo = sorted(sample_catalog.glob("clothing/*.webp"))[0]
    everything = {h.id: h.score for h in engine.search(image=photo, text="red shoe", k=len(engine))}
    rng = random.Random(5)
    for _ in range(12):
        conds = [random_condition(rng) for _ in range(rng.randint(1, 2))]
        matching = {i for i, r in rows.items() if all(reference(r, c) for c in conds)}
        k = rng.choice([1, 5, 10])
        if any(c.field == "missing" for c in conds):  # on no item: an error naming the known fields
            with pytest.raises(QueryError, match="no item has the field 'missing' .*known fields: brand"):
                engine.search(image=photo, text="red shoe", k=k, where=conds)
            continue
        hits = engine.search(image=photo, text="red shoe", k=k, where=conds)
        assert {h.id for h in hits} <= matching
        assert len(hits) == min(k, len(matching))
        want = sorted(matching, key=lambda i: (-everything[i], i))[:k]
        assert [h.id for h in hits] == want or np.allclose([h.score for h in hits], [everything[i] for i in want])


def test_cli_where(filtered_index):
    out, rows = filtered_index
    res = CliRunner().invoke(app, ["query", "--index", str(out), "--json", "-k", "60", "shoe",
                                   "--where", "price<50", "--where", "brand!=acme"])
    assert res.exit_code == 0, res.output
    ids = [h["id"] for h in json.loads(res.stdout)]
    want = {i for i, r in rows.items() if reference(r, Condition("price", "<", ("50",)))
            and reference(r, Condition("brand", "!=", ("acme",)))}
    assert set(ids) == want
    res = CliRunner().invoke(app, ["query", "--index", str(out), "shoe", "--where", "price<"])
    assert res.exit_code == 2 and "no value" in res.output


def test_a_repeated_filter_reuses_its_faiss_selector(filtered_index, sample_catalog, monkeypatch):
    """The IDSelector (a hash set of every matching id) is built once per filter and channel, not per
    query; the hits stay those of a fresh selector."""
    import dataclasses

    from mmsearch.index import ann

    out, _ = filtered_index
    engine = SearchEngine.open(out, device="cpu")
    engine.ranking = dataclasses.replace(engine.ranking, filter_strategy="selector", exact_filter_max=0)
    engine.ranking = dataclasses.replace(engine.ranking, candidates=4)  # fewer candidates than matches: FAISS
    built = []
    real = ann.id_selector
    monkeypatch.setattr(ann, "id_selector", lambda ids: built.append(len(ids)) or real(ids))
    where = {"price": ("<", 60)}
    first = [(h.id, h.score) for h in engine.search(text="red shoe", k=2, where=where)]
    n_channels = len(built)
    assert n_channels >= 1
    for _ in range(3):
        assert [(h.id, h.score) for h in engine.search(text="red shoe", k=2, where=where)] == first
    assert len(built) == n_channels  # nothing rebuilt for the same filter
    engine.search(text="red shoe", k=2, where={"price": ("<", 30)})
    assert len(built) > n_channels  # another filter: its own selectors
    fresh = SearchEngine.open(out, device="cpu")
    fresh.filter_strategy, fresh.exact_filter_max = "selector", 0
    fresh.ranking = engine.ranking
    assert [(h.id, h.score) for h in fresh.search(text="red shoe", k=2, where=where)] == first
