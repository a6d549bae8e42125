"""The Milvus storage layer (mmsearch/index/milvus/) on Milvus Lite: the same answers as the folder store.

One Milvus Lite file per module (Lite starts in ~1 s); each test writes its own collection in it.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from mmsearch.errors import IndexNotFoundError, MMSearchError, QueryError  # noqa: E402
from mmsearch.index.filters import Condition, parse_where  # noqa: E402
from mmsearch.index.milvus import MilvusReader, MilvusWriter, check_row  # noqa: E402
from mmsearch.index.milvus.keywords import MAX_TOPK  # noqa: E402
from mmsearch.index.milvus.location import forget_client  # noqa: E402
from mmsearch.index.store import ItemStore  # noqa: E402
from mmsearch.index.writer import Change  # noqa: E402

D = 16
MANIFEST = {"model": {"name": "tiny", "ref": "tiny", "fingerprint": "f" * 16}, "dim": D, "catalog": "/cat",
            "skipped": [], "exclude": []}
CATS = ["shoes", "bags", "o'neil", 'x"y', "é", "a\\b", "50", "Shoes", ""]
TAGS = ["red", "blue", "sale", "1", "true", "2.50"]


def random_meta(rng: random.Random) -> dict:
    m: dict = {}
    if rng.random() < 0.85:
        m["category"] = rng.choice(CATS)
    if rng.random() < 0.8:
        m["price"] = rng.choice([rng.randint(1, 100), round(rng.uniform(1, 100), 2), str(rng.randint(1, 100)), "abc",
                                 50, "50.0", True, -0.0])
    if rng.random() < 0.6:
        m["tags"] = rng.sample(TAGS, rng.randint(0, 3))
    if rng.random() < 0.5:
        m["spec"] = {"color": rng.choice(["red", "blue", 'q"uote']), "size": rng.choice([1, 2.5, "3", "XL"])}
    if rng.random() < 0.2:
        m["flag"] = rng.choice([True, False])
    if rng.random() < 0.1:
        m["big"] = rng.choice([10 ** 20, -(10 ** 19), 7])
    if rng.random() < 0.05:
        m["empty"] = None
    return m


def random_condition(rng: random.Random) -> Condition:
    field = rng.choice(["category", "price", "tags", "spec.color", "spec.size", "flag", "big", "title", "missing"])
    op = rng.choice(["=", "!=", "<", "<=", ">", ">=", "in"])
    pool = {"category": CATS[:-1] + ["b", "p"], "price": [50, "50", 50.0, "10.5", "abc", True, "1e1", 0, "-0"],
            "tags": TAGS + ["none"], "spec.color": ["red", "q", 'q"uote'], "spec.size": [2.5, "3", "XL", "x"],
            "flag": [True, "false", 1, "yes"], "big": [10 ** 20, "100000000000000000000", 7, "9"],
            "title": ["red shoe", "50", "m", 50], "missing": ["a", 1]}[field]
    if op == "in":
        return Condition(field, "in", tuple(rng.sample(pool, min(3, len(pool)))))
    return Condition(field, op, (rng.choice(pool),))


def unit(rng: np.random.Generator, n: int, d: int = D) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_rows(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        title = rng.choice(["", "Red Shoe", "blue bag", "50", "Café crème"]) if rng.random() < 0.7 else ""
        rows.append({"fid": i, "id": f"items/{i:04d}.jpg", "path": f"/cat/items/{i:04d}.jpg", "title": title,
                     "text": "running shoes for trails" if i % 7 == 0 else "", "metadata": random_meta(rng),
                     "image_sha256": f"{i:064x}", "text_sha256": f"{i + 1:064x}" if title or i % 7 == 0 else None})
    return rows


def changes_for(rows: list[dict], vecs: dict[str, np.ndarray]) -> list[Change]:
    out = []
    for r in rows:
        v = {"image": vecs["image"][r["fid"]], "visual": vecs["visual"][r["fid"]]}
        if r["text_sha256"]:
            v["text"] = vecs["text"][r["fid"]]
        out.append(Change(row=dict(r), vectors=v))
    return out


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("milvus") / "m.db"
    yield lambda name: f"milvus-lite:{path}#{name}"
    forget_client(f"milvus-lite:{path}")


DIMS = {"image": D, "visual": 8, "text": D}


@pytest.fixture(scope="module")
def built(db, tmp_path_factory):
    """200 items with random metadata in Milvus and in a folder ItemStore (the reference)."""
    rows = make_rows(200)
    rng = np.random.default_rng(0)
    vecs = {"image": unit(rng, 200), "visual": unit(rng, 200, 8), "text": unit(rng, 200)}
    path = Path(tmp_path_factory.mktemp("store")) / "items.sqlite"
    st = ItemStore.create(path)
    st.upsert(rows)
    st.commit()
    st.close()
    loc = db("parity")
    manifest = MilvusWriter(loc, dims=DIMS).apply(changes_for(rows, vecs), [], dict(MANIFEST), next_fid=200)
    return loc, ItemStore.open(path), rows, vecs, manifest


# ------------------------------------------------------------------------------------------ filters
@pytest.mark.parametrize("dialect", ["lite", "server"])
def test_select_matches_item_store(built, dialect):
    loc, store, rows, _, _ = built
    reader = MilvusReader(loc, dialect=dialect)
    rng = random.Random(11 if dialect == "lite" else 12)
    for _ in range(60):
        conds = [random_condition(rng) for _ in range(rng.randint(1, 2))]
        assert reader.select(conds).tolist() == store.select(conds).tolist(), conds


def test_every_operator_on_every_kind_of_value(built):
    loc, store, _, _, _ = built
    reader = MilvusReader(loc)
    seen = 0
    for field in ["category", "price", "tags", "spec.size", "big", "title"]:
        for op in ["=", "!=", "<", "<=", ">", ">=", "in"]:
            for value in [50, "50", "abc", True, "é", 10 ** 20]:
                c = Condition(field, op, (value, "red") if op == "in" else (value,))
                want = store.select([c]).tolist()
                assert reader.select([c]).tolist() == want, c
                seen += bool(want)
    assert seen > 40  # the cases select something, not only empty sets


@pytest.mark.parametrize("value", ['x" or fid >= 0 or "', "x' or 1==1 --", "\\", '\\"', "a\nb", "%", "_", "*",
                                   ") or (true", 'o"neil'])
def test_injection_attempts_stay_data(built, value):
    loc, store, _, _, _ = built
    reader = MilvusReader(loc)
    for c in [Condition("category", "=", (value,)), Condition("category", "!=", (value,)),
              Condition("category", "<", (value,)), Condition("category", ">=", (value,)),
              Condition(value, "=", ("shoes",)), Condition(value, ">", ("a",))]:
        assert reader.select([c]).tolist() == store.select([c]).tolist(), c
    assert reader.select(parse_where({"category": 'x"y'})).tolist() == store.select(parse_where({"category": 'x"y'})).tolist() != []
    assert reader.fids_of([value, "items/0001.jpg"]) == {"items/0001.jpg": 1}


def test_select_limit_reads_at_most_limit_plus_one(built):
    loc, store, _, _, _ = built
    reader = MilvusReader(loc)
    conds = parse_where("price>=1")
    everything = store.select(conds)
    assert len(everything) > 20
    got = reader.select(conds, limit=10)
    assert len(got) == 11 and set(got.tolist()) <= set(everything.tolist())
    assert reader.select(conds, limit=len(everything)).tolist() == everything.tolist()


def test_fields_and_check_fields_as_the_item_store(built):
    loc, store, _, _, _ = built
    reader = MilvusReader(loc)
    assert reader.fields() == store.fields()
    for where in ["nope=1", "price<abc", "spec.size>x", "category<b", "big<=z", "title>m"]:
        conds = parse_where(where) + ([Condition("other", "=", ("1",))] if where == "nope=1" else [])
        try:
            store.check_fields(conds)
            want = None
        except QueryError as exc:
            want = str(exc)
        try:
            reader.check_fields(conds)
            got = None
        except QueryError as exc:
            got = str(exc)
        assert got == want, where
    with pytest.raises(QueryError, match="holds numbers"):
        reader.check_fields(parse_where("flag<abc"))


# ------------------------------------------------------------------------------------------ vectors
def test_search_is_exact_with_a_flat_index(built):
    loc, store, rows, vecs, manifest = built
    reader = MilvusReader(loc)
    assert manifest["channels"]["image"]["milvus_index"]["index_type"] == "FLAT"
    q = unit(np.random.default_rng(5), 4)
    found = reader.search("image", q, 10)
    truth = np.argsort(-(q @ vecs["image"].T), axis=1)[:, :10]
    assert (found == truth).all()
    has_text = np.array([bool(r["text_sha256"]) for r in rows])
    text_ids = np.flatnonzero(has_text)
    found = reader.search("text", q, 5)
    truth = text_ids[np.argsort(-(q @ vecs["text"][text_ids].T), axis=1)[:, :5]]
    assert (found == truth).all()
    where = parse_where("price<50")
    allowed = store.select(where)
    found = reader.search("visual", q[:, :8] / np.linalg.norm(q[:, :8], axis=1, keepdims=True), 7, where)
    qv = q[:, :8] / np.linalg.norm(q[:, :8], axis=1, keepdims=True)
    truth = allowed[np.argsort(-(qv @ vecs["visual"][allowed].T), axis=1)[:, :7]]
    assert (found == truth).all()
    assert (reader.search("image", q, 7, allowed=allowed) ==
            allowed[np.argsort(-(q @ vecs["image"][allowed].T), axis=1)[:, :7]]).all()
    assert reader.search("image", q, 3, allowed=np.zeros(0, np.int64)).shape == (4, 0)
    with pytest.raises(QueryError, match="at most"):
        reader.search("image", q, MAX_TOPK + 1)


def test_vectors_round_trip(built):
    loc, _, rows, vecs, _ = built
    reader = MilvusReader(loc)
    fids = np.array([5, 0, 7, 199, 1000, 7])
    for channel in ("image", "visual", "text"):
        present, got = reader.vectors(channel, fids)
        has = np.array([f < 200 and (channel != "text" or bool(rows[f]["text_sha256"])) for f in fids])
        assert (present == has).all()
        assert np.array_equal(got, vecs[channel][fids[present]])
        ids, every = reader.all_vectors(channel)
        assert ids.tolist() == [r["fid"] for r in rows if channel != "text" or r["text_sha256"]]
        assert np.array_equal(every, vecs[channel][ids])
    assert reader.channel_count("text") == sum(1 for r in rows if r["text_sha256"])
    assert sorted(reader.channel_names()) == ["image", "text", "visual"]


def test_rows_as_the_item_store(built):
    loc, store, rows, _, _ = built
    reader = MilvusReader(loc)
    assert reader.all_rows() == store.all_rows()
    assert reader.rows([3, 9, 500]) == store.rows([3, 9, 500])
    assert reader.fids_of(["items/0003.jpg", "nope"]) == {"items/0003.jpg": 3}
    assert reader.count() == 200


def test_keywords_as_the_item_store_under_milvus_lite(built):
    """Milvus Lite answers keywords from a local FTS5 copy of the words: the folder store's answers."""
    loc, store, _, _, _ = built
    reader = MilvusReader(loc)
    everything = np.arange(200)
    for text in ["running shoes", "blue", "Café", "items-0004", "shoe zzz"]:
        fids, scores = reader.keyword_search(text, 30)
        want, want_scores = store.keyword_search(text, 30)
        assert fids.tolist() == want.tolist() and np.allclose(scores, want_scores), text
        assert np.allclose(reader.keyword_matches(text, everything).coverage(),
                           store.keyword_matches(text, everything).coverage()), text
    assert len(reader.keyword_search("", 5)[0]) == 0


def test_keywords_in_milvus_mode(built):
    """A server's way (Milvus BM25, TEXT_MATCH counts), on Lite: words as stored ("shoes" vs "shoe" differ
    under Lite, which ignores the analyzer's stemmer)."""
    loc, store, _, _, _ = built
    reader = MilvusReader(loc, keywords="milvus")
    fids, scores = reader.keyword_search("running blue", 500)  # every match: BM25 scales differ, not the sets
    assert set(fids.tolist()) == set(store.keyword_search("running blue", 500)[0].tolist())
    assert (scores > 0).all() and (np.diff(scores) <= 1e-6).all()
    cand = np.arange(0, 200, 3)
    for text in ["running", "blue trails"]:
        assert np.allclose(reader.keyword_matches(text, cand).coverage(), store.keyword_matches(text, cand).coverage(),
                           atol=1e-5), text


# ------------------------------------------------------------------------------------------ locations
def test_missing_pymilvus_is_one_line(monkeypatch, tmp_path):
    import sys

    from mmsearch.index.milvus.location import MilvusUnavailableError, connect

    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(MilvusUnavailableError, match=r"pip install 'mmsearch\[milvus\]'") as exc:
        connect(f"milvus-lite:{tmp_path}/x.db")
    assert "\n" not in str(exc.value)


def test_reader_of_nothing(db, tmp_path):
    with pytest.raises(IndexNotFoundError):
        MilvusReader(f"milvus-lite:{tmp_path}/none.db")
    with pytest.raises(IndexNotFoundError):
        MilvusReader(db("never_built"))


def test_rows_milvus_cannot_hold_are_named():
    ok = {"fid": 1, "id": "a.jpg", "path": "/a.jpg", "title": "t", "text": "", "metadata": {"k": [1, 2]}}
    assert check_row(ok) is None
    assert "title is 70000 bytes" in check_row({**ok, "title": "x" * 70000})
    assert "distinct metadata values" in check_row({**ok, "metadata": {"k": list(range(5000))}})
    assert "UTF-8" in check_row({**ok, "id": "bad \udcff"})
    with pytest.raises(MMSearchError, match="'a.jpg' cannot be stored"):
        from mmsearch.index.milvus.schema import row_error

        row_error({**ok, "text": "y" * 70000})
