"""catalog.jsonl / .csv rows find their files across NFC/NFD and (when unambiguous) case; every row that
matches no file is reported in the build summary instead of being dropped without a word."""

from __future__ import annotations

import json
import unicodedata

from typer.testing import CliRunner

from mmsearch.catalog.scan import match_rows, scan_catalog
from mmsearch.cli import app

NFD = unicodedata.normalize("NFD", "café.webp")
NFC = unicodedata.normalize("NFC", "café.webp")


def make_catalog(tmp_path, sample_catalog, rows, csv=False):
    cat = tmp_path / "catalog"
    cat.mkdir()
    photos = sorted(sample_catalog.rglob("*.webp"))
    for i, name in enumerate([NFD, "Photo.webp", "a.webp", "A.webp", "b.webp"]):
        (cat / name).write_bytes(photos[i].read_bytes())
    if csv:
        (cat / "catalog.csv").write_text("image,title\n" + "".join(f"{r['image']},{r['title']}\n" for r in rows))
    else:
        (cat / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return cat


ROWS = [{"image": NFC, "title": "coffee"}, {"image": "photo.webp", "title": "by case"},
        {"image": "a.WEBP", "title": "ambiguous"}, {"image": "b.webp", "title": "exact"},
        {"image": "missing.webp", "title": "gone"}]


def test_match_rows_pairs_only_what_is_unambiguous():
    rows = {r["image"]: r for r in ROWS}
    matched, left = match_rows(rows, [NFD, "Photo.webp", "a.webp", "A.webp", "b.webp"])
    assert {k: v["title"] for k, v in matched.items()} == {NFD: "coffee", "Photo.webp": "by case", "b.webp": "exact"}
    assert left == ["a.WEBP", "missing.webp"]
    # an exact match wins; a second row for the same file is not matched again
    matched, left = match_rows({"b.webp": {"t": 1}, "B.webp": {"t": 2}}, ["b.webp"])
    assert matched == {"b.webp": {"t": 1}} and left == ["B.webp"]


def test_scan_reports_every_unmatched_row(tmp_path, sample_catalog):
    for csv in (False, True):
        root = tmp_path / ("csv" if csv else "jsonl")
        root.mkdir()
        cat = make_catalog(root, sample_catalog, ROWS, csv=csv)
        skipped: list[dict] = []
        items = {it.id: it.title for it in scan_catalog(cat, skipped=skipped)}
        assert items[NFD] == "coffee" and items["Photo.webp"] == "by case" and items["b.webp"] == "exact"
        assert items["a.webp"] == "" and items["A.webp"] == ""
        reasons = {s["id"]: s["reason"] for s in skipped}
        assert set(reasons) == {"a.WEBP", "missing.webp"}
        assert "matches no image file" in reasons["missing.webp"]
        assert ("catalog.csv" if csv else "catalog.jsonl") in reasons["missing.webp"]


def test_build_summary_names_unmatched_rows(tmp_path, sample_catalog):
    cat = make_catalog(tmp_path, sample_catalog, ROWS)
    res = CliRunner().invoke(app, ["index", str(cat), "--out", str(tmp_path / "index"), "--model", "tiny",
                                   "--device", "cpu", "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "missing.webp" in res.output and "a.WEBP" in res.output and "matches no image file" in res.output
