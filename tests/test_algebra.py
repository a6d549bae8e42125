"""Query algebra: the pure parse / fuse functions, and the ranking they give on the tiny sample index."""

from __future__ import annotations

import numpy as np
import pytest

from mmsearch.errors import QueryError
from mmsearch.search.algebra import (
    Term,
    check_terms,
    combine_terms,
    fuse,
    parse_terms,
    plain_form,
    split_expression,
    split_weight,
    terms_of,
)


def test_split_weight_and_expression():
    assert split_weight("2:b.jpg") == (2.0, "b.jpg")
    assert split_weight("0.5:red shoe") == (0.5, "red shoe")
    assert split_weight("red") == (1.0, "red")
    assert split_weight("1:10:30 train") == (1.0, "10:30 train")
    assert split_expression("cat + a.jpg - blurry") == [(1, "cat"), (1, "a.jpg"), (-1, "blurry")]
    assert split_expression("t-shirt") == [(1, "t-shirt")]  # no spaces around: one text
    with pytest.raises(QueryError, match="empty term"):
        split_expression("cat + ")


def test_parse_terms_and_keywords():
    def by_name(value, given):
        return given or ("image" if value.endswith(".jpg") else "text")

    terms = parse_terms(["2:a.jpg + red"], nots=["high heel", "2:b.jpg"], kind_of=by_name)
    assert terms == [Term("image", "a.jpg", 2.0), Term("text", "red"), Term("text", "high heel", -1.0),
                     Term("image", "b.jpg", -2.0)]
    # the options' order, not the command line's; --image / --text values are not split at + and -
    assert parse_terms(["x"], images=["c.jpg"], texts=["0:gone", " ", "t - shirt"], nots=["-3:y"]) == [
        Term("text", "x"), Term("image", "c.jpg"), Term("text", "t - shirt"), Term("text", "y", -3.0)]
    assert terms_of(image=["a.jpg", (2, "b.jpg")], text="red", not_text=(3, "blue")) == [
        Term("image", "a.jpg"), Term("image", "b.jpg", 2.0), Term("text", "red"), Term("text", "blue", -3.0)]
    assert terms_of(text=["", "  "]) == []  # empty texts are no texts, as in a plain query


def test_fuse_is_the_normalised_weighted_sum():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(3, 8)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    q, norm = fuse(e, [2.0, 1.0, -0.5])
    mix = 2 * e[0] + e[1] - 0.5 * e[2]
    assert np.allclose(q, mix / np.linalg.norm(mix), atol=1e-6)
    assert norm == pytest.approx(np.linalg.norm(mix), rel=1e-5)
    assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-6)
    # scores are linear in the query: per-term scores combined == cosine with the fused vector
    items = rng.normal(size=(5, 8)).astype(np.float32)
    assert np.allclose(combine_terms(e @ items.T, [2.0, 1.0, -0.5], norm), items @ q, atol=1e-5)
    with pytest.raises(QueryError, match="cancel out"):
        fuse(np.stack([e[0], e[0]]), [1.0, -1.0])


def test_plain_form_keeps_the_learned_fusion_case():
    assert plain_form([Term("image", "a.jpg"), Term("text", "red")]) == ("a.jpg", "red", None)
    assert plain_form([Term("image", "a.jpg", 3.0), Term("text", "red")]) == ("a.jpg", "red", 0.75)
    assert plain_form([Term("text", "red"), Term("text", "blue")]) is None
    assert plain_form([Term("text", "red"), Term("text", "blue", -1)]) is None
    with pytest.raises(QueryError, match="at least one"):
        check_terms([Term("text", "blue", -1.0)])


def brute_force(engine, q: np.ndarray) -> list[str]:
    """Item ids by cos(q, item.image), the order the algebra must give for photo-only queries (tiny: no
    visual channel), ties by fid."""
    ch = engine.backend.channels["image"]
    sims = np.asarray(ch.vectors, np.float32) @ q
    order = np.lexsort((ch.ids, -sims))
    rows = engine.backend.store.rows(ch.ids[order])
    return [rows[int(f)]["id"] for f in ch.ids[order]]


def test_photo_algebra_ranks_as_the_fused_vector(engine, sample_catalog):
    a, b, c = (str(sample_catalog / p) for p in ("food/lemon.webp", "food/banana.webp", "vehicle/taxi.webp"))
    e = engine.encode_images([a, b, c])
    for kw, weights in (({"image": [a, b]}, [1, 1, 0]), ({"image": [(2, a), b]}, [2, 1, 0]),
                        ({"image": a, "not_image": c}, [1, 0, -1]), ({"image": [a, b], "not_image": c}, [1, 1, -1])):
        q, _ = fuse(e, weights)
        hits = engine.search(**kw, k=10)
        assert [h.id for h in hits] == brute_force(engine, q)[:10], kw
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # two photos: both are found first; excluding the taxi pushes it to the very bottom
    assert {h.id for h in engine.search(image=[a, b], k=2)} == {"food/lemon.webp", "food/banana.webp"}
    ranked = [h.id for h in engine.search(image=a, not_image=c, k=60)]
    assert ranked[0] == "food/lemon.webp"
    plain = [h.id for h in engine.search(image=a, k=60)]
    assert ranked.index("vehicle/taxi.webp") > plain.index("vehicle/taxi.webp")


def test_not_text_lowers_what_it_names(engine):
    plain = {h.id: h.score for h in engine.search(text="lemon", k=60)}
    minus = {h.id: h.score for h in engine.search(text="lemon", not_text="banana", k=60)}
    assert next(iter(minus)) == "food/lemon.webp"
    assert list(minus).index("food/banana.webp") > list(plain).index("food/banana.webp")


def test_one_photo_one_text_is_the_plain_query(engine, sample_catalog):
    a = str(sample_catalog / "food/lemon.webp")
    plain = engine.search(image=a, text="yellow", k=5)
    assert [h.id for h in engine.search(image=[a], text=["yellow"], k=5)] == [h.id for h in plain]
    assert [h.id for h in engine.search(image=[(3, a)], text=["yellow"], k=5)] == \
        [h.id for h in engine.search(image=a, text="yellow", image_weight=0.75, k=5)]


def test_filters_apply_to_algebra_queries(engine):
    hits = engine.search(text=["car", "fruit"], not_text="bus", where={"category": "vehicle"}, k=20)
    assert len(hits) == 8 and all(h.metadata["category"] == "vehicle" for h in hits)
