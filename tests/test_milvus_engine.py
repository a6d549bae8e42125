"""The Milvus backend behind every entrance: the same answers as the folder backend on the sample catalog
(exact indexes on both sides: FLAT), the same update counts, writes seen by other engines, the CLI and
the HTTP API on a ``milvus-lite:`` location."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from helpers.milvus_server import milvus_lite_server  # noqa: E402

from mmsearch import SearchEngine, build_index  # noqa: E402
from mmsearch.cli import app  # noqa: E402
from mmsearch.errors import QueryError  # noqa: E402

BUILD = dict(model="tiny", device="cpu", num_workers=0, progress=False)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, sample_catalog):
    """(folder engine, Milvus Lite engine) over the sample catalog, built alike."""
    d = tmp_path_factory.mktemp("milvus_pair")
    build_index(sample_catalog, out=d / "folder", **BUILD)
    build_index(sample_catalog, out=f"milvus-lite:{d / 'shop.db'}", **BUILD)
    return SearchEngine.open(d / "folder", device="cpu"), SearchEngine.open(f"milvus-lite:{d / 'shop.db'}",
                                                                           device="cpu")


def same_hits(a, b, k=10):
    """Same items in the same order, scores equal to float16 storage precision (the folder keeps float16)."""
    assert [h.id for h in a][:k] == [h.id for h in b][:k] or _tied(a, b, k)
    np.testing.assert_allclose([h.score for h in a][:k], [h.score for h in b][:k], atol=3e-3)
    assert [h.metadata for h in a][:3] == [h.metadata for h in b][:3] or _tied(a, b, 3)


def _tied(a, b, k):
    """Orders differ only among items whose scores are within float16 rounding of each other."""
    sa = {h.id: h.score for h in a[:k]}
    sb = {h.id: h.score for h in b[:k]}
    moved = [i for i, (x, y) in enumerate(zip(a[:k], b[:k])) if x.id != y.id]
    return all(abs(a[i].score - b[i].score) < 3e-3 for i in moved) and len(set(sa) ^ set(sb)) <= 2


@pytest.mark.parametrize("query", [
    dict(text="red shoes"),
    dict(text="a yellow fruit", where="category=food"),
    dict(image="clothing/running_shoe.webp"),
    dict(image="clothing/running_shoe.webp", text="boot", where=["category in clothing,other"]),
    dict(text=["fast car", (0.5, "red")], not_text="truck"),
    dict(text="shoe", mode="keyword"),
    dict(text="shoe", sort_by="title", offset=2),
])
def test_same_top_10_as_the_folder_backend(pair, sample_catalog, query):
    folder, milvus = pair
    q = dict(query)
    if "image" in q:
        q["image"] = str(sample_catalog / q["image"])
    same_hits(folder.search(k=10, **q), milvus.search(k=10, **q))


def test_same_filters_items_and_similar(pair):
    folder, milvus = pair
    for where in ("category=clothing", "category!=food", ["tags=shoe", "category=clothing"], "title>m",
                  {"category": ["food", "vehicle"]}):
        assert folder.select(where).tolist() == milvus.select(where).tolist(), where
    assert [r["id"] for r in folder.items] == [r["id"] for r in milvus.items]
    assert len(folder) == len(milvus) == 60
    same_hits(folder.search_similar("clothing/hiking_boot.webp"), milvus.search_similar("clothing/hiking_boot.webp"))
    same_hits(folder.search_similar(["food/banana.webp"], not_ids=["food/lemon.webp"]),
              milvus.search_similar(["food/banana.webp"], not_ids=["food/lemon.webp"]))
    for engine in pair:  # the same error for a field no item has, on either backend
        with pytest.raises(QueryError, match="no item has the field 'colour'"):
            engine.search(text="x", where="colour=red")


def _edit(catalog):
    """Add a file, change one image, remove one, change one title only."""
    rows = [json.loads(line) for line in (catalog / "catalog.jsonl").read_text().splitlines()]
    shutil.copy(catalog / rows[1]["image"], catalog / rows[0]["image"])  # changed image
    (catalog / rows[2]["image"]).unlink()  # removed
    rows = [r for r in rows if r is not rows[2]]
    rows[3]["title"] = "a new title"  # metadata only
    shutil.copy(catalog / rows[4]["image"], catalog / "clothing" / "added.webp")
    rows.append({"image": "clothing/added.webp", "title": "added", "category": "clothing"})
    (catalog / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def counts(r):
    return (r.added, r.updated, r.metadata_updated, r.removed, r.unchanged, r.indexed)


def test_updates_count_alike_and_other_engines_see_them(tmp_path, small_catalog):
    folder, lite = tmp_path / "folder", f"milvus-lite:{tmp_path / 'shop.db'}"
    first = [build_index(small_catalog, out=o, **BUILD) for o in (folder, lite)]
    assert counts(first[0]) == counts(first[1]) == (12, 0, 0, 0, 0, 12)
    readers = [SearchEngine.open(lite, device="cpu") for _ in range(2)]  # two engines and a writer at once
    _edit(small_catalog)
    second = [build_index(small_catalog, out=o, **BUILD) for o in (folder, lite)]
    assert counts(second[0]) == counts(second[1]) == (1, 1, 1, 1, 9, 12)
    for engine in readers:
        assert engine.reload() and len(engine) == 12
        assert "clothing/added.webp" in {r["id"] for r in engine.items}
    again = [build_index(small_catalog, out=o, **BUILD) for o in (folder, lite)]
    assert counts(again[0]) == counts(again[1]) == (0, 0, 0, 0, 12, 12)
    assert not readers[0].reload()  # nothing committed: the version is the same
    removed = [SearchEngine.open(o, device="cpu").remove(["clothing/added.webp"]) for o in (folder, lite)]
    assert [r.removed for r in removed] == [1, 1] and [r.indexed for r in removed] == [11, 11]


def test_cli_and_http_on_a_milvus_lite_location(tmp_path, sample_catalog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke
    r = run(app, ["index", str(sample_catalog), "-i", "milvus-lite:shop.db", "--model", "tiny", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "60 added" in r.output
    r = run(app, ["query", "-i", "milvus-lite:shop.db", "red shoes", "--where", "category=clothing", "--json"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)
    assert len(hits) == 10 and {h["metadata"]["category"] for h in hits} == {"clothing"}
    r = run(app, ["remove", hits[0]["id"], "-i", "milvus-lite:shop.db"])
    assert r.exit_code == 0 and "59 left" in r.output, r.output
    r = run(app, ["index", str(sample_catalog), "-i", "milvus-lite:shop.db"])  # the model comes from Milvus
    assert r.exit_code == 0 and "1 added" in r.output and "59 unchanged" in r.output, r.output
    r = run(app, ["info", "-i", "milvus-lite:shop.db"])
    assert r.exit_code == 0 and "items       60" in r.output, r.output
    r = run(app, ["query", "-i", "milvus-lite:missing.db", "shoe"])
    assert r.exit_code != 0 and "no index at milvus-lite:missing.db" in r.output
    r = run(app, ["query", "-i", "milvus-lite:shop.db", "shoe", "--where", "colour=red"])
    assert r.exit_code != 0 and "no item has the field 'colour'" in r.output

    from fastapi.testclient import TestClient

    from mmsearch.server.app import create_app
    from mmsearch.server.settings import ServeCfg

    engine = SearchEngine.open("milvus-lite:shop.db", device="cpu")
    with TestClient(create_app(engine, ServeCfg(reload_interval_s=0))) as c:
        got = c.post("/search", data={"text": "red shoes", "k": "10", "filters": '{"category": "clothing"}'})
        assert got.status_code == 200, got.text
        assert [h["id"] for h in got.json()["hits"]] == [h["id"] for h in hits]
        assert c.post("/search/similar", data={"id": hits[1]["id"], "k": "3"}).status_code == 200


def test_a_folder_index_copies_into_milvus_without_encoding(tmp_path, tiny_index, monkeypatch):
    import mmsearch.index.update as update

    monkeypatch.setattr(update, "encode_update", lambda *a, **kw: pytest.fail("migrate must not encode"))
    r = CliRunner().invoke(app, ["migrate", str(tiny_index), "-i", f"milvus-lite:{tmp_path / 'copy.db'}"])
    assert r.exit_code == 0 and "Copied 60 items" in r.output, r.output
    folder, copy = SearchEngine.open(tiny_index, device="cpu"), SearchEngine.open(f"milvus-lite:{tmp_path / 'copy.db'}",
                                                                                  device="cpu")
    same_hits(folder.search(text="red shoes"), copy.search(text="red shoes"))
    r = CliRunner().invoke(app, ["migrate", str(tiny_index), "-i", f"milvus-lite:{tmp_path / 'copy.db'}"])
    assert r.exit_code != 0 and "already holds an index" in r.output


@pytest.mark.slow
def test_serve_replicas_over_one_collection_see_each_others_writes(tmp_path, small_catalog):
    """Two HTTP servers over one Milvus collection (reached as milvus://, held by `milvus-lite server`, as a
    cluster would be) answer alike, and pick up a third process's update by polling, without a restart."""
    import subprocess
    import sys
    import time

    from fastapi.testclient import TestClient

    from mmsearch.server.app import create_app
    from mmsearch.server.settings import ServeCfg

    with milvus_lite_server(tmp_path / "shared.db") as server:
        loc = f"{server}/shop"
        build_index(small_catalog, out=loc, **BUILD)
        cfg = ServeCfg(reload_interval_s=0.2)
        with TestClient(create_app(SearchEngine.open(loc, device="cpu"), cfg)) as a, \
                TestClient(create_app(SearchEngine.open(loc, device="cpu"), cfg)) as b:
            ask = {"text": "shoe", "k": "5"}
            first = [c.post("/search", data=ask).json() for c in (a, b)]
            assert [h["id"] for h in first[0]["hits"]] == [h["id"] for h in first[1]["hits"]]
            before = a.get("/health").json()
            gone = first[0]["hits"][0]["id"]
            rows = [json.loads(line) for line in (small_catalog / "catalog.jsonl").read_text().splitlines()]
            (small_catalog / "catalog.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows if r["image"] != gone))
            (small_catalog / gone).unlink()
            subprocess.run([sys.executable, "-m", "mmsearch", "index", str(small_catalog), "-i", loc],
                           check=True, capture_output=True, timeout=300)  # a writer in another process
            deadline = time.monotonic() + 30
            while any(c.get("/health").json()["snapshot"] == before["snapshot"] for c in (a, b)):
                assert time.monotonic() < deadline, "a replica did not pick up the write"
                time.sleep(0.2)
            for c in (a, b):
                assert c.get("/health").json()["items"] == before["items"] - 1
                assert gone not in [h["id"] for h in c.post("/search", data=ask).json()["hits"]]
