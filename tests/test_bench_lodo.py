"""benchmarks/bench_lodo.py's pure parts: ranks with several targets, paired bootstrap intervals, and the
extraction order (test images first, then every domain in turn)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_lodo as bl  # noqa: E402


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
