"""CLI output modes, query algebra, --version, similar, list, export (round trip) and dedupe (planted copies)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from mmsearch import SearchEngine, __version__
from mmsearch.cli import app
from mmsearch.search.tools import find_duplicates, load_export

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_version():
    res = run("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"mmsearch {__version__}"


def test_help_renders_literally_with_real_types():
    res = run("eval", "--help")
    assert '"target": [ids]' in res.stdout  # nothing eaten as markup
    q = run("query", "--help").stdout
    assert "<bool>" not in q and "-k, --top-k" in q and "[default: 0.5" in q
    assert "-i, -o, --index, --out" in run("index", "--help").stdout


def test_paths_json_and_algebra(tiny_index, sample_catalog):
    lemon = sample_catalog / "food" / "lemon.webp"
    res = run("query", lemon, "-i", tiny_index, "--top-k", "3", "--paths")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert len(lines) == 3 and lines[0] == str(lemon.resolve())
    js = json.loads(run("query", "lemon", "--not", "banana", "-i", tiny_index, "-k", "60", "--json").stdout)
    engine = SearchEngine.open(tiny_index, device="cpu")
    assert [h["id"] for h in js] == [h.id for h in engine.search(text="lemon", not_text="banana", k=60)]
    assert set(js[0]) == {"rank", "id", "path", "score", "title", "metadata"}
    # the same query three ways: positional + --not, --text/--not, and one rclip-style string
    a = run("query", "--text", "lemon", "--text", "2:taxi", "--not", "bus", "-i", tiny_index, "--json").stdout
    b = run("query", "lemon + 2:taxi - bus", "-i", tiny_index, "--json").stdout
    assert json.loads(a) == json.loads(b)
    taxi = sample_catalog / "vehicle/taxi.webp"
    heavy = json.loads(run("query", "--image", lemon, "--image", f"3:{taxi}", "-i", tiny_index, "--json").stdout)
    assert [h["id"] for h in heavy] == [h.id for h in engine.search(image=[str(lemon), (3, str(taxi))], k=10)]
    bad = run("query", "lemon", "--json", "--paths", "-i", tiny_index)
    assert bad.exit_code != 0 and "choose one output" in bad.output


def test_non_image_file_and_negative_only_queries_fail(tiny_index, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("red shoes")
    res = run("query", notes, "-i", tiny_index)
    assert res.exit_code != 0 and "is a file but not an image" in res.output
    res = run("query", "--not", "banana", "-i", tiny_index)
    assert res.exit_code != 0 and "at least one photo or text" in res.output


def test_batch_json_has_the_single_query_fields(tiny_index, tmp_path):
    batch = tmp_path / "q.jsonl"
    batch.write_text(json.dumps({"text": "taxi"}) + "\n")
    line = json.loads(run("query", "--batch", batch, "-i", tiny_index, "-k", "2").stdout.splitlines()[0])
    single = json.loads(run("query", "--text", "taxi", "-i", tiny_index, "-k", "2", "--json").stdout)
    assert line["hits"] == single and line["ids"] == [h["id"] for h in single]


def test_preview_falls_back_to_the_table_off_a_terminal(tiny_index):
    res = run("query", "taxi", "-i", tiny_index, "-k", "2", "--preview")
    assert res.exit_code == 0 and "rank" in res.stdout and "No preview" in res.output


def test_similar_and_list(tiny_index):
    res = run("similar", "food/lemon.webp", "-i", tiny_index, "-k", "4", "--json")
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert len(hits) == 4 and "food/lemon.webp" not in [h["id"] for h in hits]
    missing = run("similar", "nope.jpg", "-i", tiny_index)
    assert missing.exit_code != 0 and "no item" in missing.output
    items = json.loads(run("list", "-i", tiny_index, "--where", "category=vehicle", "--json").stdout)
    assert len(items) == 8 and all(it["metadata"]["category"] == "vehicle" for it in items)
    assert set(items[0]) == {"id", "path", "title", "text", "metadata"}
    assert len(json.loads(run("list", "-i", tiny_index, "--json").stdout)) == 60
    assert "vehicle/taxi.webp" in run("list", "-i", tiny_index).stdout


@pytest.mark.parametrize("target", ["export_dir", "items.parquet"])
def test_export_round_trip(tiny_index, tmp_path, target):
    if target.endswith(".parquet"):
        pytest.importorskip("pyarrow", reason="Parquet export needs pyarrow (the export extra)")
    res = run("export", "-i", tiny_index, "--out", tmp_path / target)
    assert res.exit_code == 0 and "Exported 60 items" in res.stdout, res.output
    items, emb, txt = load_export(tmp_path / target)
    engine = SearchEngine.open(tiny_index, device="cpu")
    assert items == [{k: r[k] for k in ("id", "path", "title", "text", "metadata")} for r in engine.items]
    ch = engine.backend.channels["image"]
    assert np.allclose(emb, np.asarray(ch.vectors, np.float32)) and emb.shape == (60, ch.vectors.shape[1])
    # a search over the exported vectors finds what the engine finds
    q = engine.encode_texts(["taxi"])[0]
    assert items[int(np.argmax(emb @ q))]["id"] == engine.search(text="taxi", k=1, image_weight=None)[0].id \
        or np.any(txt)  # the engine also blends item text; the image channel alone must at least be exported
    assert (np.linalg.norm(txt, axis=1) > 0).sum() == engine.backend.channels["text"].ids.size


def test_dedupe_finds_planted_duplicates(small_catalog, tmp_path):
    from PIL import Image

    shutil.copy(small_catalog / "clothing/running_shoe.webp", small_catalog / "copy_of_shoe.webp")
    im = Image.open(small_catalog / "clothing/hiking_boot.webp")
    im.save(small_catalog / "boot_resaved.png")  # same pixels, another file (format, bytes, hash)
    out = tmp_path / "index"
    assert run("index", small_catalog, "-i", out, "--model", "tiny", "--device", "cpu", "--workers", "0").exit_code == 0
    res = run("dedupe", "-i", out, "--threshold", "0.999", "--json")
    assert res.exit_code == 0, res.output
    groups = json.loads(res.stdout)
    assert sorted(sorted(g["ids"]) for g in groups) == [["boot_resaved.png", "clothing/hiking_boot.webp"],
                                                        ["clothing/running_shoe.webp", "copy_of_shoe.webp"]]
    assert all(g["scores"][0] == 1.0 and g["scores"][1] >= 0.999 for g in groups), groups
    by_first = {g["ids"][0]: g for g in groups}
    # a byte-identical copy is marked exact; the same pixels in another file format are a near-duplicate
    assert by_first["clothing/running_shoe.webp"]["kinds"] == ["exact", "exact"]
    assert by_first["clothing/running_shoe.webp"]["kind"] == "exact"
    assert by_first["boot_resaved.png"]["kinds"] == ["exact", "near"] and by_first["boot_resaved.png"]["kind"] == "near"
    table = run("dedupe", "-i", out, "--threshold", "0.999")
    assert "2 group(s)" in table.stdout and "copy_of_shoe.webp" in table.stdout
    assert "1 group(s) of exact copies" in table.stdout
    api = find_duplicates(SearchEngine.open(out, device="cpu"), threshold=0.999)
    assert api == groups  # the CLI prints what the API returns
    exact = json.loads(run("dedupe", "-i", out, "--threshold", "0.999", "--kind", "exact", "--json").stdout)
    assert [g["ids"] for g in exact] == [["clothing/running_shoe.webp", "copy_of_shoe.webp"]]
    near = json.loads(run("dedupe", "-i", out, "--threshold", "0.999", "--kind", "near", "--json").stdout)
    assert [g["ids"] for g in near] == [["boot_resaved.png", "clothing/hiking_boot.webp"]]
    assert run("dedupe", "-i", out, "--kind", "nearly").exit_code != 0
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from mmsearch.server import ServeCfg, create_app

    with TestClient(create_app(SearchEngine.open(out, device="cpu"), ServeCfg(reload_interval_s=0))) as c:
        http = c.get("/duplicates", params={"threshold": 0.999}).json()["groups"]
        assert [{k: g[k] for k in ("ids", "scores", "kinds", "kind")} for g in http] == \
            [{k: g[k] for k in ("ids", "scores", "kinds", "kind")} for g in groups]  # what the CLI prints
        assert all(u.startswith("/items/") for g in http for u in g["thumbnail_urls"])
        exact_http = c.get("/duplicates", params={"threshold": 0.999, "kind": "exact"}).json()["groups"]
        assert [g["ids"] for g in exact_http] == [g["ids"] for g in exact]
        assert c.get("/duplicates", params={"kind": "nearly"}).status_code == 422
        assert c.get("/duplicates", params={"filters": '{"colour": "red"}'}).status_code == 400


def test_filter_on_an_unknown_field_is_an_error(tiny_index):
    res = run("query", "taxi", "-i", tiny_index, "--where", "colour=red")
    assert res.exit_code == 2 and "no item has the field 'colour'" in res.output
    assert "known fields: category, tags, title" in res.output
    assert run("list", "-i", tiny_index, "--where", "colour=red").exit_code == 2


def test_similar_to_several_items_is_the_algebra_query_of_their_photos(engine):
    """"More like these" ranks as a query of the liked photos (minus the disliked ones) does, the given
    items left out: the stored embeddings are the photos' own."""
    from mmsearch.errors import ItemNotFoundError, QueryError

    like, dislike = ["food/lemon.webp", "food/banana.webp"], ["vehicle/taxi.webp"]
    path = {r["id"]: r["path"] for r in engine.items}
    for not_ids in ([], dislike):
        got = engine.search_similar(like, not_ids=not_ids, k=5)
        ref = engine.search(image=[path[i] for i in like], not_image=[path[i] for i in not_ids] or None, k=8)
        ref = [h for h in ref if h.id not in like + not_ids][:5]
        assert [h.id for h in got] == [h.id for h in ref]
        assert np.allclose([h.score for h in got], [h.score for h in ref], atol=2e-3)  # stored as float16
        assert [h.rank for h in got] == [1, 2, 3, 4, 5]
    # one id plus --not goes the same way; the single-id path is unchanged
    assert "vehicle/taxi.webp" not in [h.id for h in engine.search_similar("food/lemon.webp", not_ids=dislike, k=60)]
    with pytest.raises(ItemNotFoundError, match="nope.jpg"):
        engine.search_similar(["food/lemon.webp", "nope.jpg"])
    with pytest.raises(QueryError, match="both liked and disliked"):
        engine.search_similar(like, not_ids=["food/lemon.webp"])
    with pytest.raises(QueryError, match="at least one item"):
        engine.search_similar([])


def test_similar_cli_takes_several_ids_and_not(tiny_index):
    res = run("similar", "food/lemon.webp", "food/banana.webp", "--not", "vehicle/taxi.webp", "-i", tiny_index,
              "-k", "57", "--json")
    assert res.exit_code == 0, res.output
    ids = [h["id"] for h in json.loads(res.stdout)]
    assert len(ids) == 57 and not {"food/lemon.webp", "food/banana.webp", "vehicle/taxi.webp"} & set(ids)
    bad = run("similar", "food/lemon.webp", "--not", "food/lemon.webp", "-i", tiny_index)
    assert bad.exit_code != 0 and "both liked and disliked" in bad.output
