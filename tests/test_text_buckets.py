"""Length-bucketed text encoding (issue 5): rows come back in input order and equal unbucketed encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmsearch.encode.pipeline import encode_texts
from mmsearch.models.factory import create_model


def varied_texts(n: int, seed: int = 0) -> list[str]:
    """Texts of 1 to ~40 words in shuffled order (so sorting by length really reorders them)."""
    rng = np.random.default_rng(seed)
    words = "red blue running shoe leather jacket with pockets waterproof canvas bag for laptop vintage".split()
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 40)))) + f" #{i}" for i in range(n)]


def one_by_one(model, tokenizer, texts: list[str]) -> np.ndarray:
    """Each text alone: no padding at all, the reference."""
    with torch.inference_mode():
        return np.concatenate([model.encode_text(tokenizer([t])).float().numpy() for t in texts])


@pytest.fixture(scope="module")
def tiny():
    model, _, tokenizer = create_model("tiny", device="cpu")
    return model, tokenizer


def test_buckets_restore_order_and_equal_unbucketed(tiny):
    model, tokenizer = tiny
    texts = varied_texts(50)
    ref = one_by_one(model, tokenizer, texts)
    # small chunks and batches: several chunks, each re-sorted by token count, batches cut narrower
    bucketed = encode_texts(model, tokenizer, texts, batch_size=4, chunk=16)
    plain = encode_texts(model, tokenizer, texts, batch_size=4, bucket=False)
    np.testing.assert_allclose(bucketed, ref, atol=1e-6)
    np.testing.assert_allclose(plain, ref, atol=1e-6)
    # the same texts in another order give the same rows, moved with them
    perm = np.random.default_rng(1).permutation(len(texts))
    again = encode_texts(model, tokenizer, [texts[i] for i in perm], batch_size=4, chunk=16)
    np.testing.assert_allclose(again, bucketed[perm], atol=1e-6)


def test_buckets_cut_padding(tiny, monkeypatch):
    """Each batch is only as wide as its own longest text (what bucketing is for)."""
    model, tokenizer = tiny
    texts = varied_texts(40, seed=2)
    widths: list[tuple[int, int]] = []
    real = model.encode_text

    def spy(batch, normalize=True):
        widths.append((batch["input_ids"].shape[1], int(batch["attention_mask"].sum(1).max())))
        return real(batch, normalize)

    monkeypatch.setattr(model, "encode_text", spy)
    encode_texts(model, tokenizer, texts, batch_size=8)
    assert all(w == longest for w, longest in widths)
    assert sum(w for w, _ in widths) < len(widths) * max(w for w, _ in widths)  # short batches stay short


def test_default_text_buckets_equal_one_by_one():
    # the torch model and its own tokenizer (an engine on the shipped ONNX graphs has a numpy tokenizer)
    model, _, tokenizer = create_model("default", device="cpu")
    texts = ["red shoes", "a waterproof hiking boot with a thick rubber sole and leather laces, size 42",
             "chaussures rouges 👠", "bag", "a photo of a banana.", ""] * 3
    ref = one_by_one(model, tokenizer, texts)
    np.testing.assert_allclose(encode_texts(model, tokenizer, texts, batch_size=4, chunk=8), ref, atol=1e-5)
