"""WebDataset-style tar shards as catalog input: samples, captions, reading members, updates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.files import write_tar

from mmsearch import SearchEngine, build_index
from mmsearch.catalog.images import load_image
from mmsearch.catalog.scan import scan_catalog
from mmsearch.catalog.tar_shards import content_sha256 as sha256_file
from mmsearch.catalog.tar_shards import split_key
from mmsearch.errors import CatalogError


def make_shard_catalog(sample_catalog: Path, root: Path) -> Path:
    """One loose image plus a tar with four samples: json, txt caption, bare image, and a key without image."""
    img = lambda rel: (sample_catalog / rel).read_bytes()  # noqa: E731
    (root / "loose").mkdir(parents=True)
    (root / "loose" / "bus.webp").write_bytes(img("vehicle/bus.webp"))
    write_tar(root / "shards" / "000000.tar", {
        "s1.webp": img("clothing/running_shoe.webp"),
        "s1.json": json.dumps({"title": "running shoe", "caption": "a red sneaker", "price": 40}).encode(),
        "part/s2.webp": img("food/watermelon.webp"),
        "part/s2.txt": b"a slice of watermelon\n",
        "s3.webp": img("vehicle/taxi.webp"),
        "s4.json": b'{"title": "no image here"}',
    })
    return root


def test_split_key_follows_webdataset():
    assert split_key("dir/abc.def.jpg") == ("dir/abc", ".def.jpg")
    assert split_key("abc.jpg") == ("abc", ".jpg")


def test_tar_samples_become_items_with_their_captions(sample_catalog, tmp_path):
    items = {it.id: it for it in scan_catalog(make_shard_catalog(sample_catalog, tmp_path / "cat"))}
    assert sorted(items) == ["loose/bus.webp", "shards/000000.tar/part/s2.webp", "shards/000000.tar/s1.webp",
                             "shards/000000.tar/s3.webp"]
    s1 = items["shards/000000.tar/s1.webp"]
    assert (s1.title, s1.text, s1.metadata) == ("running shoe", "a red sneaker", {"price": 40})
    assert items["shards/000000.tar/part/s2.webp"].text == "a slice of watermelon"
    assert items["shards/000000.tar/s3.webp"].full_text == ""
    # a member reads (and hashes) exactly like the same bytes as a loose file
    original = sample_catalog / "clothing/running_shoe.webp"
    assert np.array_equal(np.asarray(load_image(s1.path)), np.asarray(load_image(original)))
    assert sha256_file(Path(s1.path)) == sha256_file(original)


def test_index_and_update_a_tar_catalog(sample_catalog, tmp_path):
    cat = make_shard_catalog(sample_catalog, tmp_path / "cat")
    kw = dict(model="tiny", device="cpu", num_workers=0, progress=False)
    report = build_index(cat, out=tmp_path / "idx", **kw)
    assert report.indexed == 4 and report.skipped == [] and report.with_text == 2
    engine = SearchEngine.open(tmp_path / "idx", device="cpu")
    hit = engine.search(image=sample_catalog / "food/watermelon.webp", k=1)[0]
    assert hit.id == "shards/000000.tar/part/s2.webp" and hit.score == pytest.approx(1.0, abs=1e-2)
    assert engine.search(text="running shoe", k=1, where={"price": ("<", 50)})[0].id == "shards/000000.tar/s1.webp"
    again = build_index(cat, out=tmp_path / "idx", **kw)  # content hashes of members are stable
    assert (again.unchanged, again.encoded) == (4, 0)


def test_a_damaged_tar_is_a_clear_catalog_error(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "bad.tar").write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(CatalogError, match="cannot read tar shard .*bad.tar"):
        scan_catalog(tmp_path / "cat")
