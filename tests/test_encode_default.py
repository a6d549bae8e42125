"""Issue 5 with the real model: the fast pipeline's index equals the reference pipeline's, and the fast
tokenizer path gives transformers' tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_index_built_by_fast_pipeline_matches_reference_embeddings(default_engine):
    from mmsearch.config import EncodeCfg
    from mmsearch.encode.pipeline import encode_image_files

    engine = default_engine
    snap = Path(engine.snapshot)
    ids = np.load(snap / "image.ids.npy")
    stored = {ch: np.load(snap / f"{ch}.f16.npy").astype(np.float32) for ch in ("image", "visual")}
    rows = list(range(0, len(ids), 3))  # 20 of the 60 items keep this test short
    paths = [engine.items[int(ids[r])]["path"] for r in rows]
    ref = encode_image_files(engine.model, engine.preprocess, paths, progress=False,
                             cfg=EncodeCfg(pipeline="reference", num_workers=0))
    assert ref.ok == list(range(len(paths)))
    for ch in ("image", "visual"):
        cos = (stored[ch][rows] * ref.channels[ch]).sum(1)
        assert cos.min() > 0.999, (ch, cos.min())  # float16 storage, channels_last arithmetic
    # Retrieval over the catalog is unchanged: each item's 5 nearest neighbours are the same.
    a, b = stored["visual"][rows], ref.channels["visual"]

    def knn(x):
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        return [set(r) for r in np.argsort(-s, axis=1)[:, :5]]

    overlap = np.mean([len(x & y) / 5 for x, y in zip(knn(a), knn(b))])
    assert overlap >= 0.95


def test_tokenizer_gives_transformers_tokens(default_engine):
    from transformers import AutoTokenizer

    tok = default_engine.tokenizer
    hf = AutoTokenizer.from_pretrained(tok.path, local_files_only=True)
    rows = [json.loads(line) for line in (Path(__file__).parents[1] / "mmsearch" / "sample" / "catalog"
                                          / "catalog.jsonl").read_text().splitlines()]
    texts = [r.get("title", "") for r in rows[:20]] + [
        "Red SHOES, size 42!", "café naïve résumé — 東京", "emoji 👟 and tabs\tand\nnewlines", "", " ",
        "a " * 200, "x"]
    ours = tok(texts)
    ref = hf(texts, padding=True, truncation=True, max_length=tok.context_length, return_tensors="pt")
    assert ours["input_ids"].tolist() == ref["input_ids"].tolist()
    assert ours["attention_mask"].tolist() == ref["attention_mask"].tolist()
