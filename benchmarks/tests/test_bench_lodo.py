"""benchmarks/bench_lodo.py's pure parts: ranks with several targets, paired bootstrap intervals, and the
extraction order (test images first, then every domain in turn)."""

from __future__ import annotations

import bench_lodo as bl
import numpy as np


def test_rank_counts_non_targets_at_least_as_high():
    scores = np.array([[0.9, 0.5, 0.8, 0.1], [0.2, 0.2, 0.9, 0.0]])
    # query 0: best target (col 2, 0.8) is beaten by col 0 only -> rank 2; query 1: tie with col 0 counts against
    assert bl.ranks_of(scores, [[2, 3], [1]]).tolist() == [2, 3]


def test_paired_interval_brackets_the_difference():
    a, b = np.array([1, 1, 1, 20] * 25), np.array([20, 1, 20, 20] * 25)
    lo, hi = bl.paired_ci(a, b, 10)
    assert lo <= 0.5 <= hi and lo > 0.3
    assert bl.paired_ci(a, a, 10) == (0.0, 0.0)


def test_extraction_order_tests_first_then_round_robin():
    c = bl.Corpus(ids=[str(i) for i in range(6)], paths=[""] * 6, rows=[{}] * 6,
                  split=["train", "train", "train", "test", "val", "train"], domain=["a", "a", "a", "b", "b", "b"],
                  triplets=[])
    assert bl.extraction_order(c, ["test", "train", "val"]) == [3, 0, 4, 1, 5, 2]
    assert bl.extraction_order(c, ["test", "train"], {"train": 1}) == [3, 0, 5]
    c.split[0] = "test"  # test images of several domains also alternate
    assert bl.extraction_order(c, ["test"]) == [0, 3]


def test_per_head_wise_alpha_mixes_each_tower_on_its_own():
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Linear(4, 4)

        def forward(self, x):
            return x + self.mlp(x)

    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = Head()

    class Model(nn.Module):
        embed_dim = 4

        def __init__(self):
            super().__init__()
            self.image_tower, self.text_tower = Tower(), Tower()

    torch.manual_seed(0)
    m = Model()
    h = bl.Heads(m, None, None)
    tuned = {k: v + 1.0 for k, v in h.start.items()}
    feats = torch.randn(3, 4)
    sp = h.space(feats, (0.0, 1.0), tuned)  # image head: the start; text head: fully tuned
    state = m.state_dict()
    for k in h.start:
        want = h.start[k] if k.startswith("image_tower") else tuned[k]
        assert torch.equal(state[k], want), k
    assert torch.allclose(sp.img, torch.nn.functional.normalize(feats + nn.functional.linear(
        feats, h.start["image_tower.head.mlp.weight"], h.start["image_tower.head.mlp.bias"]), dim=1), atol=1e-6)
    h.space(feats, 0.5, tuned)  # one alpha: both towers halfway
    for k in h.start:
        assert torch.allclose(m.state_dict()[k], h.start[k] + 0.5), k


def test_alpha_is_one_weight_or_image_slash_text():
    assert bl.parse_alpha("0.5") == 0.5
    assert bl.parse_alpha("0.25/0.5") == (0.25, 0.5)


def test_photo_runner_output_mix_centring_and_ship_rule():
    """bench_lodo_photos: the output-space ensemble renormalises the weighted sum on both towers, centring
    removes the catalog mean of one domain's test rows only, and the ship rule flags a cell whose whole
    interval is below the prior."""
    import bench_lodo_photos as bp
    import torch

    from mmsearch.models.encoders import l2n

    torch.manual_seed(0)
    a_img, b_img = l2n(torch.randn(4, 3)), l2n(torch.randn(4, 3))
    a = bp.Frozen(a_img, {"x": l2n(torch.randn(3))}, a_img)
    b = bp.Frozen(b_img, {"x": l2n(torch.randn(3))}, b_img)
    m = bp.mix(a, b, 0.3)
    torch.testing.assert_close(m.img, l2n(0.3 * a_img + 0.7 * b_img))
    torch.testing.assert_close(m.text_fn(["x"])[0], l2n(0.3 * a.table["x"] + 0.7 * b.table["x"]))
    c = bl.Corpus(ids=list("abcd"), paths=[""] * 4, rows=[{}] * 4, split=["test", "test", "train", "test"],
                  domain=["p", "p", "p", "q"], triplets=[])
    cen = bp.centred(a, c, "p")
    torch.testing.assert_close(cen.img[[2, 3]], a_img[[2, 3]])  # other split and other domain untouched
    torch.testing.assert_close(cen.img[[0, 1]], l2n(a_img[[0, 1]] - a_img[[0, 1]].mean(0)))
    det = {"d": {"text": {"dR@10_ci": (-0.3, -0.01)}, "caption": {"dR@10_ci": (-0.3, 0.0)}}}
    prior = {"drawn_mean": 0.2, "photo_mean": 0.9}
    rule = bp.ship_rule(det, {"drawn_mean": 0.5, "photo_mean": 0.95, "composed_R@1_w0.5": 0.6}, prior, ["d"])
    assert rule["significantly_below"] == ["d/text"] and not rule["passes"]
    det["d"]["text"]["dR@10_ci"] = (-0.1, 0.05)
    assert bp.ship_rule(det, {"drawn_mean": 0.5, "photo_mean": 0.95, "composed_R@1_w0.5": 0.6}, prior, ["d"])["passes"]
    assert not bp.ship_rule(det, {"drawn_mean": 0.5, "photo_mean": 0.95, "composed_R@1_w0.5": 0.5}, prior,
                            ["d"])["passes"]
