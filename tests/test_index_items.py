"""Index writes from a new user's point of view: bad files remembered (not retried until they change),
build_index(items=...) from memory, and items added through the API surviving catalog syncs."""

from __future__ import annotations

import shutil

import pytest

import mmsearch.index.update as update_mod
from mmsearch import SearchEngine, build_index, remove_items, upsert_items
from mmsearch.errors import CatalogError
from mmsearch.index.snapshot import read_manifest

TINY = {"model": "tiny", "device": "cpu", "num_workers": 0, "progress": False}


def test_bad_files_are_remembered_and_not_retried_until_they_change(small_catalog, tmp_path, monkeypatch):
    bad = small_catalog / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    out = tmp_path / "index"
    first = build_index(small_catalog, out=out, **TINY)
    assert [s["id"] for s in first.skipped] == ["broken.jpg"]
    assert read_manifest(out)["skipped"][0]["sha256"]  # remembered with its content hash

    decoded: list[str] = []
    real = update_mod.encode_image_files

    def spy(model, preprocess, paths, **kw):
        decoded.extend(paths)
        return real(model, preprocess, paths, **kw)

    monkeypatch.setattr(update_mod, "encode_image_files", spy)
    again = build_index(small_catalog, out=out, **TINY)
    assert decoded == [] and again.encoded == 0 and again.not_retried == 1
    assert [s["id"] for s in again.skipped] == ["broken.jpg"]  # still reported, once, not decoded again

    bad.write_bytes(b"\xff\xd8\xff\xe0 changed, still broken")
    changed = build_index(small_catalog, out=out, **TINY)
    assert decoded == [str(bad)] and [s["id"] for s in changed.skipped] == ["broken.jpg"]  # retried once

    shutil.copy(small_catalog / "clothing/running_shoe.webp", bad)  # fixed: indexed
    fixed = build_index(small_catalog, out=out, **TINY)
    assert fixed.added == 1 and fixed.skipped == [] and read_manifest(out)["skipped"] == []


def test_build_index_from_items_in_memory(sample_catalog, tmp_path):
    items = [{"id": "shoe", "image": sample_catalog / "clothing/running_shoe.webp", "title": "running shoe",
              "metadata": {"price": 80}},
             {"id": "taxi", "image": str(sample_catalog / "vehicle/taxi.webp"), "title": "yellow taxi"},
             {"id": "lemon", "image": str(sample_catalog / "food/lemon.webp"), "text": "a sour fruit"}]
    out = tmp_path / "index"
    report = build_index(items=items, out=out, **TINY)
    assert report.indexed == 3 and report.added == 3
    engine = SearchEngine.open(out, device="cpu")
    assert [r["id"] for r in engine.items] == ["shoe", "taxi", "lemon"]
    assert engine.search(image=sample_catalog / "vehicle/taxi.webp", k=1)[0].id == "taxi"
    assert read_manifest(out)["catalog"] == str(sample_catalog.resolve())  # the images' common folder
    # the items are the whole set, as a folder would be: an id left out is removed
    again = build_index(items=items[:2], out=out, **TINY)
    assert again.removed == 1 and again.indexed == 2
    with pytest.raises(CatalogError, match="not both"):
        build_index(sample_catalog, items=items, out=out, **TINY)
    with pytest.raises(Exception, match="does not exist"):
        build_index(items=[{"id": "x", "image": tmp_path / "nope.jpg"}], out=tmp_path / "i2", **TINY)


def test_api_added_items_survive_catalog_syncs_until_removed(small_catalog, sample_catalog, tmp_path):
    out = tmp_path / "index"
    build_index(small_catalog, out=out, **TINY)
    elsewhere = tmp_path / "uploads"
    elsewhere.mkdir()
    shutil.copy(sample_catalog / "vehicle/taxi.webp", elsewhere / "taxi.webp")
    upsert_items(out, [{"id": "uploads/taxi", "image": elsewhere / "taxi.webp", "title": "taxi"}], device="cpu")
    assert read_manifest(out)["api_items"] == ["uploads/taxi"]

    sync = build_index(small_catalog, out=out, **TINY)  # the catalog does not have it: it stays
    assert sync.removed == 0 and sync.indexed == 13
    assert "uploads/taxi" in {r["id"] for r in SearchEngine.open(out, device="cpu").items}
    (small_catalog / "clothing/running_shoe.webp").unlink()  # a catalog file removed: its item goes
    assert build_index(small_catalog, out=out, **TINY).removed == 1

    remove_items(out, ["uploads/taxi"])  # removed on purpose: gone, and no longer kept
    assert read_manifest(out)["api_items"] == []
    assert build_index(small_catalog, out=out, **TINY).indexed == 11
    assert "uploads/taxi" not in {r["id"] for r in SearchEngine.open(out, device="cpu").items}
