"""Pure fusion and ranking functions against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmsearch.models.fusion import fuse_sum
from mmsearch.search.ranking import combine, text_part, top_k


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_fuse_sum_is_renormalised_weighted_sum():
    img, txt = unit([1.0, 0.0, 0.0]), unit([0.0, 1.0, 0.0])
    out = fuse_sum(img, txt, 0.5)
    torch.testing.assert_close(out, torch.tensor([[2 ** -0.5, 2 ** -0.5, 0.0]]))
    torch.testing.assert_close(fuse_sum(img, txt, 1.0), img)
    torch.testing.assert_close(fuse_sum(img, txt, 0.0), txt)
    w = fuse_sum(img, txt, 0.8)
    assert w[0, 0] > w[0, 1] and torch.isclose(w.norm(), torch.tensor(1.0))


def test_fuse_sum_rejects_weights_outside_unit_interval():
    with pytest.raises(ValueError):
        fuse_sum(unit([1.0, 0.0]), unit([0.0, 1.0]), 1.5)


def test_text_part_blends_item_text_only_where_present():
    txt_img = np.array([0.2, 0.4, 0.6])
    txt_txt = np.array([1.0, 0.0, 0.5])
    has = np.array([True, False, True])
    out = text_part(txt_img, txt_txt, has, item_text_weight=0.25)
    np.testing.assert_allclose(out, [0.75 * 0.2 + 0.25 * 1.0, 0.4, 0.75 * 0.6 + 0.25 * 0.5])


def test_combine_weights_image_and_text_parts():
    i, t = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    np.testing.assert_allclose(combine(i, t, 0.7), [0.7, 0.3])
    np.testing.assert_allclose(combine(i, None, 0.7), i)
    np.testing.assert_allclose(combine(None, t, 0.7), t)
    with pytest.raises(ValueError):
        combine(None, None, 0.5)


def test_single_channel_late_fusion_ranks_like_the_fused_vector():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(50, 8)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    qi, qt = items[3], items[7]
    w = 0.3
    late = combine(items @ qi, items @ qt, w)
    fused = fuse_sum(torch.from_numpy(qi)[None], torch.from_numpy(qt)[None], w).numpy()[0]
    assert np.array_equal(np.argsort(-late), np.argsort(-(items @ fused)))


def test_top_k_orders_by_score_then_id():
    ids = np.array([10, 4, 7, 2])
    scores = np.array([0.5, 0.9, 0.5, 0.1])
    got_ids, got_scores = top_k(scores, ids, 3)
    assert got_ids.tolist() == [4, 7, 10]
    assert got_scores.tolist() == [0.9, 0.5, 0.5]
    assert top_k(scores, ids, 10)[0].tolist() == [4, 7, 10, 2]
