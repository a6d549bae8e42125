"""The hand-written parts of benchmarks/bench_generalization.py: per-query metrics and query texts."""

import gzip
from pathlib import Path

import bench_generalization as bg
import numpy as np
import pytest


def test_query_metrics_by_hand():
    ranked = ["a", "x", "b", "y", "z", "c"]
    m = bg.query_metrics(ranked, ["a", "b", "c"])
    assert m["R@1"] == 1.0 and m["R@10"] == 1.0 and m["MRR"] == 1.0
    assert m["P@10"] == pytest.approx(3 / 6)  # fewer than 10 items: the ranking is the denominator
    assert m["mAP"] == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)
    m = bg.query_metrics(["x", "y", "t"], ["t"])
    assert (m["R@1"], m["R@10"], m["MRR"], m["mAP"]) == (0.0, 1.0, pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert bg.query_metrics(["x", "y"], ["t"])["MRR"] == 0.0


def test_chance_matches_the_closed_form():
    ids = [f"i{k}" for k in range(20)]
    rand = bg.chance([{"targets": ["i3"]}], ids, n=2000)
    r1, r10, mrr = rand[0][:3]
    assert r1 == pytest.approx(1 / 20, abs=0.015)
    assert r10 == pytest.approx(10 / 20, abs=0.04)
    assert mrr == pytest.approx(sum(1 / r for r in range(1, 21)) / 20, abs=0.02)


def test_paired_bootstrap_interval_contains_the_mean_and_excludes_zero_for_a_clear_gain():
    diff = np.column_stack([np.ones(50)] * len(bg.METRICS)) * 0.3
    diff[::5] = 0.0
    s = bg.summary(diff)
    mean, lo, hi = s["R@1"]
    assert lo <= mean <= hi and lo > 0


def test_openclipart_text_cleans_names(tmp_path):
    root = tmp_path / "png"
    p = root / "animals" / "bugs" / "flying_wasp_gerald_g._02.png"
    assert bg.openclipart_text(p, root) == "flying wasp gerald, animals bugs"
    p = root / "shapes" / "stars" / "star_82pt05step.png"
    assert bg.openclipart_text(p, root) == "star, shapes stars"
    p = root / "signs_and_symbols" / "flags" / "fc05.png"  # no usable word in the name: the folder stands in
    assert bg.openclipart_text(p, root) == "flags, signs and symbols"


def fake_fashion(root: Path) -> np.ndarray:
    """A t10k pair of idx files: 30 flat images (grey value = index), 3 per class; returns the labels."""
    base = root / "usr/share/datasets/fashion-mnist"
    base.mkdir(parents=True)
    labels = np.repeat(np.arange(10, dtype=np.uint8), 3)
    images = (np.arange(30, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8))
    with gzip.open(base / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\0" * 16 + images.tobytes())
    with gzip.open(base / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\0" * 8 + labels.tobytes())
    return labels


def test_fashion_reader_and_catalog(tmp_path):
    labels = fake_fashion(tmp_path / "src")
    queries = bg.build_fashion(tmp_path / "src", tmp_path / "cat", n=20, seed=0)
    assert len(queries) == 2 * 10
    bag = next(q for q in queries if q["text"] == "a photo of a bag")
    assert len(bag["targets"]) == 2
    from PIL import Image
    for t in bag["targets"]:
        j = int(Path(t).stem)
        assert labels[j] == bg.FASHION_CLASSES.index("bag")
        im = Image.open(tmp_path / "cat" / t)
        assert im.size == (224, 224) and im.mode == "RGB"
        assert np.asarray(im)[100, 100, 0] == j  # a flat image stays its grey value


def test_partition_check():
    qs = [{"targets": ["a", "b"]}, {"targets": ["c"]}]
    assert bg.is_partition(qs, {"a", "b", "c"})
    assert not bg.is_partition(qs, {"a", "b", "c", "d"})  # an image no query claims
    assert not bg.is_partition(qs + [{"targets": ["a"]}], {"a", "b", "c"})  # an image claimed twice


def test_class_correct_aligns_stored_vectors_with_ids(tmp_path):
    """Classification from the index's stored vectors equals classifying freshly encoded images."""
    from mmsearch import SearchEngine, build_index

    fake_fashion(tmp_path / "src")
    queries = bg.build_fashion(tmp_path / "src", tmp_path / "cat", n=20, seed=0)[:10]
    build_index(tmp_path / "cat", out=tmp_path / "idx", model="tiny", device="cpu", num_workers=0, progress=False)
    engine = SearchEngine.open(tmp_path / "idx", device="cpu")
    got = bg.class_correct(engine, queries)
    ids = sorted(r["id"] for r in engine.items)
    pred = (engine.encode_images([str(tmp_path / "cat" / i) for i in ids])
            @ engine.encode_texts([q["text"] for q in queries]).T).argmax(1)
    label = {t: c for c, q in enumerate(queries) for t in q["targets"]}
    assert got.tolist() == [float(p == label[i]) for p, i in zip(pred, ids)]
    assert 0 < got.sum() < len(got)  # a mix of right and wrong, so a misaligned row would show
