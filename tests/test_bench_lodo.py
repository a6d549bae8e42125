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
