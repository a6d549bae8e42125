"""build_index and SearchEngine on the tiny model: format, skips, atomic swaps, errors, query inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import mmsearch.index.writer as index_mod
from mmsearch import SearchEngine, build_index
from mmsearch.errors import CatalogError, IndexIncompatibleError, IndexNotFoundError, QueryError
from mmsearch.index.snapshot import current_snapshot, read_manifest


def build(catalog, out, model="tiny", **kw):
    return build_index(catalog, out=out, model=model, device="cpu", num_workers=0, progress=False, **kw)


def test_manifest_describes_the_index(tiny_index, sample_catalog):
    m = read_manifest(tiny_index)
    assert m["format"] == "mmsearch-index" and m["metric"] == "inner_product"
    assert m["count"] == 60 and m["dim"] == 64 and m["skipped"] == []
    assert m["model"]["name"] == "tiny" and len(m["model"]["fingerprint"]) == 16
    assert set(m["channels"]) == {"image", "text"}  # tiny has no raw visual channel
    assert m["channels"]["text"]["count"] == 60
    snap = current_snapshot(tiny_index)
    emb = np.load(snap / "image.f16.npy")
    assert emb.dtype == np.float16 and emb.shape == (60, 64)
    np.testing.assert_allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1.0, atol=1e-2)
    assert set(m["files"]) >= {"items.sqlite", "image.faiss", "image.f16.npy"}


def test_every_item_retrieves_itself_first(tiny_index, sample_catalog):
    engine = SearchEngine.open(tiny_index, device="cpu")
    rows = [json.loads(line) for line in (sample_catalog / "catalog.jsonl").read_text().splitlines()]
    queries = [{"image": str(sample_catalog / r["image"]), "text": None} for r in rows[:10]]
    for row, hits in zip(rows, engine.search_batch(queries, k=3)):
        assert hits[0].id == row["image"]
        assert hits[0].score == pytest.approx(1.0, abs=1e-2)
        assert hits[0].title == row["title"] and hits[0].metadata["category"] == row["category"]


def test_text_query_finds_the_item_with_that_title(tiny_index):
    # The tiny model is untrained, but an item's own title embeds identically to the query text,
    # so the item-text channel must put that item first.
    engine = SearchEngine.open(tiny_index, device="cpu")
    hits = engine.search(text="watermelon", k=5)
    assert hits[0].id == "food/watermelon.webp"
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_image_inputs_path_bytes_pil_agree(tiny_index, sample_catalog):
    engine = SearchEngine.open(tiny_index, device="cpu")
    path = sample_catalog / "vehicle" / "bus.webp"
    by_path = engine.encode_images([path])
    np.testing.assert_allclose(engine.encode_images([path.read_bytes()]), by_path, atol=1e-6)
    np.testing.assert_allclose(engine.encode_images([Image.open(path)]), by_path, atol=1e-6)
    assert by_path.dtype == np.float32 and by_path.shape == (1, 64)


def test_unicode_emoji_and_long_text_queries(tiny_index):
    engine = SearchEngine.open(tiny_index, device="cpu")
    for text in ("chaussures rouges 👠", "红色的鞋", "shoe " * 2000):
        assert len(engine.search(text=text, k=4)) == 4


def test_photo_plus_text_weights_move_between_the_two(tiny_index, sample_catalog):
    engine = SearchEngine.open(tiny_index, device="cpu")
    photo = sample_catalog / "vehicle" / "bus.webp"
    assert engine.search(image=photo, text="watermelon", image_weight=1.0, k=1)[0].id == "vehicle/bus.webp"
    assert engine.search(image=photo, text="watermelon", image_weight=0.0, k=1)[0].id == "food/watermelon.webp"


def test_k_larger_than_the_catalog_returns_everything(tiny_index):
    engine = SearchEngine.open(tiny_index, device="cpu")
    hits = engine.search(text="hat", k=1000)
    assert len(hits) == 60 and len({h.id for h in hits}) == 60


def test_bad_queries_are_query_errors(tiny_index, tmp_path):
    engine = SearchEngine.open(tiny_index, device="cpu")
    with pytest.raises(QueryError, match="neither"):
        engine.search()
    with pytest.raises(QueryError, match="neither"):
        engine.search(text="   ")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(QueryError, match="cannot read query image"):
        engine.search(image=tmp_path / "broken.jpg")
    with pytest.raises(QueryError, match="between 0 and 1"):
        engine.search(text="hat", image_weight=2.0)


def test_bad_files_are_skipped_and_reported(small_catalog, tmp_path):
    (small_catalog / "zero.jpg").write_bytes(b"")
    (small_catalog / "fake.png").write_text("hello")
    report = build(small_catalog, tmp_path / "idx")
    assert report.indexed == 12
    reasons = {s["id"]: s["reason"] for s in report.skipped}
    assert set(reasons) == {"zero.jpg", "fake.png"}
    assert "empty" in reasons["zero.jpg"] and "not a recognised image" in reasons["fake.png"]
    assert read_manifest(tmp_path / "idx")["skipped"] == report.skipped


def test_missing_or_empty_catalog_writes_nothing(tmp_path):
    with pytest.raises(CatalogError):
        build(tmp_path / "nope", tmp_path / "idx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError):
        build(tmp_path / "empty", tmp_path / "idx")
    assert not (tmp_path / "idx").exists()


def test_catalog_of_only_bad_files_is_an_error(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.jpg").write_bytes(b"nope")
    with pytest.raises(CatalogError, match="could be read"):
        build(tmp_path / "cat", tmp_path / "idx")
    assert current_snapshot(tmp_path / "idx") is None


def test_interrupted_rebuild_leaves_the_previous_index(small_catalog, tmp_path, monkeypatch):
    out = tmp_path / "idx"
    build(small_catalog, out)
    before = current_snapshot(out)
    shutil.copy(small_catalog / "clothing" / "running_shoe.webp", small_catalog / "clothing" / "shoe2.webp")
    calls = {"n": 0}
    real = index_mod.faiss.write_index

    def dying_write(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if Ctrl-C arrived half-way through writing the snapshot
        return real(*args)

    monkeypatch.setattr(index_mod.faiss, "write_index", dying_write)
    with pytest.raises(KeyboardInterrupt):
        build(small_catalog, out)
    monkeypatch.undo()
    assert current_snapshot(out) == before
    assert len(SearchEngine.open(out, device="cpu")) == 12
    build(small_catalog, out)  # the next build completes and clears the half-written folder
    assert len(SearchEngine.open(out, device="cpu")) == 13
    assert not [p for p in (out / "snapshots").iterdir() if p.name.startswith(".tmp")]


def test_index_inside_the_catalog_is_not_indexed(small_catalog):
    out = small_catalog / "index"
    build(small_catalog, out)
    report = build(small_catalog, out)
    assert report.indexed == 12


def test_missing_index_and_damaged_index(tmp_path, small_catalog):
    with pytest.raises(IndexNotFoundError, match="mmsearch index"):
        SearchEngine.open(tmp_path / "nothing", device="cpu")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(IndexNotFoundError):
        SearchEngine.open(tmp_path / "emptydir", device="cpu")
    out = tmp_path / "idx"
    build(small_catalog, out)
    snap = current_snapshot(out)
    with open(snap / "image.f16.npy", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(IndexIncompatibleError, match="damaged"):
        SearchEngine.open(out, device="cpu")


def test_index_from_another_model_or_version_is_refused(tmp_path, small_catalog):
    out = tmp_path / "idx"
    build(small_catalog, out)
    manifest_path = current_snapshot(out) / "manifest.json"
    original = json.loads(manifest_path.read_text())

    changed = dict(original, model=dict(original["model"], fingerprint="0" * 16))
    manifest_path.write_text(json.dumps(changed))
    with pytest.raises(IndexIncompatibleError, match="different 'tiny' model"):
        SearchEngine.open(out, device="cpu")

    changed = dict(original, format_version=original["format_version"] + 1)
    manifest_path.write_text(json.dumps(changed))
    with pytest.raises(IndexIncompatibleError, match="newer"):
        SearchEngine.open(out, device="cpu")

    changed = dict(original, model=dict(original["model"], ref="model-from-the-future"))
    manifest_path.write_text(json.dumps(changed))
    with pytest.raises(IndexIncompatibleError, match="model-from-the-future"):
        SearchEngine.open(out, device="cpu")


def test_reload_picks_up_a_rebuilt_index(small_catalog, tmp_path):
    out = tmp_path / "idx"
    build(small_catalog, out)
    engine = SearchEngine.open(out, device="cpu")
    assert engine.reload() is False
    shutil.copy(small_catalog / "clothing" / "running_shoe.webp", small_catalog / "clothing" / "shoe2.webp")
    build(small_catalog, out)
    assert len(engine) == 12  # still answering from its snapshot
    assert engine.reload() is True and len(engine) == 13


def test_checkpoint_models_travel_with_the_index(small_catalog, tmp_path):
    import torch

    from mmsearch import create_model
    from mmsearch.models.factory import save_checkpoint

    model, _, tok = create_model("tiny", device="cpu")
    with torch.no_grad():
        model.text_tower.head.weight.mul_(-1)
    ckpt = save_checkpoint(model, tok, tmp_path / "my.pt")
    build(small_catalog, tmp_path / "idx", model=str(ckpt))
    ckpt.unlink()  # the index holds its own copy
    engine = SearchEngine.open(tmp_path / "idx", device="cpu")
    assert engine.model.fingerprint() == model.fingerprint()
    assert engine.search(text="hiking boot", k=1)[0].id == "clothing/hiking_boot.webp"
