"""``--exclude GLOB``: pattern semantics, the scan, and an index that remembers its patterns."""

from __future__ import annotations

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmsearch import build_index
from mmsearch.catalog.exclude import Excluder
from mmsearch.catalog.scan import scan_catalog
from mmsearch.cli import app
from mmsearch.errors import CatalogError
from mmsearch.index.snapshot import read_manifest

FILES = ("a.jpg", "b.tmp.jpg", "private/c.jpg", "private/deep/d.jpg", "trips/private/e.jpg", "trips/f.jpg",
         "trips/g.tmp.jpg", "cache/h.jpg")


@pytest.mark.parametrize("pattern, excluded", [
    ("*.tmp.jpg", {"b.tmp.jpg", "trips/g.tmp.jpg"}),  # no "/": a name at any depth
    ("private/**", {"private/c.jpg", "private/deep/d.jpg"}),  # anchored at the root
    ("private", {"private/c.jpg", "private/deep/d.jpg", "trips/private/e.jpg"}),  # a folder name anywhere
    ("/private/", {"private/c.jpg", "private/deep/d.jpg"}),
    ("**/private/*.jpg", {"private/c.jpg", "trips/private/e.jpg"}),  # ** is zero or more folders
    ("trips/*.jpg", {"trips/f.jpg", "trips/g.tmp.jpg"}),  # * never crosses a "/"
    ("/?.jpg", {"a.jpg"}),  # a leading "/" anchors a name at the root
    ("?.jpg", {"a.jpg", "private/c.jpg", "private/deep/d.jpg", "trips/private/e.jpg", "trips/f.jpg", "cache/h.jpg"}),
    ("[ab].*jpg", {"a.jpg", "b.tmp.jpg"}),
    ("/[!a].jpg", set()),
    ("cache/", {"cache/h.jpg"}),  # folders only
    ("*.JPG", set()),  # case-sensitive
])
def test_pattern_semantics(pattern, excluded):
    ex = Excluder([pattern])
    assert {f for f in FILES if ex(f)} == excluded


def test_folder_only_pattern_spares_a_file_of_that_name():
    ex = Excluder(["h.jpg/"])
    assert not ex("cache/h.jpg") and ex("x/h.jpg/y.jpg")


@pytest.mark.parametrize("bad", ["", "  ", "/", "../x", "a/./b"])
def test_bad_patterns_are_one_clear_error(bad):
    with pytest.raises(CatalogError, match="exclude pattern"):
        Excluder([bad])


def make_catalog(root, names=FILES):
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (i * 30 % 256, 80, 160)).save(root / name)
    return root


def test_scan_leaves_excluded_files_and_folders_out(tmp_path, monkeypatch):
    cat = make_catalog(tmp_path / "cat")
    entered = []
    import os

    real_walk = os.walk

    def walk(top, **kw):  # record the folders the scan enters
        for dirpath, dirnames, filenames in real_walk(top, **kw):
            entered.append(os.path.relpath(dirpath, cat))
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(os, "walk", walk)
    ids = [it.id for it in scan_catalog(cat, exclude_globs=["private/**", "*.tmp.jpg"])]
    assert ids == ["a.jpg", "cache/h.jpg", "trips/f.jpg", "trips/private/e.jpg"]
    assert "private" not in entered and "private/deep" not in entered  # pruned, not filtered


def test_index_remembers_patterns_and_removes_excluded_items(tmp_path):
    cat, out = make_catalog(tmp_path / "cat"), tmp_path / "index"
    kw = dict(out=out, model="tiny", device="cpu", num_workers=0, progress=False)
    first = build_index(cat, **kw)
    assert first.indexed == 8 and first.excluded == 0 and first.exclude == []

    second = build_index(cat, exclude=["private/**", "*.tmp.jpg"], **kw)
    assert second.indexed == 4 and second.removed == 4 and second.excluded == 4
    assert read_manifest(out)["exclude"] == ["private/**", "*.tmp.jpg"]

    (cat / "private" / "new.jpg").write_bytes((cat / "a.jpg").read_bytes())
    third = build_index(cat, **kw)  # no patterns given: the remembered ones hold
    assert third.indexed == 4 and third.added == 0 and third.exclude == ["private/**", "*.tmp.jpg"]

    fourth = build_index(cat, exclude=["cache"], **kw)  # added to the remembered ones
    assert fourth.indexed == 3 and fourth.excluded == 1
    assert read_manifest(out)["exclude"] == ["private/**", "*.tmp.jpg", "cache"]

    fifth = build_index(cat, reset_exclude=True, **kw)  # forgotten: everything comes back
    assert fifth.indexed == 9 and fifth.added == 6 and "exclude" not in read_manifest(out)

    sixth = build_index(cat, exclude=["none/**"], **kw)  # nothing to remove: the pattern is still remembered
    assert sixth.removed == 0 and read_manifest(out)["exclude"] == ["none/**"]


def test_items_api_honours_exclude(tmp_path):
    cat = make_catalog(tmp_path / "cat", ("a.jpg", "b.tmp.jpg"))
    items = [{"id": n, "image": str(cat / n)} for n in ("a.jpg", "b.tmp.jpg")]
    report = build_index(items=items, out=tmp_path / "i", model="tiny", device="cpu", num_workers=0,
                         progress=False, exclude=["*.tmp.jpg"])
    assert report.indexed == 1


def test_cli_exclude_summary_and_errors(tmp_path):
    cat, out = make_catalog(tmp_path / "cat"), tmp_path / "index"
    runner = CliRunner()
    base = ["index", str(cat), "--index", str(out), "--model", "tiny", "--workers", "0"]
    assert runner.invoke(app, base).exit_code == 0
    res = runner.invoke(app, [*base, "--exclude", "private/**", "--exclude", "*.tmp.jpg"])
    assert res.exit_code == 0, res.output
    assert "4 removed" in res.stdout
    assert "Excluding private/**, *.tmp.jpg (remembered in the index); 4 indexed item(s) they match were " \
           "removed" in res.stdout
    again = runner.invoke(app, base)
    assert again.exit_code == 0 and "Excluding private/**, *.tmp.jpg (remembered in the index)\n" in again.stdout
    bad = runner.invoke(app, [*base, "--exclude", "../secret"])
    assert bad.exit_code == 1 and "exclude pattern '../secret'" in bad.output
