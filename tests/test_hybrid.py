"""Keyword + semantic search: the store's FTS5 index, the modes, the keyword bonus (search/hybrid.py)."""

import json
import sqlite3

import numpy as np
import pytest

from mmsearch import SearchEngine, build_index
from mmsearch.errors import QueryError
from mmsearch.index.store import ItemStore, keyword_text, match_query
from mmsearch.search.hybrid import bonus_of, identifiers, resolve_mode, rrf


def test_pure_parts():
    assert resolve_mode(None, True, True) == "hybrid" and resolve_mode("auto", True, False) == "semantic"
    assert resolve_mode("hybrid", False, True) == "semantic"  # a photo-only query has no words to match
    with pytest.raises(QueryError, match="needs a query text"):
        resolve_mode("keyword", False, True)
    with pytest.raises(QueryError, match="mode must be one of"):
        resolve_mode("fuzzy", True, True)
    ids, s = rrf([np.array([3, 1, 2]), np.array([1, 5])], k=60)
    assert ids.tolist() == [1, 3, 5, 2] and s[0] == pytest.approx(1 / 62 + 1 / 61)
    cand = np.array([2, 5, 9])
    assert bonus_of(cand, np.array([9, 4, 2]), np.array([0.3, 0.2, 0.1], np.float32)).tolist() == \
        pytest.approx([0.1, 0.0, 0.3])
    assert identifiers("white shelf XR-2000 from 2019 in 4k") == "XR-2000 2019 4k"
    assert identifiers("red shoes") == ""
    # user text never reaches FTS5 as syntax
    assert match_query('XR-2000 "white" NEAR(a b) x* OR') == '"xr 2000" OR "white" OR "near a" OR "b" OR "x" OR "or"'
    assert match_query("!!! ???") is None
    words = keyword_text({"id": "furniture/BILLY_bookcase-v2.jpg", "title": "Billy", "text": "oak",
                          "metadata": {"brand": "IKEA", "price": 40, "tags": ["tall"]}})
    assert all(w in words for w in ("Billy", "oak", "furniture", "BILLY", "bookcase", "v2", "IKEA", "tall"))
    assert "40" not in words and "jpg" not in words


@pytest.fixture(scope="module")
def sku_index(tmp_path_factory, sample_catalog):
    """Six sample images whose titles carry product codes no embedding knows."""
    rows = [json.loads(line) for line in (sample_catalog / "catalog.jsonl").read_text().splitlines()][:6]
    cat = tmp_path_factory.mktemp("sku") / "catalog"
    for n, r in enumerate(rows):
        (cat / r["image"]).parent.mkdir(parents=True, exist_ok=True)
        (cat / r["image"]).write_bytes((sample_catalog / r["image"]).read_bytes())
        r["title"] = f"{r['title']} model QX-{7100 + n}"
    (cat / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = cat.parent / "index"
    build_index(cat, out=out, model="tiny", device="cpu", num_workers=0, progress=False)
    return out, rows


def test_keyword_and_hybrid_find_an_item_by_its_code(sku_index):
    out, rows = sku_index
    engine = SearchEngine.open(out, device="cpu")
    for n, r in enumerate(rows):
        code = f"QX-{7100 + n}"
        kw = engine.search(text=code, k=3, mode="keyword")
        assert kw[0].id == r["image"] and kw[0].score > 0
        assert engine.search(text=code, k=1)[0].id == r["image"]  # auto = hybrid on a titled index
        hy = engine.search(text=code, k=6, mode="hybrid")
        sem = {h.id: h.score for h in engine.search(text=code, k=6, mode="semantic")}
        # hybrid = exact semantic score + the bonuses: the item holding the code matches the whole text (the
        # keyword weight) and every identifier in it (the identifier weight)
        bonus = engine.ranking.keyword_weight + engine.ranking.identifier_weight
        assert hy[0].score == pytest.approx(sem[hy[0].id] + bonus, abs=1e-5)
    assert engine.search(text="zzzunknownword", k=3, mode="keyword") == []
    # filters hold in keyword mode too
    cat = rows[0]["metadata"]["category"] if "metadata" in rows[0] else rows[0]["category"]
    hits = engine.search(text="model", k=6, mode="keyword", where={"category": cat})
    assert hits and all(h.metadata["category"] == cat for h in hits)
    with pytest.raises(QueryError, match="takes one text"):
        engine.search(text=["QX-7100", "QX-7101"], mode="keyword")


def test_identifier_bonus_goes_to_the_item_holding_the_code(sku_index):
    """A word of one item's title and another item's code: the code's item comes first, the word's item
    gets a share of the keyword weight only (a word is no identifier), and the bonus is additive."""
    out, rows = sku_index
    engine = SearchEngine.open(out, device="cpu")
    word = next(w for w in rows[1]["title"].split() if w not in rows[0]["title"].split() and w != "model")
    text = f"{word} QX-7100"
    sem = {h.id: h.score for h in engine.search(text=text, k=6, mode="semantic")}
    hy = {h.id: h.score for h in engine.search(text=text, k=6, mode="hybrid")}
    assert engine.search(text=text, k=1)[0].id == rows[0]["image"]
    code_item, word_item = rows[0]["image"], rows[1]["image"]
    assert hy[code_item] - sem[code_item] > engine.ranking.identifier_weight
    assert 0 < hy[word_item] - sem[word_item] < engine.ranking.keyword_weight
    iw, engine.ranking.identifier_weight = engine.ranking.identifier_weight, 0.0
    off = {h.id: h.score for h in engine.search(text=text, k=6, mode="hybrid")}
    assert off[code_item] == pytest.approx(hy[code_item] - iw, abs=1e-5)  # one identifier, all of it matched
    assert off[word_item] == pytest.approx(hy[word_item], abs=1e-5)


def test_keyword_index_follows_updates_and_old_stores(sku_index, tmp_path):
    out, rows = sku_index
    engine = SearchEngine.open(out, device="cpu")
    engine.remove([rows[0]["image"]])
    assert engine.search(text="QX-7100", k=3, mode="keyword") == []  # gone with its item
    assert engine.search(text="QX-7101", k=1, mode="keyword")[0].id == rows[1]["image"]
    # a store written before the keyword index (no ``words`` table): built in memory on first use
    src = engine.backend.store.path
    old = tmp_path / "items.sqlite"
    conn = sqlite3.connect(old)
    sqlite3.connect(f"file:{src}?mode=ro", uri=True).backup(conn)
    conn.execute("DROP TABLE words")
    conn.commit()
    conn.close()
    store = ItemStore.open(old)
    fids, bm = store.keyword_search("QX-7102", 5)
    assert len(fids) == 1 and store.rows(fids)[int(fids[0])]["id"] == rows[2]["image"]
    store.close()
    # and a new snapshot copied from such a store fills its keyword index
    writable = ItemStore.create(tmp_path / "copy.sqlite", copy_from=old)
    assert writable.conn.execute("SELECT COUNT(*) FROM words").fetchone()[0] == writable.count()
    writable.close()


def test_untitled_index_ranks_as_before(tiny_index, tmp_path, sample_catalog):
    """auto mode is semantic on an index without titles: the same hits and scores as mode='semantic'."""
    cat = tmp_path / "photos"
    for p in sorted(sample_catalog.glob("food/*.webp"))[:6]:
        (cat / p.name).parent.mkdir(parents=True, exist_ok=True)
        (cat / p.name).write_bytes(p.read_bytes())
    build_index(cat, out=tmp_path / "ix", model="tiny", device="cpu", num_workers=0, progress=False)
    engine = SearchEngine.open(tmp_path / "ix", device="cpu")
    assert "text" not in engine.backend.channels or not len(engine.backend.channels["text"].ids)  # no titles, no text vectors
    a = engine.search(text="lemon", k=6)
    b = engine.search(text="lemon", k=6, mode="semantic")
    assert [(h.id, h.score) for h in a] == [(h.id, h.score) for h in b]
    # file names are words too: asked for, keyword mode finds lemon.webp by its name
    assert engine.search(text="lemon", k=1, mode="keyword")[0].id == "lemon.webp"


def test_cli_mode(sku_index):
    from typer.testing import CliRunner

    from mmsearch.cli import app

    out, rows = sku_index
    res = CliRunner().invoke(app, ["query", "QX-7103", "-i", str(out), "--mode", "keyword", "--json", "-k", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["id"] == rows[3]["image"]
    bad = CliRunner().invoke(app, ["query", "QX-7103", "-i", str(out), "--mode", "fuzzy"])
    assert bad.exit_code != 0 and "mode must be one of" in bad.output


def test_keyword_coverage_weights_phrases_by_idf(tmp_path):
    store = ItemStore.create(tmp_path / "items.sqlite")
    titles = ["red apple", "running shoe", "red shoe", "flat shoe", "hiking boot", "camera"]
    store.upsert({"fid": i, "id": f"x/{i}.jpg", "path": f"/x/{i}.jpg", "title": t,
                  "metadata": {"tags": ["photo"]} if t == "camera" else {}} for i, t in enumerate(titles))
    store.commit()
    fids = np.arange(len(titles), dtype=np.int64)
    cov = store.keyword_matches("red shoes", fids).coverage()  # porter: "shoes" matches "shoe"
    assert cov[2] == pytest.approx(1.0)  # both phrases
    assert 0 < cov[1] < cov[0] < 1  # "red" (2 items) is rarer than "shoe" (3 items): it explains more
    assert cov[4] == 0 and cov[5] == 0
    # a phrase no item has still counts: an item tagged "photo" explains little of "a photo of a dog"
    assert store.keyword_matches("a photo of a dog", fids).coverage()[5] < 0.3
    fid, _ = store.keyword_search("XR-2000", 5)
    assert len(fid) == 0
    store.close()
